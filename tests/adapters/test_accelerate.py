"""The Accelerate adapter with a real Accelerator (one CPU process; 2 processes: tests/distributed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

accelerate = pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from lrfinder_adapters.accelerate import (  # noqa: E402
    find_batch_size,
    find_executable_batch_size,
    find_lr,
)
from tests.adapters.conftest import (  # noqa: E402
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
)

pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state() -> Iterator[None]:
    # Accelerate keeps process-wide singletons; every test starts and ends without them.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def prepared(**options: Any) -> tuple[Accelerator, nn.Module, Any, Any, Any]:
    """An accelerator and a prepared MLP, SGD-momentum optimizer, StepLR and loader."""
    accelerator = Accelerator(cpu=True, **options)
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*map(torch.cat, zip(*make_batches(8)))), batch_size=8
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    # a few real training steps first, so there is optimizer state and a step counter to keep
    for x, y in list(loader)[:3]:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return accelerator, model, optimizer, loader, scheduler


def accelerator_counters(accelerator: Accelerator, loader: Any) -> dict[str, Any]:
    gradient = accelerator.gradient_state
    return {
        "step": accelerator.step,
        "sync": gradient.sync_gradients,
        "active": gradient.active_dataloader,
        "references": list(gradient.dataloader_references),
        "iteration": loader.iteration,
    }


def test_find_lr_restores_the_model_optimizer_scheduler_rng_and_accelerator() -> None:
    """After the range test everything is bitwise as before, the accelerator's counters too."""
    accelerator, model, optimizer, loader, scheduler = prepared()
    before = capture_state(model, optimizer.optimizer, schedulers=[scheduler.scheduler])
    counters = accelerator_counters(accelerator, loader)
    result = find_lr(
        accelerator,
        model,
        optimizer,
        loader,
        nn.functional.mse_loss,
        num_iter=12,
        schedulers=[scheduler],
        progress=False,
    )
    assert len(result) >= 2 and result.world_size == 1 and result.global_batch == 8
    assert_state_bitwise_equal(
        before, capture_state(model, optimizer.optimizer, schedulers=[scheduler.scheduler])
    )
    assert accelerator_counters(accelerator, loader) == counters


def test_one_point_is_one_optimizer_step_of_the_accumulation_window() -> None:
    """gradient_accumulation_steps=2: each point steps the optimizer once over 2 micro-batches."""
    accelerator, model, optimizer, loader, _ = prepared(gradient_accumulation_steps=2)
    steps: list[int] = []
    handle = optimizer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    calls = {"forward": 0}
    hook = model.register_forward_hook(
        lambda *_: calls.__setitem__("forward", calls["forward"] + 1)
    )
    result = find_lr(
        accelerator,
        model,
        optimizer,
        loader,
        nn.functional.mse_loss,
        num_iter=6,
        diverge_threshold=None,
        progress=False,
    )
    handle.remove()
    hook.remove()
    assert len(result) == 6 and len(steps) == 6 and calls["forward"] == 12
    assert result.global_batch == 16


def test_clipping_and_bf16_go_through_the_accelerator() -> None:
    """max_grad_norm uses accelerator.clip_grad_norm_; bf16 autocast runs; state restored."""
    accelerator, model, optimizer, loader, _ = prepared(mixed_precision="bf16")
    clipped: list[float] = []
    original = accelerator.clip_grad_norm_

    def counting_clip(parameters: Any, max_norm: float, norm_type: float = 2) -> Any:
        clipped.append(max_norm)
        return original(parameters, max_norm, norm_type)

    accelerator.clip_grad_norm_ = counting_clip  # type: ignore[method-assign]
    before = capture_state(model, optimizer.optimizer)
    result = find_lr(
        accelerator,
        model,
        optimizer,
        loader,
        nn.functional.mse_loss,
        num_iter=5,
        diverge_threshold=None,
        max_grad_norm=0.5,
        progress=False,
    )
    assert len(result) == 5 and clipped == [0.5] * 5
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))


def test_a_failing_step_is_raised_after_the_restore() -> None:
    """An exception in the loss is re-raised; model, optimizer and accelerator are restored."""
    accelerator, model, optimizer, loader, _ = prepared()
    before = capture_state(model, optimizer.optimizer)
    counters = accelerator_counters(accelerator, loader)
    calls = {"n": 0}

    def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("bad batch")
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    with pytest.raises(KeyError, match="bad batch"):
        find_lr(accelerator, model, optimizer, loader, compute_loss=compute_loss, progress=False)
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    assert accelerator_counters(accelerator, loader) == counters


def test_bad_accelerator_is_a_clear_error() -> None:
    """Passing something else than an Accelerator names the argument."""
    model = make_mlp()
    with pytest.raises(TypeError, match=r"accelerator must be an accelerate\.Accelerator"):
        find_lr("cpu", model, torch.optim.SGD(model.parameters()), [], progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"schedulers": "single"},
            TypeError,
            r"got a single AcceleratedScheduler; pass schedulers=",
        ),
        ({"num_iters": 10}, TypeError, r"did you mean num_iter= for num_iters\?"),
        ({"smooth_f": 0.05}, TypeError, r"did you mean smooth_factor= for smooth_f\?"),
    ],
    ids=["one-scheduler", "num_iters", "smooth_f"],
)
def test_a_bad_find_lr_option_names_the_fix_before_anything_runs(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """As the plain find_lr: one prepared scheduler instead of a list, a peer's option name."""
    accelerator, model, optimizer, loader, scheduler = prepared()
    if options.get("schedulers") == "single":
        options = {"schedulers": scheduler}
    before = capture_state(model, optimizer.optimizer)
    with pytest.raises(error, match=message):
        find_lr(
            accelerator, model, optimizer, loader, nn.functional.mse_loss, progress=False, **options
        )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))


def test_find_batch_size_restores_and_sets_accumulation_for_a_global_batch() -> None:
    """The search under a budget, bitwise restore, gradient_accumulation_steps set."""
    accelerator = Accelerator(cpu=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2048, 64, generator=gen)
    dataset = torch.utils.data.TensorDataset(x, x[:, :1])
    before = capture_state(model, optimizer.optimizer)
    result = find_batch_size(
        accelerator,
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=dataset,
        memory_budget=2 * 2**20,
        target_batch=1024,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    assert result.oom_trials <= 1 and result.batch_size is not None  # predicted, not bracketed
    assert result.batch_size * result.accumulation_steps == 1024
    assert accelerator.gradient_accumulation_steps == result.accumulation_steps > 1


# -- the decorator: what accelerate's own tests expect, then what ours adds ------------------------
def fake_oom() -> None:
    raise RuntimeError("CUDA out of memory.")


def test_decorator_shrinks_like_accelerate_until_a_size_runs() -> None:
    """reduce_batch_size_fn halving from 128 tries 128, 64, 32, 16, 8 and returns at 8."""
    tried: list[int] = []
    size = {"now": 128}

    def halve() -> int:
        size["now"] //= 2
        return size["now"]

    @find_executable_batch_size(starting_batch_size=128, reduce_batch_size_fn=halve)
    def train(batch_size: int, tag: str) -> tuple[int, str]:
        tried.append(batch_size)
        if batch_size != 8:
            fake_oom()
        return batch_size, tag

    assert train("x") == (8, "x") and tried == [128, 64, 32, 16, 8]


def test_decorator_default_shrink_is_ninety_percent() -> None:
    """mode='shrink' without a function: 128 → 115 → 103 → 92, as accelerate's 0.9 factor."""
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=128, mode="shrink")
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 95:
            fake_oom()
        return batch_size

    assert train() == 92 and tried == [128, 115, 103, 92]


def test_decorator_starting_at_zero_says_it_reached_zero() -> None:
    """starting_batch_size=0 raises accelerate's 'reached zero' error, calling nothing."""

    @find_executable_batch_size(starting_batch_size=0)
    def train(batch_size: int) -> None:
        raise AssertionError("never called")

    with pytest.raises(RuntimeError, match=r"No executable batch size found, reached zero\."):
        train()


def test_decorator_where_nothing_fits_says_it_reached_zero() -> None:
    """Every size out of memory down to 1: the same error."""

    @find_executable_batch_size(starting_batch_size=4, mode="shrink")
    def train(batch_size: int) -> None:
        fake_oom()

    with pytest.raises(RuntimeError, match=r"No executable batch size found, reached zero\."):
        train()


def test_decorator_refuses_a_batch_size_passed_by_the_caller() -> None:
    """Calling with the batch size too is a TypeError saying how to call it."""

    @find_executable_batch_size(starting_batch_size=16)
    def train(batch_size: int, arg1: str) -> None: ...

    with pytest.raises(TypeError, match="Batch size was passed into `train` as the first argument"):
        train(16, "hello")


def test_decorator_passes_any_other_error_through() -> None:
    """An error that is not out of memory propagates unchanged."""

    @find_executable_batch_size(starting_batch_size=16)
    def train(batch_size: int) -> None:
        raise ValueError("Oops, we had an error!")

    with pytest.raises(ValueError, match="Oops, we had an error!"):
        train()


def test_decorator_grows_as_well_as_shrinks() -> None:
    """binsearch from 16 with memory for 100: it grows, brackets the limit, answers ≤ 100."""
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=16, mode="binsearch", margin=0.0)
    def train(batch_size: int) -> str:
        tried.append(batch_size)
        if batch_size > 100:
            fake_oom()
        return f"trained at {batch_size}"

    assert train() == "trained at 100" and max(tried) > 100 and tried[0] == 16


def test_decorator_frees_the_accelerator_after_a_failed_call() -> None:
    """accelerator.free_memory() runs after an out-of-memory call, outside its except block."""
    accelerator = Accelerator(cpu=True)
    seen: list[int] = []

    @find_executable_batch_size(starting_batch_size=32, mode="shrink", accelerator=accelerator)
    def train(batch_size: int) -> int:
        seen.append(len(accelerator._models))  # what the previous call left prepared
        model = accelerator.prepare(nn.Linear(4, 1))
        assert model is not None
        if batch_size > 20:
            fake_oom()
        return batch_size

    assert train() == 19 and seen == [0] * 5  # 32, 28, 25, 22, 19


def test_the_example_script_runs_on_one_process(tmp_path: Any) -> None:
    """examples/accelerate/tune_accelerate.py prints both answers and writes the plot."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "examples" / "accelerate" / "tune_accelerate.py"
    done = subprocess.run(
        [sys.executable, str(script), "--cpu", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "✓ Optimal batch size found:" in done.stdout and "= 512" in done.stdout
    assert "✓ Suggested learning rate:" in done.stdout
    assert (tmp_path / "lr_finder_plot.png").stat().st_size > 0


def test_decorator_guided_measures_every_call_also_after_a_failed_one() -> None:
    """guided with an accelerator: each call runs under the memory meter with the phases its
    prepared optimizer marks; a call that runs out of memory frees the accelerator (which
    forgets its optimizers) and the next calls are still measured; the answer is a size whose
    call returned."""
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(4, 64)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.01))
    tried: list[int] = []

    @find_executable_batch_size(
        starting_batch_size=8, mode="guided", accelerator=accelerator, pin_allocator=False
    )
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > 300:
            fake_oom()
        accelerator.backward(model(torch.randn(batch_size, 4)).square().mean())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch_size

    found = train()
    assert found <= 300 and found in tried and max(tried) > 300, tried


def test_decorator_checks_pin_allocator() -> None:
    with pytest.raises(TypeError, match=r"pin_allocator must be None, True or False, got 'no'"):
        find_executable_batch_size(lambda batch_size: batch_size, pin_allocator="no")  # type: ignore[arg-type]


def test_find_batch_size_measures_the_noise_scale_at_the_answer() -> None:
    """noise_scale=True: the same measuring steps as raw PyTorch's, at the answer, through the
    same trial runner; the state is bitwise what it was; a bad option fails before any trial."""
    accelerator = Accelerator(cpu=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1024, 8, generator=gen)
    dataset = torch.utils.data.TensorDataset(x, x @ torch.randn(8, 1, generator=gen))
    before = capture_state(model, optimizer.optimizer)
    with pytest.raises(ValueError, match="gns_max_steps"):
        find_batch_size(
            accelerator, model, optimizer, nn.functional.mse_loss, dataset=dataset,
            noise_scale=True, gns_max_steps=1, progress=False,
        )  # fmt: skip
    result = find_batch_size(
        accelerator,
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=dataset,
        memory_budget=300_000,
        progress=False,
        noise_scale=True,
        gns_max_steps=20,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    assert result.noise_scale is not None and 3 <= result.noise_scale.steps <= 20
    assert result.noise_scale.b_simple > 0 and result.options["noise_scale_precision"] > 0
    assert result.recommendation is not None and result.knee in result.throughput
    # The wrapped optimizer's class is named (AdamW: the square-root rule when the batch moves).
    assert result.options["optimizer"] == "AdamW" and result.recommendation.lr_rule == "sqrt"
    assert "B_simple" in result.summary()

"""TorchStep: one point per optimizer step, with accumulation, clipping, AMP, validation, groups."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.pytorch import LearningRateFinder, TorchStep, find_lr
from lrfinder_plugins import RangeTest, RangeTestResult, TrainingStep, run_range_test
from tests.adapters.conftest import Batch, CountingLoader, make_batches

# These tests are about the mechanics (restore, steps), often on deliberately tiny or flat
# sweeps: whether such a curve allows a confident suggestion is tested in tests/core.
pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


def linear_model(seed: int = 0, features: int = 4) -> nn.Module:
    """A deterministic model (no BatchNorm, no Dropout)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Linear(features, 1)


def run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    loader: Any,
    *,
    start_lr: float = 1e-4,
    end_lr: float = 1e-1,
    num_iter: int = 10,
    mode: str = "exponential",
    **options: Any,
) -> RangeTestResult:
    """Run a range test through the framework-free API (no suggestion, so no warnings)."""
    test = RangeTest(
        start_lr=start_lr, end_lr=end_lr, num_iter=num_iter, mode=mode, diverge_threshold=None
    )
    return run_range_test(
        TorchStep(model, optimizer, loss_fn, loader, **options), test, progress=False
    )


def count_steps(optimizer: torch.optim.Optimizer) -> list[float]:
    """The LR of the first param group at every ``optimizer.step`` call, as the step saw it."""
    lrs: list[float] = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
    )
    return lrs


def recording(loss_fn: Callable[..., Any], calls: list[Any], what: Callable[[], Any]) -> Any:
    """``loss_fn`` that appends ``what()`` to ``calls`` each time it is called."""

    def wrapped(outputs: Any, targets: Any) -> Any:
        calls.append(what())
        return loss_fn(outputs, targets)

    return wrapped


# -- the protocol and the front ends ---------------------------------------------------------------
def test_torch_step_follows_the_training_step_protocol(batches: list[Batch], mse: Any) -> None:
    """TorchStep is a ``TrainingStep`` the framework-free driver accepts."""
    model = linear_model()
    step = TorchStep(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, batches)
    assert isinstance(step, TrainingStep)


def test_find_lr_function_returns_the_whole_result(batches: list[Batch], mse: Any) -> None:
    """``find_lr(model, optimizer, loss_fn, loader)`` returns a RangeTestResult."""
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = find_lr(model, optimizer, mse, batches, num_iter=20, progress=False)
    assert isinstance(result, RangeTestResult) and len(result) == 20


# -- gradient accumulation -------------------------------------------------------------------------
def test_accumulation_makes_one_point_per_optimizer_step(mse: Any) -> None:
    """accumulation_steps=3: 5 points, 5 optimizer steps, 15 micro-batches."""
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = count_steps(optimizer)
    calls: list[None] = []
    loss_fn = recording(mse, calls, lambda: None)
    result = run(model, optimizer, loss_fn, make_batches(6), num_iter=5, accumulation_steps=3)
    assert (len(result), len(steps), len(calls)) == (5, 5, 15)


def test_accumulation_point_is_the_mean_of_the_micro_batch_losses(mse: Any) -> None:
    """Each point is the mean of its k micro-batch losses, as a hand-written loop computes it."""
    batches = make_batches(6)
    model = linear_model()
    result = run(
        model, torch.optim.SGD(model.parameters(), lr=0.1), mse, batches, num_iter=4,
        accumulation_steps=3, keep_weights=True,
    )  # fmt: skip
    by_hand = linear_model()
    sgd = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    expected, feed = [], iter(batches * 2)
    for lr in result.lrs:
        sgd.param_groups[0]["lr"] = lr
        sgd.zero_grad()
        window = []
        for _ in range(3):
            x, y = next(feed)
            loss = mse(by_hand(x), y)
            (loss / 3).backward()
            window.append(loss.item())
        sgd.step()
        expected.append(sum(window) / 3)
    assert list(result.losses) == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(model.weight, by_hand.weight, rtol=1e-6, atol=0)


def test_accumulation_mean_is_exact_for_bfloat16_losses() -> None:
    """Micro-batch losses in bfloat16 are averaged in float32, not rounded to bfloat16 first."""
    model = linear_model()
    values = iter([1.0, 1.0078125] * 4)  # both exact in bfloat16; their sum is not

    def bf16_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return outputs.sum().to(torch.bfloat16) * 0 + torch.tensor(
            next(values), dtype=torch.bfloat16
        )

    result = run(
        model, torch.optim.SGD(model.parameters(), lr=0.1), bf16_loss, make_batches(2),
        num_iter=2, accumulation_steps=2,
    )  # fmt: skip
    assert list(result.losses) == [1.00390625, 1.00390625]


# -- gradient clipping -----------------------------------------------------------------------------
class LinearInW(nn.Module):
    """``output = w · x``: with loss = output.sum() the gradient is ``x``, whatever ``w`` is."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).sum()


def clipped_delta(**options: Any) -> torch.Tensor:
    model = LinearInW()
    batch = (torch.tensor([3.0, 4.0]), torch.zeros(()))  # gradient [3, 4], norm 5
    run(
        model, torch.optim.SGD(model.parameters(), lr=1.0), lambda out, _: out, [batch],
        start_lr=0.1, end_lr=1.0, num_iter=2, keep_weights=True, **options,
    )  # fmt: skip
    return model.w.detach().clone()


def test_gradient_clipping_clips_the_update() -> None:
    """max_grad_norm=1 scales the gradient [3, 4] to [0.6, 0.8] in both SGD steps."""
    delta = clipped_delta(max_grad_norm=1.0)
    expected = -(0.1 + 1.0) * torch.tensor([0.6, 0.8])
    assert torch.allclose(delta, expected, rtol=1e-5, atol=0)


def test_no_clipping_without_max_grad_norm() -> None:
    """Without max_grad_norm the same two steps move by the whole gradient."""
    assert torch.allclose(clipped_delta(), -(0.1 + 1.0) * torch.tensor([3.0, 4.0]), rtol=1e-6)


def test_gradient_clipping_unscales_first_with_a_grad_scaler() -> None:
    """With a GradScaler the gradients are unscaled before clipping (same update as without)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    delta = clipped_delta(max_grad_norm=1.0, scaler=scaler)
    assert torch.allclose(delta, -(0.1 + 1.0) * torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)


class WithUntrainedExtra(LinearInW):
    """LinearInW plus a trainable parameter the optimizer does not hold (gradient [3, 4] too)."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.w * x).sum() + (self.extra * x).sum()


@pytest.mark.parametrize("scaler", [False, True], ids=["plain", "grad-scaler"])
def test_gradient_clipping_measures_the_optimizers_parameters(scaler: bool) -> None:
    """Clipping uses the norm of the optimizer's gradients, with or without a GradScaler."""
    model = WithUntrainedExtra()
    batch = (torch.tensor([3.0, 4.0]), torch.zeros(()))
    run(
        model, torch.optim.SGD([model.w], lr=1.0), lambda out, _: out, [batch], start_lr=0.1,
        end_lr=1.0, num_iter=2, keep_weights=True, max_grad_norm=1.0,
        scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10) if scaler else None,
    )  # fmt: skip
    expected = -(0.1 + 1.0) * torch.tensor([0.6, 0.8])
    assert torch.allclose(model.w.detach(), expected, rtol=1e-5, atol=0)


# -- AMP -------------------------------------------------------------------------------------------
def test_amp_on_cpu_runs_under_bfloat16_autocast(batches: list[Batch], mse: Any) -> None:
    """amp=True on CPU runs the forward pass under bfloat16 autocast and records every point."""
    model = linear_model()
    seen: list[Any] = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append((torch.is_autocast_enabled("cpu"), outputs.dtype))
        return mse(outputs, targets)

    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, batches, amp=True)
    assert seen == [(True, torch.bfloat16)] * 10
    assert len(result) == 10 and all(math.isfinite(x) for x in result.losses)


def test_a_16_bit_loss_is_summed_over_the_window_in_float32(batches: list[Batch]) -> None:
    """Accumulated bfloat16 losses are added in float32: 1 + 2**-8 would round to 1 in bfloat16,
    so the window's mean is 0.501953125, not 0.5; a single step's loss is read as it is."""
    model = linear_model()
    values = iter([1.0, 2.0**-8] * 10)

    def compute_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        zero = model(batch[0]).sum() * 0  # on the graph, so backward runs
        return (zero + next(values)).to(torch.bfloat16)

    options = {"compute_loss": compute_loss, "num_iter": 3}
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    windowed = run(model, sgd, None, batches, accumulation_steps=2, **options)
    assert list(windowed.losses) == [0.501953125] * 3
    values = iter([2.0**-8] * 3)
    single = run(model, sgd, None, batches, **options)
    assert list(single.losses) == [2.0**-8] * 3


def inf_grad_at(
    call: int, loss_fn: Any, calls: list[float], optimizer: torch.optim.Optimizer
) -> Any:
    """``loss_fn`` whose ``call``-th call has a finite value but infinite gradients."""

    def wrapped(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(optimizer.param_groups[0]["lr"])
        loss = loss_fn(outputs, targets)
        if len(calls) == call:
            s = outputs.sum()
            loss = loss + torch.sqrt(s - s.detach())  # adds exactly 0; d sqrt(u)/du at 0 is inf
        return loss

    return wrapped


def test_overflowing_scaler_step_is_not_a_point(batches: list[Batch], mse: Any) -> None:
    """A step the GradScaler skips for inf gradients runs no optimizer step and records nothing."""
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = count_steps(optimizer)
    calls: list[float] = []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    result = run(model, optimizer, inf_grad_at(3, mse, calls, optimizer), batches, scaler=scaler)
    assert (len(calls), len(steps), len(result)) == (11, 10, 10)
    assert all(math.isfinite(x) for x in result.losses)


def test_driver_reproposes_the_lr_of_a_skipped_step(batches: list[Batch], mse: Any) -> None:
    """After an overflow skip the same LR is tried again; the points keep the planned LRs."""
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[float] = []
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    result = run(model, optimizer, inf_grad_at(3, mse, calls, optimizer), batches, scaler=scaler)
    assert calls[2] == calls[3]
    assert calls[:2] + calls[3:] == list(result.lrs)


# -- validation loader -----------------------------------------------------------------------------
def model_with_frozen_bn() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a train-mode model
    return model


def test_val_loss_is_the_mean_over_val_batches_after_the_step_in_eval_mode(mse: Any) -> None:
    """Each point is the mean loss on val_batches validation batches, in eval mode, after the step."""
    model = model_with_frozen_bn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    val = make_batches(3, seed=1)
    expected: list[float] = []

    @torch.no_grad()
    def evaluate(opt: Any, args: Any, kwargs: Any) -> None:  # runs right after each step
        modes = [m.training for m in model.modules()]
        model.eval()
        expected.append(sum(mse(model(x), y).item() for x, y in val[:2]) / 2)
        for m, mode in zip(model.modules(), modes):
            m.training = mode

    optimizer.register_step_post_hook(evaluate)
    result = run(model, optimizer, mse, make_batches(4), val_loader=val, val_batches=2)
    assert list(result.losses) == pytest.approx(expected, rel=1e-6)


def test_val_loader_restores_training_flags_between_steps(mse: Any) -> None:
    """Training batches always see the user's modes; validation batches see eval mode."""
    model = model_with_frozen_bn()
    modes: list[tuple[bool, ...]] = []
    loss_fn = recording(mse, modes, lambda: tuple(m.training for m in model))
    run(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, make_batches(4),
        num_iter=3, val_loader=make_batches(3, seed=1), val_batches=2,
    )  # fmt: skip
    train, val = (True, False, True, True), (False, False, False, False)
    assert modes == [train, val, val] * 3


# -- param groups ----------------------------------------------------------------------------------
def two_group_setup() -> tuple[nn.Module, torch.optim.Optimizer]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters()}],
        lr=1e-2,
    )
    return model, optimizer


def test_param_groups_keep_their_lr_ratio(batches: list[Batch], mse: Any) -> None:
    """One shared multiplier: the body's LR stays a tenth of the head's at every step."""
    model, optimizer = two_group_setup()
    seen: list[list[float]] = []
    loss_fn = recording(mse, seen, lambda: [g["lr"] for g in optimizer.param_groups])
    run(model, optimizer, loss_fn, batches)
    assert all(body / head == pytest.approx(0.1) for body, head in seen)


def test_every_group_lr_recorded_as_the_optimizer_saw_it(batches: list[Batch], mse: Any) -> None:
    """``result.group_lrs`` equals each group's LR read from inside the loss at each step."""
    model, optimizer = two_group_setup()
    seen: list[tuple[float, ...]] = []
    loss_fn = recording(mse, seen, lambda: tuple(g["lr"] for g in optimizer.param_groups))
    finder = LearningRateFinder(model, optimizer, loss_fn, progress=False)
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-1, num_iter=20, diverge_threshold=1e6)
    assert finder.result is not None
    assert list(finder.result.group_lrs) == seen
    assert seen[-1][1] == 1e-1  # the largest group is the swept one and ends at end_lr


# -- batch and loss layouts ------------------------------------------------------------------------
def reference_losses(batches: list[Batch], mse: Any) -> list[float]:
    model = linear_model()
    return list(run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, batches).losses)


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(lambda x, y: (x, y), id="tuple"),
        pytest.param(lambda x, y: [x, y], id="list"),
        *[
            pytest.param(lambda x, y, t=t, i=i: {i: x, t: y}, id=f"dict-{i}-{t}")
            for i in ("inputs", "input", "x")
            for t in ("targets", "target", "labels", "label", "y")
        ],
    ],
)
def test_batch_layouts_give_the_same_points(batches: list[Batch], mse: Any, layout: Any) -> None:
    """Tuples, lists and dicts (any input and target key) are read as (inputs, targets)."""
    model = linear_model()
    laid_out = [layout(x, y) for x, y in batches]
    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, laid_out)
    assert list(result.losses) == reference_losses(batches, mse)


class TwoInputs(nn.Module):
    """A model called with keyword inputs: ``model(features=..., extra=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 1), nn.Linear(2, 1)

    def forward(self, features: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.a(features) + self.b(extra)


def test_dict_batch_without_input_key_goes_to_model_keywords(
    batches: list[Batch], mse: Any
) -> None:
    """A dict batch without an input key calls ``model(**rest)`` with the non-target keys."""
    model = TwoInputs()
    laid_out = [{"features": x, "extra": x[:, :2], "labels": y} for x, y in batches]
    expected = [mse(model(x, x[:, :2]), y).item() for x, y in batches[:1]]
    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, laid_out)
    assert len(result) == 10 and result.losses[0] == pytest.approx(expected[0], rel=1e-6)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda loss: loss, id="tensor"),
        pytest.param(lambda loss: (loss, {"mse": loss.detach()}), id="tuple"),
        pytest.param(lambda loss: {"total_loss": loss, "aux": loss.detach() * 2}, id="total_loss"),
        pytest.param(lambda loss: {"loss": loss, "aux": loss.detach() * 2}, id="loss"),
        pytest.param(
            lambda loss: {"loss": loss * 100, "total_loss": loss}, id="total_loss-before-loss"
        ),
    ],
)
def test_loss_fn_return_shapes(batches: list[Batch], mse: Any, wrap: Any) -> None:
    """loss_fn may return a tensor, a tuple (loss first) or a dict with total_loss/loss."""
    model = linear_model()
    result = run(
        model, torch.optim.SGD(model.parameters(), lr=0.1), lambda o, t: wrap(mse(o, t)), batches
    )
    assert list(result.losses) == reference_losses(batches, mse)


class ReturnsLossDict(nn.Module):
    """A HuggingFace-style model: ``model(**batch)`` returns a dict with ``"loss"``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = linear_model()

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.body(inputs)
        return {"loss": nn.functional.mse_loss(logits, labels), "logits": logits}


def test_loss_fn_none_uses_the_models_own_loss(batches: list[Batch], mse: Any) -> None:
    """loss_fn=None with dict batches calls ``model(**batch)`` and reads its "loss"."""
    model = ReturnsLossDict()
    laid_out = [{"inputs": x, "labels": y} for x, y in batches]
    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), None, laid_out)
    assert list(result.losses) == reference_losses(batches, mse)


# -- data ------------------------------------------------------------------------------------------
def test_short_loader_is_cycled(mse: Any) -> None:
    """A 3-batch loader under a 10-point test is iterated 4 times for exactly 10 batches."""
    model = linear_model()
    loader = CountingLoader(make_batches(3))
    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, loader)
    assert (len(result), loader.fetched, loader.passes) == (10, 10, 4)


def test_one_shot_generator_that_runs_out_stops_as_data_exhausted(mse: Any) -> None:
    """A generator of 4 batches under a 10-point test gives 4 points, stopped "data_exhausted"."""
    model = linear_model()

    def one_shot() -> Iterator[Batch]:
        yield from make_batches(4)

    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, one_shot())
    assert (len(result), result.stop_reason) == (4, "data_exhausted")


def test_data_loader_batches(mse: Any) -> None:
    """A real DataLoader (shuffled, with drop_last) feeds the test and is cycled."""
    x = torch.cat([b[0] for b in make_batches(3)])
    y = torch.cat([b[1] for b in make_batches(3)])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=5, shuffle=True, drop_last=True
    )
    model = linear_model()
    result = run(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, loader, num_iter=12)
    assert (len(result), result.stop_reason) == (12, "budget")


# -- the LRs ---------------------------------------------------------------------------------------
def test_linear_mode_spaces_lrs_evenly(batches: list[Batch], mse: Any) -> None:
    """mode="linear" tests start_lr, evenly spaced LRs, and end_lr."""
    model = linear_model()
    result = run(
        model, torch.optim.SGD(model.parameters(), lr=0.1), mse, batches, start_lr=0.01,
        end_lr=0.1, num_iter=10, mode="linear",
    )  # fmt: skip
    assert result.lrs[0] == 0.01 and result.lrs[-1] == 0.1
    gaps = [b - a for a, b in zip(result.lrs, result.lrs[1:])]
    assert gaps == pytest.approx([0.01] * 9, rel=1e-9)


def test_recorded_lr_is_the_lr_the_optimizer_step_used(batches: list[Batch], mse: Any) -> None:
    """Point i's LR is the LR the optimizer held when its step ran (not the next one)."""
    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    used = count_steps(optimizer)
    result = run(model, optimizer, mse, batches, num_iter=15)
    assert used == list(result.lrs)


class _Seamed(TorchStep):
    """A subclass with a seam of its own (the same forward): it runs the general path."""

    def forward(self, batch: Any) -> torch.Tensor:
        return super().forward(batch)


def _record_returns(step: TorchStep) -> list[Any]:
    """What each ``step.run()`` returns, in order."""
    returned: list[Any] = []
    original = step.run

    def run() -> Any:
        returned.append(original())
        return returned[-1]

    step.run = run  # type: ignore[method-assign]
    return returned


def test_the_plain_step_is_a_hand_written_loop(batches: list[Batch], mse: Any) -> None:
    """The plain case (one micro-batch, nothing else on) runs every step after the first as a
    hand-written loop does and hands the session a float; the points are bitwise those of the
    general path (a subclass with a seam of its own) and of a loop written out here."""
    results = []
    for kind in (TorchStep, _Seamed):
        model = linear_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = kind(model, optimizer, mse, batches)
        assert step._plain is (kind is TorchStep)
        test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=12, diverge_threshold=None)
        returned = _record_returns(step)
        results.append(run_range_test(step, test, progress=False))
        floats = [type(r) is float for r in returned]
        assert floats == ([False] + [True] * 11 if kind is TorchStep else [False] * 12)

    model = linear_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    by_hand = []
    for lr, (inputs, targets) in zip(results[0].lrs, batches * 3):
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = mse(model(inputs), targets)
        loss.backward()
        optimizer.step()
        by_hand.append(loss.item())
    assert results[0].losses == results[1].losses == tuple(by_hand)
    assert results[0].options == results[1].options  # global_batch read from the first step


@pytest.mark.parametrize(
    "options",
    [
        {"accumulation_steps": 2},
        {"max_grad_norm": 1.0},
        {"amp": True},
        {"val_loader": [(torch.randn(4, 4), torch.randn(4, 1))]},
        {"lookahead": True},
        {"overlap": True},
        {"scaler": "scaler"},
    ],
)
def test_anything_on_takes_the_general_path(batches: list[Batch], mse: Any, options: Any) -> None:
    """Each option the fused step does not do turns it off."""
    if options.get("scaler") == "scaler":
        options = {"scaler": torch.amp.GradScaler("cpu", enabled=False)}
    model = linear_model()
    step = TorchStep(model, torch.optim.SGD(model.parameters(), lr=0.1), mse, batches, **options)
    assert not step._plain


def test_a_stop_iteration_from_the_model_is_an_error_in_the_plain_step(
    batches: list[Batch], mse: Any
) -> None:
    """After the first step too: only the data running out ends the test quietly."""
    calls = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise StopIteration
        return mse(outputs, targets)

    model = linear_model()
    step = TorchStep(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, batches)
    assert step._plain
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        run_range_test(step, RangeTest(num_iter=10), progress=False)


def _hook_accumulators(loss: torch.Tensor, fired: list[int], tag: int) -> None:
    """Register a pre-hook tagged ``tag`` on every gradient accumulator in ``loss``'s graph."""
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if type(node).__name__ == "AccumulateGrad":
            node.register_prehook(lambda grad, tag=tag: fired.append(tag) and None)
        else:
            stack.extend(f for f, _ in node.next_functions)


@pytest.mark.parametrize("accumulation_steps", [1, 2], ids=["plain", "general"])
def test_gradient_accumulators_live_from_step_to_step_as_in_a_hand_written_loop(
    batches: list[Batch], mse: Any, accumulation_steps: int
) -> None:
    """A hand-written loop's ``loss`` keeps its graph until the next loss replaces it, so each
    parameter's gradient accumulator is built once, not every step; the step keeps the last
    loss the same way (a hook on step 0's accumulators fires in every later backward), and the
    restore lets it go (the hooks fire no more)."""

    def observed(run_steps: Callable[[Callable[..., Any]], None]) -> list[int]:
        fired: list[int] = []
        calls = [0]

        def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = mse(outputs, targets)
            if calls[0] == 0:
                _hook_accumulators(loss, fired, 0)
            calls[0] += 1
            return loss

        run_steps(loss_fn)
        return fired

    def by_hand(loss_fn: Callable[..., Any]) -> None:
        model = linear_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for inputs, targets in batches[:4]:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()

    model = linear_model()

    def ours(loss_fn: Callable[..., Any]) -> None:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = TorchStep(model, optimizer, loss_fn, batches, accumulation_steps=accumulation_steps)
        assert step._plain is (accumulation_steps == 1)
        run_range_test(step, RangeTest(num_iter=4, diverge_threshold=None), progress=False)

    # weight and bias: each accumulator fires once per backward
    assert observed(by_hand) == [0] * 8
    fired = observed(ours)
    assert fired == [0] * 8 * accumulation_steps
    mse(model(batches[0][0]), batches[0][1]).backward()  # after the restore: nothing kept
    assert fired == [0] * 8 * accumulation_steps

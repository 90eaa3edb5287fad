"""Exact restore: after a range test, however it ended, the training state is bitwise as before."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lrfinder_adapters.pytorch import LearningRateFinder, TorchStep
from tests.adapters.conftest import (
    Batch,
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
    rng_state,
    train_steps,
)

# These tests are about the mechanics (restore, steps), often on deliberately tiny or flat
# sweeps: whether such a curve allows a confident suggestion is tested in tests/core.
pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


class Boom(Exception):
    """Raised by a test's loss function to end a range test from inside the user's code."""


def loss_raising_at(call: int, exc: BaseException | type[BaseException] = Boom) -> Callable:
    """An MSE loss that raises ``exc`` on its ``call``-th call (1-based)."""
    calls = [0]

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == call:
            raise exc
        return nn.functional.mse_loss(outputs, targets)

    return loss_fn


# -- the property ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """One randomly drawn training setup for the restore property."""

    kind: str
    seed: int
    hidden: int
    dropout: float
    optimizer: str
    scheduler: str
    prior_steps: int
    keep_grads: bool
    frozen_bn: bool
    accumulation_steps: int
    snapshot: str
    num_iter: int
    raise_at: int


@st.composite
def setups(draw: st.DrawFn) -> Setup:
    num_iter = draw(st.integers(2, 8))
    accumulation_steps = draw(st.integers(1, 2))
    return Setup(
        kind=draw(st.sampled_from(["linear", "conv"])),
        seed=draw(st.integers(0, 2**16)),
        hidden=draw(st.integers(2, 6)),
        dropout=draw(st.sampled_from([0.0, 0.2, 0.5])),
        optimizer=draw(st.sampled_from(["sgd_momentum", "adam", "adamw"])),
        scheduler=draw(st.sampled_from(["steplr", "onecycle"])),
        prior_steps=draw(st.integers(0, 2)),
        keep_grads=draw(st.booleans()),
        frozen_bn=draw(st.booleans()),
        accumulation_steps=accumulation_steps,
        snapshot=draw(st.sampled_from(["cpu", "disk"])),
        num_iter=num_iter,
        raise_at=draw(st.integers(1, num_iter * accumulation_steps)),
    )


def build_model(setup: Setup) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(setup.seed)
        h = setup.hidden
        if setup.kind == "linear":
            return nn.Sequential(
                nn.Linear(4, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(setup.dropout),
                nn.Linear(h, 1),
            )  # fmt: skip
        return nn.Sequential(
            nn.Conv2d(1, h, 3, padding=1), nn.BatchNorm2d(h), nn.ReLU(), nn.Dropout(setup.dropout),
            nn.Flatten(), nn.Linear(h * 16, 1),
        )  # fmt: skip


def build_batches(setup: Setup) -> list[Batch]:
    gen = torch.Generator().manual_seed(setup.seed)
    shape = (6, 4) if setup.kind == "linear" else (6, 1, 4, 4)
    return [(torch.randn(shape, generator=gen), torch.randn(6, 1, generator=gen)) for _ in range(3)]


def build_optimizer(setup: Setup, model: nn.Module) -> torch.optim.Optimizer:
    if setup.optimizer == "sgd_momentum":
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if setup.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def build_scheduler(setup: Setup, optimizer: torch.optim.Optimizer) -> Any:
    if setup.scheduler == "steplr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=50)


@settings(max_examples=15, deadline=None)
@given(setup=setups())
def test_state_bitwise_restored_after_an_exception_at_a_random_step(setup: Setup) -> None:
    """Random models, optimizers and schedulers: an exception from the loss restores all bitwise."""
    model = build_model(setup)
    batches = build_batches(setup)
    optimizer = build_optimizer(setup, model)
    scheduler = build_scheduler(setup, optimizer)
    model.train()
    train_steps(model, optimizer, batches[: setup.prior_steps], scheduler=scheduler)
    if not setup.keep_grads:
        optimizer.zero_grad(set_to_none=True)
    if setup.frozen_bn:
        model[1].eval()
    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model,
        optimizer,
        loss_raising_at(setup.raise_at),
        progress=False,
        schedulers=[scheduler],
        accumulation_steps=setup.accumulation_steps,
        snapshot=setup.snapshot,
    )
    with pytest.raises(Boom):
        finder.find_lr(
            batches, start_lr=1e-4, end_lr=0.1, num_iter=setup.num_iter, diverge_threshold=1e6
        )
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


# -- each way a test can end -----------------------------------------------------------------------
@pytest.fixture
def trained() -> tuple[nn.Module, torch.optim.Optimizer, Any, list[Batch]]:
    """A model, an Adam optimizer with state, a StepLR scheduler (all past two real steps)."""
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    batches = make_batches(4)
    train_steps(model, optimizer, batches[:2], scheduler=scheduler)
    return model, optimizer, scheduler, batches


def test_state_restored_after_budget(trained: Any) -> None:
    """A test that used its whole budget leaves the state bitwise as before."""
    model, optimizer, scheduler, batches = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, schedulers=[scheduler]
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert finder.result is not None and finder.result.stop_reason == "budget"
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # few points by design
def test_state_restored_after_divergence(trained: Any) -> None:
    """A test that stopped on divergence leaves the state bitwise as before."""
    model, optimizer, scheduler, batches = trained
    calls = [0]

    def exploding(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return nn.functional.mse_loss(outputs, targets) * 10.0 ** max(calls[0] - 5, 0)

    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(model, optimizer, exploding, progress=False, schedulers=[scheduler])
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=30, smooth_factor=0.0)
    assert finder.result is not None and finder.result.stop_reason == "diverged"
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # few points by design
def test_state_restored_after_nan_loss(trained: Any) -> None:
    """A NaN loss (NaN grads, NaN weights) stops the test and the state is bitwise restored."""
    model, optimizer, scheduler, batches = trained
    calls = [0]

    def nan_at_four(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        loss = nn.functional.mse_loss(outputs, targets)
        return loss * math.nan if calls[0] == 4 else loss

    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model, optimizer, nan_at_four, progress=False, schedulers=[scheduler]
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert finder.result is not None and finder.result.stop_reason == "non_finite"
    assert len(finder.result) == 4 and math.isnan(finder.result.losses[-1])
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_state_restored_after_keyboard_interrupt(trained: Any) -> None:
    """Ctrl-C raised inside the loss at step k propagates and the state is bitwise restored."""
    model, optimizer, scheduler, batches = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model,
        optimizer,
        loss_raising_at(6, KeyboardInterrupt),
        progress=False,
        schedulers=[scheduler],
    )
    with pytest.raises(KeyboardInterrupt):
        # No divergence stop: the test must reach the interrupt, whatever the dropout draws.
        finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_keyboard_interrupt_result_says_interrupted(trained: Any) -> None:
    """After Ctrl-C at step k, ``finder.result`` holds the k - 1 points so far, "interrupted"."""
    model, optimizer, _, batches = trained
    finder = LearningRateFinder(
        model, optimizer, loss_raising_at(6, KeyboardInterrupt), progress=False
    )
    with pytest.raises(KeyboardInterrupt):
        # No divergence stop: the test must reach the interrupt, whatever the dropout draws.
        finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert finder.result is not None
    assert finder.result.stop_reason == "interrupted"
    assert len(finder.result) == 5


# -- where the snapshot lives ----------------------------------------------------------------------
@pytest.fixture
def private_tempdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Temporary directories are made under a fresh folder the test can inspect."""
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_disk_snapshot_restores_bitwise(trained: Any, private_tempdir: Path) -> None:
    """``snapshot="disk"`` restores the state bitwise."""
    model, optimizer, scheduler, batches = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model,
        optimizer,
        nn.functional.mse_loss,
        progress=False,
        schedulers=[scheduler],
        snapshot="disk",
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_disk_snapshot_restores_an_optimizer_without_scheduler(
    model: nn.Module, batches: list[Batch], private_tempdir: Path
) -> None:
    """``snapshot="disk"`` adds no attribute to an optimizer no scheduler ever wrapped."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, snapshot="disk"
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_disk_snapshot_directory_removed_after_finish(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch], private_tempdir: Path
) -> None:
    """The disk snapshot is in a temp directory while the test runs, and removed after it."""
    seen: list[list[str]] = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append(sorted(p.name for p in private_tempdir.glob("lrfinder-*/*")))
        return nn.functional.mse_loss(outputs, targets)

    finder = LearningRateFinder(model, optimizer, loss_fn, progress=False, snapshot="disk")
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert seen and all(files == ["weights.bin"] for files in seen)
    assert list(private_tempdir.iterdir()) == []


def test_disk_snapshot_directory_removed_after_exception(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch], private_tempdir: Path
) -> None:
    """The disk snapshot's temp directory is removed when the test raises, too."""
    finder = LearningRateFinder(
        model, optimizer, loss_raising_at(3), progress=False, snapshot="disk"
    )
    with pytest.raises(Boom):
        finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=10, diverge_threshold=1e6)
    assert list(private_tempdir.iterdir()) == []


def test_snapshot_lives_in_cpu_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch], mse: Any
) -> None:
    """The default snapshot holds CPU copies of the weights, never views of the live tensors."""
    train_steps(model, optimizer, batches[:1])
    step = TorchStep(model, optimizer, mse, batches)
    state = step.snapshot()
    assert state.weights is not None
    pairs = [*state.weights["params"].values(), *state.weights["extra_params"]]
    saved = [t for pair in pairs for t in pair if t is not None]
    saved += [b[0] for b in state.weights["buffers"].values() if b is not None]
    live = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert all(t.device.type == "cpu" for t in saved)
    assert not live & {t.data_ptr() for t in saved}


# -- keep_weights ----------------------------------------------------------------------------------
def test_keep_weights_keeps_the_trained_weights(trained: Any) -> None:
    """``keep_weights=True`` leaves the weights the test trained in the model."""
    model, optimizer, _, batches = trained
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, keep_weights=True
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    after = capture_state(model, optimizer)
    changed = [n for n, p in after["params"].items() if not torch.equal(p, before["params"][n])]
    assert changed == list(before["params"])


def test_keep_weights_still_restores_lrs_schedulers_and_rng(trained: Any) -> None:
    """``keep_weights=True`` still puts back the LRs, the schedulers and every RNG."""
    model, optimizer, scheduler, batches = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    finder = LearningRateFinder(
        model,
        optimizer,
        nn.functional.mse_loss,
        progress=False,
        schedulers=[scheduler],
        keep_weights=True,
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    after = capture_state(model, optimizer, schedulers=[scheduler])
    lrs = [[g["lr"] for g in s["optimizer"]["param_groups"]] for s in (before, after)]
    assert lrs[0] == lrs[1]
    assert_state_bitwise_equal(
        {k: before[k] for k in ("schedulers", "rng")}, {k: after[k] for k in ("schedulers", "rng")}
    )


# -- modes and grads -------------------------------------------------------------------------------
def test_training_flags_restored_per_submodule(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """A frozen BatchNorm in eval inside a train-mode model is in eval again after the test."""
    model.train()
    model[1].eval()

    def flips_modes(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model.train()  # user code that touches modes (e.g. an unfreeze) must not leak out
        return nn.functional.mse_loss(outputs, targets)

    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, flips_modes, progress=False)
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert [m.training for m in model] == [True, False, True, True, True]
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_existing_grads_restored_and_none_grads_stay_none(batches: list[Batch]) -> None:
    """Grads present before the test are put back bitwise; grads that were None stay None."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    nn.functional.mse_loss(model(batches[0][0]), batches[0][1]).backward()
    model[4].weight.grad = None  # a mix: some grads set, some None
    model[4].bias.grad = None
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, nn.functional.mse_loss, progress=False)
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert model[4].weight.grad is None and model[0].weight.grad is not None
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_tensor_lr_restored(model: nn.Module, batches: list[Batch]) -> None:
    """An optimizer whose LR is a tensor gets its LR tensor's value back bitwise."""
    optimizer = torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-3))
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, nn.functional.mse_loss, progress=False)
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


# -- GradScaler ------------------------------------------------------------------------------------
def test_fresh_grad_scaler_restored_uninitialised(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """A GradScaler that never ran is uninitialised (lazy) again after the test."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = capture_state(model, optimizer, scaler=scaler)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, scaler=scaler
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert scaler._scale is None
    assert_state_bitwise_equal(before, capture_state(model, optimizer, scaler=scaler))


def test_used_grad_scaler_restored_after_overflows(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """A GradScaler in use gets its scale and growth tracker back after overflow skips."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    for x, y in batches[:2]:
        optimizer.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        scaler.step(optimizer)
        scaler.update()
    scaler.update(2.0**127)  # the next scaled loss overflows: the test starts with skips
    before = capture_state(model, optimizer, scaler=scaler)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, scaler=scaler
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, capture_state(model, optimizer, scaler=scaler))


def test_grad_scaler_restored_after_an_exception_inside_its_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """An error inside ``scaler.step`` (after unscale_) leaves the scaler ready for the next step."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    steps = [0]

    def fail_on_third_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        steps[0] += 1
        if steps[0] == 3:
            raise Boom

    before = capture_state(model, optimizer, scaler=scaler)
    handle = optimizer.register_step_pre_hook(fail_on_third_step)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, scaler=scaler, max_grad_norm=1.0
    )
    with pytest.raises(Boom):
        # No divergence stop: the test must reach the interrupt, whatever the dropout draws.
        finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    handle.remove()
    assert_state_bitwise_equal(before, capture_state(model, optimizer, scaler=scaler))


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # no points at all
def test_state_restored_when_no_point_was_recorded(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """Data that runs out before the first optimizer step ends with no points, state restored."""
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, accumulation_steps=2
    )
    lrs, losses, suggested = finder.find_lr(iter(batches[:1]), num_iter=10)
    assert (lrs, losses) == ([], []) and math.isnan(suggested)
    assert finder.result is not None and finder.result.stop_reason == "data_exhausted"
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_rng_untouched_by_a_test_that_shuffles_and_drops_out(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> None:
    """A shuffling DataLoader and Dropout draw random numbers; every generator is put back."""
    dataset = torch.utils.data.TensorDataset(
        torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    before = rng_state()
    finder = LearningRateFinder(model, optimizer, nn.functional.mse_loss, progress=False)
    finder.find_lr(loader, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert_state_bitwise_equal(before, rng_state())


def test_param_group_dicts_the_user_holds_are_restored_in_place(trained: Any) -> None:
    """References to ``optimizer.param_groups`` and its dicts stay live and show the old LR."""
    model, optimizer, scheduler, batches = trained
    groups, group = optimizer.param_groups, optimizer.param_groups[0]
    lr = group["lr"]
    finder = LearningRateFinder(
        model, optimizer, nn.functional.mse_loss, progress=False, schedulers=[scheduler]
    )
    finder.find_lr(batches, start_lr=1e-5, end_lr=1e-2, num_iter=20, diverge_threshold=1e6)
    assert optimizer.param_groups is groups and optimizer.param_groups[0] is group
    assert group["lr"] == lr

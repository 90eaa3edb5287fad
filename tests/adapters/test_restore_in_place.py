"""Restore writes into the user's own tensors and dicts, and the step's own mode rules."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters import _torch_state
from lrfinder_adapters.pytorch import LearningRateFinder
from tests.adapters.conftest import (
    Batch,
    assert_state_bitwise_equal,
    capture_state,
    make_mlp,
    train_steps,
)

# These tests are about the mechanics (restore, steps), often on deliberately tiny or flat
# sweeps: whether such a curve allows a confident suggestion is tested in tests/core.
pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


def test_optimizer_state_tensors_keep_their_identity(batches: list[Batch], mse: Any) -> None:
    """Adam's exp_avg tensors after the test are the very objects the user had before."""
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, batches)
    before = {id(t) for state in optimizer.state.values() for t in state.values()}
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    after = {id(t) for state in optimizer.state.values() for t in state.values()}
    assert after == before


def test_state_created_by_the_test_is_dropped(batches: list[Batch], mse: Any) -> None:
    """A fresh optimizer (empty state) has empty state again after the test."""
    model = make_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    assert len(optimizer.state) == 0


def test_param_group_dicts_keep_their_identity(batches: list[Batch], mse: Any) -> None:
    """The param-group dicts a scheduler holds are the same objects, with the old values."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    groups = list(optimizer.param_groups)
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    assert all(a is b for a, b in zip(optimizer.param_groups, groups, strict=True))
    assert optimizer.param_groups[0]["lr"] == 0.05


def test_restore_is_repeatable_from_one_snapshot(batches: list[Batch]) -> None:
    """One snapshot restores exactly twice (the batch-size search restores after every trial)."""
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, batches[:2])
    before = capture_state(model, optimizer)
    snapshot = _torch_state.capture(model, optimizer)
    for _ in range(2):
        train_steps(model, optimizer, batches)
        _torch_state.restore(snapshot, model, optimizer)
        assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_eval_model_is_trained_in_train_mode(batches: list[Batch], mse: Any) -> None:
    """A model left in eval mode runs the test in train mode and is back in eval afterwards."""
    model = make_mlp().eval()
    seen: list[bool] = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(model.training)
        return mse(out, target)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    LearningRateFinder(model, optimizer, loss_fn, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    assert seen and all(seen)
    assert not any(m.training for m in model.modules())


def test_frozen_submodule_stays_in_eval_during_test(batches: list[Batch], mse: Any) -> None:
    """In a train-mode model, a BatchNorm the user froze in eval stays in eval while testing."""
    model = make_mlp()
    model[1].eval()
    seen: list[bool] = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(model[1].training)
        return mse(out, target)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    LearningRateFinder(model, optimizer, loss_fn, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    assert seen and not any(seen)


def test_stop_iteration_from_the_loss_is_an_error(batches: list[Batch]) -> None:
    """A StopIteration raised by user code is a RuntimeError, not a quiet 'data_exhausted'."""

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise StopIteration

    model = make_mlp()
    finder = LearningRateFinder(
        model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn, progress=False
    )
    with pytest.raises(RuntimeError, match="raised StopIteration"):
        finder.find_lr(batches, num_iter=20, diverge_threshold=1e6)
    assert finder.result is not None and finder.result.stop_reason == "interrupted"


def test_defaultdict_and_namedtuple_state_survive_the_copy() -> None:
    """to_cpu_copy keeps container types a custom optimizer may use in its state."""
    from collections import defaultdict, namedtuple

    Pair = namedtuple("Pair", "a b")
    tree = defaultdict(list, {"x": Pair(torch.ones(2), 3)})
    copied = _torch_state.to_cpu_copy(tree)
    assert isinstance(copied, defaultdict) and copied.default_factory is list
    assert isinstance(copied["x"], Pair) and torch.equal(copied["x"].a, torch.ones(2))
    assert copied["x"].a is not tree["x"].a


def test_grad_none_before_and_tensor_after_is_reset(batches: list[Batch], mse: Any) -> None:
    """Grads that were None stay None; grads that existed come back bitwise."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    nn.functional.mse_loss(model(batches[0][0]), batches[0][1]).backward()
    model[0].weight.grad = None
    before = capture_state(model, optimizer)
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(
        batches, num_iter=20, diverge_threshold=1e6
    )
    assert model[0].weight.grad is None
    assert_state_bitwise_equal(before, capture_state(model, optimizer))

"""Restore in the corners a review found: lazy buffers, params outside the model, global state."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters import _torch_state
from lrfinder_adapters.pytorch import LearningRateFinder
from tests.adapters.conftest import Batch, assert_state_bitwise_equal, capture_state, make_mlp

pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


class LazyCache(nn.Module):
    """A model whose forward fills a buffer registered as None (as attention caches do)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = make_mlp()
        self.register_buffer("cache", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        self.cache = out.detach()
        return out


def test_a_buffer_filled_during_the_test_is_none_again(batches: list[Batch], mse: Any) -> None:
    """A buffer that was None before the test is None after it; everything else is bitwise."""
    model = LazyCache()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = capture_state(model, optimizer)
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(batches, num_iter=10)
    assert model.cache is None
    assert len(optimizer.state) == 0 and optimizer.param_groups[0]["lr"] == 1e-3
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_a_buffer_registered_during_the_test_is_removed(batches: list[Batch], mse: Any) -> None:
    """A buffer the forward pass registers on the fly is gone after the restore."""

    class Registers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = make_mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if "seen" not in self._buffers:
                self.register_buffer("seen", torch.zeros(()))
            return self.body(x)

    model = Registers()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(batches, num_iter=5)
    assert "seen" not in dict(model.named_buffers())


def test_optimizer_params_outside_the_model_are_restored(batches: list[Batch]) -> None:
    """A learnable loss weight the optimizer trains (not in the model) comes back bitwise."""
    model = make_mlp()
    log_var = nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.Adam([*model.parameters(), log_var], lr=1e-3)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, target) * torch.exp(-log_var) + log_var

    before = log_var.detach().clone()
    LearningRateFinder(model, optimizer, loss_fn, progress=False).find_lr(batches, num_iter=10)
    assert torch.equal(log_var.detach(), before) and log_var.grad is None


def test_optimizer_state_not_keyed_by_a_parameter_survives(batches: list[Batch], mse: Any) -> None:
    """A custom optimizer's global state entry (not keyed by a parameter) is put back."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.state["calls"] = {"n": 1}
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(batches, num_iter=5)
    assert optimizer.state["calls"] == {"n": 1}


def test_one_failing_part_does_not_skip_the_rest_of_the_restore(batches: list[Batch]) -> None:
    """If putting the weights back fails, the optimizer, LRs and RNG are still restored."""
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    snapshot = _torch_state.capture(model, optimizer)
    rng = torch.get_rng_state()
    for group in optimizer.param_groups:
        group["lr"] = 10.0
    torch.rand(3)
    snapshot.weights = {"broken": True}  # type: ignore[assignment]
    with pytest.raises(KeyError):
        _torch_state.restore(snapshot, model, optimizer)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert torch.equal(torch.get_rng_state(), rng)


def test_validation_reads_exactly_val_batches_per_point(batches: list[Batch], mse: Any) -> None:
    """Each point reads val_batches validation batches, not one more."""
    fetched = 0

    class Counting:
        def __iter__(self) -> Any:
            nonlocal fetched
            for batch in batches:
                fetched += 1
                yield batch

    model = make_mlp()
    finder = LearningRateFinder(
        model, torch.optim.SGD(model.parameters(), lr=0.01), mse, progress=False
    )
    finder.find_lr(batches, num_iter=3, val_loader=Counting(), val_batches=2, diverge_threshold=1e6)
    assert fetched == 2 * len(finder.result or ())


def test_a_one_shot_val_iterator_is_rejected_up_front(batches: list[Batch], mse: Any) -> None:
    """A generator as val_loader is refused before the test (it would be empty at point 2)."""
    model = make_mlp()
    finder = LearningRateFinder(
        model, torch.optim.SGD(model.parameters(), lr=0.01), mse, progress=False
    )
    with pytest.raises(TypeError, match="val_loader is a one-shot iterator"):
        finder.find_lr(batches, num_iter=3, val_loader=iter(batches))

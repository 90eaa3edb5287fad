"""``val_loader`` with BatchNorm: each validation batch's own statistics, running ones untouched."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.pytorch import LearningRateFinder, find_lr
from tests.adapters.conftest import Batch, assert_state_bitwise_equal, capture_state

pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


def _model(norm: type[nn.Module] = nn.BatchNorm1d) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), norm(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 1))


def _val_batch() -> list[Batch]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 4, generator=generator) * 3 + 1
    return [(x, x.sum(dim=1, keepdim=True))]


def _validated_sweep(
    model: nn.Module, batches: list[Batch], mse: Any, val: list[Batch] | None = None, **options: Any
) -> float:
    """The last point's loss of a short sweep validated on ``val`` (:func:`_val_batch`), the
    trained weights kept."""
    result = find_lr(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        mse,
        batches,
        num_iter=4,
        val_loader=_val_batch() if val is None else val,
        keep_weights=True,
        diverge_threshold=1e6,
        progress=False,
        **options,
    )
    assert len(result) == 4
    return result.losses[-1]


def _loss_as_validated(model: nn.Module, batch: Batch, *, batch_stats: bool) -> float:
    """The loss of a copy in eval mode, its BatchNorm layers in train mode when ``batch_stats``."""
    twin = copy.deepcopy(model).eval()
    for module in twin.modules():
        if isinstance(module, nn.BatchNorm1d) and batch_stats:
            module.train()
    with torch.no_grad():
        return float(nn.functional.mse_loss(twin(batch[0]), batch[1]))


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_each_point_is_the_validation_loss_with_the_chosen_statistics(
    batches: list[Batch], mse: Any, mode: str
) -> None:
    """The last point's loss is the kept model's validation loss, BatchNorm on the val batch's
    statistics (``"batch"``) or its running ones (``"running"``), dropout off in both; the two
    differ, so the test tells them apart."""
    model = _model()
    last = _validated_sweep(model, batches, mse, val_batch_norm=mode)
    expected = _loss_as_validated(model, _val_batch()[0], batch_stats=mode == "batch")
    other = _loss_as_validated(model, _val_batch()[0], batch_stats=mode != "batch")
    assert last == pytest.approx(expected, rel=1e-6)
    assert abs(expected - other) > 1e-3 * abs(expected)


def test_validation_leaves_running_statistics_as_training_left_them(
    batches: list[Batch], mse: Any
) -> None:
    """With the trained weights kept, a test validated on batch statistics leaves the same state,
    running statistics included, as the same test without a val_loader: bitwise."""
    states = []
    for val in (None, _val_batch()):
        model = _model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        finder = LearningRateFinder(model, optimizer, mse, progress=False, keep_weights=True)
        finder.find_lr(batches, num_iter=6, val_loader=val, diverge_threshold=1e6)
        states.append(capture_state(model, optimizer))
    assert_state_bitwise_equal(states[0], states[1])


def test_the_model_is_restored_bitwise_after_a_validated_test(
    batches: list[Batch], mse: Any
) -> None:
    """Without keep_weights everything, BatchNorm buffers and train/eval modes too, is back."""
    model = _model()
    model[1].eval()  # a frozen BatchNorm: it must stay in eval mode after the test
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = capture_state(model, optimizer)
    modes = [m.training for m in model.modules()]
    LearningRateFinder(model, optimizer, mse, progress=False).find_lr(
        batches, num_iter=5, val_loader=_val_batch(), diverge_threshold=1e6
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert [m.training for m in model.modules()] == modes


def test_sync_batch_norm_keeps_its_running_statistics(batches: list[Batch], mse: Any) -> None:
    """SyncBatchNorm's batch statistics are a collective, so it validates in eval mode."""
    model = _model(nn.SyncBatchNorm)
    last = _validated_sweep(model, batches, mse)
    assert last == pytest.approx(_loss_as_validated(model, _val_batch()[0], batch_stats=False))


def test_a_frozen_batch_norm_keeps_its_running_statistics(batches: list[Batch], mse: Any) -> None:
    """A BatchNorm the user froze (eval mode in a training model) validates on its running
    statistics, which the sweep does not move; the layers that train use the batch's."""
    model = nn.Sequential(_model(), nn.BatchNorm1d(1))
    model[1].eval()
    last = _validated_sweep(model, batches, mse)
    twin = copy.deepcopy(model).eval()
    twin[0][1].train()
    x, y = _val_batch()[0]
    with torch.no_grad():
        assert last == pytest.approx(float(nn.functional.mse_loss(twin(x), y)), rel=1e-6)


def test_a_one_sample_validation_batch_uses_the_running_statistics(
    batches: list[Batch], mse: Any
) -> None:
    """A validation loader's short last batch of one sample (no batch statistics) is evaluated
    on the running statistics; the other batches on their own."""
    model = _model()
    (x, y), single = _val_batch()[0], (torch.ones(1, 4), torch.full((1, 1), 4.0))
    last = _validated_sweep(model, batches, mse, [(x, y), single])
    expected = (
        _loss_as_validated(model, (x, y), batch_stats=True)
        + _loss_as_validated(model, single, batch_stats=False)
    ) / 2
    assert last == pytest.approx(expected, rel=1e-6)

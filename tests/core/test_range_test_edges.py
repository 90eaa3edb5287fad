"""Edge cases of the engine found in review: NumPy scalars, a best loss of 0, group ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrfinder_plugins import RangeTest, StopReason
from lrfinder_plugins.schedules import exponential


def test_numpy_scalars_are_accepted() -> None:
    """np.float32 LRs and an np.int64 num_iter are numbers like any other."""
    test = RangeTest(start_lr=np.float32(1e-4), end_lr=np.float64(1.0), num_iter=np.int64(5))
    assert test.num_iter == 5 and isinstance(test.num_iter, int)
    assert test.next_lr() == pytest.approx(1e-4)


def test_divergence_after_a_best_loss_of_zero() -> None:
    """Once the best smoothed loss is exactly 0, a jump still counts as divergence."""
    test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=10, smoothing=0.0, diverge_threshold=2.0)
    for loss in (1.0, 0.0, 5.0):
        test.record(loss)
    assert test.stop_reason is StopReason.DIVERGED


@pytest.mark.parametrize(
    "ratios",
    [(), (0.0, 0.0), (1.0, -0.5), (1.0, math.nan), (math.inf,)],
    ids=["none", "all-zero", "negative", "nan", "inf"],
)
def test_bad_group_ratios_are_rejected(ratios: tuple[float, ...]) -> None:
    """group_ratios must be finite, non-negative and not all zero."""
    with pytest.raises(ValueError, match="group_ratios"):
        RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=5, group_ratios=ratios)


def test_exponential_stays_inside_a_very_narrow_range() -> None:
    """The clamped schedule never leaves [start_lr, end_lr], even a few floats wide."""
    start, end = 0.015625, 0.015625000000000003
    schedule = exponential(start_lr=start, end_lr=end, num_iter=3)
    values = [schedule(i) for i in range(3)]
    assert values == sorted(values)
    assert all(start <= v <= end for v in values)

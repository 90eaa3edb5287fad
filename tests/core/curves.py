"""Hand-made loss curves and results for the core tests (no engine logic is reimplemented here)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lrfinder_plugins import RangeTest, RangeTestResult, StopReason
from lrfinder_plugins.schedules import exponential

START_LR, END_LR, POINTS = 1e-6, 1.0, 100


def result_from_losses(
    losses: Sequence[float],
    *,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    num_iter: int | None = None,
    group_ratios: Sequence[float] = (1.0,),
    stop_reason: StopReason | None = StopReason.BUDGET,
) -> RangeTestResult:
    """A result whose points are ``losses`` at exponentially spaced LRs (no stop rule applied).

    The suggesters smooth the raw losses themselves, so ``smoothed_losses`` is a copy of them.
    """
    planned = num_iter if num_iter is not None else max(len(losses), 2)
    schedule = exponential(start_lr=start_lr, end_lr=end_lr, num_iter=planned)
    return RangeTestResult(
        lrs=tuple(schedule(i) for i in range(len(losses))),
        losses=tuple(float(x) for x in losses),
        smoothed_losses=tuple(float(x) for x in losses),
        stop_reason=stop_reason,
        options={"num_iter": planned, "group_ratios": list(group_ratios)},
    )


def recorded(test: RangeTest, losses: Sequence[float]) -> RangeTest:
    """Record ``losses`` into ``test`` one by one, stopping early if the test stops."""
    for loss in losses:
        if test.finished:
            break
        test.next_lr()
        test.record(loss)
    return test


def v_curve() -> list[float]:
    """100 points: a straight descent 2.0 -> 1.0 over points 0..70, then a blow-up (10, 20, ...)."""
    return [2.0 - i / 70 for i in range(71)] + [10.0 * (j + 1) for j in range(29)]


def drop_curve() -> list[float]:
    """100 points: 2.0 for points 0..49, then 1.0 (one sudden drop between points 49 and 50)."""
    return [2.0] * 50 + [1.0] * 50


def sigmoid_curve() -> list[float]:
    """100 points over 1e-6..1: a sigmoid descent centred at LR 10**-3.5, then divergence past 0.1.

    The lowest raw loss is at point 82.
    """

    def loss(log_lr: float) -> float:
        descent = 1.0 / (1.0 + math.exp(4.0 * (log_lr + 3.5)))
        blow_up = math.exp(3.0 * (log_lr + 1.0)) - 1.0 if log_lr > -1.0 else 0.0
        return 1.0 + descent + blow_up

    return [loss(-6.0 + 6.0 * i / (POINTS - 1)) for i in range(POINTS)]

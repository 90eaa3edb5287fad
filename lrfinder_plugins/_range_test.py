"""The LR range test as a state machine: it proposes learning rates and is told losses.

It never touches a model, so any loop can drive it: a loop we own (pull: ``next_lr`` → step →
``record``) or a loop a framework owns (push: set the LR in a batch-start callback, record in the
batch-end callback). Under DDP every rank must pass the same (reduced) loss, so every rank takes
the same decisions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from lrfinder_plugins import _validate, schedules
from lrfinder_plugins._results import RangeTestResult, StopReason

__all__ = ["RangeTest", "StopReason", "group_ratios"]


def group_ratios(initial_lrs: Sequence[float]) -> tuple[float, ...]:
    """Each param group's LR as a fraction of the largest one (the sweep's reference group).

    Sweeping one shared multiplier keeps discriminative LRs in proportion, and measuring against
    the largest group means no group ever goes past ``end_lr``.

    Example:
        >>> group_ratios([1e-4, 1e-3])
        (0.1, 1.0)
    """
    largest = max(initial_lrs, default=0.0)
    if largest <= 0:
        return tuple(1.0 for _ in initial_lrs)
    return tuple(lr / largest for lr in initial_lrs)


class RangeTest:
    """The LR range test (Smith, 2015) as a sans-I/O state machine.

    Args:
        start_lr: the first LR (> 0).
        end_lr: the last LR (> ``start_lr``).
        num_iter: the most points to record (>= 2); one point is one optimizer step.
        mode: the LR schedule: ``"exponential"`` or ``"linear"``, any
            :data:`~lrfinder_plugins.schedules.ScheduleFactory`, or the name of a schedule a
            plugin registered (looked up only for a name that is not built in).
        smoothing: the exponential moving average's weight on the past, in ``[0, 1)``:
            ``avg = smoothing * avg + (1 - smoothing) * loss``, bias corrected from the first
            point on (``smoothed_t = avg_t / (1 - smoothing ** t)``, ``t = 1`` at the first
            point). 0 means no smoothing; higher means more.
        diverge_threshold: stop when the smoothed loss exceeds ``diverge_threshold`` times the
            best smoothed loss so far (> 1; for losses that can be <= 0, when it rises more than
            ``diverge_threshold - 1`` times ``|best|`` above the best). ``None`` never stops early.
        group_ratios: each param group's LR as a fraction of the swept LR (see
            :func:`group_ratios`); recorded so every group's LR can be read from the result.

    Example:
        >>> test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=3)
        >>> while not test.finished:
        ...     lr = test.next_lr()
        ...     test.record(1.0 / (1.0 + lr))  # the user's step would go here
        >>> test.result().stop_reason
        <StopReason.BUDGET: 'budget'>
    """

    def __init__(
        self,
        *,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_iter: int = 100,
        mode: str | schedules.ScheduleFactory = "exponential",
        smoothing: float = 0.05,
        diverge_threshold: float | None = 5.0,
        group_ratios: Sequence[float] = (1.0,),
    ) -> None:
        start_lr = _validate.positive_finite("start_lr", start_lr)
        end_lr = _validate.positive_finite("end_lr", end_lr)
        if start_lr >= end_lr:
            raise ValueError(
                f"start_lr must be smaller than end_lr, got start_lr={start_lr!r} >= "
                f"end_lr={end_lr!r}; swap them or widen the range"
            )
        self.num_iter = _validate.int_at_least("num_iter", num_iter, 2)
        factory = schedules.resolve(mode)
        self.mode = mode if isinstance(mode, str) else getattr(mode, "__name__", repr(mode))
        self.smoothing = _validate.in_unit_interval("smoothing", smoothing)
        self.diverge_threshold = (
            None
            if diverge_threshold is None
            else _validate.greater_than_one("diverge_threshold", diverge_threshold)
        )
        self.group_ratios = tuple(float(r) for r in group_ratios)
        if (
            not self.group_ratios
            or not all(math.isfinite(r) and r >= 0 for r in self.group_ratios)
            or max(self.group_ratios) <= 0
        ):
            raise ValueError(
                f"group_ratios must be finite, >= 0 and not all 0 (one per param group), got "
                f"{group_ratios!r}; pass each group's LR divided by the largest group's LR"
            )
        self.start_lr, self.end_lr = start_lr, end_lr
        self._planned = _planned_lrs(self.mode, factory, start_lr, end_lr, self.num_iter)
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed_losses: list[float] = []
        self._avg = 0.0
        self._best = math.inf
        self.stop_reason: StopReason | None = None

    @property
    def finished(self) -> bool:
        """True once the test stopped (budget, divergence, non-finite loss or an outside stop)."""
        return self.stop_reason is not None

    def next_lr(self) -> float:
        """The LR of the next point (the same value until :meth:`record` is called)."""
        if self.stop_reason is not None:
            raise RuntimeError(
                f"the range test already stopped ({self.stop_reason}); read its result (a session's "
                "finish())"
            )
        return self._planned[len(self.losses)]

    def lr_ahead(self, ahead: int) -> float | None:
        """The LR of the point ``ahead`` points after the next one (0: :meth:`next_lr`).

        ``None`` past the budget. For a loop that starts a step before the one before it is
        recorded (a decision one step late): the LR assumes every step in between is recorded.
        """
        if self.stop_reason is not None:
            return None
        index = len(self.losses) + ahead
        return self._planned[index] if index < self.num_iter else None

    def record(self, loss: float) -> None:
        """Record the loss of the step that used :meth:`next_lr`; may finish the test."""
        if self.stop_reason is not None:
            self.next_lr()  # raises: nothing is recorded after the stop
        losses = self.losses
        self.lrs.append(self._planned[len(losses)])
        loss = float(loss)
        losses.append(loss)
        if not math.isfinite(loss):
            self.smoothed_losses.append(loss)
            self.stop_reason = StopReason.NON_FINITE
            return
        beta = self.smoothing
        self._avg = beta * self._avg + (1.0 - beta) * loss
        smoothed = self._avg / (1.0 - beta ** len(losses)) if beta else loss
        self.smoothed_losses.append(smoothed)
        best = self._best
        if smoothed < best:
            self._best = best = smoothed
        threshold = self.diverge_threshold
        # Diverged: above the best by (threshold - 1) x |best|; a best of exactly 0 would never
        # allow a stop, so the scale of the first smoothed loss is used then.
        if threshold is not None and (
            smoothed - best > (threshold - 1.0) * (abs(best) or abs(self.smoothed_losses[0])) > 0.0
        ):
            self.stop_reason = StopReason.DIVERGED
        elif len(losses) == self.num_iter:
            self.stop_reason = StopReason.BUDGET

    def stop(self, reason: StopReason | str) -> None:
        """End the test from outside (data ran out, interrupted); a no-op once stopped."""
        if self.stop_reason is None:
            self.stop_reason = StopReason(reason)

    def options(self) -> dict[str, Any]:
        """The validated settings, as stored in results and shown to observers."""
        return {
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "num_iter": self.num_iter,
            "mode": self.mode,
            "smoothing": self.smoothing,
            "diverge_threshold": self.diverge_threshold,
            "group_ratios": list(self.group_ratios),
        }

    def result(self) -> RangeTestResult:
        """A frozen copy of the points so far (call it after the test stopped, or any time)."""
        return RangeTestResult(
            lrs=tuple(self.lrs),
            losses=tuple(self.losses),
            smoothed_losses=tuple(self.smoothed_losses),
            stop_reason=self.stop_reason,
            options=self.options(),
        )


def _planned_lrs(
    name: str, factory: schedules.ScheduleFactory, start_lr: float, end_lr: float, num_iter: int
) -> list[float]:
    """Every point's LR from the schedule, checked as the schedule's contract says: real
    numbers, finite and > 0, non-decreasing, ``start_lr`` first and ``end_lr`` last.

    Raises:
        ValueError, TypeError: the schedule broke its contract (the message names it, the point
            and the value); an error the schedule raised itself gets a note naming it.
    """
    try:
        schedule = factory(start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)
        lrs = [schedule(i) for i in range(num_iter)]
    except Exception as error:
        error.add_note(f"lrfinder: raised by the LR schedule {name!r}")
        raise
    fix = "a schedule maps 0 .. num_iter - 1 to LRs rising from start_lr to end_lr"
    for i, lr in enumerate(lrs):
        if not isinstance(lr, numbers.Real) or isinstance(lr, bool):
            raise TypeError(
                f"the LR schedule {name!r} returned {lr!r} ({type(lr).__name__}) at point {i}, "
                f"not a number; {fix}"
            )
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"the LR schedule {name!r} returned {lr!r} at point {i}; {fix}")
        if i and lr < lrs[i - 1]:
            raise ValueError(
                f"the LR schedule {name!r} falls from {lrs[i - 1]!r} to {lr!r} at point {i}; {fix}"
            )
    for i, want in ((0, start_lr), (num_iter - 1, end_lr)):
        if not math.isclose(lrs[i], want, rel_tol=1e-6):
            raise ValueError(
                f"the LR schedule {name!r} gives {lrs[i]!r} at point {i}, not {want!r}; {fix}"
            )
    return [float(lr) for lr in lrs]

"""The pull driver: a short loop over a :class:`RangeTestSession`, for loops we own.

Snapshot, then ``set_lr(session.next_lr())`` → ``step.run()`` → ``session.end_step(outcome)``
until the session stops, and restore in ``finally``. Every rule (observers, skipped steps, stop
reasons, errors on any rank) is the session's, so a framework's loop that pushes into a session
behaves exactly like this one.
"""

from __future__ import annotations

import logging
from typing import Any

from lrfinder_plugins._range_test import RangeTest
from lrfinder_plugins._results import RangeTestResult
from lrfinder_plugins._seams import (
    DeferredOutcome,
    Reducer,
    StepOutcome,
    TrainingStep,
    start_step,
)
from lrfinder_plugins._session import RangeTestSession, Submitted
from lrfinder_plugins._signals import deferred_sigint

log = logging.getLogger("lrfinder_plugins")


def run_step(step: TrainingStep) -> StepOutcome | DeferredOutcome | float | None:
    """Run one step and turn how it ended into an outcome: a raised error travels as a flag.

    Under several processes every rank must reach the reduce point, also the one whose step
    raised: the session re-raises the error after the reduce, on every rank.
    """
    try:
        return step.run()
    except StopIteration:
        return StepOutcome.exhausted()
    except (Exception, KeyboardInterrupt) as error:
        return StepOutcome.failed(error)


def halts(outcome: StepOutcome | DeferredOutcome | float | None, step: Any, world: int) -> bool:
    """Whether a rank must stop running steps after this outcome, before the decision on it.

    In a test that decides one step late every rank runs the next step before it knows how
    this one ended elsewhere, so a rank whose step failed keeps running (its collectives then
    still match the others') when its step says it can (``step.can_continue``: it failed after
    its gradients were synchronised) and there are others to keep in step; it stops on Ctrl-C,
    on one process, and when no step ran for want of data.
    """
    if not isinstance(outcome, StepOutcome):
        return False
    if outcome.errors:
        return (
            world == 1
            or isinstance(outcome.error, KeyboardInterrupt)
            or not getattr(step, "can_continue", False)
        )
    return outcome.samples == 0 and outcome.out_of_data > 0


def _overlapped(session: RangeTestSession, step: TrainingStep) -> None:
    """Run ``session`` deciding each step one step late: step k+1 runs while k's reduce travels.

    Every rank starts the same steps (the decisions are reduced, the budget is shared) and so
    the same reduces; when a decision stops or raises, the one step already started is waited
    for, and a rank that had stopped running (:func:`halts`) joins that last reduce with an
    empty record, so no collective is left without a peer.
    """
    world = session.reducer.world_size
    pending: Submitted | None = None  # the step started and not decided yet
    halted = owed = interrupted = False  # interrupted: Ctrl-C here, which joins no collective
    try:
        while not session.finished:
            started = None
            ahead = 0 if pending is None else 1
            lr = session.lr_ahead(ahead)
            if lr is not None:
                if halted:
                    owed = world > 1  # the others start this step: its reduce needs this rank
                else:
                    step.set_lr(lr)
                    outcome = run_step(step)
                    halted = halts(outcome, step, world)
                    interrupted = isinstance(outcome, StepOutcome) and isinstance(
                        outcome.error, KeyboardInterrupt
                    )
                    started = session.submit(outcome)
            previous, pending = pending, started
            if previous is not None:
                session.decide(previous)
            elif started is None:  # nothing ran and nothing is pending: cannot happen
                raise RuntimeError("the range test stopped running steps without a decision")
    finally:
        try:
            if pending is not None:
                pending.pending.wait()
            elif owed and not interrupted:
                start_step(session.reducer, StepOutcome()).wait()
        except Exception:  # the decision's error is the one to raise
            log.debug("the step in flight ended with an error", exc_info=True)


def run_range_test(
    step: TrainingStep,
    test: RangeTest,
    *,
    progress: bool = True,
    description: str = "LR range test",
    reducer: Reducer | None = None,
    overlap: bool | None = None,
) -> RangeTestResult:
    """Drive ``test`` with ``step`` until it stops; always restore the state ``step`` saved.

    The state is restored whether the test finished, diverged, raised or was interrupted (the
    exception is re-raised after the restore). Observers (the progress bar, plugins) are told
    about the start, every point and the end. ``reducer`` (default: the step's ``reducer``
    attribute, else a single process) is where several processes agree on each step.
    ``overlap`` (default: the step's ``overlap`` attribute, else off) decides each step one
    step late, so its reduce and loss read overlap the next step; the results are the same,
    the extra step is undone by the restore (so not with ``keep_weights``), and the step must
    never be skipped.

    Example:
        >>> result = run_range_test(my_step, RangeTest(num_iter=100))  # doctest: +SKIP
    """
    session = RangeTestSession(
        test,
        reducer=reducer if reducer is not None else getattr(step, "reducer", None),
        progress=progress,
        description=description,
    )
    late = bool(getattr(step, "overlap", False) if overlap is None else overlap)
    snapshot = step.snapshot()
    try:
        session.start()
        if late:
            _overlapped(session, step)
        else:
            session.drive(step, run_step)
    finally:
        try:
            with deferred_sigint():
                step.restore(snapshot)
        finally:
            close = getattr(snapshot, "close", None)
            if close is not None:
                close()
            result = session.finish()
    return result

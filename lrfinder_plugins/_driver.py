"""The pull driver: a short loop over a :class:`RangeTestSession`, for loops we own.

Snapshot, then ``set_lr(session.next_lr())`` → ``step.run()`` → ``session.end_step(outcome)``
until the session stops, and restore in ``finally``. Every rule (observers, skipped steps, stop
reasons, errors on any rank) is the session's, so a framework's loop that pushes into a session
behaves exactly like this one.
"""

from __future__ import annotations

from lrfinder_plugins._range_test import RangeTest
from lrfinder_plugins._results import RangeTestResult
from lrfinder_plugins._seams import Reducer, StepOutcome, TrainingStep
from lrfinder_plugins._session import RangeTestSession
from lrfinder_plugins._signals import deferred_sigint


def run_step(step: TrainingStep) -> StepOutcome | float | None:
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


def run_range_test(
    step: TrainingStep,
    test: RangeTest,
    *,
    progress: bool = True,
    description: str = "LR range test",
    reducer: Reducer | None = None,
) -> RangeTestResult:
    """Drive ``test`` with ``step`` until it stops; always restore the state ``step`` saved.

    The state is restored whether the test finished, diverged, raised or was interrupted (the
    exception is re-raised after the restore). Observers (the progress bar, plugins) are told
    about the start, every point and the end. ``reducer`` (default: the step's ``reducer``
    attribute, else a single process) is where several processes agree on each step.

    Example:
        >>> result = run_range_test(my_step, RangeTest(num_iter=100))  # doctest: +SKIP
    """
    session = RangeTestSession(
        test,
        reducer=reducer if reducer is not None else getattr(step, "reducer", None),
        progress=progress,
        description=description,
    )
    snapshot = step.snapshot()
    try:
        session.start()
        while not session.finished:
            step.set_lr(session.next_lr())
            session.end_step(run_step(step))
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

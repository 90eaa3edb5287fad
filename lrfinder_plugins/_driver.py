"""The pull driver: runs a :class:`RangeTest` over any training step that follows a protocol."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from lrfinder_plugins._observers import Observers, Point, SearchInfo
from lrfinder_plugins._range_test import RangeTest, StopReason
from lrfinder_plugins._results import RangeTestResult

log = logging.getLogger("lrfinder_plugins")

MAX_SKIPPED_STEPS = 100
"""Consecutive skipped steps (AMP overflow) after which the test stops as ``non_finite``."""


@runtime_checkable
class TrainingStep(Protocol):
    """One optimizer step of the user's training, as the engine sees it.

    ``snapshot()`` saves everything a step can change and ``restore(snapshot)`` puts it back
    bitwise (a snapshot with a ``close()`` method is closed by the driver afterwards).
    ``set_lr(lr)`` sets the swept LR (param groups keep their ratios). ``run()`` runs one
    optimizer step and returns its loss as a float, or ``None`` when the step was skipped (an
    AMP overflow: not a point), and raises ``StopIteration`` when the data ran out. Under DDP,
    ``run()`` returns the loss already reduced across ranks.
    """

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def set_lr(self, lr: float) -> None: ...

    def run(self) -> float | None: ...


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (a restore must not be cut in half).

    A SIGINT that arrives meanwhile is re-delivered once the block is done, to whatever handled
    SIGINT before: Python's default raises KeyboardInterrupt, a custom handler is called, an
    ignored signal stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)


def run_range_test(
    step: TrainingStep,
    test: RangeTest,
    *,
    progress: bool = True,
    description: str = "LR range test",
) -> RangeTestResult:
    """Drive ``test`` with ``step`` until it stops; always restore the state ``step`` saved.

    The state is restored whether the test finished, diverged, raised or was interrupted (the
    exception is re-raised after the restore). Observers (the progress bar, plugins) are told
    about the start, every point and the end.

    Example:
        >>> result = run_range_test(my_step, RangeTest(num_iter=100))  # doctest: +SKIP
    """
    search = SearchInfo(
        kind="lr_range_test",
        total=test.num_iter,
        progress=progress,
        description=description,
        options=test.options(),
    )
    observers = Observers(search)  # before the snapshot: if plugins fail to load, nothing moved
    snapshot = step.snapshot()
    try:
        observers.started()
        _loop(step, test, observers)
    except BaseException:
        test.stop(StopReason.INTERRUPTED)
        raise
    finally:
        try:
            with deferred_sigint():
                step.restore(snapshot)
        finally:
            close = getattr(snapshot, "close", None)
            if close is not None:
                close()
            result = test.result()
            log.info("LR range test: %d points, stopped: %s", len(result), result.stop_reason)
            observers.finished(result)
    return result


def _loop(step: TrainingStep, test: RangeTest, observers: Observers) -> None:
    # The hot path: set the LR, run the user's step, record the loss. Nothing else per point.
    notify = observers.wants_steps
    skipped = 0
    while not test.finished:
        step.set_lr(test.next_lr())
        try:
            loss = step.run()
        except StopIteration:
            test.stop(StopReason.DATA_EXHAUSTED)
            return
        if loss is None:
            skipped += 1
            if skipped >= MAX_SKIPPED_STEPS:
                log.warning("%d consecutive steps skipped (gradient overflow); stopping", skipped)
                test.stop(StopReason.NON_FINITE)
            continue
        skipped = 0
        test.record(loss)
        if notify:
            i = len(test.losses) - 1
            observers.step_recorded(Point(i, test.lrs[i], test.losses[i], test.smoothed_losses[i]))

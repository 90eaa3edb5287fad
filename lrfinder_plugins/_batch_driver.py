"""The batch-size pull driver: a short loop over a :class:`BatchSizeSession`.

A probe is to the batch-size search what a :class:`~lrfinder_plugins.TrainingStep` is to the
range test: the small seam a framework adapter implements (see the ``lrfinder_make_probe``
hook). Out-of-memory errors are classified by the ``lrfinder_is_oom`` hook, so the driver knows
no backend.
"""

from __future__ import annotations

import gc
import inspect
import time

from lrfinder_plugins._batch_search import BatchSizeResult, BatchSizeSearch, NothingFitsError
from lrfinder_plugins._manager import get_plugin_manager
from lrfinder_plugins._seams import BatchProbe, Reducer, TrialReport, first_line, with_seconds
from lrfinder_plugins._session import BatchSizeSession
from lrfinder_plugins._signals import deferred_sigint


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` means "out of memory": the ``lrfinder_is_oom`` hook decides.

    The built-in classifier (torch and the other backends' messages) is a plugin like any other
    (``lrfinder.torch``); without an answer, only ``MemoryError`` counts.

    Example:
        >>> is_oom(MemoryError())
        True
    """
    if not isinstance(error, Exception):
        return False  # KeyboardInterrupt, SystemExit: never a size that does not fit
    verdict = get_plugin_manager().hook.lrfinder_is_oom(error=error)
    if verdict is not None:
        return bool(verdict)
    return isinstance(error, MemoryError)


def run_batch_size_search(
    probe: BatchProbe,
    search: BatchSizeSearch,
    *,
    progress: bool = True,
    description: str = "Batch-size search",
    reducer: Reducer | None = None,
) -> BatchSizeResult:
    """Drive ``search`` with ``probe`` until it stops; restore the state after every trial.

    An out-of-memory error ends its trial (the size does not fit) and the search goes on; any
    other exception is re-raised after the restore. Observers are told about the start, every
    trial and the end. ``reducer`` (default: the probe's ``reducer`` attribute, else a single
    process) is where several processes agree on each trial.

    Raises:
        NothingFitsError: even the smallest size ran out of memory (``error.result`` has the
            trials).

    Example:
        >>> result = run_batch_size_search(my_probe, BatchSizeSearch())  # doctest: +SKIP
    """
    session = BatchSizeSession(
        search,
        reducer=reducer if reducer is not None else getattr(probe, "reducer", None),
        progress=progress,
        description=description,
    )
    measures = accepts_measure(probe)
    snapshot = probe.snapshot()
    # Objects older than the search are left out of the collections a probe runs between
    # trials to free memory: those then cost microseconds instead of a full-heap walk.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        session.start()
        while not session.finished:
            size = session.next_size()
            try:
                measure = session.reads_profile if measures else None
                report = run_trial(probe, size, search.steps_per_trial, measure=measure)
            finally:
                with deferred_sigint():
                    probe.restore(snapshot)
            session.end_trial(size, report)
    finally:
        if freeze:
            gc.unfreeze()
        close = getattr(snapshot, "close", None)
        try:
            if close is not None:
                close()
        finally:
            result = session.finish()
    if result.batch_size is None:
        last = result.trials[-1].error if result.trials else "no trials"
        raise NothingFitsError(
            f"even a batch of {min(t.size for t in result.trials)} ran out of memory ({last}); "
            "use a smaller model or mixed precision",
            result,
        )
    return result


def accepts_measure(probe: BatchProbe) -> bool:
    """Whether ``probe.try_batch_size`` takes the ``measure=`` keyword (see
    :class:`~lrfinder_plugins.spi.BatchProbe`).

    Example:
        >>> class Probe:
        ...     def try_batch_size(self, size, steps, *, measure=True): ...
        >>> accepts_measure(Probe())
        True
    """
    try:
        parameters = inspect.signature(probe.try_batch_size).parameters
    except (TypeError, ValueError):
        return False
    return "measure" in parameters


def run_trial(
    probe: BatchProbe, size: int, steps: int, *, measure: bool | None = None
) -> TrialReport:
    """Run one trial; an out-of-memory error is a report that did not fit, another error a
    report carrying it (so that, under several processes, every rank still reaches the reduce).

    ``measure`` (``None``: not passed) is handed to ``probe.try_batch_size(size, steps,
    measure=...)``: whether the search reads the trial's memory profile.
    """
    start = time.perf_counter()
    error: str | None = None
    try:
        if measure is None:
            report = probe.try_batch_size(size, steps)
        else:
            report = probe.try_batch_size(size, steps, measure=measure)  # type: ignore[call-arg]
    except Exception as exc:
        if not is_oom(exc):
            return TrialReport(fitted=False, steps=0, error=first_line(exc), exception=exc)
        error = first_line(exc)
        report = None
    except KeyboardInterrupt as exc:
        return TrialReport(fitted=False, steps=0, error=first_line(exc), exception=exc)
    # Out of the except block: the error's traceback (and the tensors it pins) is gone.
    seconds = time.perf_counter() - start
    if error is not None:
        return TrialReport(fitted=False, seconds=seconds, error=error)
    return with_seconds(report or TrialReport(), seconds)

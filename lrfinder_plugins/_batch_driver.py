"""The batch-size pull driver: runs a :class:`BatchSizeSearch` over any batch probe.

A probe is to the batch-size search what a :class:`~lrfinder_plugins.TrainingStep` is to the
range test: the small seam a framework adapter implements (see the ``lrfinder_make_probe``
hook). Out-of-memory errors are classified by the ``lrfinder_is_oom`` hook, so the driver knows
no backend.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from lrfinder_plugins._batch_search import (
    BatchSizeResult,
    BatchSizeSearch,
    BatchStopReason,
    NothingFitsError,
)
from lrfinder_plugins._driver import deferred_sigint
from lrfinder_plugins._manager import get_plugin_manager
from lrfinder_plugins._observers import Observers, SearchInfo

log = logging.getLogger("lrfinder_plugins")


@dataclass(frozen=True)
class TrialReport:
    """What a probe measured in one trial (every field optional but ``fitted``).

    Attributes:
        fitted: ``False`` when the probe classified an out-of-memory error itself (it may
            instead raise the error and let the ``lrfinder_is_oom`` hook classify it).
        steps: optimizer steps that completed (default: all when it fitted, else 0).
        peak_bytes: the peak memory, or a mapping from phase name to that phase's peak.
        profile: the memory in use after each operation of one step (for the guided mode).
        capacity_bytes: the memory the peak may reach (device memory or a budget).
        seconds: how long the trial took (default: measured by the driver).
        error: the first line of the out-of-memory error, when it did not fit.
    """

    fitted: bool = True
    steps: int | None = None
    peak_bytes: int | dict[str, int] | None = None
    profile: tuple[int, ...] | None = None
    capacity_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None


@runtime_checkable
class BatchProbe(Protocol):
    """Runs the trials of a batch-size search, as the engine sees it.

    ``snapshot()`` saves everything a trial can change and ``restore(snapshot)`` puts it back
    (it runs after every trial, outside any ``except`` block: the place to free the memory a
    failed trial left; a snapshot with ``close()`` is closed at the end).
    ``try_batch_size(size, steps)`` runs ``steps`` training steps at batch size ``size`` and
    returns ``None`` or a :class:`TrialReport`; when the size does not fit it raises the
    backend's out-of-memory error. An optional ``upper_bound`` attribute caps the sizes tried
    (e.g. the dataset length).
    """

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def try_batch_size(self, size: int, steps: int) -> TrialReport | None: ...


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
) -> BatchSizeResult:
    """Drive ``search`` with ``probe`` until it stops; restore the state after every trial.

    An out-of-memory error ends its trial (the size does not fit) and the search goes on; any
    other exception is re-raised after the restore. Observers are told about the start, every
    trial and the end.

    Raises:
        NothingFitsError: even the smallest size ran out of memory (``error.result`` has the
            trials).

    Example:
        >>> result = run_batch_size_search(my_probe, BatchSizeSearch())  # doctest: +SKIP
    """
    info = SearchInfo(
        kind="batch_size",
        total=search.max_trials,
        progress=progress,
        description=description,
        options=search.options(),
    )
    observers = Observers(info)  # before the snapshot: if plugins fail to load, nothing moved
    snapshot = probe.snapshot()
    # Objects older than the search are left out of the collections a probe runs between
    # trials to free memory: those then cost microseconds instead of a full-heap walk.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        observers.started()
        while not search.finished:
            size = search.next_size()
            try:
                report = _trial(probe, size, search.steps_per_trial)
            finally:
                with deferred_sigint():
                    probe.restore(snapshot)
            _record(search, size, report)
            trial = search.trials[-1]
            log.info(
                "batch size %d %s (%s)",
                trial.size,
                "fits" if trial.fitted else f"does not fit: {trial.error}",
                trial.role,
            )
            observers.trial_recorded(trial)
    except BaseException:
        search.stop(BatchStopReason.INTERRUPTED)
        raise
    finally:
        if freeze:
            gc.unfreeze()
        close = getattr(snapshot, "close", None)
        try:
            if close is not None:
                close()
        finally:
            result = search.result()
            observers.batch_finished(result)
    log.info(
        "batch-size search: %s after %d trials, stopped: %s",
        result.batch_size,
        len(result.trials),
        result.stop_reason,
    )
    if result.batch_size is None:
        last = result.trials[-1].error if result.trials else "no trials"
        raise NothingFitsError(
            f"even a batch of {min(t.size for t in result.trials)} ran out of memory ({last}); "
            "use a smaller model or mixed precision",
            result,
        )
    return result


def _trial(probe: BatchProbe, size: int, steps: int) -> TrialReport:
    start = time.perf_counter()
    error: str | None = None
    try:
        report = probe.try_batch_size(size, steps)
    except Exception as exc:
        if not is_oom(exc):
            raise
        error = _first_line(exc)
        report = None
    # Out of the except block: the error's traceback (and the tensors it pins) is gone.
    seconds = time.perf_counter() - start
    if error is not None:
        return TrialReport(fitted=False, seconds=seconds, error=error)
    report = report or TrialReport()
    return report if report.seconds is not None else replace(report, seconds=seconds)


def _record(search: BatchSizeSearch, size: int, report: TrialReport) -> None:
    extra: dict[str, Any] = {}
    if report.profile is not None:
        extra["profile"] = report.profile
    search.record(
        size,
        report.fitted,
        report.peak_bytes,
        steps=report.steps,
        seconds=report.seconds,
        capacity_bytes=report.capacity_bytes,
        error=report.error,
        **extra,
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]

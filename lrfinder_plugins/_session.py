"""Push sessions: the searches as any loop drives them, ours or a framework's.

A session owns every rule of a search that is not the engine's arithmetic: the observers (and
their isolation), the reduce point between the ranks, skipped steps, stop reasons, the outcome of
an error on any rank, and the finish log. Whoever owns the loop only does::

    session.start()
    while not session.finished:
        set_lr(session.next_lr())           # or: run a trial at session.next_size()
        session.end_step(outcome_of_step)   # one reduce, then the same decision on every rank
    result = session.finish()

A loop that decides one step late (so the reduce and a device's loss read overlap the next
step) uses ``pending = session.submit(outcome)``, runs the next step at
``session.lr_ahead(1)``, then ``session.decide(pending)``.

The pull drivers (:func:`~lrfinder_plugins.run_range_test`,
:func:`~lrfinder_plugins.run_batch_size_search`) are such loops; so are the Lightning callbacks.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lrfinder_plugins._batch_search import BatchSizeResult, BatchSizeSearch, BatchStopReason
from lrfinder_plugins._observers import Observers, Point, SearchInfo
from lrfinder_plugins._range_test import RangeTest, StopReason
from lrfinder_plugins._seams import (
    DeferredOutcome,
    LocalReducer,
    PendingStep,
    Reducer,
    StepOutcome,
    TrainingStep,
    TrialReport,
    note_where,
    raise_failure,
    resolve_outcome,
    start_step,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from lrfinder_plugins._results import RangeTestResult

log = logging.getLogger("lrfinder_plugins")

MAX_SKIPPED_STEPS = 100
"""Consecutive skipped steps (AMP overflow) after which the test stops as ``non_finite``."""

_LOCAL_POINT = StepOutcome(samples=1.0)
"""What :meth:`RangeTestSession.end_step` returns for a bare float on one process."""


@dataclass(slots=True)
class Submitted:
    """A step handed to :meth:`RangeTestSession.submit`: its started reduce, not decided yet."""

    pending: PendingStep
    counted: bool  # the outcome said its samples (a bare float does not)
    decided: bool = False  # decide() took it: a second call would record it twice


def _observers(search: SearchInfo, reducer: Reducer) -> Observers:
    # Files, plots and progress are the main process's job: the other ranks hold the same
    # result, so their observers would only write it again.
    return Observers(search, enabled=reducer.rank == 0)


class RangeTestSession:
    """An LR range test driven from outside: the caller runs the steps, the session decides.

    Args:
        test: the engine (its settings are validated already).
        reducer: where the ranks agree (``None``: a single process).
        progress: show a progress bar (on rank 0).
        description: the progress bar's label.

    Example:
        >>> session = RangeTestSession(RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=3),
        ...                            progress=False)
        >>> session.start()
        >>> while not session.finished:
        ...     lr = session.next_lr()
        ...     _ = session.end_step(1.0 / (1.0 + lr))  # the loss of a step at that LR
        >>> session.finish().stop_reason
        <StopReason.BUDGET: 'budget'>
    """

    def __init__(
        self,
        test: RangeTest,
        *,
        reducer: Reducer | None = None,
        progress: bool = True,
        description: str = "LR range test",
    ) -> None:
        self.test = test
        self.reducer: Reducer = reducer if reducer is not None else LocalReducer()
        self.search = SearchInfo(
            kind="lr_range_test",
            total=test.num_iter,
            progress=progress,
            description=description,
            options=test.options(),
            rank=self.reducer.rank,
            world_size=self.reducer.world_size,
        )
        # Built now, before the caller saves any state: if plugins fail to load, nothing moved.
        self.observers = _observers(self.search, self.reducer)
        self._notify = self.observers.wants_steps
        self._local = type(self.reducer) is LocalReducer
        self._skip_run = 0  # consecutive skipped steps, after the point count _skipped_after
        self._skipped_after = 0
        self.skipped_total = 0
        self.global_batch: float | None = None
        self._started = False
        self._result: RangeTestResult | None = None

    @property
    def finished(self) -> bool:
        """True once the test stopped (budget, divergence, non-finite, no data, outside stop)."""
        return self.test.stop_reason is not None

    @property
    def skipped(self) -> int:
        """How many steps in a row were skipped (AMP overflow) since the last recorded point."""
        return self._skip_run if self._skipped_after == len(self.test.losses) else 0

    def start(self) -> None:
        """Open the reduce point (collective: every rank calls it) and tell the observers.

        Raises:
            RuntimeError: it was started before (a session runs one test).
        """
        if self._started:
            raise RuntimeError(
                "this RangeTestSession was started already; a session runs one test: build a "
                "new one (with a new RangeTest) for another"
            )
        self.reducer.open()
        self._started = True
        self.observers.started()

    @staticmethod
    def _not_started(call: str) -> RuntimeError:
        return RuntimeError(
            f"{call}() before start(): call session.start() first (it opens the reduce point and "
            "tells the observers), then next_lr() and end_step() for each step, then finish()"
        )

    def next_lr(self) -> float:
        """The LR of the next step (the same on every rank)."""
        return self.test.next_lr()

    def lr_ahead(self, ahead: int) -> float | None:
        """The LR of the step ``ahead`` steps after the next one, or ``None`` past the budget.

        For a loop that decides each step one step late (:meth:`submit` / :meth:`decide`): the
        step it starts while ``ahead`` earlier ones are still undecided.
        """
        return self.test.lr_ahead(ahead)

    def submit(self, outcome: StepOutcome | DeferredOutcome | float | None) -> Submitted:
        """Hand in this rank's outcome of a step and start its reduce, without deciding yet.

        The decision comes from :meth:`decide`, called with what this returns, in the same
        order on every rank. Between the two the caller may run the next step (at
        :meth:`lr_ahead` ``(1)``), so the reduce (and a device's loss read) overlaps it; that
        step is undone by the restore when the decision stops the test. Skipped steps (AMP
        overflow) must not happen in this mode: they would have shifted the next step's LR.
        """
        if not self._started:
            raise self._not_started("submit")
        if isinstance(outcome, (StepOutcome, DeferredOutcome)):
            return Submitted(start_step(self.reducer, outcome), True)
        local = StepOutcome.skipped_step() if outcome is None else StepOutcome.of_loss(outcome)
        return Submitted(start_step(self.reducer, local), False)

    def decide(self, submitted: Submitted) -> StepOutcome:
        """Wait for a :meth:`submit`-ted step's reduce and take its decision (as :meth:`end_step`).

        Raises:
            RuntimeError: the step was skipped (an AMP overflow), which a loop that decides
                late cannot undo.
        """
        if submitted.decided:
            raise RuntimeError(
                "decide() was called twice with the same submitted step; decide each step once, "
                "in the order they were submitted"
            )
        submitted.decided = True
        reduced = submitted.pending.wait()
        if reduced.skipped and not (reduced.errors or reduced.non_finite):
            raise RuntimeError(
                "a step was skipped (gradient overflow) while the range test decided each step "
                "one step late; run it with overlap=False when a GradScaler can skip steps"
            )
        return self._decide(reduced, reduced.error, submitted.counted)

    def drive(
        self,
        step: TrainingStep,
        run: Callable[[TrainingStep], StepOutcome | DeferredOutcome | float | None],
    ) -> None:
        """Run ``step`` at each :meth:`next_lr` and :meth:`end_step` its outcome until the test stops.

        ``run`` runs one step and returns its outcome (the driver's ``run_step``). On one
        process with no observer of each step, a finite float is recorded as it comes, as
        :meth:`end_step` records it, without the session's own calls per step: on a small
        step those calls, run after the user's forward, backward and optimizer step have
        filled the caches, cost microseconds each.
        """
        test = self.test
        if self._notify or not self._local:
            while test.stop_reason is None:
                step.set_lr(test.next_lr())
                self.end_step(run(step))
            return
        next_lr, set_lr, record, end_step = test.next_lr, step.set_lr, test.record, self.end_step
        isfinite = math.isfinite
        while test.stop_reason is None:
            set_lr(next_lr())
            outcome = run(step)
            if type(outcome) is float and isfinite(outcome):
                record(outcome)
            else:
                end_step(outcome)

    def end_step(self, outcome: StepOutcome | DeferredOutcome | float | None) -> StepOutcome:
        """Hand in this rank's outcome of the step at :meth:`next_lr`; return every rank's.

        A float is a loss over one sample, ``None`` a skipped step (a
        :class:`~lrfinder_plugins.spi.DeferredOutcome` is read first). After the one reduce, every
        rank records the same point (the sample-weighted mean loss) or skips it, and stops at
        the same step: NaN/Inf anywhere stops all (``non_finite``), no data left anywhere stops
        all (``data_exhausted``), an error anywhere makes every rank raise (its own error on
        the failing rank, :class:`~lrfinder_plugins.RankFailedError` elsewhere).
        """
        if not self._started:
            raise self._not_started("end_step")
        if self._local and type(outcome) is float:
            # The common case, without building a record; a non-finite loss is recorded as NaN,
            # as every reduced outcome records it.
            self._record(outcome if math.isfinite(outcome) else math.nan)
            return _LOCAL_POINT
        counted = True
        if isinstance(outcome, StepOutcome):
            local = outcome
        elif outcome is None:
            local = StepOutcome.skipped_step()
        elif isinstance(outcome, DeferredOutcome):
            local = resolve_outcome(outcome)
        elif isinstance(outcome, numbers.Real) and not isinstance(outcome, bool):
            local, counted = StepOutcome.of_loss(outcome), False  # a float says no samples
        else:
            raise TypeError(
                f"end_step takes a StepOutcome, a DeferredOutcome, a float loss or None (a "
                f"skipped step), got {outcome!r} ({type(outcome).__name__}); pass e.g. "
                "loss.item() or StepOutcome.of_loss(loss.item(), samples)"
            )
        return self._decide(self.reducer.reduce_step(local), local.error, counted)

    def _decide(
        self, reduced: StepOutcome, local_error: BaseException | None, counted: bool
    ) -> StepOutcome:
        """Record (or skip) every rank's reduced step and stop where the rules say."""
        if reduced.errors:
            note_where(local_error, self._where())
            raise_failure(self.reducer, local_error or reduced.error)
        test = self.test
        if reduced.skipped and not reduced.non_finite:
            if self._skipped_after != len(test.losses):  # a point since the last skip: a new run
                self._skipped_after, self._skip_run = len(test.losses), 0
            self._skip_run += 1
            self.skipped_total += 1
            if self.skipped >= MAX_SKIPPED_STEPS:
                log.warning(
                    "%d consecutive steps skipped (gradient overflow); stopping", self.skipped
                )
                test.stop(StopReason.NON_FINITE)
        elif reduced.samples > 0 or reduced.non_finite:
            if counted and self.global_batch is None and reduced.samples > 0:
                self.global_batch = reduced.samples
            self._record(reduced.loss)
        if reduced.out_of_data and not test.finished:
            test.stop(StopReason.DATA_EXHAUSTED)
        return reduced

    def _where(self) -> str:
        """The point of the test a step's error came from, for its note."""
        test = self.test
        ranks = self.reducer.world_size
        batch = (
            ""
            if self.global_batch is None
            else f", batch of {self.global_batch:g} samples"
            + (f" over {ranks} ranks" if ranks > 1 else "")
        )
        step = len(test.losses) + self.skipped_total + 1
        lr = test.next_lr() if not test.finished else math.nan
        return f"in the LR range test at step {step} of {test.num_iter} (LR {lr:.3e}{batch})"

    def _record(self, loss: float) -> None:
        test = self.test
        test.record(loss)
        if self._notify:
            i = len(test.losses) - 1
            self.observers.step_recorded(
                Point(i, test.lrs[i], test.losses[i], test.smoothed_losses[i])
            )

    def stop(self, reason: StopReason | str = StopReason.INTERRUPTED) -> None:
        """End the test from outside (a framework's loop ended, the user interrupted)."""
        self.test.stop(reason)

    def finish(self) -> RangeTestResult:
        """Close the reduce point, log, tell the observers; return the result (idempotent).

        A test that has not stopped yet is stopped as ``interrupted`` (an exception or Ctrl-C
        ended the loop).
        """
        if self._result is not None:
            return self._result
        self.test.stop(StopReason.INTERRUPTED)
        try:
            if self._started:
                self.reducer.close()
        finally:
            result = self.test.result()
            extra: dict[str, Any] = {"world_size": self.reducer.world_size}
            if self.global_batch is not None:
                extra["global_batch"] = round(self.global_batch)
            if self.skipped_total:
                extra["skipped_steps"] = self.skipped_total
            result = replace(result, options={**result.options, **extra})
            self._result = result
            log.info("LR range test: %d points, stopped: %s", len(result), result.stop_reason)
            if self._started:
                self.observers.finished(result)
        return result


class BatchSizeSession:
    """A batch-size search driven from outside: the caller runs the trials, the session decides.

    Args:
        search: the engine.
        reducer: where the ranks agree (``None``: a single process).
        progress: show a progress bar (on rank 0).
        description: the progress bar's label.

    Example:
        >>> session = BatchSizeSession(BatchSizeSearch(mode="power"), progress=False)
        >>> session.start()
        >>> while not session.finished:
        ...     size = session.next_size()
        ...     _ = session.end_trial(size, TrialReport(fitted=size <= 16))
        >>> session.finish().batch_size
        16
    """

    def __init__(
        self,
        search: BatchSizeSearch,
        *,
        reducer: Reducer | None = None,
        progress: bool = True,
        description: str = "Batch-size search",
    ) -> None:
        self.search = search
        self.reducer: Reducer = reducer if reducer is not None else LocalReducer()
        self.info = SearchInfo(
            kind="batch_size",
            total=search.max_trials,
            progress=progress,
            description=description,
            options=search.options(),
            rank=self.reducer.rank,
            world_size=self.reducer.world_size,
        )
        self.observers = _observers(self.info, self.reducer)
        self._started = False
        self._result: BatchSizeResult | None = None

    @property
    def finished(self) -> bool:
        """True once the search stopped."""
        return self.search.finished

    def start(self) -> None:
        """Open the reduce point (collective: every rank calls it) and tell the observers."""
        self.reducer.open()
        self._started = True
        self.observers.started()

    def next_size(self) -> int:
        """The batch size of the next trial (the same on every rank)."""
        return self.search.next_size()

    @property
    def reads_profile(self) -> bool:
        """Whether the search reads the memory profile and peaks of the next trial
        (:attr:`BatchSizeSearch.reads_profile`): where it does not, a loop may run the trial
        without its per-operation memory meter. The same on every rank."""
        return self.search.reads_profile

    def end_trial(self, size: int, report: TrialReport) -> TrialReport:
        """Hand in this rank's report of the trial at ``size``; return every rank's.

        The size fitted only if it fitted on every rank; the largest peak, the smallest
        capacity and the combined profile are recorded, so every rank proposes the same next
        size. An error that is not an out-of-memory error, on any rank, makes every rank raise.
        """
        if not isinstance(report, TrialReport):
            raise TypeError(
                f"end_trial(size, report) takes a TrialReport, got {report!r} "
                f"({type(report).__name__}); pass e.g. TrialReport(fitted=True, steps=3)"
            )
        reduced = self.reducer.reduce_trial(report)
        if reduced.exception is not None:  # a reducer marks a trial that raised on any rank
            note_where(
                report.exception,
                f"in the batch-size search, in trial {len(self.search.trials) + 1} at batch "
                f"size {size}",
            )
            raise_failure(self.reducer, report.exception or reduced.exception)
        self.search.record(
            size,
            reduced.fitted,
            reduced.peak_bytes,
            profile=reduced.profile,
            steps=reduced.steps,
            seconds=reduced.seconds,
            capacity_bytes=reduced.capacity_bytes,
            error=reduced.error,
            timed_steps=reduced.timed_steps,
            timed_seconds=reduced.timed_seconds,
        )
        trial = self.search.trials[-1]
        log.info(
            "batch size %d %s (%s)",
            trial.size,
            "fits" if trial.fitted else f"does not fit: {trial.error}",
            trial.role,
        )
        self.observers.trial_recorded(trial)
        return reduced

    def stop(self, reason: BatchStopReason | str = BatchStopReason.INTERRUPTED) -> None:
        """End the search from outside."""
        self.search.stop(reason)

    def finish(self) -> BatchSizeResult:
        """Close the reduce point, log, tell the observers; return the result (idempotent).

        A search that has not stopped yet is stopped as ``interrupted``.
        """
        if self._result is not None:
            return self._result
        self.search.stop(BatchStopReason.INTERRUPTED)
        try:
            if self._started:
                self.reducer.close()
        finally:
            result = self.search.result()
            result = replace(
                result, options={**result.options, "world_size": self.reducer.world_size}
            )
            self._result = result
            log.info(
                "batch-size search: %s after %d trials, stopped: %s",
                result.batch_size,
                len(result.trials),
                result.stop_reason,
            )
            if self._started:
                self.observers.batch_finished(result)
        return result

"""The seams between the searches and whoever runs them: steps, probes, outcomes, reducers.

Everything an adapter implements or hands in lives here, with no dependency on the rest of the
core: a :class:`TrainingStep` (one optimizer step of an LR range test), a :class:`BatchProbe`
(the trials of a batch-size search), the small records they produce (:class:`StepOutcome`,
:class:`TrialReport`) and the :class:`Reducer` every record goes through before a session
decides. On one process the reducer is the identity (:class:`LocalReducer`); across processes it
is one collective per step or trial (the torch adapter ships one for ``torch.distributed``),
so every rank holds the same record and takes the same decision at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

STEP_FIELDS = ("loss_sum", "samples", "non_finite", "skipped", "out_of_data", "errors")
"""The numbers of a :class:`StepOutcome`, in the order :meth:`StepOutcome.to_vector` packs them.
Every one of them is reduced by a sum: the flags become counts of ranks."""


@dataclass(slots=True)
class StepOutcome:
    """What one optimizer step of one rank produced, or (after a reduce) of every rank together.

    Attributes:
        loss_sum: the step's mean loss times its samples (0 when the loss is not finite).
        samples: how many samples the loss averages (the sum over ranks after a reduce).
        non_finite: ranks whose loss was NaN or infinite.
        skipped: ranks whose step was skipped (an AMP overflow: not a point).
        out_of_data: ranks with no data for the next step (or, with ``samples == 0``, for this
            one).
        errors: ranks whose step raised.
        error: this rank's exception, if its step raised (never reduced: it stays local).
    """

    loss_sum: float = 0.0
    samples: float = 0.0
    non_finite: int = 0
    skipped: int = 0
    out_of_data: int = 0
    errors: int = 0
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of_loss(cls, loss: float, samples: float = 1.0, *, last: bool = False) -> StepOutcome:
        """The outcome of a step whose mean loss was ``loss`` over ``samples`` samples.

        ``last``: the data has no batch left for another step.
        """
        if math.isfinite(loss):
            return cls(loss * samples, samples, out_of_data=int(last))
        return cls(0.0, samples, non_finite=1, out_of_data=int(last))

    @classmethod
    def skipped_step(cls) -> StepOutcome:
        """A step the AMP scaler skipped (gradient overflow)."""
        return cls(skipped=1)

    @classmethod
    def exhausted(cls) -> StepOutcome:
        """No step ran: the data ran out."""
        return cls(out_of_data=1)

    @classmethod
    def failed(cls, error: BaseException) -> StepOutcome:
        """The step raised ``error``."""
        return cls(errors=1, error=error)

    @property
    def loss(self) -> float:
        """The sample-weighted mean loss (NaN when a rank's loss was not finite or none ran)."""
        if self.non_finite or self.samples <= 0:
            return math.nan
        return self.loss_sum / self.samples

    def to_vector(self) -> list[float]:
        """The numbers in :data:`STEP_FIELDS` order (what a collective sums)."""
        return [float(getattr(self, name)) for name in STEP_FIELDS]

    @classmethod
    def from_vector(
        cls, values: Sequence[float], error: BaseException | None = None
    ) -> StepOutcome:
        """Rebuild an outcome from :meth:`to_vector` (e.g. after an all-reduce sum)."""
        loss_sum, samples, *flags = (float(v) for v in values)
        non_finite, skipped, out_of_data, errors = (round(f) for f in flags)
        return cls(loss_sum, samples, non_finite, skipped, out_of_data, errors, error)


@dataclass(frozen=True)
class TrialReport:
    """What a probe measured in one trial (every field optional but ``fitted``).

    Attributes:
        fitted: ``False`` when the trial ran out of memory (the probe classified the error
            itself, or the driver did through the ``lrfinder_is_oom`` hook).
        steps: optimizer steps that completed (default: all when it fitted, else 0).
        peak_bytes: the peak memory, or a mapping from phase name to that phase's peak.
        profile: the memory in use after each operation of one step (for the guided mode).
        capacity_bytes: the memory the peak may reach (device memory or a budget).
        seconds: how long the trial took (default: measured by the driver).
        timed_steps, timed_seconds: the steps and seconds its throughput reads, when they are
            not ``steps`` and ``seconds``: a trial whose last step ran under a memory meter
            times its bare steps only (the meter's cost per operation is not the user's).
        error: the first line of the out-of-memory error, when it did not fit.
        exception: an error that is not an out-of-memory error (local to this rank: the
            search restores the state and raises it; other ranks raise naming this one).
    """

    fitted: bool = True
    steps: int | None = None
    peak_bytes: int | dict[str, int] | None = None
    profile: tuple[int, ...] | None = None
    capacity_bytes: int | None = None
    seconds: float | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    timed_steps: int | None = None
    timed_seconds: float | None = None


def combine_reports(reports: Sequence[TrialReport]) -> TrialReport:
    """One report for a trial that ran on every rank: the rule every reducer applies.

    It fitted only if it fitted everywhere; the fewest completed steps; the largest peak (per
    phase when every rank reports phases); the smallest capacity; the profile as the largest
    value at each operation (when every rank reports one of the same length); the slowest
    rank's seconds (and timed seconds, over the fewest timed steps); the first rank's error line.

    Example:
        >>> combine_reports([TrialReport(peak_bytes=5), TrialReport(fitted=False, peak_bytes=9)])
        TrialReport(fitted=False, steps=0, peak_bytes=9, profile=None, capacity_bytes=None, seconds=None, error=None, timed_steps=None, timed_seconds=None)
    """
    if len(reports) == 1:
        return reports[0]
    fitted = all(r.fitted for r in reports)
    steps = [r.steps for r in reports if r.steps is not None]
    peaks: int | dict[str, int] | None = None
    if all(isinstance(r.peak_bytes, dict) for r in reports):
        keys = set.intersection(*(set(r.peak_bytes) for r in reports))  # type: ignore[arg-type]
        peaks = {k: max(r.peak_bytes[k] for r in reports) for k in sorted(keys)}  # type: ignore[index]
    else:
        flat = [_peak(r.peak_bytes) for r in reports]
        peaks = max((p for p in flat if p is not None), default=None)
    profiles = [r.profile for r in reports]
    profile = None
    if all(profiles) and len({len(p) for p in profiles if p}) == 1:
        profile = tuple(max(values) for values in zip(*profiles))  # type: ignore[misc]
    capacities = [r.capacity_bytes for r in reports if r.capacity_bytes is not None]
    seconds = [r.seconds for r in reports if r.seconds is not None]
    return TrialReport(
        fitted=fitted,
        steps=min(steps) if steps else (None if fitted else 0),
        peak_bytes=peaks,
        profile=profile,
        capacity_bytes=min(capacities, default=None),
        seconds=max(seconds, default=None),
        error=next((r.error for r in reports if r.error), None),
        **_timed(reports),
    )


def _timed(reports: Sequence[TrialReport]) -> dict[str, Any]:
    """The timed part of every rank's report: the fewest steps in the slowest rank's seconds
    (none unless every rank timed a part)."""
    if any(r.timed_steps is None or r.timed_seconds is None for r in reports):
        return {}
    return {
        "timed_steps": min(r.timed_steps for r in reports if r.timed_steps is not None),
        "timed_seconds": max(r.timed_seconds for r in reports if r.timed_seconds is not None),
    }


def _peak(peak: int | dict[str, int] | None) -> int | None:
    if isinstance(peak, dict):
        return max(peak.values(), default=None)
    return peak


@dataclass(frozen=True)
class RankError:
    """An error one rank posted: which rank, and the first line of its exception."""

    rank: int
    message: str


class RankFailedError(RuntimeError):
    """Another rank's step or trial raised; every rank stopped, restored its state and raised.

    The failing rank raises its own exception; the others raise this one, naming it.

    Attributes:
        rank: the rank whose step raised first.
        message: its exception's type and first line.
    """

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(
            f"rank {rank} failed: {message}; every rank stopped and restored its state (the "
            f"full traceback is in rank {rank}'s output)"
        )
        self.rank = rank
        self.message = message


@runtime_checkable
class Reducer(Protocol):
    """The one place where the processes of a search agree: one call per step or trial.

    ``reduce_step(outcome)`` returns the outcome of every rank together (numbers summed, flags
    counted) and ``reduce_trial(report)`` the combined trial (see :func:`combine_reports`), the
    same on every rank; a trial that raised on any rank comes back with an ``exception``. When the local record carries an error, the reducer first posts it where
    the others can read it (``failures()`` lists what was posted, first failure first). It must
    never leave a rank waiting forever: a peer that does not arrive within the reducer's fault
    timeout is an error. ``open()`` and ``close()`` bracket one search (collectively: every rank
    calls them). ``rank`` and ``world_size`` say who this process is.

    Optional: ``start_step(outcome)`` starts a step's reduce and returns a
    :class:`PendingStep` to wait on later, so a search that decides one step late overlaps the
    reduce with the next step (see :func:`start_step`).
    """

    rank: int
    world_size: int

    def open(self) -> None: ...

    def close(self) -> None: ...

    def reduce_step(self, outcome: StepOutcome) -> StepOutcome: ...

    def reduce_trial(self, report: TrialReport) -> TrialReport: ...

    def failures(self) -> list[RankError]: ...


@runtime_checkable
class DeferredOutcome(Protocol):
    """A step's outcome whose numbers may still be in flight (a loss on a GPU, read late).

    ``ready`` says whether :meth:`resolve` would return at once (the numbers are on the host);
    ``resolve()`` waits for them and returns the :class:`StepOutcome`. A step runner returns one
    when its search decides each step one step late (:func:`start_step`), so the read of step
    k's loss waits until step k+1 is queued instead of stalling the device after every step.
    """

    @property
    def ready(self) -> bool: ...

    def resolve(self) -> StepOutcome: ...


class PendingStep(Protocol):
    """A step's reduce that has been started and not waited for (see :func:`start_step`)."""

    def wait(self) -> StepOutcome: ...


def resolve_outcome(outcome: StepOutcome | DeferredOutcome) -> StepOutcome:
    """The numbers of ``outcome``, waiting for them if they are still in flight.

    An error while reading them (a device error surfaces at the first synchronisation) is the
    step's error: the outcome then says the step failed.
    """
    if isinstance(outcome, StepOutcome):
        return outcome
    try:
        return outcome.resolve()
    except Exception as error:
        return StepOutcome.failed(error)


class _ReduceWhenWaited:
    """A pending step of a reducer without ``start_step``: the reduce runs when waited for."""

    __slots__ = ("outcome", "reducer")

    def __init__(self, reducer: Reducer, outcome: StepOutcome | DeferredOutcome) -> None:
        self.reducer, self.outcome = reducer, outcome

    def wait(self) -> StepOutcome:
        return self.reducer.reduce_step(resolve_outcome(self.outcome))


def reduce_when_waited(reducer: Reducer, outcome: StepOutcome | DeferredOutcome) -> PendingStep:
    """A pending step whose reduce (and the read of its numbers) runs only when waited for:
    what :func:`start_step` gives for a reducer without ``start_step``, and what a reducer's
    own ``start_step`` may give for an outcome still on a device."""
    return _ReduceWhenWaited(reducer, outcome)


def start_step(reducer: Reducer, outcome: StepOutcome | DeferredOutcome) -> PendingStep:
    """Start the reduce of one step's ``outcome`` without waiting for it.

    A reducer with a ``start_step(outcome)`` method starts its collective there (e.g. an
    asynchronous all-reduce) and returns what to wait on; any other reducer reduces when
    :meth:`PendingStep.wait` is called. Every rank must start and wait the same steps in the
    same order, as with :meth:`Reducer.reduce_step`.

    Example:
        >>> start_step(LocalReducer(), StepOutcome.of_loss(0.5)).wait().loss
        0.5
    """
    start = getattr(reducer, "start_step", None)
    if start is not None:
        pending: PendingStep = start(outcome)
        return pending
    return reduce_when_waited(reducer, outcome)


class LocalReducer:
    """The reducer of a single process: every record is already the whole story.

    Example:
        >>> LocalReducer().reduce_step(StepOutcome.of_loss(0.5)).loss
        0.5
    """

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        self._failures: list[RankError] = []

    def open(self) -> None:
        """Nothing to set up."""

    def close(self) -> None:
        """Nothing to tear down."""

    def reduce_step(self, outcome: StepOutcome) -> StepOutcome:
        """The outcome itself (its error, if any, is remembered for :meth:`failures`)."""
        if outcome.error is not None:
            self._failures.append(RankError(0, first_line(outcome.error)))
        return outcome

    def reduce_trial(self, report: TrialReport) -> TrialReport:
        """The report itself."""
        if report.exception is not None:
            self._failures.append(RankError(0, first_line(report.exception)))
        return report

    def failures(self) -> list[RankError]:
        """The errors this process posted."""
        return list(self._failures)


def first_line(error: BaseException) -> str:
    """``"TypeName: first line of the message"``, at most 300 characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


NOTE_PREFIX = "lrfinder: raised"
"""How the note :func:`note_where` adds to an error starts (it is added once)."""


def note_where(error: BaseException | None, where: str) -> None:
    """Add a PEP 678 note to ``error`` saying at which point of a search it was raised.

    The exception itself passes through unchanged (same object, type and message); the note
    only appears under its traceback: ``lrfinder: raised in the LR range test at step 12 ...``.
    A note is added once, by the innermost search that saw the error.
    """
    if error is None or isinstance(error, RankFailedError):
        return
    notes = getattr(error, "__notes__", ())
    if any(str(n).startswith(NOTE_PREFIX) for n in notes):
        return
    add_note = getattr(error, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(f"{NOTE_PREFIX} {where}")


def raise_failure(reducer: Reducer, local: BaseException | None) -> None:
    """Raise what a failed step or trial means on this rank (called when a reduce counted errors).

    The first rank that posted an error raises its own exception; every other rank raises a
    :class:`RankFailedError` naming it (chained to its own error, if it had one: typically the
    collective that broke because the failing rank never arrived).
    """
    if isinstance(local, RankFailedError):
        local = None  # a reducer's note that another rank failed: not this rank's own error
    failures = reducer.failures()
    first = failures[0] if failures else None
    if local is not None and (first is None or first.rank == reducer.rank):
        raise local
    if first is None:
        raise RankFailedError(-1, "a rank failed but posted no message")
    raise RankFailedError(first.rank, first.message) from local


@runtime_checkable
class TrainingStep(Protocol):
    """One optimizer step of the user's training, as the engine sees it.

    ``snapshot()`` saves everything a step can change and ``restore(snapshot)`` puts it back
    bitwise (a snapshot with a ``close()`` method is closed by the driver afterwards).
    ``set_lr(lr)`` sets the swept LR (param groups keep their ratios). ``run()`` runs one
    optimizer step and returns its loss as a float, a :class:`StepOutcome` (to say how many
    samples it averaged, or that no batch is left for another step), a
    :class:`DeferredOutcome` (its numbers still on a device, for a search that decides one step
    late), or ``None`` when the step was skipped (an AMP overflow: not a point); it raises
    ``StopIteration`` when the data ran out. An optional ``reducer`` attribute (a
    :class:`Reducer`) makes the search span several processes; an optional ``group_ratios``
    records every param group's LR.
    """

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def set_lr(self, lr: float) -> None: ...

    def run(self) -> float | StepOutcome | DeferredOutcome | None: ...


@runtime_checkable
class BatchProbe(Protocol):
    """Runs the trials of a batch-size search, as the engine sees it.

    ``snapshot()`` saves everything a trial can change and ``restore(snapshot)`` puts it back
    (it runs after every trial, outside any ``except`` block: the place to free the memory a
    failed trial left; a snapshot with ``close()`` is closed at the end).
    ``try_batch_size(size, steps)`` runs ``steps`` training steps at batch size ``size`` and
    returns ``None`` or a :class:`TrialReport`; when the size does not fit it raises the
    backend's out-of-memory error. A ``try_batch_size`` that takes a ``measure`` keyword is
    passed ``measure=session.reads_profile``: ``False`` when the search reads nothing of the
    trial but whether it fitted and the capacity, so the probe may skip its per-operation
    memory meter. Optional attributes: ``upper_bound`` caps the sizes tried
    (e.g. the dataset length), ``reducer`` (a :class:`Reducer`) spans several processes.
    """

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def try_batch_size(self, size: int, steps: int) -> TrialReport | None: ...


def with_seconds(report: TrialReport, seconds: float) -> TrialReport:
    """``report`` with ``seconds`` filled in when the probe did not measure them."""
    return report if report.seconds is not None else replace(report, seconds=seconds)

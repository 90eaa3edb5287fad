"""The batch-size search as a state machine: it proposes batch sizes and is told how they went.

It never touches a model, so any loop can drive it: ``next_size()`` → run a few training steps at
that size → ``record(size, fitted, peak_bytes)``, until ``finished``. The search is a pure
function of the recorded trials, so under DDP every rank takes the same decisions as long as
every rank records the same (reduced) values: ``fitted`` true only if it fitted on every rank,
the largest ``peak_bytes`` and the smallest ``capacity_bytes`` across ranks.

Modes:
    ``"power"``: 2→4→8…: doubles from ``init_val`` until a size runs out of memory; the answer
        is the last size that fitted (Lightning's ``power``).
    ``"binsearch"``: doubles until a size runs out of memory, then bisects between the largest
        size that fitted and the smallest that did not, down to one sample (Lightning's
        ``binsearch``).
    ``"shrink"``: accelerate's ``find_executable_batch_size`` policy: starts at ``init_val`` and,
        after each size that ran out of memory, tries ``shrink(size)`` (default
        ``int(0.9 * size)``) until one fits; that size is the answer (no margin, no growing).
    ``"guided"`` (the default), predict-first: measures the memory in use at every moment of a
        training step at small sizes, fits how each moment grows with the batch
        (:class:`MemoryModel`) and aims straight at ``(1 - margin)`` times the predicted limit.
        It stops there when that size fits and its measured peak matches the prediction
        (``prediction_held``) and it still keeps the margin under the capacity read after it.
        When memory the aim left taken (no tensor: MKL's cached GEMM buffers, a grown heap)
        lowered that reading, the size that keeps the margin under it is run once
        (``verify``: smaller than the aim, so it fits unless memory changed) and answered;
        a peak that misses re-fits the model through the two largest sizes and aims again,
        an out-of-memory aim aims again from the capacity read after the failure, below it.
        After two failed aims, three aims, or when the capacity reading contradicts a size
        that fitted, it doubles and bisects like ``binsearch``, to ``margin / 5`` of the size.
        Without peak or capacity figures it does that from the start.

An out-of-memory trial changes the state of memory (an allocator may keep more address space
after one), so a size that fitted before a failure and a failure after it never form a bracket:
the bracket's lower end fitted after the last failure that preceded its upper end (or after it),
and a size that fitted only before the last failure is run again before it is bisected from or
answered.

Every mode but ``shrink`` ends the same way: the answer is ``(1 - margin)`` times the largest size
not known to fail (the smallest failing size minus one), never more than the largest size that
fitted, and it is always a size that ran successfully for the full ``steps_per_trial`` after the
last out-of-memory trial: when it was not run since, one last trial (``verify``) runs it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lrfinder_plugins import _validate, noise_scale
from lrfinder_plugins._json_file import JsonFile, field_of
from lrfinder_plugins.noise_scale import NoiseScale, Recommendation

MODES = ("guided", "binsearch", "power", "shrink")
"""The search policies ``BatchSizeSearch`` knows, the default first."""

FORMAT = "lrfinder-batch-size"
FORMAT_VERSION = 1

TOLERANCE_SHARE = 0.2
"""The guided mode brackets the limit to ``TOLERANCE_SHARE * margin`` of the size (1% at the
default 5% margin): precise enough that the margin, not the search, decides the answer."""

MATCH_SHARE = 0.01
"""The guided mode's prediction holds when the measured peak lies within ``max(margin / 5,
MATCH_SHARE)`` of the predicted growth (the predicted peak less the peak extrapolated to size 0)
of the predicted peak."""

MAX_AIMS = 3
"""The most trials the guided mode aims from a prediction; after two that ran out of memory it
stops predicting too. Then it doubles and bisects."""

COLLINEAR_TOLERANCE = 0.1
"""How far off (as a share of the peak's growth over three sizes) the memory model, fitted on the
two smaller sizes, may predict the peak at the largest before it is trusted."""


class BatchStopReason(str, enum.Enum):
    """Why a batch-size search ended."""

    LIMIT_FOUND = "limit_found"
    """A size ran out of memory and the limit is bracketed; the answer keeps the margin."""
    PREDICTION_HELD = "prediction_held"
    """The guided mode aimed at ``(1 - margin)`` x the predicted limit, and that size fitted
    with the peak the memory model predicted for it: the answer is that size."""
    MAX_VAL = "max_val"
    """The largest allowed size (``max_val``) fitted."""
    UPPER_BOUND = "upper_bound"
    """A size equal to the upper bound (the dataset length) fitted."""
    MAX_TRIALS = "max_trials"
    """``max_trials`` trials ran; the answer is the best tested size so far."""
    NOTHING_FITS = "nothing_fits"
    """Even a batch of one ran out of memory."""
    INTERRUPTED = "interrupted"
    """An exception or Ctrl-C ended the search (the state was restored, the error re-raised)."""

    def __str__(self) -> str:
        return self.value


class NothingFitsError(RuntimeError):
    """Even a batch of one ran out of memory; ``result`` holds every trial."""

    def __init__(self, message: str, result: BatchSizeResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class BatchTrial:
    """One trial of a batch-size search.

    Attributes:
        size: the batch size tried.
        fitted: ``True`` when every step ran; ``False`` when it ran out of memory (or over the
            memory budget).
        steps: optimizer steps that completed (``steps_per_trial`` when it fitted).
        peak_bytes: the largest memory in use during the trial, where the backend reports it.
        seconds: how long the trial took.
        role: why the search proposed this size: ``"init"``, ``"explore"`` (doubling),
            ``"jump"`` (the guided mode's first aim), ``"predict"`` (a later aim), ``"bisect"``,
            ``"recheck"`` (a size that fitted before the last failure, run again), ``"shrink"``
            or ``"verify"`` (the final answer, run to prove it fits).
        phase_peaks: the peak of each phase (e.g. ``forward_backward``, ``optimizer``), if known.
        capacity_bytes: the memory the peak could have used, if known (device or budget).
        error: the first line of the out-of-memory error, when it did not fit.
        timed_steps, timed_seconds: the steps and seconds :attr:`samples_per_second` reads,
            when not all of them (a trial the search reads runs its last step under the
            adapters' memory meter and times the others only).
    """

    size: int
    fitted: bool
    steps: int
    peak_bytes: int | None = None
    seconds: float | None = None
    role: str = "explore"
    phase_peaks: dict[str, int] = field(default_factory=dict)
    capacity_bytes: int | None = None
    error: str | None = None
    timed_steps: int | None = None
    timed_seconds: float | None = None

    @property
    def samples_per_second(self) -> float | None:
        """The trial's throughput, ``size * steps / seconds`` (per rank under DDP: the slowest
        rank's seconds), for a trial that fitted; ``None`` otherwise. It counts the whole trial
        (first step included), the same way at every size, so it ranks sizes against each
        other. A trial the search reads (:attr:`BatchSizeSearch.reads_profile`) runs its last
        step under the adapters' memory meter, whose cost per operation is not the user's:
        its throughput reads the bare steps only (``timed_steps`` in ``timed_seconds``)."""
        steps, seconds = self.steps, self.seconds
        if self.timed_steps is not None and self.timed_seconds is not None:
            steps, seconds = self.timed_steps, self.timed_seconds
        if not self.fitted or not seconds or seconds <= 0 or steps < 1:
            return None
        return self.size * steps / seconds


@dataclass(frozen=True)
class BatchSizeResult(JsonFile):
    """Everything a batch-size search found.

    Attributes:
        batch_size: the size to train with: it ran successfully for the full
            ``steps_per_trial``. ``None`` only when nothing fitted.
        accumulation_steps: gradient-accumulation steps so that
            ``batch_size * accumulation_steps == target_batch`` (1 without a target).
        trials: every trial, in order.
        stop_reason: why the search ended.
        options: the search's settings (mode, init_val, max_trials, ...).
        noise_scale: the simple gradient noise scale measured at the answer (``None`` when not
            measured: see ``find_batch_size(noise_scale=True)``).
    """

    batch_size: int | None
    accumulation_steps: int
    trials: tuple[BatchTrial, ...]
    stop_reason: BatchStopReason | None
    options: dict[str, Any] = field(default_factory=dict)
    noise_scale: NoiseScale | None = None

    @property
    def throughput(self) -> dict[int, float]:
        """Samples per second by size, over the trials that fitted (the best of each size)."""
        rates: dict[int, float] = {}
        for t in self.trials:
            rate = t.samples_per_second
            if rate is not None:
                rates[t.size] = max(rate, rates.get(t.size, 0.0))
        return dict(sorted(rates.items()))

    @property
    def knee(self) -> int | None:
        """The smallest size whose throughput is within ``options["knee_tolerance"]`` (5% by
        default) of the best measured (see :func:`lrfinder_plugins.noise_scale.throughput_knee`)."""
        tolerance = self.options.get("knee_tolerance", noise_scale.KNEE_TOLERANCE)
        return noise_scale.throughput_knee(self.throughput, tolerance)

    @property
    def recommendation(self) -> Recommendation | None:
        """What to train with and why: ``min(batch_size, B_crit)``, hardware-friendly, with
        the accumulation steps for ``target_batch`` and the LR rule (``None``: nothing fitted)."""
        if self.batch_size is None:
            return None
        target = self.options.get("target_batch")
        return noise_scale.recommend(
            self.batch_size,
            self.noise_scale,
            world_size=self.world_size,
            target_batch=None if target is None else int(target) * self.world_size,
            optimizer=self.options.get("optimizer"),
        )

    @property
    def largest_fit(self) -> int | None:
        """The largest size that fitted below the smallest failing size."""
        return _bracket(self.trials)[0]

    @property
    def smallest_oom(self) -> int | None:
        """The smallest size that ran out of memory (``None`` if none did)."""
        return _bracket(self.trials)[1]

    @property
    def oom_trials(self) -> int:
        """How many trials ran out of memory."""
        return sum(not t.fitted for t in self.trials)

    @property
    def world_size(self) -> int:
        """How many processes searched together (each ran every trial at ``batch_size``)."""
        return int(self.options.get("world_size", 1))

    @property
    def global_batch(self) -> int | None:
        """Samples per optimizer step over every rank: batch size x accumulation x ranks."""
        effective = self.effective_batch
        return None if effective is None else effective * self.world_size

    @property
    def effective_batch(self) -> int | None:
        """``batch_size * accumulation_steps`` (the target batch when one was given)."""
        return None if self.batch_size is None else self.batch_size * self.accumulation_steps

    def plot(self, output_path: Any = None, **options: Any) -> Any:
        """Throughput and ``B_simple`` against batch size (see
        :func:`lrfinder_plugins.plot.plot_batch_size`); returns the figure."""
        from lrfinder_plugins.plot import plot_batch_size

        return plot_batch_size(self, output_path, **options)

    def summary(self) -> str:
        """A short human-readable report: one line per trial, then the answer, the throughput
        and its knee, the noise scale, the recommendation and the LR rule."""
        lines = []
        for i, t in enumerate(self.trials, 1):
            peak = "" if t.peak_bytes is None else f", peak {t.peak_bytes / 2**20:.1f} MiB"
            secs = "" if t.seconds is None else f", {t.seconds:.2f}s"
            outcome = "fits" if t.fitted else "out of memory"
            lines.append(f"  trial {i:2d}: {t.size:6d} {outcome} ({t.role}{peak}{secs})")
        accumulation = (
            f" × {self.accumulation_steps} accumulation steps = {self.effective_batch}"
            if self.accumulation_steps > 1
            else ""
        )
        lines.append(
            f"batch size {self.batch_size}{accumulation} after {len(self.trials)} trials "
            f"({self.oom_trials} out of memory), stopped: {self.stop_reason}"
        )
        rates = self.throughput
        if rates:
            shown = ", ".join(f"{s}: {r:,.0f}" for s, r in rates.items())
            lines.append(f"throughput (samples/s): {shown}; knee at {self.knee}")
        if self.noise_scale is not None:
            lines.append(f"noise scale: {self.noise_scale.describe()}")
        advice = self.recommendation
        if advice is not None:
            accumulation = (
                f" × {advice.accumulation_steps} accumulation steps"
                if advice.accumulation_steps > 1
                else ""
            )
            lines.append(f"recommended: {advice.batch_size}{accumulation}: {advice.reason}")
            lines.append(advice.lr_advice())
        return "\n".join(lines)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        advice = self.recommendation
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "batch_size": self.batch_size,
            "accumulation_steps": self.accumulation_steps,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "options": self.options,
            "trials": [asdict(t) for t in self.trials],
            "noise_scale": None if self.noise_scale is None else self.noise_scale.to_dict(),
            # Derived, for readers of the file (rebuilt from the fields above on load):
            "throughput": {str(size): rate for size, rate in self.throughput.items()},
            "knee": self.knee,
            "recommendation": None if advice is None else asdict(advice),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchSizeResult:
        """Rebuild a result from :meth:`to_dict` output."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a batch-size search result: format={data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported batch-size result version {data.get('version')!r}")
        if "stop_reason" not in data:
            raise ValueError("missing field 'stop_reason' (null or a stop reason)")
        reason = data["stop_reason"]
        batch_size = field_of(data, "batch_size", (int, type(None)), "an int or null")
        accumulation = field_of(data, "accumulation_steps", (int,), "an int >= 1")
        trials = field_of(data, "trials", (list,), "a list of trial objects")
        for i, trial in enumerate(trials):
            if not isinstance(trial, Mapping):
                raise ValueError(f"trials[{i}] must be an object, got {trial!r}")
            for name, kinds in (("size", (int,)), ("fitted", (bool,)), ("steps", (int,))):
                field_of(trial, name, kinds, f"a {kinds[0].__name__} (in trials[{i}])")
        if reason is not None and reason not in {r.value for r in BatchStopReason}:
            raise ValueError(
                "field 'stop_reason' must be null or one of "
                f"{[r.value for r in BatchStopReason]}, got {reason!r}"
            )
        return cls(
            batch_size=batch_size,
            accumulation_steps=accumulation,
            trials=tuple(BatchTrial(**t) for t in trials),
            stop_reason=None if reason is None else BatchStopReason(reason),
            options=dict(data.get("options", {})),
            noise_scale=_noise_scale_of(data.get("noise_scale")),
        )


def _noise_scale_of(data: Any) -> NoiseScale | None:
    return None if data is None else NoiseScale.from_dict(data)


def _bracket(trials: tuple[BatchTrial, ...] | list[BatchTrial]) -> tuple[int | None, int | None]:
    """(F, U): U is the smallest size that ran out of memory; F the largest size below U that
    fitted in a state no failure separates from U's failure: after the last failure before it,
    or later. A size above U that fitted (flaky memory) is not trusted."""
    failures = [i for i, t in enumerate(trials) if not t.fitted]
    if not failures:
        return max((t.size for t in trials), default=None), None
    oom = min(trials[i].size for i in failures)
    largest: int | None = None
    for i in failures:
        if trials[i].size != oom:
            continue
        since = max((k for k in failures if k < i), default=-1)
        for t in trials[since + 1 :]:
            if t.fitted and t.size < oom and (largest is None or t.size > largest):
                largest = t.size
    return largest, oom


def _settled(trials: Sequence[BatchTrial]) -> set[int]:
    """The sizes that fitted after the last out-of-memory trial (all fits, before any)."""
    last = max((i for i, t in enumerate(trials) if not t.fitted), default=-1)
    return {t.size for t in trials[last + 1 :] if t.fitted}


def _shrink_by_a_tenth(size: int) -> int:
    return int(size * 0.9)


def accumulation_for(target_batch: int, largest: int) -> tuple[int, int]:
    """The per-step batch (at most ``largest``) and accumulation steps whose product is exactly
    ``target_batch``, with as few accumulation steps as possible.

    Example:
        >>> accumulation_for(256, 100)
        (64, 4)
        >>> accumulation_for(48, 64)
        (48, 1)
    """
    steps = max(1, -(-target_batch // largest))
    while target_batch % steps:
        steps += 1
    return target_batch // steps, steps


class BatchSizeSearch:
    """The largest batch size that fits, as a sans-I/O state machine.

    Args:
        mode: ``"guided"`` (default), ``"binsearch"`` or ``"power"`` (see the module docs).
        init_val: the first size tried (always: it is honoured on the first trial).
        max_trials: the most trials, fitted or not (Lightning counts only growing steps).
        steps_per_trial: optimizer steps per trial; a size fits only if all of them ran (the
            first optimizer step allocates Adam-style state, so 2 or more is safer).
        max_val: the largest size tried (``None``: no limit).
        margin: the share of the limit kept free, in ``[0, 1)``: the answer is at most
            ``(1 - margin)`` times the largest size not known to fail. It covers what the trials
            did not see (fragmentation, evaluation, longer sequences).
        upper_bound: sizes above it are useless (the dataset length); ``None``: none.
        target_batch: a global batch to keep: the answer is then split into a per-step batch and
            gradient-accumulation steps whose product is exactly ``target_batch``.
        shrink: ``mode="shrink"``'s next size after an out-of-memory one (default: 90% of it).
        knee_tolerance: the share of the best throughput the result's ``knee`` may lose.

    Raises:
        TypeError, ValueError: an argument has the wrong type or value (before anything runs).

    Example:
        >>> search = BatchSizeSearch(mode="binsearch", margin=0.0)
        >>> while not search.finished:
        ...     size = search.next_size()
        ...     search.record(size, fitted=size <= 100)  # the user's trial would go here
        >>> search.result().batch_size
        100
    """

    def __init__(
        self,
        *,
        mode: str = "guided",
        init_val: int = 2,
        max_trials: int = 25,
        steps_per_trial: int = 3,
        max_val: int | None = 8192,
        margin: float = 0.05,
        upper_bound: int | None = None,
        target_batch: int | None = None,
        shrink: Callable[[int], int] | None = None,
        knee_tolerance: float = noise_scale.KNEE_TOLERANCE,
    ) -> None:
        self.mode = _validate.one_of("mode", mode, MODES)
        noise_scale.throughput_knee({}, knee_tolerance)  # validates it
        self.knee_tolerance = float(knee_tolerance)
        if shrink is not None and not callable(shrink):
            raise TypeError(f"shrink must be callable (size -> smaller size), got {shrink!r}")
        if shrink is not None and mode != "shrink":
            raise ValueError(f"shrink= applies to mode='shrink' only, got mode={mode!r}")
        self.shrink = shrink or _shrink_by_a_tenth
        self.init_val = _validate.int_at_least("init_val", init_val, 1)
        self.max_trials = _validate.int_at_least("max_trials", max_trials, 1)
        self.steps_per_trial = _validate.int_at_least("steps_per_trial", steps_per_trial, 1)
        self.max_val = None if max_val is None else _validate.int_at_least("max_val", max_val, 1)
        self.upper_bound = (
            None if upper_bound is None else _validate.int_at_least("upper_bound", upper_bound, 1)
        )
        self.target_batch = (
            None
            if target_batch is None
            else _validate.int_at_least("target_batch", target_batch, 1)
        )
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise TypeError(
                f"margin must be a number in [0, 1), got {margin!r} ({type(margin).__name__}); "
                "pass e.g. margin=0.05"
            )
        if not 0.0 <= margin < 1.0:
            raise ValueError(
                f"margin must be in [0, 1) (the share of the limit kept free), got {margin!r}; "
                "pass e.g. margin=0.05"
            )
        self.margin = float(margin)
        cap = self.cap
        if self.init_val > cap:
            name = "max_val" if cap == self.max_val else "upper_bound (the dataset length)"
            raise ValueError(
                f"init_val={self.init_val} is larger than {name}={cap}; pass init_val <= {cap}"
            )
        self.tolerance = 0.0 if mode == "binsearch" else TOLERANCE_SHARE * self.margin
        self.trials: list[BatchTrial] = []
        self._profiles: dict[int, tuple[int, ...]] = {}
        self.stop_reason: BatchStopReason | None = None
        self._proposal: tuple[int, str] | None = (self.init_val, "init")
        self._final_proposal = False  # the proposal is the answer's verify: nothing reads it
        self._expected: float | None = None  # the peak predicted for the proposed aim
        self._predicted: int | None = None  # the answer, once a prediction held
        self._settling: int | None = None  # the answer under the reading an aim left, run once

    # -- the state machine ---------------------------------------------------------------------
    @property
    def cap(self) -> int:
        """The largest size the search may try (``max_val`` or ``upper_bound``)."""
        bounds = [b for b in (self.max_val, self.upper_bound) if b is not None]
        return min(bounds, default=2**62)

    @property
    def finished(self) -> bool:
        """True once the search stopped."""
        return self.stop_reason is not None

    def next_size(self) -> int:
        """The batch size of the next trial (the same value until :meth:`record` is called)."""
        if self.stop_reason is not None or self._proposal is None:
            raise RuntimeError(f"the batch-size search already stopped ({self.stop_reason})")
        return self._proposal[0]

    @property
    def reads_profile(self) -> bool:
        """Whether the search reads the memory of the trial it proposes (:meth:`next_size`):
        its profile and peaks feed the guided mode's memory model or check its aim.

        Only the guided mode reads them, and only while it may still aim (fewer than
        ``MAX_AIMS`` aims, fewer than two that ran out of memory); a trial proposed to verify
        the answer (or the last of ``max_trials``) is never read. A probe may then run the
        trial without its per-operation meter (see :class:`~lrfinder_plugins.spi.BatchProbe`):
        the fit and the capacity are all the search reads of it. A pure function of the
        recorded trials, so every rank agrees.

        Example:
            >>> BatchSizeSearch(mode="binsearch").reads_profile
            False
            >>> BatchSizeSearch().reads_profile
            True
        """
        if self.mode != "guided" or self._proposal is None or self._final_proposal:
            return False
        aims = self._aims()
        if len(aims) >= MAX_AIMS or sum(not t.fitted for t in aims) >= 2:
            return False
        return self._proposal[1] in ("jump", "predict") or len(self.trials) < self.max_trials - 1

    def record(
        self,
        size: int,
        fitted: bool,
        peak_bytes: int | Mapping[str, int] | None = None,
        *,
        profile: Sequence[int] | None = None,
        steps: int | None = None,
        seconds: float | None = None,
        capacity_bytes: int | None = None,
        error: str | None = None,
        timed_steps: int | None = None,
        timed_seconds: float | None = None,
    ) -> None:
        """Record how the trial of :meth:`next_size` went; may finish the search.

        Args:
            size: the size that ran (must be :meth:`next_size`).
            fitted: whether all ``steps_per_trial`` steps ran without running out of memory.
            peak_bytes: the peak memory of the trial, or a mapping from phase name (e.g.
                ``"forward_backward"``, ``"optimizer"``) to that phase's peak: the guided mode
                fits each phase on its own, since the phase that peaks changes with the size.
            steps: optimizer steps that completed (default: all of them if it fitted, else 0).
            seconds: how long the trial took.
            profile: the memory in use after each operation of one training step (the same
                operations at every size): the guided mode then extrapolates every moment of the
                step, not just the peaks (see :func:`predict_limit`). Kept by the search for its
                decisions, not stored in the result.
            capacity_bytes: the memory the peak may reach (device memory, or a budget), in the
                units of ``profile`` when one is given, else of ``peak_bytes``; the guided mode
                needs it to predict the limit. The latest reading counts.
            error: the first line of the out-of-memory error.
            timed_steps, timed_seconds: the steps its throughput reads and how long they took,
                when not all (see :attr:`BatchTrial.samples_per_second`).
        """
        expected = self.next_size()
        if size != expected:
            raise ValueError(
                f"record(size={size!r}) but the search proposed {expected}; run next_size() "
                "and record that size"
            )
        if not isinstance(fitted, bool):
            raise TypeError(f"fitted must be True or False, got {fitted!r}")
        if steps is None:
            steps = self.steps_per_trial if fitted else 0
        if fitted and steps != self.steps_per_trial:
            raise ValueError(
                f"a size fits only if all steps_per_trial={self.steps_per_trial} steps ran, got "
                f"steps={steps}; record fitted=False, or run every step"
            )
        if profile is not None and fitted:
            self._profiles[size] = tuple(int(v) for v in profile)
        phases: dict[str, int] = {}
        peak: int | None = None
        if isinstance(peak_bytes, Mapping):
            phases = {str(k): int(v) for k, v in peak_bytes.items()}
            peak = max(phases.values(), default=None)
        elif peak_bytes is not None:
            peak = int(peak_bytes)
        assert self._proposal is not None
        trial = BatchTrial(
            size=size,
            fitted=fitted,
            steps=steps,
            peak_bytes=peak,
            seconds=seconds,
            role=self._proposal[1],
            phase_peaks=phases,
            capacity_bytes=None if capacity_bytes is None else int(capacity_bytes),
            error=error,
            timed_steps=timed_steps,
            timed_seconds=timed_seconds,
        )
        self.trials.append(trial)
        self._final_proposal = False
        self._advance()

    def stop(self, reason: BatchStopReason | str) -> None:
        """End the search from outside (interrupted); a no-op once stopped."""
        if self.stop_reason is None:
            self.stop_reason = BatchStopReason(reason)
            self._proposal = None

    def options(self) -> dict[str, Any]:
        """The validated settings, as stored in results and shown to observers."""
        return {
            "mode": self.mode,
            "init_val": self.init_val,
            "max_trials": self.max_trials,
            "steps_per_trial": self.steps_per_trial,
            "max_val": self.max_val,
            "margin": self.margin,
            "upper_bound": self.upper_bound,
            "target_batch": self.target_batch,
            "knee_tolerance": self.knee_tolerance,
        }

    def result(self) -> BatchSizeResult:
        """A frozen copy of the trials so far and the answer (call it once ``finished``)."""
        answer = self._answer()
        size, accumulation = (None, 1) if answer is None else answer
        return BatchSizeResult(
            batch_size=size,
            accumulation_steps=accumulation,
            trials=tuple(self.trials),
            stop_reason=self.stop_reason,
            options=self.options(),
        )

    # -- decisions -----------------------------------------------------------------------------
    def _tested(self, size: int) -> BatchTrial | None:
        return next((t for t in self.trials if t.size == size), None)

    def _final_size(self, largest: int, oom: int | None) -> int:
        """The size to answer with, given the largest fit and the smallest failure."""
        size = largest
        if oom is not None:
            size = min(largest, max(1, math.floor((1.0 - self.margin) * (oom - 1))))
        if self.target_batch is not None:
            size = accumulation_for(self.target_batch, size)[0]
        return size

    def _answer(self) -> tuple[int, int] | None:
        largest, oom = _bracket(self.trials)
        fitted = [t.size for t in self.trials if t.fitted]
        if not fitted or self.stop_reason is BatchStopReason.NOTHING_FITS:
            return None
        if self._predicted is not None:
            size = self._predicted
            fits = [size]
        elif self.mode == "shrink":  # the first size that ran, as accelerate answers
            size = fitted[-1] if largest is None else largest
            fits = [size]
        else:
            if largest is None:  # the budget ran out before a recheck: the best older fit
                largest = max((s for s in fitted if oom is None or s < oom), default=min(fitted))
            wanted = self._final_size(largest, oom)
            # Only a size run since the last failure is answered; an older one only when the
            # budget ran out first, and below the wanted one if it did.
            fits = [s for s in _settled(self.trials) if s <= wanted]
            fits = fits or [s for s in fitted if s <= wanted]
            size = max(fits, default=min(fitted))
        target = self.target_batch
        if target is None:
            return size, 1
        exact = [s for s in fits if target % s == 0]
        if exact:
            return max(exact), target // max(exact)
        return size, -(-target // size)  # the budget ran out: the nearest product above

    def _finish(self, reason: BatchStopReason) -> None:
        self.stop_reason = reason
        self._proposal = None

    def _advance(self) -> None:
        if self.mode == "shrink":
            return self._advance_shrinking()
        largest, oom = _bracket(self.trials)
        if largest is None and oom == 1:
            return self._finish(BatchStopReason.NOTHING_FITS)
        settling, self._settling = self._settling, None
        last = self.trials[-1]
        if settling is not None and last.fitted and last.size == settling:
            self._predicted = settling  # below an aim that fitted, under the reading it left
            return self._finish(BatchStopReason.PREDICTION_HELD)
        answer = self._aim_answer()
        self._expected = None
        if answer == last.size and (largest is None or largest < self.cap):
            self._predicted = last.size
            return self._finish(BatchStopReason.PREDICTION_HELD)
        if answer is not None and answer < last.size and len(self.trials) < self.max_trials:
            if answer in _settled(self.trials):
                self._predicted = answer
                return self._finish(BatchStopReason.PREDICTION_HELD)
            self._settling = answer
            self._proposal = (answer, "verify")
            self._final_proposal = True
            return None
        final = None
        if largest is not None and largest >= self.cap:
            final = (
                BatchStopReason.MAX_VAL if self.cap == self.max_val else BatchStopReason.UPPER_BOUND
            )
        elif largest is not None and oom is not None and self._bracketed(largest, oom):
            final = BatchStopReason.LIMIT_FOUND
        settled = _settled(self.trials)
        if final is not None:
            wanted = self._final_size(largest, oom)  # type: ignore[arg-type]
            if wanted in settled:
                return self._finish(final)
            if len(self.trials) < self.max_trials:  # not run since the last failure: run it
                self._proposal = (wanted, "verify")
                self._final_proposal = True
                return None
        if len(self.trials) >= self.max_trials:
            return self._finish(BatchStopReason.MAX_TRIALS)
        anchor = largest
        if anchor is None and oom is not None:  # only older fits: the best of them
            anchor = max((t.size for t in self.trials if t.fitted and t.size < oom), default=None)
        if anchor is not None and len(self.trials) == self.max_trials - 1:
            wanted = self._final_size(anchor, oom)
            if wanted in settled:  # a last probe could only fail after the answer: stop here
                return self._finish(BatchStopReason.MAX_TRIALS)
            self._proposal = (wanted, "verify")  # spend the last trial on a usable answer
            self._final_proposal = True
            return None
        aim = None if self.mode != "guided" or largest is None else self._aim(largest, oom)
        if aim is not None and aim[0] in settled:  # the model puts the answer on a size run
            self._predicted = aim[0]
            return self._finish(BatchStopReason.PREDICTION_HELD)
        self._proposal = aim or self._propose(largest, oom)
        return None

    def _advance_shrinking(self) -> None:
        last = self.trials[-1]
        if last.fitted:
            return self._finish(BatchStopReason.LIMIT_FOUND)
        if len(self.trials) >= self.max_trials:
            return self._finish(BatchStopReason.MAX_TRIALS)
        smaller = self.shrink(last.size)
        if isinstance(smaller, bool) or not isinstance(smaller, int):
            raise TypeError(f"shrink({last.size}) must return an int, got {smaller!r}")
        if smaller < 1:
            return self._finish(BatchStopReason.NOTHING_FITS)
        if smaller >= last.size:
            raise ValueError(
                f"shrink({last.size}) returned {smaller}: it must return a smaller size"
            )
        self._proposal = (smaller, "shrink")
        return None

    def _bracketed(self, largest: int, oom: int) -> bool:
        if self.mode == "power":
            return True
        return oom - 1 - largest <= math.floor(self.tolerance * largest)

    def _propose(self, largest: int | None, oom: int | None) -> tuple[int, str]:
        if largest is None:
            assert oom is not None
            older = [t.size for t in self.trials if t.fitted and t.size < oom]
            if older and self.mode == "guided" and self._aims():
                # A failed aim: descend to the answer the failure allows (at least 5% below),
                # doubling the step with every failure in a row, down to the older fit.
                streak = next(i for i, t in enumerate(reversed(self.trials)) if t.fitted)
                share = min(max(self.margin, 0.05) * 2.0 ** max(streak - 1, 0), 1.0)
                return max(max(older), math.floor((1.0 - share) * (oom - 1))), "verify"
            if older:  # they fitted before the last failure only: run the largest again
                return max(older), "recheck"
            return max(1, oom // 2), "explore"  # even init_val failed: halve until one fits
        if oom is None:
            return min(2 * largest, self.cap), "explore"
        return (largest + oom) // 2, "bisect"

    def _memory_model(self, oom: int | None) -> MemoryModel | None:
        """The memory model from three fitted sizes below ``oom``, spread out (each at most half
        the next where the trials allow), or ``None`` without enough measurements or when it
        fails its backtest."""
        below = {
            t.size: t
            for t in self.trials
            if t.fitted and t.peak_bytes is not None and (oom is None or t.size < oom)
        }
        sizes = sorted(below, reverse=True)
        chosen = sizes[:1]
        for i, size in enumerate(sizes[1:], start=1):
            if 2 * size <= chosen[-1] or len(sizes) - i <= 3 - len(chosen):
                chosen.append(size)
            if len(chosen) == 3:
                break
        if len(chosen) < 3:
            return None
        points = [below[size] for size in chosen[::-1]]
        profiles = [self._profiles.get(t.size, ()) for t in points]
        phases = set.intersection(*(set(t.phase_peaks) for t in points))
        if all(profiles) and len({len(p) for p in profiles}) == 1:
            moments: Sequence[Sequence[int]] = profiles
        elif phases:
            moments = [[t.phase_peaks[k] for k in sorted(phases)] for t in points]
        else:
            moments = [[t.peak_bytes or 0] for t in points]
        return MemoryModel.fit([t.size for t in points], moments)

    def _aims(self) -> list[BatchTrial]:
        return [t for t in self.trials if t.role in ("jump", "predict")]

    def _aim_answer(self) -> int | None:
        """The answer the last trial's aim allows: its own size when it fitted with the peak
        predicted for it and still keeps the margin under the capacity read after it; a smaller
        size when it fitted with that peak but memory it left taken (no tensor: a grown heap, a
        BLAS library's cached work buffers, a kernel's mappings) lowered the capacity read after
        it, which a training run pays too after its first large step: the size that keeps the
        margin under that reading; ``None``: no aim, or its peak missed."""
        last = self.trials[-1]
        if self.mode != "guided" or self._expected is None or last.role not in ("jump", "predict"):
            return None
        measured = self._measured(last)
        if not last.fitted or measured is None:
            return None
        model = self._local_model(last.size + 1)
        base = 0.0 if model is None else max(0.0, model.peak(0))
        share = max(self.tolerance, MATCH_SHARE)
        if abs(measured - self._expected) > share * max(self._expected - base, 0.0) + 1:
            return None
        capacity = last.capacity_bytes
        if model is None or capacity is None:
            return last.size
        if last.size <= (1.0 - self.margin) * model.limit(capacity) * (1.0 + share) + 1:
            return last.size
        size = self._aim_size(model, capacity, _bracket(self.trials)[1])
        return size if 1 <= size < last.size else None

    def _measured(self, trial: BatchTrial) -> float | None:
        profile = self._profiles.get(trial.size)
        if profile:
            return float(max(profile))
        return None if trial.peak_bytes is None else float(trial.peak_bytes)

    def _aim(self, largest: int, oom: int | None) -> tuple[int, str] | None:
        """Aim at ``(1 - margin)`` x the limit predicted from the latest capacity reading (read
        after the last failure, if any), below any failure (a size that fitted since the last
        failure means the prediction holds there); ``None``: no prediction to trust
        (too few measurements, no reading, a reading that a size which fitted contradicts, or
        the aims are used up), so double and bisect."""
        aims = self._aims()
        if len(aims) >= MAX_AIMS or sum(not t.fitted for t in aims) >= 2:
            return None
        capacity = next((t.capacity_bytes for t in reversed(self.trials) if t.capacity_bytes), None)
        # The first aim needs a model that passed its backtest; later ones extrapolate along
        # the line through the two largest sizes measured, the nearest to the limit.
        model = self._memory_model(oom) if not aims else self._local_model(oom)
        if capacity is None or model is None or model.peak(largest) > capacity:
            return None
        aim = self._aim_size(model, capacity, oom)
        if aim < 1:
            return None
        if aim not in _settled(self.trials):
            self._expected = model.peak(aim)
        return aim, ("predict" if aims else "jump")

    def _aim_size(self, model: MemoryModel, capacity: float, oom: int | None) -> int:
        """``(1 - margin)`` x the limit ``model`` predicts under ``capacity``, below ``oom``, the
        cap and on a divisor of ``target_batch`` (below 1: no size). A model whose peak does not
        grow with the size predicts no limit: then the failure and the cap bound the aim (with
        no ``max_val`` and no ``upper_bound``, nothing does: no size)."""
        bound = (1.0 - self.margin) * model.limit(capacity)
        if oom is not None:
            bound = min(bound, (1.0 - self.margin) * (oom - 1))
        if bound < 1:  # -inf too: a peak above the capacity at any size
            return 0
        if math.isinf(bound) and self.max_val is None and self.upper_bound is None:
            return 0  # nothing bounds the aim (the cap is no size): double and bisect
        aim = self.cap if math.isinf(bound) else min(math.floor(bound), self.cap)
        if self.target_batch is not None and aim >= 1:
            aim = accumulation_for(self.target_batch, aim)[0]
        return aim

    def _local_model(self, below: int | None) -> MemoryModel | None:
        """The line through the two largest measured sizes that fitted below ``below``."""
        points = sorted(
            {
                t.size: t for t in self.trials if t.fitted and (below is None or t.size < below)
            }.values(),
            key=lambda t: t.size,
        )
        moments = [(t.size, self._moments(t)) for t in points]
        moments = [(size, m) for size, m in moments if m]
        if len(moments) < 2:
            return None
        (s1, m1), (s2, m2) = moments[-2:]
        if len(m1) != len(m2):
            m1, m2 = (max(m1),), (max(m2),)
        return MemoryModel(s2, tuple(m2), tuple((b - a) / (s2 - s1) for a, b in zip(m1, m2)))

    def _moments(self, trial: BatchTrial) -> tuple[int, ...]:
        profile = self._profiles.get(trial.size)
        if profile:
            return profile
        if trial.phase_peaks:
            return tuple(trial.phase_peaks[k] for k in sorted(trial.phase_peaks))
        return () if trial.peak_bytes is None else (trial.peak_bytes,)


@dataclass(frozen=True)
class MemoryModel:
    """How memory grows with the batch size, moment by moment, fitted on three sizes.

    ``moments[i]`` holds, for the trial at ``sizes[i]``, the memory in use at each moment of a
    training step: one value per operation (a profile), per phase, or just the peak. The same
    moment is compared across sizes and extrapolated along the line through the two largest
    sizes; the peak at a size is the largest of them, so a moment that is small now but grows
    fast (activations) is caught before it takes over from one that is large but flat (the
    optimizer step, whose state does not depend on the batch).

    Example:
        >>> model = MemoryModel.fit([2, 4, 8], [[1000 + 10 * s, 1200] for s in (2, 4, 8)])
        >>> model.limit(3000), model.peak(100)
        (200.0, 2000.0)
    """

    size: int
    values: tuple[int, ...]
    slopes: tuple[float, ...]

    @classmethod
    def fit(cls, sizes: Sequence[int], moments: Sequence[Sequence[int]]) -> MemoryModel | None:
        """Fit on three ascending sizes; ``None`` unless it passes its backtest: fitted on the two
        smaller sizes, it must predict the peak at the largest within ``COLLINEAR_TOLERANCE`` of
        the peak's growth (else memory does not grow linearly yet: measure a larger size)."""
        (s1, s2, s3), (m1, m2, m3) = sizes, moments
        back = cls(s2, tuple(m2), tuple((b - a) / (s2 - s1) for a, b in zip(m1, m2)))
        growth = max(m3) - max(m1)
        if abs(back.peak(s3) - max(m3)) > COLLINEAR_TOLERANCE * max(growth, 0) + 1:
            return None
        return cls(s3, tuple(m3), tuple((c - b) / (s3 - s2) for b, c in zip(m2, m3)))

    def peak(self, size: float) -> float:
        """The predicted peak at ``size``."""
        return max(v + k * (size - self.size) for v, k in zip(self.values, self.slopes))

    def limit(self, capacity: float) -> float:
        """The largest size whose predicted peak stays within ``capacity``."""
        limits = [
            self.size + (capacity - v) / k if k > 0 else (math.inf if v <= capacity else -math.inf)
            for v, k in zip(self.values, self.slopes)
        ]
        return min(limits, default=math.inf)

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
    ``"guided"`` (the default): measures the memory in use at every moment of a training step
        at small sizes, fits how each moment grows with the batch (:class:`MemoryModel`), jumps
        just below the predicted limit, then verifies: the next size is one ``margin / 5``
        above the largest fit (or the re-predicted limit, from the latest capacity reading,
        while that reading agrees with the trials), so that one out-of-memory trial brackets
        the limit. When the reading contradicts the trials, or two predictions missed, it
        gallops away from the last trial in doubling steps (never further than bisection
        would) until the outcome flips, then bisects. It stops once the limit is bracketed to
        ``margin / 5`` of the size. Without peak or capacity figures it doubles and bisects
        like ``binsearch``, to that same relative precision.

Every mode ends the same way: the answer is ``(1 - margin)`` times the largest size not known to
fail (the smallest failing size minus one), never more than the largest size that fitted, and it
is always a size that ran successfully for the full ``steps_per_trial``: when it was not tried
yet, one last trial runs it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lrfinder_plugins import _validate
from lrfinder_plugins._json_file import JsonFile, field_of

MODES = ("guided", "binsearch", "power", "shrink")
"""The search policies ``BatchSizeSearch`` knows, the default first."""

FORMAT = "lrfinder-batch-size"
FORMAT_VERSION = 1

TOLERANCE_SHARE = 0.2
"""The guided mode brackets the limit to ``TOLERANCE_SHARE * margin`` of the size (1% at the
default 5% margin): precise enough that the margin, not the search, decides the answer."""

COLLINEAR_TOLERANCE = 0.1
"""How far off (as a share of the peak's growth over three sizes) the memory model, fitted on the
two smaller sizes, may predict the peak at the largest before it is trusted."""


class BatchStopReason(str, enum.Enum):
    """Why a batch-size search ended."""

    LIMIT_FOUND = "limit_found"
    """A size ran out of memory and the limit is bracketed; the answer keeps the margin."""
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
            ``"jump"`` (the guided prediction), ``"gallop"``, ``"bisect"`` or ``"verify"`` (the
            final answer, run to prove it fits).
        phase_peaks: the peak of each phase (e.g. ``forward_backward``, ``optimizer``), if known.
        capacity_bytes: the memory the peak could have used, if known (device or budget).
        error: the first line of the out-of-memory error, when it did not fit.
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
    """

    batch_size: int | None
    accumulation_steps: int
    trials: tuple[BatchTrial, ...]
    stop_reason: BatchStopReason | None
    options: dict[str, Any] = field(default_factory=dict)

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

    def summary(self) -> str:
        """A short human-readable report: one line per trial, then the answer."""
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
        return "\n".join(lines)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "batch_size": self.batch_size,
            "accumulation_steps": self.accumulation_steps,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "options": self.options,
            "trials": [asdict(t) for t in self.trials],
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
        )


def _bracket(trials: tuple[BatchTrial, ...] | list[BatchTrial]) -> tuple[int | None, int | None]:
    # U: the smallest size that failed; F: the largest size that fitted below it. A size above U
    # that fitted (flaky memory) is not trusted.
    oom = min((t.size for t in trials if not t.fitted), default=None)
    fits = [t.size for t in trials if t.fitted and (oom is None or t.size < oom)]
    return max(fits, default=None), oom


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
    ) -> None:
        self.mode = _validate.one_of("mode", mode, MODES)
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
        )
        self.trials.append(trial)
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
        if largest is None:
            return None
        if self.mode == "shrink":  # the first size that ran, as accelerate answers
            size = largest
            fits = [size]
        else:
            wanted = self._final_size(largest, oom)
            fits = [t.size for t in self.trials if t.fitted and t.size <= wanted]
            # Only a tested size is ever answered; below the wanted one if the budget ran out.
            size = max(fits, default=min(t.size for t in self.trials if t.fitted))
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
        final = None
        if largest is not None and largest >= self.cap:
            final = (
                BatchStopReason.MAX_VAL if self.cap == self.max_val else BatchStopReason.UPPER_BOUND
            )
        elif largest is not None and oom is not None and self._bracketed(largest, oom):
            final = BatchStopReason.LIMIT_FOUND
        if final is not None:
            wanted = self._final_size(largest, oom)  # type: ignore[arg-type]
            tested = self._tested(wanted)
            if tested is None and len(self.trials) < self.max_trials:
                self._proposal = (wanted, "verify")
                return None
            if tested is not None and tested.fitted:
                return self._finish(final)
            # The verified size failed (memory is not monotone here): search on below it.
        if len(self.trials) >= self.max_trials:
            return self._finish(BatchStopReason.MAX_TRIALS)
        if largest is not None and len(self.trials) == self.max_trials - 1:
            wanted = self._final_size(largest, oom)
            if self._tested(wanted) is None:  # spend the last trial on a usable answer
                self._proposal = (wanted, "verify")
                return None
        self._proposal = self._propose(largest, oom)
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
        if largest is None:  # even init_val failed: halve until something fits
            assert oom is not None
            return max(1, oom // 2), "explore"
        if self.mode == "guided":
            model = self._memory_model(oom)
            if model is not None:
                guided = self._guided(largest, oom, model)
                if guided is not None and self._tested(guided[0]) is None:
                    return guided
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

    def _guided(self, largest: int, oom: int | None, model: MemoryModel) -> tuple[int, str] | None:
        """Probe where the model puts the limit while the capacity reading agrees with the trials;
        otherwise gallop away from the last trial in doubling steps until the outcome flips
        (``None``: bisect instead)."""
        tol = self.tolerance
        top = self.cap if oom is None else min(self.cap, oom - 1)
        if top <= largest:
            return None
        capacity = next((t.capacity_bytes for t in reversed(self.trials) if t.capacity_bytes), None)
        since = [t for t in self.trials if t.role not in ("init", "explore")]
        missed = sum(not t.fitted for t in since if t.role in ("jump", "predict"))
        proven = model.peak(largest)  # what the largest fit is modelled to have used
        refuted = math.inf if oom is None else model.peak(oom)
        if capacity is not None and proven <= capacity < refuted and missed < 2:
            # Never creep: a probe closer than one tolerance above the largest fit becomes the
            # closing probe (if it fails, the limit is bracketed).
            aim = math.floor(model.limit(capacity) * (1.0 - tol / 2.0))
            closing = largest + math.floor(tol * largest) + 1
            return min(max(aim, closing), top), ("predict" if since else "jump")
        if capacity is None and not since:
            return None
        # The reading contradicts the trials, or two predictions missed: gallop, doubling the
        # step, while every trial since the jump went the same way; then bisect.
        outcomes = [t.fitted for t in since]
        if outcomes and any(o != outcomes[-1] for o in outcomes):
            return None
        down = bool(outcomes) and not outcomes[-1]
        k = min(max(len(outcomes) - 1, 0), 30)
        if down:
            assert oom is not None
            size = min(math.floor((oom - 1) / (1.0 + tol * 2**k)), oom - 2**k)
            size = max(size, (largest + oom) // 2)  # never further than bisection would go
        else:
            size = min(largest + (math.floor(tol * largest) + 1) * 2**k, 2 * largest)
            if oom is not None:
                size = min(size, (largest + oom) // 2)
        return min(max(size, largest + 1), top), "gallop"


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

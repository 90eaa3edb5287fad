"""Suggestion methods: pure functions from a range-test result to a suggested LR.

Each is registered by name through the ``lrfinder_register_suggesters`` hook, so
``result.suggestion(method="valley")`` finds built-ins and plugins alike.

Built-in methods:
    ``margin`` (the default): a safety margin below the two LRs where the loss stops improving
        and where it blows up: ``sqrt(lr_min * lr_blowup) / 10**1.35`` on a robustly smoothed
        curve, never above the LR by which the loss made 45% of its descent. Chosen and
        measured on ``benchmarks/suggestion_quality`` (``benchmarks/RESULTS.md``).
    ``valley``: fastai's rule: the longest run of decreasing loss, then a point
        about half-way down it, on fastai's smoothing (EMA 0.98).
    ``steepest``: the steepest descent of a moving-median-smoothed loss per unit of log-LR.
    ``minimum``: the LR at the smoothed loss' minimum, divided by 10 (fastai's ``minimum``).
    ``lightning``: Lightning's ``lr_find().suggestion()``, reproduced on this curve.
    ``torch_lr_finder``: torch-lr-finder's ``plot(suggest_lr=True)`` rule, reproduced.

Every built-in suggestion also carries what the curve itself shows (:func:`analyse_curve`): a
``confidence`` and ``reason`` (a flat, noisy or from-the-start diverging curve has confidence 0,
and ``suggest`` warns with :class:`LowConfidenceWarning`), a usable ``[lower, upper]`` range of
constant LRs, and :meth:`Suggestion.one_cycle`, ``OneCycleLR`` keyword arguments from that range.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import operator
import statistics
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrfinder_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from lrfinder_plugins._results import RangeTestResult

log = logging.getLogger("lrfinder_plugins")

DEFAULT_METHOD = "margin"
SMOOTHING_DECADES = 0.4
"""``margin``'s smoothing half-width in decades of LR (chosen on the benchmark's dev split)."""
MARGIN_DECADES = 1.35
"""``margin``'s safety margin in decades below the geometric mean of the minimum and blow-up."""
FALLBACK_WIDTH_DECADES = 0.81
"""The typical distance (decades) between the smoothed minimum and the blow-up, used when no
descent stands out of the noise."""
LOWER_DECADES = 0.4
"""The usable range's low end: ``lr / 10**LOWER_DECADES``."""
UPPER_DECADES = 0.25
"""The usable range's high end: ``lr * 10**UPPER_DECADES``."""
DESCENT_FRACTION = 0.45
"""``margin`` is never above the LR from which the smoothed loss has made this fraction of its
descent (0 turns the cap off)."""
BUILTIN_PLUGIN = "lrfinder.suggest"
"""The plugin name the built-in methods are registered under."""


class NoSuggestionWarning(UserWarning):
    """The curve has too few usable points for a method to suggest anything."""


class LowConfidenceWarning(NoSuggestionWarning):
    """An LR was suggested, but the curve shows no usable descent (flat, noisy or diverging).

    A subclass of :class:`NoSuggestionWarning`, so one filter silences both.
    """


@dataclass(frozen=True)
class Suggestion:
    """A suggested learning rate.

    Attributes:
        method: the registered name of the method that made it.
        lr: the suggested LR for the reference (largest-LR) param group; NaN when none could be
            made (``reason`` says why).
        index: the recorded point nearest to ``lr`` (in log-LR), or ``None``.
        group_lrs: the suggested LR of every param group (ratios kept).
        reason: empty when all went well, else why the suggestion is missing or weak.
        confidence: how clearly the curve shows a usable descent, from 0 (none: flat, noisy, or
            diverging from the first points) to 1 (the descent is at least 10x the batch-to-batch
            noise); NaN when not assessed (too few points, or a suggestion built by hand). It
            describes the curve, so every method's suggestion on one curve has the same value.
        lower: the low end of the usable range of constant LRs around ``lr`` (NaN: none): the
            curve's band (see :func:`analyse_curve`), placed around this method's own LR, so
            ``lower <= lr <= upper`` for every method.
        upper: the high end of that range.
    """

    method: str
    lr: float
    index: int | None
    group_lrs: tuple[float, ...] = ()
    reason: str = ""
    confidence: float = math.nan
    lower: float = math.nan
    upper: float = math.nan

    @property
    def ok(self) -> bool:
        """True when an LR was suggested (finite and > 0)."""
        return math.isfinite(self.lr) and self.lr > 0

    def one_cycle(self, total_steps: int | None = None, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments for ``torch.optim.lr_scheduler.OneCycleLR``, derived from the curve.

        ``max_lr`` is the usable range's ``upper`` end (a list with one LR per param group, ratios
        kept, when there are several groups); ``div_factor = upper / lower``, so the warm-up
        starts at ``lower``; ``final_div_factor`` is PyTorch's default ``1e4`` (the anneal ends at
        ``lower / 1e4``); ``pct_start=0.3`` and cosine annealing are PyTorch's defaults too.
        ``cycle_momentum=False``: the curve was measured at the optimizer's own momentum, and
        PyTorch's default cycling (0.85 to 0.95) would switch momentum on for plain SGD (a
        ~10x larger step: it wrecked plain-SGD tasks in the benchmark). ``total_steps`` is
        included when given; ``overrides`` replace any of these keys.

        Measured on ``benchmarks/suggestion_quality`` (29 tasks, 87 runs, the default's
        suggestion): mean regret 0.091 against 0.107 at the constant suggested LR, and against
        0.092 for the rule of thumb ``max_lr = 3 x lr`` with PyTorch's other defaults, which
        diverged on 3 runs where this rule diverged on none; so this rule stays the default.

        Raises:
            ValueError: the suggestion has no usable range (``lower``/``upper`` are NaN).

        Example:
            >>> kwargs = result.suggestion().one_cycle(total_steps=1000)  # doctest: +SKIP
            >>> scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **kwargs)  # doctest: +SKIP
        """
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(
                f"the {self.method!r} suggestion has no usable LR range "
                f"({self.reason or 'too few points'}); pick max_lr from the plot"
            )
        ratios = [g / self.lr for g in self.group_lrs] if self.group_lrs and self.ok else [1.0]
        max_lr: float | list[float] = (
            self.upper if len(ratios) == 1 else [self.upper * r for r in ratios]
        )
        kwargs: dict[str, Any] = {
            "max_lr": max_lr,
            "div_factor": self.upper / self.lower,
            "final_div_factor": 1e4,
            "pct_start": 0.3,
            "anneal_strategy": "cos",
            "three_phase": False,
            "cycle_momentum": False,
        }
        if total_steps is not None:
            kwargs["total_steps"] = total_steps
        kwargs.update(overrides)
        return kwargs


Suggester = Callable[..., Suggestion]
"""``suggester(result, **options) -> Suggestion``."""


# -- building blocks (pure, float64) --------------------------------------------------------------
def ema(values: Sequence[float], beta: float, *, count_offset: int = 1) -> list[float]:
    """Bias-corrected exponential moving average: ``avg_t / (1 - beta ** (t + count_offset))``.

    ``count_offset=1`` counts from the first point (correct); Lightning uses 2 (off by one).
    """
    avg, out = 0.0, []
    for t, value in enumerate(values):
        avg = beta * avg + (1.0 - beta) * value
        out.append(avg / (1.0 - beta ** (t + count_offset)))
    return out


def gradient(y: Sequence[float], x: Sequence[float] | None = None) -> list[float]:
    """``numpy.gradient(y, x)`` in pure Python: second-order centred inside, one-sided edges."""
    n = len(y)
    if n < 2:
        raise ValueError("gradient needs at least 2 points")
    xs = list(range(n)) if x is None else list(x)
    out = [(y[1] - y[0]) / (xs[1] - xs[0])]
    for i in range(1, n - 1):
        h0, h1 = xs[i] - xs[i - 1], xs[i + 1] - xs[i]
        out.append(
            (h0 * h0 * y[i + 1] - h1 * h1 * y[i - 1] + (h1 * h1 - h0 * h0) * y[i])
            / (h0 * h1 * (h0 + h1))
        )
    out.append((y[-1] - y[-2]) / (xs[-1] - xs[-2]))
    return out


def argmin(values: Sequence[float]) -> int:
    """Index of the first smallest value."""
    return min(range(len(values)), key=values.__getitem__)


def nearest_index(lrs: Sequence[float], lr: float) -> int:
    """Index of the (first) point whose LR is nearest to ``lr`` in log space.

    O(log n) on a sweep whose LRs never decrease (every built-in schedule), O(n) otherwise.
    """
    target = math.log(lr)

    def distance(i: int) -> float:
        return abs(math.log(lrs[i]) - target)

    n = len(lrs)
    if n > 8 and all(map(operator.le, lrs, itertools.islice(lrs, 1, None))):
        pos = bisect.bisect_left(lrs, lr)
        candidates = [bisect.bisect_left(lrs, lrs[pos - 1])] if pos > 0 else []
        if pos < n:
            candidates.append(pos)
        best = min(candidates, key=distance)
        # Equal distances (equal logs of different LRs) resolve to the first, as a scan would.
        while best > 0 and distance(best - 1) == distance(best):
            best -= 1
        return best
    return min(range(n), key=distance)


def _window(count: int, skip_start: int, skip_end: int) -> range:
    return range(max(skip_start, 0), count - max(skip_end, 0))


def make_suggestion(
    result: RangeTestResult,
    method: str,
    lr: float,
    reason: str = "",
    *,
    analysis: CurveAnalysis | None = None,
) -> Suggestion:
    """Build a :class:`Suggestion` at ``lr`` (nearest point, group LRs) for ``result``.

    What the curve shows (``analysis``, from :func:`analyse_curve` when not given) adds the
    confidence, its reason and the usable ``[lower, upper]`` range.
    """
    if not math.isfinite(lr) or lr <= 0:
        return no_suggestion(result, method, reason or f"the rule gave a non-usable LR {lr!r}")
    if analysis is None:
        analysis = analyse_curve(result)
    notes = [reason] if reason else []
    confidence = lower = upper = math.nan
    if analysis is not None:
        # The range is the analysis' band (its width in decades) centred on *this* method's LR:
        # every method's suggestion lies inside its own range, whichever method the band came from.
        confidence = analysis.confidence
        lower = lr * (analysis.lower / analysis.lr)
        upper = lr * (analysis.upper / analysis.lr)
        notes += [analysis.reason] if analysis.reason else []
    ratios = result.group_ratios
    return Suggestion(
        method=method,
        lr=lr,
        index=nearest_index(result.lrs, lr),
        group_lrs=tuple(lr * r for r in ratios),
        reason="; ".join(notes),
        confidence=confidence,
        lower=lower,
        upper=upper,
    )


def no_suggestion(result: RangeTestResult, method: str, reason: str) -> Suggestion:
    """A missing suggestion: warns with ``reason`` and returns ``lr=nan``."""
    warnings.warn(f"{method}: no LR suggested: {reason}", NoSuggestionWarning, stacklevel=3)
    return Suggestion(method=method, lr=math.nan, index=None, group_lrs=(), reason=reason)


def _finite_points(
    result: RangeTestResult, losses: Sequence[float], window: range
) -> tuple[list[int], list[float]]:
    idx = [i for i in window if math.isfinite(losses[i])]
    return idx, [losses[i] for i in idx]


def _too_few(result: RangeTestResult, method: str, found: int, need: int) -> Suggestion:
    # What helps depends on why the test ended: a longer sweep only if it ran its budget.
    fixes = {
        "data_exhausted": "the data ran out: pass more batches (a DataLoader or list is cycled; "
        "a one-shot iterator is not)",
        "non_finite": f"the loss was NaN or infinite after {found} finite point(s): lower "
        "start_lr (or, for a NaN at small LRs, check the model and loss)",
        "diverged": f"the loss blew up after {len(result)} points: raise num_iter (more points "
        "before the blow-up) or lower start_lr",
    }
    reason = "" if result.stop_reason is None else result.stop_reason.value
    fix = fixes.get(reason, "raise num_iter or widen [start_lr, end_lr]")
    return no_suggestion(
        result,
        method,
        f"only {found} usable point(s) of {len(result)} after skipping the start and end "
        f"(need {need}); {fix}",
    )


# -- what the curve shows (shared by every method) -------------------------------------------
ANALYSIS_MIN_POINTS = 8
"""Finite points needed to read a curve."""
SPARSE_WINDOW_POINTS = 8
"""Below this many points per smoothing window the noise is also read from point-to-point
differences (see :func:`analyse_curve`, step 4): the default 100-point sweep over 8 decades
has about 10."""


@dataclass(frozen=True)
class CurveAnalysis:
    """What a range-test curve shows, read robustly in log-LR (see :func:`analyse_curve`).

    Attributes:
        lr_min: the LR at the lowest smoothed loss.
        lr_blowup: the LR at which the loss blew up, or the last finite point's LR if it never did.
        blew_up: whether the loss blew up (or became non-finite) inside the sweep.
        start_loss: the loss level at the start (median of the first tenth of the points).
        depth: how far the smoothed loss fell below ``start_loss``.
        noise: the batch-to-batch noise: a robust standard deviation (1.4826 x the median
            absolute deviation) of the raw loss around the smoothed curve, up to the blow-up.
        confidence: see :attr:`Suggestion.confidence`.
        reason: why the confidence is low (empty when it is not).
        lr: the ``margin`` suggestion.
        lower: the low end of the usable range of constant LRs.
        upper: the high end of that range.
        lr_descended: the LR from which on the smoothed loss stays ``descent_fraction`` of the
            way down from ``start_loss`` to its lowest, up to ``lr_min`` (``lr_min`` when
            ``depth <= 0``). ``lr`` is never above it when the cap applies:
            ``descent_fraction > 0`` and a descent that stands out of the noise
            (``depth >= 2 * noise``).
    """

    lr_min: float
    lr_blowup: float
    blew_up: bool
    start_loss: float
    depth: float
    noise: float
    confidence: float
    reason: str
    lr: float
    lower: float
    upper: float
    lr_descended: float


def smooth_in_log_lr(
    log_lrs: Sequence[float], losses: Sequence[float], half_width: float, *, max_side: int = 25
) -> list[float]:
    """A running median, then a running mean of it, over the points within ``half_width`` (in
    log-LR units) of each point: spikes are dropped, then the steps are evened out.

    The window always holds at least one neighbour on each side (where there is one) and at most
    ``max_side``, so dense sweeps stay fast.
    """
    n, lo, hi = len(log_lrs), 0, 0
    windows: list[tuple[int, int]] = []
    for i, x in enumerate(log_lrs):
        while x - log_lrs[lo] > half_width + 1e-12:
            lo += 1
        hi = max(hi, i)
        while hi + 1 < n and log_lrs[hi + 1] - x <= half_width + 1e-12:
            hi += 1
        first = min(max(lo, i - max_side), max(i - 1, 0))
        last = max(min(hi, i + max_side), min(i + 1, n - 1))
        windows.append((first, last + 1))
    medians = _running_medians(losses, windows)
    return [statistics.fmean(medians[a:b]) for a, b in windows]


def _running_medians(values: Sequence[float], windows: Sequence[tuple[int, int]]) -> list[float]:
    """``statistics.median(values[a:b])`` for each window, the windows' ends never moving back:
    one sorted window updated by bisection (O(n w) moves of a short list, not n sorts); the
    same numbers, bit for bit (the middle value, or the mean of the two middle ones)."""
    window: list[float] = []
    a0 = b0 = 0
    out: list[float] = []
    for a, b in windows:
        if a >= b0 or a < a0 or b < b0:  # not a forward slide: start the window afresh
            window = sorted(values[a:b])
        else:
            for k in range(a0, a):
                del window[bisect.bisect_left(window, values[k])]
            for k in range(b0, b):
                bisect.insort(window, values[k])
        a0, b0 = a, b
        m = len(window)
        half = m // 2
        out.append(window[half] if m % 2 else (window[half - 1] + window[half]) / 2)
    return out


def _finite_indices(result: RangeTestResult) -> list[int]:
    """The indices of the points with a finite loss."""
    return [i for i, x in enumerate(result.losses) if math.isfinite(x)]


_ANALYSES: dict[int, tuple[Any, tuple[Any, ...], CurveAnalysis | None]] = {}
"""The latest analyses, by result: every method's suggestion reads the same one."""
_ANALYSES_KEPT = 8


def analyse_curve(
    result: RangeTestResult,
    *,
    smoothing_decades: float = SMOOTHING_DECADES,
    margin_decades: float = MARGIN_DECADES,
    fallback_width_decades: float = FALLBACK_WIDTH_DECADES,
    lower_decades: float = LOWER_DECADES,
    upper_decades: float = UPPER_DECADES,
    descent_fraction: float = DESCENT_FRACTION,
) -> CurveAnalysis | None:
    """Read a curve robustly: its minimum, its blow-up, its noise, and what they suggest.

    Computed once per result and settings, and shared (the result is immutable): every
    method's suggestion, ``suggestions()`` and the plot read the same analysis. The steps:

    Works on the finite raw losses against ``log10(lr)``:

    1. Smooth: :func:`smooth_in_log_lr` over +-``smoothing_decades``. (Once the blow-up is
       found, steps 1-2 are redone on the points up to it, so what follows cannot shift them.)
    2. ``start_loss`` is the median of the first tenth of the points (at least 3); the lowest
       smoothed loss sits at ``lr_min``; ``depth`` is how far it lies below ``start_loss``.
    3. The loss *blew up* at the first point past ``lr_min`` whose 3-point median rises above the
       lowest loss by more than ``4 * |lowest|`` (the engine's default 5x rule; ``2 * depth`` when
       the lowest loss is 0); without one, ``lr_blowup`` is the last finite point's LR.
    4. ``noise`` is the robust spread of the raw loss around the smoothed curve up to there
       (on a sparse sweep, under :data:`SPARSE_WINDOW_POINTS` points per window, at least the
       spread of its point-to-point differences over ``sqrt(2)``).
    5. The suggestion is ``sqrt(lr_min * lr_blowup) / 10**margin_decades``; when no descent
       stands out of the noise (``depth < 2 * noise``), ``lr_min`` is unreliable and is replaced
       by ``lr_blowup / 10**fallback_width_decades`` (the typical distance between the two).
       It is never above ``lr_descended``: the LR from which the smoothed loss stays
       ``descent_fraction`` of the way down its descent (up to ``lr_min``; no cap where no
       descent stands out of the noise, which the blow-up alone reads). On a bounded loss
       that never blows up by the 5x rule (a few-class cross-entropy that climbs back to its
       start, as fine-tuning a pre-trained backbone does), the blow-up is read at the sweep's
       last LR, decades too far, and this cap keeps the suggestion on the descent.
    6. The usable range is ``[lr / 10**lower_decades, lr * 10**upper_decades]``.
    7. ``confidence`` is 0 when the loss blows up within the first 8 points or is lowest in the
       first tenth and clearly higher later (diverging from the first points), or when no
       descent stands out of the noise (flat or noisy); otherwise
       ``min(1, (depth / noise - 2) / 8)``, halved when the loss was still falling at the last LR.

    The constants were chosen on 6 of the first 12 tasks of ``benchmarks/suggestion_quality``
    and confirmed on the other 6 (``benchmarks/suggestion_quality/select.py``): the smoothing
    width and ``margin_decades`` kept the dev tasks' mean regret of constant-LR training at the
    suggestion lowest even 0.2 decade off; ``fallback_width_decades`` is the dev median distance
    between ``lr_min`` and ``lr_blowup``; at ``lower`` and ``upper``, 80% of issue 3's dev runs
    trained with a regret of at most 0.1 (on the grown suite, with the cap: 77% at ``lower``,
    87% at ``upper``). On the suite grown to 29 tasks in 9 families they are
    measured held out (a confirm split and leave-one-family-out, ``benchmarks/RESULTS.md``):
    without the cap they fail on fine-tuning a pre-trained backbone on a small dataset
    (suggested 5-12x too high), and ``descent_fraction`` was added for it. Since session 24 the
    smoothing width, margin, fallback width and fraction are chosen together on the grown
    suite's dev split (``benchmarks/suggestion_quality/selection.py``): margin 1.35 decades,
    fallback 0.81, fraction 0.45 (before: 1.4, 0.73 and 0.4, the fraction chosen after the
    rest).

    Returns:
        The analysis, or ``None`` when fewer than :data:`ANALYSIS_MIN_POINTS` finite points.

    Raises:
        ValueError: ``descent_fraction`` is outside ``[0, 1]``.
    """
    if not 0.0 <= descent_fraction <= 1.0:
        raise ValueError(
            f"descent_fraction must be in [0, 1] (the share of the descent the loss must have "
            f"made by the suggestion; 0 turns the cap off), got {descent_fraction!r}"
        )
    settings = (
        len(result.losses),
        smoothing_decades,
        margin_decades,
        fallback_width_decades,
        lower_decades,
        upper_decades,
        descent_fraction,
    )
    cached = _ANALYSES.get(id(result))
    if cached is not None and cached[0]() is result and cached[1] == settings:
        return cached[2]
    analysis = _analyse_curve(result, *settings[1:])
    if len(_ANALYSES) >= _ANALYSES_KEPT:
        _ANALYSES.pop(next(iter(_ANALYSES)))
    _ANALYSES[id(result)] = (weakref.ref(result), settings, analysis)
    return analysis


def _analyse_curve(
    result: RangeTestResult,
    smoothing_decades: float,
    margin_decades: float,
    fallback_width_decades: float,
    lower_decades: float,
    upper_decades: float,
    descent_fraction: float,
) -> CurveAnalysis | None:
    kept = _finite_indices(result)
    count = len(kept)
    if count < ANALYSIS_MIN_POINTS:
        return None
    lrs = [result.lrs[i] for i in kept]
    xs = [math.log10(lr) for lr in lrs]
    ys = [result.losses[i] for i in kept]
    smoothed = smooth_in_log_lr(xs, ys, smoothing_decades)
    head = max(3, count // 10)
    start = statistics.median(ys[:head])
    i_min = argmin(smoothed)
    lowest = smoothed[i_min]
    depth = start - lowest
    # The engine's default stop rule (5x the best), or twice the descent for a loss whose best is 0.
    rise = 4.0 * abs(lowest) if lowest else (2.0 * depth if depth > 0 else math.inf)
    above = (
        j for j in range(i_min + 1, count) if statistics.median(ys[j - 1 : j + 2]) > lowest + rise
    )
    i_blowup = next(above, None)
    if i_blowup is not None:
        # Read the minimum again on the points up to the blow-up only, so what the sweep did
        # after it (stopped at once, or ran on to end_lr) cannot shift it through the smoothing.
        smoothed = smooth_in_log_lr(xs[: i_blowup + 1], ys[: i_blowup + 1], smoothing_decades)
        i_min = argmin(smoothed)
        lowest = smoothed[i_min]
        depth = start - lowest
    stopped = result.stop_reason in ("diverged", "non_finite")
    blew_up = i_blowup is not None or not math.isfinite(result.losses[-1]) or stopped
    i_edge = count - 1 if i_blowup is None else i_blowup
    noise = 1.4826 * statistics.median(abs(ys[j] - smoothed[j]) for j in range(i_edge + 1))
    span = xs[-1] - xs[0]
    window = 2.0 * smoothing_decades * (count - 1) / span + 1.0 if span > 0 else count
    if window < SPARSE_WINDOW_POINTS and i_edge >= 2:
        # A sparse sweep (num_iter=30 over 8 decades: 3 points per window) smooths so little
        # that the smoothed curve follows the noise and its residuals understate it (pure noise
        # then looked like a confident descent); point-to-point differences do not depend on
        # the window (the descent's own steps are too few to move their median).
        steps = (abs(ys[j + 1] - ys[j]) for j in range(i_edge))
        noise = max(noise, 1.4826 * statistics.median(steps) / math.sqrt(2.0))
    ratio = depth / noise if noise > 0 else (math.inf if depth > 0 else 0.0)
    later = statistics.median(smoothed[len(smoothed) // 2 :])
    notes: list[str] = []
    x_low = xs[i_min]
    if i_blowup is not None and i_blowup < ANALYSIS_MIN_POINTS:
        confidence = 0.0
        notes.append(
            f"no usable descent: the loss blows up after only {i_blowup + 1} points (at "
            f"{lrs[i_blowup]:.2e}); lower start_lr, or sweep with mode='exponential', which "
            "spends more points at low LRs"
        )
    elif i_min < head and later - lowest > 2.0 * noise and later > lowest:
        confidence = 0.0
        notes.append(
            f"no usable descent: the loss rises from the first points (lowest at "
            f"{lrs[i_min]:.2e}); start_lr is already too high, rerun with a smaller one"
        )
    elif ratio < 2.0:
        confidence = 0.0
        x_low = xs[i_edge] - fallback_width_decades
        if blew_up:
            notes.append(
                f"no usable descent: the loss falls only {max(ratio, 0.0):.1f}x its batch-to-batch "
                "noise before it blows up; use larger batches, a val_loader or more points "
                "(num_iter); the LR is read from the blow-up alone"
            )
        else:
            notes.append(
                "no usable descent: the loss stays flat over the sweep; check that the model "
                "trains (requires_grad, the optimizer's params) or widen [start_lr, end_lr]"
            )
    else:
        confidence = min(1.0, (ratio - 2.0) / 8.0)
    if confidence > 0 and not blew_up and i_min >= count - 3:
        confidence /= 2
        notes.append(
            f"the loss was still falling at the last LR ({lrs[-1]:.2e}); raise "
            "end_lr to see where it blows up"
        )
    centre = (x_low + xs[i_edge]) / 2 - margin_decades
    # The first point, at or before the lowest, from which on the smoothed loss stays at or
    # below the level it reaches after ``descent_fraction`` of its descent.
    j = i_min
    if depth > 0:
        level = start - descent_fraction * depth
        while j > 0 and smoothed[j - 1] <= level:
            j -= 1
    if descent_fraction > 0 and depth > 0 and ratio >= 2.0:
        # Only where the descent stands out of the noise: no descent, or one the noise hides
        # (read from the blow-up alone), has no fraction of it to read.
        centre = min(centre, xs[j])
    return CurveAnalysis(
        lr_min=lrs[i_min],
        lr_blowup=lrs[i_edge],
        blew_up=blew_up,
        start_loss=start,
        depth=depth,
        noise=noise,
        confidence=confidence,
        reason="; ".join(notes),
        lr=10.0**centre,
        lower=10.0 ** (centre - lower_decades),
        upper=10.0 ** (centre + upper_decades),
        lr_descended=lrs[j],
    )


# -- the methods ---------------------------------------------------------------------------------
def margin(
    result: RangeTestResult,
    *,
    smoothing_decades: float = SMOOTHING_DECADES,
    margin_decades: float = MARGIN_DECADES,
    fallback_width_decades: float = FALLBACK_WIDTH_DECADES,
    descent_fraction: float = DESCENT_FRACTION,
) -> Suggestion:
    """The default: a safety margin below where the loss stops improving and where it blows up.

    ``sqrt(lr_min * lr_blowup) / 10**margin_decades`` (about / 22) on a robustly smoothed curve,
    never above the LR by which the loss has made ``descent_fraction`` of its descent (see
    :func:`analyse_curve` for every step). The lowest loss alone comes late on clean curves
    and lands anywhere on noisy ones; the blow-up alone ignores where the loss stopped improving;
    on the benchmark's dev tasks their geometric mean tied the lowest loss alone on mean regret
    and had the smallest worst case, and the margin keeps the suggestion at least 22x below the
    blow-up. Measured against Lightning, torch-lr-finder,
    fastai, Prodigy and schedule-free AdamW in ``benchmarks/RESULTS.md``.

    Example:
        >>> result.suggestion("margin").lr  # doctest: +SKIP
        0.0021
    """
    analysis = analyse_curve(
        result,
        smoothing_decades=smoothing_decades,
        margin_decades=margin_decades,
        fallback_width_decades=fallback_width_decades,
        descent_fraction=descent_fraction,
    )
    if analysis is None:
        return _too_few(result, "margin", len(_finite_indices(result)), ANALYSIS_MIN_POINTS)
    return make_suggestion(result, "margin", analysis.lr, analysis=analysis)


def longest_decreasing_run(losses: Sequence[float]) -> tuple[int, int]:
    """fastai's valley bounds ``(start, end)`` over ``losses``, in O(n log n).

    fastai computes, for each point, the longest strictly decreasing subsequence ending there
    (an O(n^2) double loop) and keeps the first point where a new longest one ends: ``end`` is
    the first index whose run has the greatest length ``L``, and ``start = end - L`` (index
    arithmetic, as fastai does; ``(0, 0)`` when nothing decreases). The run lengths are the
    longest strictly increasing subsequence of the negated losses, which patience sorting finds
    with a binary search per point; the bounds are the same as the double loop's (checked
    against it by a property test).

    Example:
        >>> longest_decreasing_run([5.0, 4.0, 6.0, 3.0, 2.0])
        (0, 4)
    """
    tails: list[float] = []  # tails[k]: the smallest last -loss of an increasing run of k + 1
    best_len, best_end = 1, 0
    for i, loss in enumerate(losses):
        x = -loss
        k = bisect.bisect_left(tails, x)
        if k == len(tails):
            tails.append(x)
        else:
            tails[k] = x
        if k + 1 > best_len:
            best_len, best_end = k + 1, i
    return (0, 0) if best_len == 1 else (best_end - best_len, best_end)


def valley(result: RangeTestResult, *, beta: float = 0.98) -> Suggestion:
    """fastai's ``valley``: the longest decreasing run of the smoothed loss, about half-way down it.

    fastai smooths with a bias-corrected EMA (``beta=0.98``), keeps points
    ``[num_iter // 10 : -5]``, finds the longest strictly decreasing subsequence and returns the
    point ``start + int(len / 3) + int(len / 6)`` of it.
    """
    smoothed = ema(result.losses, beta)
    skip = int(result.options.get("num_iter", len(result))) // 10
    idx, losses = _finite_points(result, smoothed, _window(len(result), skip, 5))
    if len(idx) < 2:
        return _too_few(result, "valley", len(idx), 2)
    best_start, best_end = longest_decreasing_run(losses)
    sections = (best_end - best_start) / 3
    pick = best_start + int(sections) + int(sections / 2)
    return make_suggestion(result, "valley", result.lrs[idx[pick]])


def minimum(result: RangeTestResult, *, beta: float = 0.98, divisor: float = 10.0) -> Suggestion:
    """fastai's ``minimum``: the LR at the smoothed loss' minimum, divided by ``divisor``."""
    smoothed = ema(result.losses, beta)
    skip = int(result.options.get("num_iter", len(result))) // 10
    idx, losses = _finite_points(result, smoothed, _window(len(result), skip, 5))
    if not idx:
        return _too_few(result, "minimum", 0, 1)
    return make_suggestion(result, "minimum", result.lrs[idx[argmin(losses)]] / divisor)


def steepest(
    result: RangeTestResult, *, window: int = 5, skip_start: int | None = None, skip_end: int = 5
) -> Suggestion:
    """The steepest descent of the loss per unit of log-LR.

    The raw losses are smoothed by a centred moving median of ``window`` points (robust to the
    spikes a mean would smear), then differentiated against ``log(lr)``; the first 10% of the
    planned points (``skip_start``) and the last ``skip_end`` are ignored.
    """
    count = len(result)
    raw = result.losses
    if skip_start is None:
        skip_start = int(result.options.get("num_iter", count)) // 10
    half = max(window, 1) // 2
    # Each finite point's window is taken around its own index (non-finite neighbours left out),
    # so a NaN in the middle does not shift the later points onto their neighbours' LRs.
    smoothed = [
        statistics.median(x for x in raw[max(0, i - half) : i + half + 1] if math.isfinite(x))
        if math.isfinite(raw[i])
        else math.nan
        for i in range(count)
    ]
    idx, losses = _finite_points(result, smoothed, _window(count, skip_start, skip_end))
    if len(idx) < 3:
        return _too_few(result, "steepest", len(idx), 3)
    slopes = gradient(losses, [math.log(result.lrs[i]) for i in idx])
    return make_suggestion(result, "steepest", result.lrs[idx[argmin(slopes)]])


def lightning(result: RangeTestResult, *, skip_begin: int = 10, skip_end: int = 1) -> Suggestion:
    """Lightning's ``_LRFinder.suggestion()`` reproduced on this curve.

    Lightning smooths with an EMA (``beta=0.98``) whose bias correction counts from 2 at the first
    point, drops non-finite points in ``[skip_begin:-skip_end]``, differentiates against the LR
    itself (``torch.gradient(losses, spacing=[lrs])``) and takes the minimum. (Lightning computes
    in float32; this uses float64, which can differ only on exact ties.)
    """
    smoothed = ema(result.losses, 0.98, count_offset=2)
    idx, losses = _finite_points(result, smoothed, _window(len(result), skip_begin, skip_end))
    if len(idx) < 2:
        return _too_few(result, "lightning", len(idx), 2)
    slopes = gradient(losses, [result.lrs[i] for i in idx])
    return make_suggestion(result, "lightning", result.lrs[idx[argmin(slopes)]])


def torch_lr_finder(
    result: RangeTestResult, *, skip_start: int = 10, skip_end: int = 5, smooth_f: float = 0.05
) -> Suggestion:
    """torch-lr-finder's rule reproduced: its smoothing, then ``np.gradient(losses).argmin()``.

    torch-lr-finder smooths as ``s_t = smooth_f * loss_t + (1 - smooth_f) * s_{t-1}`` (``s_0`` is
    the first loss), keeps ``[skip_start:-skip_end]`` and differentiates against the point index.
    """
    smoothed: list[float] = []
    for value in result.losses:
        # As torch-lr-finder: smooth_f=0 means no smoothing (not "keep the first loss forever").
        if smoothed and smooth_f > 0:
            value = smooth_f * value + (1 - smooth_f) * smoothed[-1]
        smoothed.append(value)
    window = _window(len(result), skip_start, skip_end)
    losses = [smoothed[i] for i in window]
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        finite = sum(math.isfinite(x) for x in losses)
        return _too_few(result, "torch_lr_finder", finite, 2)
    return make_suggestion(result, "torch_lr_finder", result.lrs[window[argmin(gradient(losses))]])


BUILTIN: Mapping[str, Suggester] = {
    "lightning": lightning,
    "margin": margin,
    "minimum": minimum,
    "steepest": steepest,
    "torch_lr_finder": torch_lr_finder,
    "valley": valley,
}


@hookimpl
def lrfinder_register_suggesters() -> Mapping[str, Suggester]:
    """Register the built-in suggestion methods."""
    return BUILTIN


def registered() -> dict[str, Suggester]:
    """Every registered suggestion method (built-ins and plugins), by name."""
    from lrfinder_plugins._manager import collect_registry

    return collect_registry("lrfinder_register_suggesters")


def suggest(result: RangeTestResult, method: str | None = None, **options: Any) -> Suggestion:
    """Suggest an LR for ``result`` with the method registered as ``method`` (default: margin).

    Warns with :class:`LowConfidenceWarning` when an LR was suggested on a curve with no usable
    descent (``confidence == 0``; the suggestion's ``reason`` says what to change).

    Raises:
        ValueError: ``method`` is not registered (the message lists the registered names).
        PluginError: a plugin's method raised (the message names the plugin; the original
            error is its ``__cause__``). A built-in method's errors are raised as they are.
    """
    from lrfinder_plugins._manager import PluginError, collect_registry_owners

    methods = collect_registry_owners("lrfinder_register_suggesters")
    name = DEFAULT_METHOD if method is None else method
    if name not in methods:
        raise ValueError(
            f"method must be one of {sorted(methods)}, got {method!r}; a plugin can add more "
            "through the lrfinder_register_suggesters hook"
        )
    suggester, owner = methods[name]
    try:
        suggestion = suggester(result, **options)
    except Exception as error:
        if owner == BUILTIN_PLUGIN:
            raise
        raise PluginError(
            f"suggestion method {name!r} of plugin {owner!r} failed: "
            f"{type(error).__name__}: {error}",
            owner,
        ) from error
    _check_returned(suggestion, name, owner)
    if suggestion.ok and suggestion.confidence == 0:
        warnings.warn(
            f"{suggestion.method}: low confidence: {suggestion.reason}",
            LowConfidenceWarning,
            stacklevel=3,
        )
    return suggestion


def _check_returned(suggestion: Any, name: str, owner: str) -> None:
    """Raise a ``PluginError`` naming the plugin unless ``suggestion`` is a Suggestion whose LR
    is > 0 or NaN (none suggested)."""
    from lrfinder_plugins._manager import PluginError

    if not isinstance(suggestion, Suggestion):
        problem = f"returned {suggestion!r} ({type(suggestion).__name__}), not a Suggestion"
    elif not (math.isnan(suggestion.lr) or suggestion.lr > 0):
        problem = f"suggested lr={suggestion.lr!r}; an LR must be > 0 (NaN: none suggested)"
    else:
        return
    raise PluginError(
        f"suggestion method {name!r} of plugin {owner!r} {problem}; build it with "
        "lrfinder_plugins.suggest.make_suggestion(result, name, lr) or no_suggestion(...)",
        owner,
    )


def suggest_all(result: RangeTestResult) -> dict[str, Suggestion]:
    """Every registered method's suggestion; a method that raises is logged and left out."""
    from lrfinder_plugins._manager import collect_registry_owners

    out: dict[str, Suggestion] = {}
    methods = collect_registry_owners("lrfinder_register_suggesters")
    for name, (method, owner) in sorted(methods.items()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoSuggestionWarning)
                suggestion = method(result)
            _check_returned(suggestion, name, owner)
            out[name] = suggestion
        except Exception:
            log.exception(
                "suggestion method %r of plugin %r failed; left out of suggestions()", name, owner
            )
    return out

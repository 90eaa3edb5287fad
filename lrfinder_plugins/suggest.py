"""Suggestion methods: pure functions from a range-test result to a suggested LR.

Each is registered by name through the ``lrfinder_register_suggesters`` hook, so
``result.suggestion(method="valley")`` finds built-ins and plugins alike.

Built-in methods:
    ``valley`` (the default): fastai's rule: the longest run of decreasing loss, then a point
        about half-way down it, on fastai's smoothing (EMA 0.98).
    ``steepest``: the steepest descent of a moving-median-smoothed loss per unit of log-LR.
    ``minimum``: the LR at the smoothed loss' minimum, divided by 10 (fastai's ``minimum``).
    ``lightning``: Lightning's ``lr_find().suggestion()``, reproduced on this curve.
    ``torch_lr_finder``: torch-lr-finder's ``plot(suggest_lr=True)`` rule, reproduced.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lrfinder_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from lrfinder_plugins._results import RangeTestResult

log = logging.getLogger("lrfinder_plugins")

DEFAULT_METHOD = "valley"


class NoSuggestionWarning(UserWarning):
    """The curve has too few usable points for a method to suggest anything."""


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
    """

    method: str
    lr: float
    index: int | None
    group_lrs: tuple[float, ...] = ()
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when an LR was suggested."""
        return math.isfinite(self.lr)


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
    """Index of the point whose LR is nearest to ``lr`` in log space."""
    target = math.log(lr)
    return min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - target))


def _window(count: int, skip_start: int, skip_end: int) -> range:
    return range(max(skip_start, 0), count - max(skip_end, 0))


def make_suggestion(
    result: RangeTestResult, method: str, lr: float, reason: str = ""
) -> Suggestion:
    """Build a :class:`Suggestion` at ``lr`` (nearest point, group LRs) for ``result``."""
    if not math.isfinite(lr) or lr <= 0:
        return no_suggestion(result, method, reason or f"the rule gave a non-usable LR {lr!r}")
    ratios = result.group_ratios
    return Suggestion(
        method=method,
        lr=lr,
        index=nearest_index(result.lrs, lr),
        group_lrs=tuple(lr * r for r in ratios),
        reason=reason,
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
    return no_suggestion(
        result,
        method,
        f"only {found} usable point(s) of {len(result)} after skipping the start and end "
        f"(need {need}); raise num_iter or widen [start_lr, end_lr]",
    )


# -- the methods ---------------------------------------------------------------------------------
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
    n = len(losses)
    run = [1] * n
    best_end, best_start = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            # Inside the inner loop, as in fastai: the start is fixed when the run first wins.
            if run[best_end] < run[i]:
                best_end, best_start = i, i - run[i]
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
    """Suggest an LR for ``result`` with the method registered as ``method`` (default: valley).

    Raises:
        ValueError: ``method`` is not registered (the message lists the registered names).
    """
    methods = registered()
    name = DEFAULT_METHOD if method is None else method
    if name not in methods:
        raise ValueError(
            f"method must be one of {sorted(methods)}, got {method!r}; a plugin can add more "
            "through the lrfinder_register_suggesters hook"
        )
    return methods[name](result, **options)


def suggest_all(result: RangeTestResult) -> dict[str, Suggestion]:
    """Every registered method's suggestion; a method that raises is logged and left out."""
    out: dict[str, Suggestion] = {}
    for name, method in sorted(registered().items()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoSuggestionWarning)
                out[name] = method(result)
        except Exception:
            log.exception("suggestion method %r failed; left out of suggestions()", name)
    return out

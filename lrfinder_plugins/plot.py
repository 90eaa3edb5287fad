"""Plots of range-test and batch-size results (matplotlib, optional: ``pip install 'lrfinder-plugins[plot]'``)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_plugins._usage import figure_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lrfinder_plugins._batch_search import BatchSizeResult
    from lrfinder_plugins._results import RangeTestResult
    from lrfinder_plugins.suggest import Suggestion

SUGGESTION_COLORS = ("red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink")
"""The first suggestion is red (as users expect); more methods get the next colours."""


def _pyplot() -> Any:
    try:
        import matplotlib

        if "matplotlib.pyplot" not in __import__("sys").modules:
            matplotlib.use("Agg")  # no display needed; a notebook has already chosen its backend
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib; run: pip install 'lrfinder-plugins[plot]'"
        ) from error
    return plt


def _interpolate_loss(lrs: Sequence[float], losses: Sequence[float], lr: float) -> float:
    """The loss at ``lr`` on the curve, linear in log-LR between recorded points."""
    pairs = [(math.log(x), y) for x, y in zip(lrs, losses) if math.isfinite(y)]
    target = math.log(lr)
    for (x0, y0), (x1, y1) in itertools.pairwise(pairs):
        if x0 <= target <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (target - x0) / (x1 - x0)
    return min(pairs, key=lambda p: abs(p[0] - target))[1] if pairs else math.nan


def check_output_path(output_path: str | Path | None, name: str = "output_path") -> Path | None:
    """``output_path`` as a ``Path``, or a clear error (naming the argument ``name``) if it
    cannot be a figure file.

    Raises:
        TypeError: it is not a str or path.
        IsADirectoryError: it names an existing directory (matplotlib would write ``<dir>.png``
            beside it).
        ValueError: its suffix is no figure type (``.txt``); without one, ``.png`` is added.
    """
    if output_path is None:
        return None
    if not isinstance(output_path, (str, Path)):
        raise TypeError(
            f"{name} must be a str or pathlib.Path, got {output_path!r} "
            f"({type(output_path).__name__}); e.g. {name}='lr_finder_plot.png'"
        )
    path = Path(output_path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{name} {str(path)!r} is a directory; pass a file in it, e.g. "
            f"{name}={str(path / 'lr_finder_plot.png')!r}"
        )
    try:
        return figure_file(path)  # no suffix: the .png matplotlib adds, said
    except ValueError as error:
        raise ValueError(f"{name} {error}") from None


def _methods(suggest: bool | str | Sequence[str]) -> list[str | None]:
    if suggest is True:
        return [None]
    if suggest is False:
        return []
    if isinstance(suggest, str):
        return [suggest]
    return list(suggest)


def _kept(
    result: RangeTestResult, skip_start: int, skip_end: int, marked: Sequence[Suggestion]
) -> range:
    """The points drawn: all but the skipped ones, widened so that every marked suggestion and
    the blow-up that drove the default suggestion stay in view; a curve the skips would leave
    fewer than 2 points of is drawn whole."""
    from lrfinder_plugins.suggest import analyse_curve, nearest_index

    count = len(result)
    first, last = max(skip_start, 0), count - max(skip_end, 0)
    if last - first < 2:  # a curve shorter than the skips (data ran out early): all of it
        first, last = 0, count
    must = [s.index for s in marked if s.index is not None]
    analysis = analyse_curve(result)
    if analysis is not None and analysis.blew_up:
        must.append(nearest_index(result.lrs, analysis.lr_blowup))
    if must:
        first, last = min(first, *must), max(last, max(must) + 1)
    return range(first, min(last, count))


def plot_range_test(
    result: RangeTestResult,
    output_path: str | Path | None = None,
    *,
    skip_start: int = 10,
    skip_end: int = 5,
    suggest: bool | str | Sequence[str] = True,
    show_raw: bool = True,
    log_x: bool = True,
    ax: Axes | None = None,
    title: str | None = None,
    show_range: bool = True,
) -> Figure:
    """Plot loss against LR: raw and smoothed curves, suggestions marked (the first in red).

    ``skip_start`` and ``skip_end`` never hide a marked suggestion or the blow-up that drove the
    default one. A suggestion with confidence 0 is drawn as uncertain (a hollow marker, a
    dotted line, "uncertain" in the legend) and the title gives the reason. A result without
    points draws an empty plot that says so.

    Args:
        result: the range test's result.
        output_path: save the figure there as PNG (parent directories are created).
        skip_start: points left out at the start.
        skip_end: points left out at the end.
        suggest: ``True`` marks the default method's suggestion, a name or names mark those
            methods' (overlaid, one colour each), ``False`` marks none.
        show_raw: draw the raw losses faintly behind the smoothed curve.
        log_x: log-scale LR axis.
        ax: draw into these axes instead of a new figure.
        title: the axes title (default: the points, the stop reason, and any doubt).
        show_range: shade the first suggestion's usable ``[lower, upper]`` LR range.

    Raises:
        IsADirectoryError: ``output_path`` is an existing directory (checked before drawing).

    Example:
        >>> fig = plot_range_test(result, "lr_finder_plot.png")  # doctest: +SKIP
    """
    path = check_output_path(output_path)
    for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    else:
        fig = ax.figure
    count = len(result)
    reason = result.stop_reason.value if result.stop_reason is not None else "running"
    marked: list[Suggestion] = []
    if count:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            marked = [result.suggestion(m) for m in _methods(suggest)]
        marked = [s for s in marked if s.ok]
    doubts = _draw_curves(
        ax, result, _kept(result, skip_start, skip_end, marked), show_raw, marked, show_range
    )
    if not count:
        ax.text(0.5, 0.5, "no points recorded", ha="center", va="center", transform=ax.transAxes)
    elif log_x:
        ax.set_xscale("log")
    ax.set_xlabel("learning rate" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("loss")
    default = f"LR range test: {count} points, stopped: {reason}"
    if doubts:
        default += f"\nlow confidence: {doubts[0]}"
    ax.set_title(title if title is not None else default, fontsize=10 if doubts else None)
    ax.grid(True, which="both", alpha=0.3)
    if count:
        ax.legend()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # No bbox_inches="tight": it renders the figure twice (measured 1.0 vs 0.55 s); the
        # default margins of an 8x5 figure hold the labels and a two-line title.
        fig.savefig(path, dpi=120)
    return fig


def _draw_curves(
    ax: Axes,
    result: RangeTestResult,
    keep: range,
    show_raw: bool,
    marked: Sequence[Suggestion],
    show_range: bool,
) -> list[str]:
    """Draw the curves and the marked suggestions; return the reasons of the uncertain ones."""
    lrs = [result.lrs[i] for i in keep]
    smoothed = [result.smoothed_losses[i] for i in keep]
    if not lrs:
        return []
    if show_raw:
        raw = [result.losses[i] for i in keep]
        ax.plot(lrs, raw, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    doubts: list[str] = []
    for position, (color, suggestion) in enumerate(zip(SUGGESTION_COLORS * 4, marked)):
        uncertain = suggestion.confidence == 0
        if uncertain:
            doubts.append(_first_clause(suggestion.reason))
        y = _interpolate_loss(lrs, smoothed, suggestion.lr)
        ax.axvline(suggestion.lr, color=color, linestyle=":" if uncertain else "--", linewidth=1)
        if show_range and position == 0 and math.isfinite(suggestion.lower):
            ax.axvspan(
                suggestion.lower,
                suggestion.upper,
                color=color,
                alpha=0.06 if uncertain else 0.12,
                label=f"usable range: {suggestion.lower:.1e} to {suggestion.upper:.1e}",
            )
        label = f"{suggestion.method}: {suggestion.lr:.2e}"
        ax.scatter(
            [suggestion.lr],
            [y],
            s=60,
            zorder=3,
            facecolors="none" if uncertain else color,
            edgecolors=color,
            linewidths=1.5,
            label=label + (" (uncertain: confidence 0)" if uncertain else ""),
        )
    return doubts


def _first_clause(reason: str) -> str:
    """The reason's first clause, short enough for a title ("no usable descent: ...")."""
    text = reason.split(";")[0].strip()
    return text if len(text) <= 90 else text[:87] + "..."


def plot_batch_size(
    result: BatchSizeResult,
    output_path: str | Path | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """Plot throughput (samples/s) against batch size, with the knee, the largest size that
    fits, the noise scale ``B_simple`` and its interval, and the recommended size.

    Args:
        result: the batch-size search's result.
        output_path: save the figure there as PNG (parent directories are created).
        ax: draw into these axes instead of a new figure.
        title: the axes title (default: the recommendation).

    Raises:
        IsADirectoryError: ``output_path`` is an existing directory (checked before drawing).

    Example:
        >>> fig = plot_batch_size(find_batch_size(..., noise_scale=True), "batch.png")  # doctest: +SKIP
    """
    path = check_output_path(output_path)
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    else:
        fig = ax.figure
    rates = result.throughput
    if rates:
        ax.plot(list(rates), list(rates.values()), "o-", label="throughput (fitted trials)")
    failed = sorted({t.size for t in result.trials if not t.fitted})
    for size in failed:
        ax.axvline(size, color="gray", alpha=0.3, linewidth=1)
    if failed:
        ax.plot([], [], color="gray", alpha=0.3, label="out of memory")
    knee = result.knee
    if knee is not None:
        ax.plot([knee], [rates[knee]], "s", color="tab:green", markersize=10, label=f"knee {knee}")
    if result.batch_size is not None:
        ax.axvline(
            result.batch_size, color="black", linestyle=":", label=f"fits: {result.batch_size}"
        )
    scale = result.noise_scale
    if scale is not None and math.isfinite(scale.b_simple):
        ax.axvline(scale.b_simple, color="red", label=f"B_simple ≈ {scale.b_simple:.3g}")
        high = scale.high if math.isfinite(scale.high) else max([*rates, scale.b_simple]) * 4
        ax.axvspan(max(scale.low, 0.5), high, color="red", alpha=0.1, label="its interval")
    advice = result.recommendation
    if advice is not None:
        ax.axvline(
            advice.batch_size,
            color="tab:purple",
            linewidth=2,
            alpha=0.6,
            label=f"recommended: {advice.batch_size}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("samples / s")
    default = "batch-size search" if advice is None else f"recommended {advice.batch_size}"
    ax.set_title(title if title is not None else default)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig

"""Plots of range-test results (matplotlib, optional: ``pip install 'lrfinder-plugins[plot]'``)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lrfinder_plugins._results import RangeTestResult

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
        title: the axes title (default: the points and the stop reason).
        show_range: shade the first suggestion's usable ``[lower, upper]`` LR range.

    Example:
        >>> fig = plot_range_test(result, "lr_finder_plot.png")  # doctest: +SKIP
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 5))
    else:
        fig = ax.figure
    count = len(result)
    keep = range(min(max(skip_start, 0), max(count - 2, 0)), max(count - max(skip_end, 0), 2))
    lrs = [result.lrs[i] for i in keep if i < count]
    smoothed = [result.smoothed_losses[i] for i in keep if i < count]
    if show_raw:
        ax.plot(
            lrs,
            [result.losses[i] for i in keep if i < count],
            color="tab:blue",
            alpha=0.3,
            linewidth=1,
            label="loss",
        )
    ax.plot(lrs, smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    methods: list[str | None]
    if suggest is True:
        methods = [None]
    elif suggest is False:
        methods = []
    elif isinstance(suggest, str):
        methods = [suggest]
    else:
        methods = list(suggest)
    for position, (color, method) in enumerate(zip(SUGGESTION_COLORS * 4, methods)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suggestion = result.suggestion(method)
        if not suggestion.ok:
            continue
        y = _interpolate_loss(lrs or result.lrs, smoothed or result.smoothed_losses, suggestion.lr)
        ax.axvline(suggestion.lr, color=color, linestyle="--", linewidth=1)
        if show_range and position == 0 and math.isfinite(suggestion.lower):
            ax.axvspan(
                suggestion.lower,
                suggestion.upper,
                color=color,
                alpha=0.12,
                label=f"usable range: {suggestion.lower:.1e} to {suggestion.upper:.1e}",
            )
        ax.scatter(
            [suggestion.lr],
            [y],
            color=color,
            s=60,
            zorder=3,
            label=f"{suggestion.method}: {suggestion.lr:.2e}",
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("learning rate" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("loss")
    reason = result.stop_reason.value if result.stop_reason is not None else "running"
    ax.set_title(
        title if title is not None else f"LR range test: {count} points, stopped: {reason}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if output_path is not None:
        path = Path(output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig

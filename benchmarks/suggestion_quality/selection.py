"""Choosing ``margin``'s constants on some tasks, to score them on others (issue 15).

The rule is the library's own (:func:`lrfinder_plugins.suggest.analyse_curve`, geometric mean of
the smoothed minimum and the blow-up, minus a margin); what is chosen is what the library exposes:
the smoothing half-width, the margin, the fallback width and the descent fraction. The criterion
is ``select.py``'s, fixed in issue 3 before any issue-15 result was seen, with the fraction
added to step 2:

1. For each smoothing half-width, the fallback width is the median of
   ``log10(lr_blowup / lr_min)`` over the training curves with a usable descent.
2. Each margin from 0.5 to 2.5 decades (0.05 steps) and descent fraction (``margin`` is never
   above the LR by which the smoothed loss made that fraction of its descent; issue 15) from
   0.05 to 0.95 (0.05 steps) is scored, as a pair, by the *robust* mean regret: the worst mean
   over ``margin +- 0.2`` decades and ``fraction +- 0.05`` (a held-out task will not share the
   constants exactly), the regret read by interpolating the grid (``grid.interpolated_regret``,
   no training).
3. Among candidates within 0.005 of the best robust mean, the lowest worst regret wins.

Until session 24 the margin was chosen first (steps 2-3 without the cap) and the fraction
after it, by a one-standard-error rule. That chose the margin for a rule that is not the one
shipped: without the cap, fine-tuning's regrets near 1 weigh on every margin and pull the
choice toward cautious ones. The folds without ``mlp`` and without ``cnn`` chose 1.70 decades,
and scored 0.513 worst on the held-out short-budget tasks. Choosing both together was adopted
after those leave-one-family-out figures had been seen (``RESULTS.md`` says so beside them).
The one-standard-error rule stays as :func:`one_standard_error`, which ``screen_finetune.py``
uses.

:func:`choose` does this on any set of ``(task, seed)`` pairs: the dev split (dev -> confirm), or
every task outside one family (leave-one-family-out). ``run.py`` then *trains* at the chosen
constants' suggestions on the held-out tasks for the reported figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from benchmarks.suggestion_quality.grid import Grid, interpolated_regret
from lrfinder_plugins import RangeTestResult
from lrfinder_plugins.suggest import analyse_curve

WIDTHS: tuple[float, ...] = (0.15, 0.2, 0.25, 0.3, 0.4)
MARGINS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(41))
ROBUST_DECADES = 0.2
TIE = 0.005
FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""The descent fractions tried: 0.05-0.95 (0, no cap, is not a candidate; 0.95 caps little)."""
ROBUST_FRACTION = 0.05

Key = tuple[str, int]


@dataclass(frozen=True)
class Constants:
    """``margin``'s constants (``analyse_curve``'s keyword arguments)."""

    smoothing: float
    margin: float
    fallback: float
    fraction: float = 0.0
    """``descent_fraction`` (0: no cap)."""

    def lr(self, result: RangeTestResult) -> float:
        """The suggestion these constants make on ``result`` (NaN: too few points)."""
        analysis = analyse_curve(
            result,
            smoothing_decades=self.smoothing,
            margin_decades=self.margin,
            fallback_width_decades=self.fallback,
            descent_fraction=self.fraction,
        )
        return math.nan if analysis is None else analysis.lr

    def describe(self) -> str:
        """The constants in words."""
        return (
            f"smoothing +-{self.smoothing} decades, margin {self.margin:.2f} decades, "
            f"fallback {self.fallback:.2f} decades, descent fraction {self.fraction:g}"
        )


def _fallback(curves: Mapping[Key, RangeTestResult], pairs: Sequence[Key], width: float) -> float:
    gaps = []
    for key in pairs:
        a = analyse_curve(curves[key], smoothing_decades=width)
        if a is not None and a.depth >= 2 * a.noise:
            gaps.append(math.log10(a.lr_blowup / a.lr_min))
    return round(statistics.median(gaps), 2) if gaps else 0.73


def robust_means(per: Mapping[float, Sequence[float]], window: float) -> dict[float, float]:
    """Each candidate constant's robust mean regret: the worst mean over the candidates within
    ``window`` of it (``per``: each candidate's regrets)."""
    means = {c: statistics.fmean(r) for c, r in per.items()}
    return {c: max(means[o] for o in per if abs(o - c) <= window + 1e-9) for c in per}


def one_standard_error(per: Mapping[float, Sequence[float]], window: float) -> float:
    """The one-standard-error rule: the smallest candidate (the lowest LRs: the most cautious)
    whose robust mean is within one standard error of the best robust mean (the standard error
    of the best candidate's regrets)."""
    robust = robust_means(per, window)
    best = min(robust, key=robust.__getitem__)
    bound = robust[best] + statistics.stdev(per[best]) / math.sqrt(len(per[best]))
    return min(c for c in per if robust[c] <= bound)


def _parts(
    result: RangeTestResult, smoothing: float, fallback: float
) -> tuple[float, dict[float, float]] | None:
    """What every margin and fraction's suggestion is made of, read from ``analyse_curve`` at
    margin 0: ``log10`` of the suggestion without the cap, and per fraction ``log10`` of the
    suggestion with it (the same where the cap does not apply). ``None``: too few points."""

    def at_margin_0(fraction: float) -> float:
        analysis = analyse_curve(
            result,
            smoothing_decades=smoothing,
            margin_decades=0.0,
            fallback_width_decades=fallback,
            descent_fraction=fraction,
        )
        return math.nan if analysis is None else math.log10(analysis.lr)

    free = at_margin_0(0.0)
    if math.isnan(free):
        return None
    return free, {f: at_margin_0(f) for f in FRACTIONS}


def _lr(parts: tuple[float, dict[float, float]] | None, margin: float, fraction: float) -> float:
    """The suggestion at ``margin`` (>= 0) and ``fraction`` from :func:`_parts` (NaN: too few
    points). The margin lowers the uncapped suggestion only; the cap is a bound of its own, so
    ``min(free - margin, capped at margin 0)`` is the rule's suggestion, cap or no cap."""
    if parts is None:
        return math.nan
    free, capped = parts
    return 10.0 ** (free - margin if fraction == 0 else min(free - margin, capped[fraction]))


def choose(
    curves: Mapping[Key, RangeTestResult], grids: Mapping[str, Grid], pairs: Sequence[Key]
) -> tuple[Constants, float]:
    """The constants chosen on ``pairs`` only (steps 1-3), and the chosen pair's robust mean
    regret (interpolated)."""
    candidates: list[tuple[float, float, Constants]] = []
    for width in WIDTHS:
        fallback = _fallback(curves, pairs, width)
        parts = {key: _parts(curves[key], width, fallback) for key in pairs}
        per: dict[tuple[float, float], list[float]] = {}
        for m in MARGINS:
            for f in FRACTIONS:
                regrets = []
                for key in pairs:
                    lr = _lr(parts[key], m, f)
                    t, seed = key
                    regrets.append(
                        interpolated_regret(grids[t], seed, lr) if math.isfinite(lr) else 1.0
                    )
                per[(m, f)] = regrets
        means = {c: statistics.fmean(r) for c, r in per.items()}
        for (m, f), regrets in per.items():
            robust = max(
                means[(n, g)]
                for n in MARGINS
                if abs(n - m) <= ROBUST_DECADES + 1e-9
                for g in FRACTIONS
                if abs(g - f) <= ROBUST_FRACTION + 1e-9
            )
            candidates.append((robust, max(regrets), Constants(width, m, fallback, f)))
    best = min(c[0] for c in candidates)
    tied = [c for c in candidates if c[0] <= best + TIE]
    robust, _, chosen = min(tied, key=lambda c: (c[1], c[0]))
    return chosen, robust

"""Choosing ``margin``'s constants on some tasks, to score them on others (issue 15).

The rule is the library's own (:func:`lrfinder_plugins.suggest.analyse_curve`, geometric mean of
the smoothed minimum and the blow-up, minus a margin); what is chosen is what the library exposes:
the smoothing half-width, the margin and the fallback width. The criterion is ``select.py``'s,
fixed in issue 3 before any issue-15 result was seen:

1. For each smoothing half-width, the fallback width is the median of
   ``log10(lr_blowup / lr_min)`` over the training curves with a usable descent.
2. Each margin from 0.5 to 2.5 decades (0.05 steps) is scored by the *robust* mean regret: the
   worst mean over ``margin +- 0.2`` decades (a held-out task will not share the offset exactly),
   the regret read by interpolating the grid (``grid.interpolated_regret``, no training).
3. Among candidates within 0.005 of the best robust mean, the lowest worst regret wins.

Then, with those three fixed, the descent cap's ``descent_fraction`` (``margin`` is never above
the LR by which the smoothed loss made that fraction of its descent; issue 15), by the
one-standard-error rule, fixed before the suggestion side was re-trained with it:

4. Each fraction from 0.05 to 0.95 (0.05 steps) is scored by the robust mean regret: the worst
   mean over ``fraction +- 0.05``.
5. The smallest fraction (the lowest LRs: the most cautious) whose robust mean is within one
   standard error of the best one's (the standard error of the best fraction's regrets) wins.

It was adopted after the screening (``screen_finetune.py``) had shown that step 3's criterion,
applied to the fraction, fails leave-one-family-out: no family but fine-tuning needs the cap, so
without it the criterion picks a fraction that does nothing. That makes this criterion post hoc
for the screening's figures; ``run.py``'s trained figures use it as stated here.

:func:`choose` does this on any set of ``(task, seed)`` pairs: the dev split (dev -> confirm), or
every task outside one family (leave-one-family-out). ``run.py`` then *trains* at the chosen
constants' suggestions on the held-out tasks for the reported figures.
"""

from __future__ import annotations

import dataclasses
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


def _regrets(
    curves: Mapping[Key, RangeTestResult],
    grids: Mapping[str, Grid],
    pairs: Sequence[Key],
    constants: Constants,
) -> list[float]:
    """The interpolated regret of each pair's suggestion under ``constants`` (1: none)."""
    out = []
    for t, s in pairs:
        lr = constants.lr(curves[(t, s)])
        out.append(interpolated_regret(grids[t], s, lr) if math.isfinite(lr) else 1.0)
    return out


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


def choose_fraction(
    curves: Mapping[Key, RangeTestResult],
    grids: Mapping[str, Grid],
    pairs: Sequence[Key],
    constants: Constants,
) -> Constants:
    """Steps 4-5: ``constants`` with the descent fraction chosen on ``pairs`` by the
    one-standard-error rule."""
    per = {
        f: _regrets(curves, grids, pairs, dataclasses.replace(constants, fraction=f))
        for f in FRACTIONS
    }
    return dataclasses.replace(constants, fraction=one_standard_error(per, ROBUST_FRACTION))


def choose(
    curves: Mapping[Key, RangeTestResult], grids: Mapping[str, Grid], pairs: Sequence[Key]
) -> tuple[Constants, float]:
    """The constants chosen on ``pairs`` only (steps 1-5), and the (interpolated) robust mean
    regret of steps 1-3's choice, before the cap."""
    candidates: list[tuple[float, float, Constants]] = []
    for width in WIDTHS:
        fallback = _fallback(curves, pairs, width)
        centre: dict[Key, float] = {}
        for key in pairs:
            lr = Constants(width, 0.0, fallback).lr(curves[key])
            centre[key] = math.log10(lr) if math.isfinite(lr) else math.nan

        def regrets(m: float, centre: dict[Key, float] = centre) -> list[float]:
            return [
                interpolated_regret(grids[t], s, 10 ** (centre[(t, s)] - m))
                if math.isfinite(centre[(t, s)])
                else 1.0
                for t, s in pairs
            ]

        per_margin = {m: regrets(m) for m in MARGINS}
        means = {m: statistics.fmean(r) for m, r in per_margin.items()}
        for m in MARGINS:
            robust = max(means[n] for n in MARGINS if abs(n - m) <= ROBUST_DECADES + 1e-9)
            candidates.append((robust, max(per_margin[m]), Constants(width, m, fallback)))
    best = min(c[0] for c in candidates)
    tied = [c for c in candidates if c[0] <= best + TIE]
    robust, _, chosen = min(tied, key=lambda c: (c[1], c[0]))
    return choose_fraction(curves, grids, pairs, chosen), robust

"""How the default ``margin`` method's constants were chosen in issue 3: on the dev split only.

Issue 15 grew the suite and the dev split (``tasks.py``); its selection, the same criterion over
the library's own rule (geometric mean) only, on the dev split and leave-one-family-out, is
``selection.py``, run by ``run.py``. This script still screens all three rule shapes, on the
current dev split.

Run after the grid and the range tests are cached (``run.py`` does both)::

    nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.select

Screening uses the *interpolated* regret (``grid.interpolated_regret``: no training), so it is
cheap; ``run.py`` then trains at every suggestion for the reported numbers. Steps:

1. For each smoothing half-width, the fallback width is the dev median of
   ``log10(lr_blowup / lr_min)`` over curves with a usable descent.
2. Three rule shapes read from :func:`lrfinder_plugins.suggest.analyse_curve`: the smoothed
   minimum alone, the blow-up alone, and their geometric mean (``margin``), each divided by
   ``10**m`` for ``m`` from 0.5 to 2.5 decades.
3. Criterion, fixed before looking at the confirm split: the *robust* dev mean regret, the worst
   dev mean over ``m +- 0.2`` decades (a held-out task will not share our offset exactly); among
   candidates within 0.005 of the best (a tie on 18 noisy points), the lowest worst dev regret.
4. The usable range: the widest ``[lr / 10**l, lr * 10**u]`` (0.05-decade steps) whose ends
   still train with regret <= 0.1 on 80% of the dev (task, seed) pairs.
5. Print the chosen constants, then (once) the confirm split's figures.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable

from benchmarks.suggestion_quality.cache import GRID_PATH, RUNS_PATH, JsonCache
from benchmarks.suggestion_quality.curves import collect
from benchmarks.suggestion_quality.grid import Grid, build_grid, interpolated_regret
from benchmarks.suggestion_quality.tasks import CONFIRM_TASKS, DEV_TASKS, SEEDS, TASKS
from lrfinder_plugins import RangeTestResult
from lrfinder_plugins.suggest import CurveAnalysis, analyse_curve

WIDTHS = (0.15, 0.2, 0.25, 0.3, 0.4)
MARGINS = tuple(round(0.5 + 0.05 * i, 2) for i in range(41))
Rule = Callable[[CurveAnalysis, float], float]


def _log(x: float) -> float:
    return math.log10(x)


def _low_end(a: CurveAnalysis, fallback: float) -> float:
    """The minimum the rule uses: the smoothed minimum, or blow-up - fallback on no descent."""
    usable = a.depth >= 2 * a.noise and a.noise >= 0
    return _log(a.lr_min) if usable else _log(a.lr_blowup) - fallback


SHAPES: dict[str, Callable[[CurveAnalysis, float], float]] = {
    "minimum": lambda a, fb: _low_end(a, fb),
    "blow-up": lambda a, fb: _log(a.lr_blowup),
    "geometric mean (margin)": lambda a, fb: (_low_end(a, fb) + _log(a.lr_blowup)) / 2,
}


def stats(regrets: list[float]) -> str:
    return (
        f"median {statistics.median(regrets):.3f}  mean {statistics.fmean(regrets):.3f}  "
        f"worst {max(regrets):.3f}"
    )


def main() -> int:
    """Print the selection on the dev split and the confirm split's figures."""
    warnings.simplefilter("ignore")
    grid_cache, runs_cache = JsonCache(GRID_PATH), JsonCache(RUNS_PATH)
    grids: dict[str, Grid] = {t.name: build_grid(t, grid_cache) for t in TASKS}
    curves: dict[tuple[str, int], RangeTestResult] = {
        (t.name, s): collect(t, s, runs_cache, with_peers=False).ours for t in TASKS for s in SEEDS
    }
    runs_cache.flush()
    dev = [(t, s) for t in DEV_TASKS for s in SEEDS]
    confirm = [(t, s) for t in CONFIRM_TASKS for s in SEEDS]

    def regrets(pairs: list[tuple[str, int]], log_lrs: dict[tuple[str, int], float]) -> list[float]:
        return [interpolated_regret(grids[t], s, 10 ** log_lrs[(t, s)]) for t, s in pairs]

    candidates = []
    for width in WIDTHS:
        analyses = {key: analyse_curve(r, smoothing_decades=width) for key, r in curves.items()}
        usable = [
            _log(a.lr_blowup / a.lr_min)
            for key, a in analyses.items()
            if a is not None and key in dev and a.depth >= 2 * a.noise
        ]
        fallback = round(statistics.median(usable), 2)
        for shape, rule in SHAPES.items():
            centre = {key: rule(a, fallback) for key, a in analyses.items() if a is not None}
            means = {}
            for m in MARGINS:
                means[m] = statistics.fmean(regrets(dev, {k: c - m for k, c in centre.items()}))
            for m in MARGINS:
                robust = max(means[n] for n in MARGINS if abs(n - m) <= 0.2 + 1e-9)
                worst = max(regrets(dev, {k: c - m for k, c in centre.items()}))
                candidates.append((robust, worst, width, shape, m, fallback, centre))
    best_robust = min(c[0] for c in candidates)
    tied = [c for c in candidates if c[0] <= best_robust + 0.005]
    robust, worst, width, shape, m, fallback, centre = min(tied, key=lambda c: (c[1], c[0]))

    print("Best candidates by robust dev mean (worst dev mean within +-0.2 decades):")
    seen = set()
    for c in sorted(candidates, key=lambda c: c[0]):
        if (c[2], c[3]) in seen:
            continue
        seen.add((c[2], c[3]))
        print(
            f"  robust {c[0]:.4f}  dev worst {c[1]:.3f}  smoothing +-{c[2]} decades  {c[3]:24s} "
            f"margin {c[4]:.2f}  fallback {c[5]:.2f}"
        )
    print(
        f"\nChosen (ties within 0.005 broken by the worst dev regret): {shape}, smoothing "
        f"+-{width} decades, margin {m:.2f} decades (/ {10**m:.1f}), fallback {fallback:.2f} "
        f"(robust {robust:.4f}, dev worst {worst:.3f})"
    )
    chosen = {k: c - m for k, c in centre.items()}
    print(f"  dev     ({len(dev)} runs): {stats(regrets(dev, chosen))}")

    def bound(side: int) -> float:
        best = 0.0
        for step in range(1, 41):
            d = step * 0.05
            ends = regrets(dev, {k: v + side * d for k, v in chosen.items()})
            if sorted(ends)[int(0.8 * len(ends))] > 0.1:
                break
            best = d
        return best

    print(f"  usable range: lower = lr / 10**{bound(-1):.2f}, upper = lr * 10**{bound(+1):.2f}")
    print(f"  confirm ({len(confirm)} runs): {stats(regrets(confirm, chosen))}")
    print(f"  all     ({len(dev) + len(confirm)} runs): {stats(regrets(dev + confirm, chosen))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

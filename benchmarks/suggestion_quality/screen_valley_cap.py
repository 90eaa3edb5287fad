"""Screening one rule change (issue 15, not shipped): ``min(margin, c x valley)`` on one curve.

Reads the committed caches only (no training; the regret is interpolated from the grid)::

    nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.screen_valley_cap

``c`` is chosen with ``selection.py``'s robust criterion (worst mean over +-0.2 decades of
``c``) on the dev split, and once per family without that family; prints dev, confirm and
leave-one-family-out figures.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Sequence

from benchmarks.suggestion_quality.cache import GRID_PATH, RUNS_PATH, JsonCache
from benchmarks.suggestion_quality.curves import collect
from benchmarks.suggestion_quality.grid import Grid, build_grid, interpolated_regret
from benchmarks.suggestion_quality.tasks import CONFIRM_TASKS, DEV_TASKS, SEEDS, TASKS

Key = tuple[str, int]
CAPS: tuple[float, ...] = tuple(10 ** (x / 10) for x in range(-10, 21))
NO_CAP = 1e9


def _stats(regrets: list[float]) -> str:
    return (
        f"median {statistics.median(regrets):.3f} mean {statistics.fmean(regrets):.3f} "
        f"worst {max(regrets):.3f}"
    )


def main() -> int:
    """Print the screening's figures."""
    warnings.simplefilter("ignore")
    logging.disable(logging.INFO)
    runs, grid_cache = JsonCache(RUNS_PATH), JsonCache(GRID_PATH)
    grids: dict[str, Grid] = {t.name: build_grid(t, grid_cache) for t in TASKS}
    curves = {(t.name, s): collect(t, s, runs, with_peers=False).ours for t in TASKS for s in SEEDS}
    margin = {k: r.suggestion("margin").lr for k, r in curves.items()}
    valley = {k: r.suggestion("valley").lr for k, r in curves.items()}
    family = {t.name: t.family for t in TASKS}

    def regrets(keys: Sequence[Key], cap: float) -> list[float]:
        out = []
        for t, s in keys:
            lr = margin[(t, s)]
            if math.isfinite(valley[(t, s)]):
                lr = min(lr, cap * valley[(t, s)])
            out.append(interpolated_regret(grids[t], s, lr))
        return out

    def choose(keys: Sequence[Key]) -> float:
        def robust(cap: float) -> float:
            return max(
                statistics.fmean(regrets(keys, other))
                for other in CAPS
                if abs(math.log10(other / cap)) <= 0.2 + 1e-9
            )

        return min(CAPS, key=robust)

    keys = list(curves)
    dev = [k for k in keys if k[0] in DEV_TASKS]
    confirm = [k for k in keys if k[0] in CONFIRM_TASKS]
    cap = choose(dev)
    print(f"margin alone: confirm {_stats(regrets(confirm, NO_CAP))}")
    print(f"min(margin, {cap:.2f} x valley), chosen on dev:")
    print(f"  dev {_stats(regrets(dev, cap))}; confirm {_stats(regrets(confirm, cap))}")
    held_out: list[float] = []
    for fam in dict.fromkeys(family.values()):
        fold = choose([k for k in keys if family[k[0]] != fam])
        held_out += regrets([k for k in keys if family[k[0]] == fam], fold)
        print(f"  without {fam}: c = {fold:.2f}")
    print(f"leave-one-family-out: {_stats(held_out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the regret goals ask for: a finder that misses the best constant LR by a fixed offset.

For each task and seed, the regret (interpolated from the grid, as ``screen_finetune.py``) of
training at the grid's best LR moved by ``d`` decades down, up, and the worse of the two, for
``d`` = 0.1, 0.2, 0.3: a finder that always lands that close to the best LR, which no finder
knows. Reads the committed caches only::

    PYTHONPATH=. nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.near_oracle
"""

from __future__ import annotations

import logging
import statistics
import warnings

from benchmarks.suggestion_quality.grid import interpolated_regret
from benchmarks.suggestion_quality.screen_finetune import load
from benchmarks.suggestion_quality.tasks import CONFIRM_TASKS, SEEDS, TASKS

OFFSETS: tuple[float, ...] = (0.1, 0.2, 0.3)


def _stats(regrets: list[float]) -> str:
    return (
        f"{statistics.median(regrets):.3f} / {statistics.fmean(regrets):.3f} / {max(regrets):.3f}"
    )


def main() -> int:
    """Print one table row per offset and split: median / mean / worst regret."""
    warnings.simplefilter("ignore")
    logging.disable(logging.INFO)
    grids, _ = load()
    splits = {"all": [t.name for t in TASKS], "confirm": list(CONFIRM_TASKS)}
    print("| offset | tasks | below the best | above the best | the worse side |")
    print("|---|---|---|---|---|")
    for d in OFFSETS:
        for split, names in splits.items():
            low, high = [], []
            for name in names:
                grid = grids[name]
                for seed in SEEDS:
                    low.append(interpolated_regret(grid, seed, grid.best_lr * 10**-d))
                    high.append(interpolated_regret(grid, seed, grid.best_lr * 10**d))
            worse = [max(a, b) for a, b in zip(low, high)]
            print(f"| {d} decade | {split} | {_stats(low)} | {_stats(high)} | {_stats(worse)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

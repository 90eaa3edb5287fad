"""Ground truth: each task trained at every grid LR for every seed; regret of any LR against it."""

from __future__ import annotations

import functools
import logging
import math
import statistics
from dataclasses import dataclass

from benchmarks.suggestion_quality.cache import GRID_LRS, JsonCache, cached_outcome, outcome_key
from benchmarks.suggestion_quality.tasks import SEEDS, Task
from benchmarks.suggestion_quality.training import Outcome, train, untrained_loss

log = logging.getLogger("benchmarks.suggestion_quality")


@dataclass(frozen=True)
class Grid:
    """One task's ground truth.

    Attributes:
        lrs: the grid LRs.
        runs: ``runs[seed][i]``: the outcome at ``lrs[i]``.
        untrained: the untrained model's held-out loss per seed.
        best_index: the grid LR with the lowest mean held-out loss over seeds (a run that ended
            no better than the untrained model, or non-finite, counts as the untrained loss).
    """

    lrs: tuple[float, ...]
    runs: dict[int, tuple[Outcome, ...]]
    untrained: dict[int, float]
    best_index: int

    @property
    def best_lr(self) -> float:
        """The ground-truth best LR."""
        return self.lrs[self.best_index]

    def effective(self, seed: int, outcome: Outcome) -> float:
        """The held-out loss used for scoring: capped at the untrained model's (non-finite too)."""
        untrained = self.untrained[seed]
        return outcome.val_loss if outcome.val_loss < untrained else untrained

    def blew_up(self, seed: int, outcome: Outcome) -> bool:
        """Training diverged: a non-finite loss, or a held-out loss more than 1.5x the untrained
        model's (a run that merely made no progress, or got stuck, is not counted)."""
        return not math.isfinite(outcome.val_loss) or outcome.val_loss > 1.5 * self.untrained[seed]

    def mean_losses(self) -> list[float]:
        """The mean (over seeds) effective held-out loss at each grid LR."""
        return [
            statistics.fmean(self.effective(s, self.runs[s][i]) for s in self.runs)
            for i in range(len(self.lrs))
        ]

    def regret(self, seed: int, outcome: Outcome) -> float:
        """``(loss - best) / (untrained - best)`` for ``seed``, clipped to [0, 1]; non-finite: 1."""
        if not math.isfinite(outcome.val_loss):
            return 1.0
        best = self.runs[seed][self.best_index]
        best_loss = self.effective(seed, best)
        span = self.untrained[seed] - best_loss
        if span <= 0:
            return 1.0
        return min(1.0, max(0.0, (outcome.val_loss - best_loss) / span))


def interpolated_regret(grid: Grid, seed: int, lr: float) -> float:
    """An approximate regret at ``lr`` without training: the held-out loss interpolated linearly
    in log-LR between the two nearest grid LRs (for screening candidate rules only; the results
    table trains at every suggestion)."""
    if not (lr > 0 and math.isfinite(lr)):
        return 1.0
    xs = [math.log10(v) for v in grid.lrs]
    losses = [grid.effective(seed, o) for o in grid.runs[seed]]
    x = min(max(math.log10(lr), xs[0]), xs[-1])
    i = min(max(j for j in range(len(xs)) if xs[j] <= x), len(xs) - 2)
    f = (x - xs[i]) / (xs[i + 1] - xs[i])
    loss = losses[i] + (losses[i + 1] - losses[i]) * f
    return grid.regret(seed, Outcome(loss))


def build_grid(task: Task, cache: JsonCache, seeds: tuple[int, ...] = SEEDS) -> Grid:
    """Train (or read from the cache) every grid LR for every seed of ``task``."""
    runs: dict[int, tuple[Outcome, ...]] = {}
    for seed in seeds:
        outcomes = []
        for lr in GRID_LRS:
            outcomes.append(
                cached_outcome(
                    cache,
                    outcome_key(task, lr, seed),
                    functools.partial(train, task, lr, seed),
                )
            )
        runs[seed] = tuple(outcomes)
    untrained = {seed: untrained_loss(task, seed) for seed in seeds}
    partial = Grid(GRID_LRS, runs, untrained, 0)
    means = partial.mean_losses()
    best = min(range(len(means)), key=means.__getitem__)
    log.info(
        "%s: best grid LR %.3g (mean held-out loss %.4f)", task.name, GRID_LRS[best], means[best]
    )
    return Grid(GRID_LRS, runs, untrained, best)

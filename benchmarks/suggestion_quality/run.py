"""Suggestion-quality benchmark: every finder's suggestion, trained and scored against a grid.

Run from the repository root (one core, politely)::

    nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.run

For each task and seed it runs our ``find_lr`` (defaults), fastai's protocol (our engine),
Lightning's ``Tuner.lr_find`` and torch-lr-finder's ``range_test`` (the real packages, defaults),
and our ``find_lr`` with the held-out split as ``val_loader`` (both ``val_batch_norm`` modes);
trains the task's model at every suggestion with the task's budget; trains Prodigy and
schedule-free AdamW at their defaults; and scores everything by regret against the constant-LR
grid (``grid_cache.json``). Training runs and range tests are cached in ``runs_cache.json``;
``--fresh`` recomputes them (the grid stays cached; ``--fresh-grid`` recomputes it too).

Writes ``results.md`` and ``results.json`` next to this file and ``plots/*.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.suggestion_quality import training
from benchmarks.suggestion_quality.cache import (
    GRID_PATH,
    HERE,
    RUNS_PATH,
    JsonCache,
    cached_outcome,
    outcome_key,
)
from benchmarks.suggestion_quality.curves import Curves, collect
from benchmarks.suggestion_quality.grid import Grid, build_grid
from benchmarks.suggestion_quality.selection import Constants, choose
from benchmarks.suggestion_quality.tasks import (
    CONFIRM_TASKS,
    DEV_TASKS,
    SEEDS,
    TASKS,
    Task,
    by_name,
)
from benchmarks.suggestion_quality.training import Outcome
from lrfinder_plugins import suggest as suggest_module

log = logging.getLogger("benchmarks.suggestion_quality")

LIGHTNING = "Lightning Tuner.lr_find (real, defaults)"
TORCH_LR_FINDER = "torch-lr-finder range_test + steepest (real, defaults)"
FASTAI_VALLEY = "fastai valley (its rule on its lr_find protocol)"
FASTAI_MINIMUM = "fastai minimum/10 (its rule on its lr_find protocol)"
PRODIGY = "Prodigy (prodigyopt, defaults; no finder)"
SCHEDULE_FREE = "schedule-free AdamW (schedulefree, defaults; no finder)"
ONE_CYCLE = "ours: default + one_cycle() (OneCycleLR schedule)"
ONE_CYCLE_3X = "ours: default, OneCycleLR(max_lr=3 x suggestion), PyTorch's other defaults"
LOFO = "ours: margin, constants chosen without the task's family (leave-one-family-out)"
DEV_CHOSEN = "ours: margin, constants chosen on the dev split"
VAL = "ours: margin (default) on a val_loader curve (BatchNorm on each batch's statistics)"
VAL_RUNNING = "ours: margin (default) on a val_loader curve, plain eval mode (BatchNorm running)"
VAL_CURVES = (VAL, VAL_RUNNING)
"""The default rule read from a held-out curve (``find_lr(val_loader=...)``, the held-out
split as one batch): not plotted, one row each in the tables."""
LR_FREE = (PRODIGY, SCHEDULE_FREE)
SCHEDULES = (ONE_CYCLE, ONE_CYCLE_3X)
PEERS = (LIGHTNING, TORCH_LR_FINDER, FASTAI_VALLEY, FASTAI_MINIMUM, PRODIGY, SCHEDULE_FREE)


def ours(name: str) -> str:
    """The table label of one of our methods."""
    return f"ours: {name}" + (" (default)" if name == suggest_module.DEFAULT_METHOD else "")


@dataclass
class Score:
    """One method on one (task, seed)."""

    lr: float
    outcome: Outcome | None
    regret: float
    within_3x: bool | None
    diverged: bool = False


@dataclass
class Method:
    """All scores of one method."""

    label: str
    scores: dict[tuple[str, int], Score] = field(default_factory=dict)

    def regrets(self, tasks: Sequence[str] | None = None) -> list[float]:
        """The regrets, optionally of some tasks only."""
        return [s.regret for (t, _), s in self.scores.items() if tasks is None or t in tasks]

    def summary(self, tasks: Sequence[str] | None = None) -> dict[str, Any]:
        """Median, mean and worst regret, share within 3x, diverging and missing counts."""
        picked = [s for (t, _), s in self.scores.items() if tasks is None or t in tasks]
        regrets = [s.regret for s in picked]
        near = [s.within_3x for s in picked if s.within_3x is not None]
        return {
            "median": statistics.median(regrets),
            "mean": statistics.fmean(regrets),
            "worst": max(regrets),
            "within_3x": (sum(near) / len(near)) if near else None,
            "diverging": sum(1 for s in picked if s.diverged),
            "failed": sum(1 for s in picked if s.regret >= 1.0),
            "missing": sum(1 for s in picked if s.outcome is None),
            "n": len(picked),
        }


def _score(grid: Grid, seed: int, lr: float, outcome: Outcome | None) -> Score:
    if outcome is None:  # no suggestion: the user is left with nothing; scored as a failure
        return Score(lr, None, 1.0, False)
    within = None if math.isnan(lr) else abs(math.log(lr / grid.best_lr)) <= math.log(3.0)
    return Score(lr, outcome, grid.regret(seed, outcome), within, grid.blew_up(seed, outcome))


def train_at(task: Task, lr: float, seed: int, cache: JsonCache) -> Outcome | None:
    """Train at a suggested LR (cached); ``None`` when there is no suggestion."""
    if not (math.isfinite(lr) and lr > 0):
        return None
    return cached_outcome(
        cache, outcome_key(task, lr, seed), lambda: training.train(task, lr, seed)
    )


def suggestions_for(curves: Curves) -> dict[str, float]:
    """Every finder's suggested LR on one (task, seed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", suggest_module.NoSuggestionWarning)
        out = {
            ours(name): curves.ours.suggestion(name).lr
            for name in sorted(suggest_module.registered())
        }
        out[VAL] = curves.val.suggestion().lr
        out[VAL_RUNNING] = curves.val_running.suggestion().lr
        out[FASTAI_VALLEY] = curves.fastai.suggestion("valley").lr
        out[FASTAI_MINIMUM] = curves.fastai.suggestion("minimum").lr
    out[LIGHTNING] = curves.lightning_lr
    out[TORCH_LR_FINDER] = curves.tlf_lr
    return out


def evaluate(
    tasks: Sequence[Task], grid_cache: JsonCache, runs_cache: JsonCache
) -> tuple[dict[str, Method], dict[str, Grid], dict[tuple[str, int], Curves]]:
    """Run everything; return the methods' scores, the grids and the curves."""
    methods: dict[str, Method] = {}
    grids: dict[str, Grid] = {}
    all_curves: dict[tuple[str, int], Curves] = {}

    def add(label: str, task: Task, seed: int, lr: float, outcome: Outcome | None) -> None:
        methods.setdefault(label, Method(label)).scores[(task.name, seed)] = _score(
            grids[task.name], seed, lr, outcome
        )

    for task in tasks:
        started = time.perf_counter()
        grids[task.name] = build_grid(task, grid_cache)
        grid_cache.flush()
        for seed in SEEDS:
            curves = collect(task, seed, runs_cache)
            all_curves[(task.name, seed)] = curves
            for label, lr in suggestions_for(curves).items():
                add(label, task, seed, lr, train_at(task, lr, seed, runs_cache))
            add_one_cycle(add, task, seed, curves, runs_cache)
            prodigy = cached_outcome(
                runs_cache,
                f"{task.key}|prodigy|seed={seed}",
                functools.partial(training.train_prodigy, task, seed),
            )
            add(PRODIGY, task, seed, math.nan, prodigy)
            free = cached_outcome(
                runs_cache,
                f"{task.key}|schedulefree|seed={seed}",
                functools.partial(training.train_schedule_free, task, seed),
            )
            add(SCHEDULE_FREE, task, seed, math.nan, free)
        runs_cache.flush()
        log.info("%s done in %.0fs", task.name, time.perf_counter() - started)
    return methods, grids, all_curves


def add_one_cycle(
    add: Callable[[str, Task, int, float, Outcome | None], None],
    task: Task,
    seed: int,
    curves: Curves,
    cache: JsonCache,
) -> None:
    """Train the default's suggestion under two OneCycleLR rules (budget = the task's steps):
    ``suggestion.one_cycle()`` and the rule of thumb ``max_lr = 3 x suggestion`` with PyTorch's
    other defaults (``div_factor=25``, ``final_div_factor=1e4``, ``pct_start=0.3``, cosine),
    momentum not cycled in either (PyTorch's cycling would switch momentum on for plain SGD)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", suggest_module.NoSuggestionWarning)
        suggestion = curves.ours.suggestion()
    if not suggestion.ok:
        add(ONE_CYCLE, task, seed, math.nan, None)
        add(ONE_CYCLE_3X, task, seed, math.nan, None)
        return
    groups = suggestion.group_lrs or (suggestion.lr,)
    rules = {
        ONE_CYCLE: suggestion.one_cycle(total_steps=task.steps),
        ONE_CYCLE_3X: {
            "max_lr": 3 * groups[0] if len(groups) == 1 else [3 * g for g in groups],
            "total_steps": task.steps,
            "cycle_momentum": False,
        },
    }
    for label, kwargs in rules.items():
        key = f"{task.key}|onecycle|{json.dumps(kwargs, sort_keys=True)}|seed={seed}"
        outcome = cached_outcome(
            cache, key, functools.partial(training.train_one_cycle, task, seed, kwargs)
        )
        add(label, task, seed, suggestion.lr, outcome)


# -- issue 15: held-out selection, confidence, the usable range, schedules, budgets -------------
def _add(
    methods: dict[str, Method],
    grids: dict[str, Grid],
    label: str,
    task: Task,
    seed: int,
    lr: float,
    outcome: Outcome | None,
) -> None:
    methods.setdefault(label, Method(label)).scores[(task.name, seed)] = _score(
        grids[task.name], seed, lr, outcome
    )


def held_out_selection(
    methods: dict[str, Method],
    grids: dict[str, Grid],
    curves: dict[tuple[str, int], Curves],
    tasks: Sequence[Task],
    cache: JsonCache,
) -> dict[str, Any]:
    """Choose margin's constants on the dev split, and once per family without that family;
    train at each choice's suggestions on the tasks it did not see (``DEV_CHOSEN``: every task,
    read on confirm; ``LOFO``: each task with the constants chosen without its family)."""
    ours_curves = {key: c.ours for key, c in curves.items()}
    names = [t.name for t in tasks]
    dev_pairs = [(n, s) for n in names if n in DEV_TASKS for s in SEEDS]
    chosen, robust = choose(ours_curves, grids, dev_pairs)
    log.info("dev choice: %s (robust dev mean %.4f)", chosen.describe(), robust)
    for task in tasks:
        for seed in SEEDS:
            lr = chosen.lr(ours_curves[(task.name, seed)])
            _add(methods, grids, DEV_CHOSEN, task, seed, lr, train_at(task, lr, seed, cache))
    folds: dict[str, Constants] = {}
    for family in dict.fromkeys(t.family for t in tasks):
        pairs = [(t.name, s) for t in tasks if t.family != family for s in SEEDS]
        folds[family], _ = choose(ours_curves, grids, pairs)
        log.info("without %s: %s", family, folds[family].describe())
        for task in (t for t in tasks if t.family == family):
            for seed in SEEDS:
                lr = folds[family].lr(ours_curves[(task.name, seed)])
                _add(methods, grids, LOFO, task, seed, lr, train_at(task, lr, seed, cache))
    return {"dev": chosen, "lofo": folds}


def _suggestion(curves: Curves) -> suggest_module.Suggestion:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", suggest_module.NoSuggestionWarning)
        return curves.ours.suggestion()


CONFIDENCE_BUCKETS: tuple[tuple[str, Callable[[float], bool]], ...] = (
    ("0 (no usable descent)", lambda c: c == 0),
    ("(0, 0.5)", lambda c: 0 < c < 0.5),
    ("[0.5, 1)", lambda c: 0.5 <= c < 1),
    ("1", lambda c: c == 1),
    ("not assessed (NaN)", lambda c: math.isnan(c)),
)


def _gain(grid: Grid, seed: int) -> float:
    """How much the best grid LR improves on the untrained model: ``1 - best / untrained``."""
    best = grid.effective(seed, grid.runs[seed][grid.best_index])
    return 1 - best / grid.untrained[seed] if grid.untrained[seed] > 0 else math.nan


def confidence_table(
    methods: dict[str, Method], grids: dict[str, Grid], curves: dict[tuple[str, int], Curves]
) -> tuple[str, str]:
    """Regret of the default by its confidence bucket; and every confidence-0 case, with how
    much training at the best grid LR gains at all (a curve that truly shows nothing)."""
    default = methods[ours(suggest_module.DEFAULT_METHOD)]
    lines = [
        "| confidence | runs | median regret | mean regret | worst regret | share regret > 0.1 "
        "| median gain of the best grid LR over the untrained loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    zero = [
        "| task | seed | regret | gain of the best grid LR | reason |",
        "|---|---:|---:|---:|---|",
    ]
    for name, test in CONFIDENCE_BUCKETS:
        keys = [k for k in default.scores if test(_suggestion(curves[k]).confidence)]
        if not keys:
            continue
        regrets = [default.scores[k].regret for k in keys]
        gains = [_gain(grids[t], s) for t, s in keys]
        lines.append(
            f"| {name} | {len(keys)} | {statistics.median(regrets):.3f} | "
            f"{statistics.fmean(regrets):.3f} | {max(regrets):.3f} | "
            f"{sum(r > 0.1 for r in regrets) / len(regrets):.0%} | {statistics.median(gains):.0%} |"
        )
        if name.startswith("0"):
            for t, s in keys:
                reason = _suggestion(curves[(t, s)]).reason.split(";")[0]
                zero.append(
                    f"| {t} | {s} | {default.scores[(t, s)].regret:.3f} | "
                    f"{_gain(grids[t], s):.0%} | {reason[:110]} |"
                )
    return "\n".join(lines), "\n".join(zero)


def range_ends(
    grids: dict[str, Grid],
    curves: dict[tuple[str, int], Curves],
    tasks: Sequence[Task],
    cache: JsonCache,
) -> dict[str, dict[str, list[float]]]:
    """Train at both ends of the default's usable range: ``{"lower"|"upper": {task: regrets}}``."""
    out: dict[str, dict[str, list[float]]] = {"lower": {}, "upper": {}}
    for task in tasks:
        for seed in SEEDS:
            suggestion = _suggestion(curves[(task.name, seed)])
            for end in ("lower", "upper"):
                lr = getattr(suggestion, end)
                outcome = train_at(task, lr, seed, cache)
                regret = 1.0 if outcome is None else grids[task.name].regret(seed, outcome)
                out[end].setdefault(task.name, []).append(regret)
    return out


def range_table(ends: dict[str, dict[str, list[float]]], splits: dict[str, Sequence[str]]) -> str:
    """The share of the usable range's ends that still train within regret 0.1, per split."""
    lines = [
        "| tasks | runs | lower end within regret 0.1 | upper end within regret 0.1 | both |",
        "|---|---:|---:|---:|---:|",
    ]
    for split, names in splits.items():
        lows = [r for n in names for r in ends["lower"].get(n, [])]
        highs = [r for n in names for r in ends["upper"].get(n, [])]
        both = [max(a, b) for a, b in zip(lows, highs, strict=True)]
        if not lows:
            continue
        lines.append(
            f"| {split} | {len(lows)} | {sum(r <= 0.1 for r in lows) / len(lows):.0%} | "
            f"{sum(r <= 0.1 for r in highs) / len(highs):.0%} | "
            f"{sum(r <= 0.1 for r in both) / len(both):.0%} |"
        )
    return "\n".join(lines)


def _signed_regret(grid: Grid, seed: int, score: Score) -> float:
    """Regret not clipped below 0 (negative: better than the best constant LR); 1 at worst."""
    if score.outcome is None or not math.isfinite(score.outcome.val_loss):
        return 1.0
    best = grid.effective(seed, grid.runs[seed][grid.best_index])
    span = grid.untrained[seed] - best
    return min(1.0, (score.outcome.val_loss - best) / span) if span > 0 else 1.0


def schedule_table(
    methods: dict[str, Method], grids: dict[str, Grid], splits: dict[str, Sequence[str]]
) -> str:
    """The default's constant LR and the two OneCycleLR rules against the best constant LR."""
    labels = [ours(suggest_module.DEFAULT_METHOD), *SCHEDULES]
    lines = [
        "| tasks | schedule | median regret | mean regret | worst regret | mean signed regret "
        "| beats the best constant LR | diverging |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for split, names in splits.items():
        for label in labels:
            picked = [(k, sc) for k, sc in methods[label].scores.items() if k[0] in names]
            if not picked:
                continue
            regrets = [sc.regret for _, sc in picked]
            signed = [_signed_regret(grids[t], s, sc) for (t, s), sc in picked]
            lines.append(
                f"| {split} | {label} | {statistics.median(regrets):.3f} | "
                f"{statistics.fmean(regrets):.3f} | {max(regrets):.3f} | "
                f"{statistics.fmean(signed):+.3f} | {sum(x < 0 for x in signed) / len(signed):.0%} "
                f"| {sum(sc.diverged for _, sc in picked)} |"
            )
    return "\n".join(lines)


BUDGET_PAIRS: tuple[tuple[str, str], ...] = (
    ("digits_mlp_sgd_short", "digits_mlp_sgd"),
    ("bars_cnn_adam_short", "bars_cnn_adam"),
    ("moons_mlp_adamw", "moons_mlp_adamw_long"),
)
"""``(shorter budget, longer budget)`` of one model, optimizer and batch size."""


def budget_table(methods: dict[str, Method], grids: dict[str, Grid]) -> str:
    """How far the best constant LR moves with the budget, and what ignoring that costs."""
    default = methods[ours(suggest_module.DEFAULT_METHOD)]
    lines = [
        "| task (steps) | best grid LR | longer/shorter budget's best LR here: mean regret "
        "| decades between the two best LRs | default's suggestion | its mean regret |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for short, long in BUDGET_PAIRS:
        if short not in grids or long not in grids:
            continue
        for here, other in ((short, long), (long, short)):
            grid, other_grid = grids[here], grids[other]
            regret = statistics.fmean(
                grid.regret(s, grid.runs[s][other_grid.best_index]) for s in SEEDS
            )
            lrs = [default.scores[(here, s)].lr for s in SEEDS]
            lines.append(
                f"| {here} ({by_name(here).steps}) | {grid.best_lr:.3g} | {regret:.3f} | "
                f"{math.log10(grid.best_lr / other_grid.best_lr):+.1f} | "
                f"{statistics.geometric_mean(lrs):.3g} | "
                f"{statistics.fmean(default.scores[(here, s)].regret for s in SEEDS):.3f} |"
            )
    return "\n".join(lines)


# -- reporting ------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(methods: dict[str, Method], tasks: Sequence[str] | None = None) -> str:
    """The per-method table (markdown), best mean regret first."""
    rows = sorted(methods.values(), key=lambda m: m.summary(tasks)["mean"])
    lines = [
        "| method | median regret | mean regret | worst regret | within 3x of best LR | diverging | regret 1 | no suggestion |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in rows:
        s = method.summary(tasks)
        share = None if s["within_3x"] is None else 100 * s["within_3x"]
        lines.append(
            f"| {method.label} | {_fmt(s['median'])} | {_fmt(s['mean'])} | {_fmt(s['worst'])} | "
            f"{'n/a' if share is None else f'{share:.0f}%'} | {s['diverging']} | {s['failed']} | "
            f"{s['missing']} |"
        )
    return "\n".join(lines)


def per_task_table(
    methods: dict[str, Method], grids: dict[str, Grid], labels: Sequence[str]
) -> str:
    """Mean regret per task (rows) for some methods (columns), with the task's family, split,
    budget (steps x batch) and best grid LR."""
    head = "| task | family | split | steps x batch | best grid LR | " + " | ".join(labels) + " |"
    lines = [head, "|---|---|---|---:|---:|" + "---:|" * len(labels)]
    for name, grid in grids.items():
        task = by_name(name)
        cells = []
        for label in labels:
            regrets = [methods[label].scores[(name, s)].regret for s in SEEDS]
            cells.append(f"{statistics.fmean(regrets):.3f}")
        lines.append(
            f"| {name} | {task.family} | {task.subset} | {task.steps} x {task.batch_size} | "
            f"{grid.best_lr:.3g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot(methods: dict[str, Method], grids: dict[str, Grid], out: Path) -> list[Path]:
    """One PNG per task (and an overview): the grid's held-out loss against LR, every method's
    suggestion marked at the held-out loss its training reached (one marker per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    finders = [
        m
        for m in methods.values()
        if m.label not in (*LR_FREE, *SCHEDULES, *VAL_CURVES, DEV_CHOSEN)
    ]
    markers = "ovs^<>Dph*P"
    paths = []
    columns = 5
    rows = -(-len(grids) // columns)
    overview, axes = plt.subplots(rows, columns, figsize=(6 * columns, 5 * rows))
    for i, (name, grid) in enumerate(grids.items()):
        single, ax_single = plt.subplots(figsize=(10, 6))
        for ax in (ax_single, axes.flat[i] if i < axes.size else None):
            if ax is None:
                continue
            means = grid.mean_losses()
            ax.plot(grid.lrs, means, color="black", linewidth=2, label="grid: mean held-out loss")
            for seed in SEEDS:
                ax.plot(
                    grid.lrs,
                    [grid.effective(seed, o) for o in grid.runs[seed]],
                    color="gray",
                    alpha=0.3,
                    linewidth=1,
                )
            ax.axvline(grid.best_lr, color="black", linestyle=":", label="best grid LR")
            for j, method in enumerate(finders):
                emphasis = method.label == ours(suggest_module.DEFAULT_METHOD)
                xs, ys = [], []
                for seed in SEEDS:
                    score = method.scores[(name, seed)]
                    if score.outcome is None or not math.isfinite(score.lr):
                        continue
                    xs.append(score.lr)
                    ys.append(grid.effective(seed, score.outcome))
                ax.scatter(
                    xs,
                    ys,
                    marker="*" if emphasis else markers[j % len(markers)],
                    s=220 if emphasis else 60,
                    color="red" if emphasis else f"C{j % 10}",
                    edgecolors="black" if emphasis else "none",
                    label=method.label,
                    zorder=4 if emphasis else 3,
                    alpha=1.0 if emphasis else 0.8,
                )
            for label, style in ((PRODIGY, "--"), (SCHEDULE_FREE, "-.")):
                losses = [
                    grid.effective(s, methods[label].scores[(name, s)].outcome)  # type: ignore[arg-type]
                    for s in SEEDS
                ]
                ax.axhline(
                    statistics.fmean(losses),
                    color="tab:olive" if style == "--" else "tab:cyan",
                    linestyle=style,
                    label=f"{label.split(' (')[0]}: mean loss",
                )
            ax.set_xscale("log")
            ax.set_xlabel("constant learning rate")
            ax.set_ylabel("held-out loss after the budget")
            ax.set_title(f"{name} (best grid LR {grid.best_lr:.3g})")
            ax.grid(True, which="both", alpha=0.3)
        ax_single.legend(fontsize=7, loc="best")
        path = out / f"{name}.png"
        single.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(single)
        paths.append(path)
    for unused in axes.flat[len(grids) :]:
        unused.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    overview.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    overview.tight_layout(rect=(0, 0.07, 1, 1))
    path = out / "overview.png"
    overview.savefig(path, dpi=70)
    plt.close(overview)
    return [path, *paths]


def machine() -> str:
    """CPU count, memory and Python, in words."""
    memory = "unknown memory"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    return f"{os.cpu_count()} CPU cores, {memory}, Python {platform.python_version()}"


def family_table(methods: dict[str, Method], tasks: Sequence[Task], labels: Sequence[str]) -> str:
    """Mean and worst regret per family for some methods."""
    lines = [
        "| family | tasks | " + " | ".join(labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for family in dict.fromkeys(t.family for t in tasks):
        names = [t.name for t in tasks if t.family == family]
        cells = []
        for label in labels:
            regrets = methods[label].regrets(names)
            cells.append(f"{statistics.fmean(regrets):.3f} / {max(regrets):.3f}")
        lines.append(f"| {family} | {len(names)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_revision() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE,
        ).stdout.strip()
        dirty = subprocess.run(
            # the run's own outputs (tables, plots, caches) do not count as changes
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "../..",
                ":!*.png",
                ":!*results.*",
                ":!*cache.json",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out + (" (uncommitted changes)" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print and write the tables."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fresh", action="store_true", help="recompute every run but the grid")
    parser.add_argument("--fresh-grid", action="store_true", help="recompute the grid too")
    parser.add_argument("--tasks", nargs="*", help="only these tasks (default: all)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("lrfinder_plugins").setLevel(logging.WARNING)  # one line per range test
    torch.set_num_threads(1)  # the machine is shared: one core, and runs are tiny anyway
    wall, cpu = time.perf_counter(), time.process_time()
    grid_cache = JsonCache(GRID_PATH, load=not args.fresh_grid)
    runs_cache = JsonCache(RUNS_PATH, load=not (args.fresh or args.fresh_grid))
    tasks = [t for t in TASKS if not args.tasks or t.name in args.tasks]
    methods, grids, curves = evaluate(tasks, grid_cache, runs_cache)
    chosen = held_out_selection(methods, grids, curves, tasks, runs_cache)
    ends = range_ends(grids, curves, tasks, runs_cache)
    grid_cache.flush()
    runs_cache.flush()
    default = ours(suggest_module.DEFAULT_METHOD)
    names = [t.name for t in tasks]
    dev = [n for n in names if n in DEV_TASKS]
    confirm = [n for n in names if n in CONFIRM_TASKS]
    splits = {"all": names, "dev": dev, "confirm": confirm}
    lofo_methods = {k: m for k, m in methods.items() if k not in (DEV_CHOSEN,)}
    families = dict.fromkeys(t.family for t in tasks)
    buckets, zero_cases = confidence_table(methods, grids, curves)
    revision = _git_revision()
    report = [
        f"# Suggestion quality: {len(tasks)} tasks in {len(families)} families x {len(SEEDS)} seeds",
        "",
        "Command: `nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.run "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} thread; "
        f"git revision {revision}. "
        f"This run: wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time() - cpu:.0f} s "
        "(runs found in the caches are not recomputed).",
        "",
        f"Shipped default constants: margin {suggest_module.MARGIN_DECADES} decades, smoothing "
        f"+-{suggest_module.SMOOTHING_DECADES}, fallback {suggest_module.FALLBACK_WIDTH_DECADES}. "
        f"Chosen on the dev split by `selection.py`: {chosen['dev'].describe()}.",
        "",
        "Leave-one-family-out choices (constants chosen on every task outside the family):",
        "",
        *(f"- without {f}: {c.describe()}" for f, c in chosen["lofo"].items()),
        "",
        "## Confirm split (the default's constants never saw these tasks)",
        "",
        table({k: m for k, m in methods.items() if k != LOFO}, confirm),
        "",
        "## Leave-one-family-out (every task; ours chosen without the task's family)",
        "",
        table(lofo_methods),
        "",
        "### Leave-one-family-out, per family (mean / worst regret)",
        "",
        family_table(methods, tasks, [LOFO, default, FASTAI_VALLEY, SCHEDULE_FREE]),
        "",
        "## All tasks",
        "",
        table(methods),
        "",
        f"## Dev split ({', '.join(dev)})",
        "",
        table(methods, dev),
        "",
        "## Regret by confidence (the default)",
        "",
        buckets,
        "",
        "Confidence-0 cases:",
        "",
        zero_cases,
        "",
        "## The usable range: do its ends still train?",
        "",
        range_table(ends, splits),
        "",
        "## OneCycleLR against the best constant LR",
        "",
        schedule_table(methods, grids, splits),
        "",
        "## The best constant LR depends on the budget",
        "",
        budget_table(methods, grids),
        "",
        "## Mean regret per task",
        "",
        per_task_table(
            methods,
            grids,
            [
                default,
                LOFO,
                VAL,
                VAL_RUNNING,
                FASTAI_VALLEY,
                LIGHTNING,
                TORCH_LR_FINDER,
                PRODIGY,
                SCHEDULE_FREE,
            ],
        ),
    ]
    text = "\n".join(report) + "\n"
    print(text)
    (HERE / "results.md").write_text(text)
    dump = {
        label: {
            "summary": m.summary(),
            "dev": m.summary(dev) if dev else None,
            "confirm": m.summary(confirm) if confirm else None,
            "scores": {
                f"{t}|{s}": {
                    "lr": sc.lr if math.isfinite(sc.lr) else None,
                    "regret": sc.regret,
                    "val_loss": None
                    if sc.outcome is None or not math.isfinite(sc.outcome.val_loss)
                    else sc.outcome.val_loss,
                    "diverged": None if sc.outcome is None else sc.diverged,
                }
                for (t, s), sc in m.scores.items()
            },
        }
        for label, m in methods.items()
    }
    (HERE / "results.json").write_text(json.dumps(dump, indent=1) + "\n")
    if not args.no_plots:
        for path in plot(methods, grids, HERE / "plots"):
            log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Suggestion-quality benchmark: every finder's suggestion, trained and scored against a grid.

Run from the repository root (one core, politely)::

    nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.run

For each task and seed it runs our ``find_lr`` (defaults), fastai's protocol (our engine),
Lightning's ``Tuner.lr_find`` and torch-lr-finder's ``range_test`` (the real packages, defaults);
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
from benchmarks.suggestion_quality.tasks import CONFIRM_TASKS, DEV_TASKS, SEEDS, TASKS, Task
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
LR_FREE = (PRODIGY, SCHEDULE_FREE)


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
    """Train with ``OneCycleLR(**suggestion.one_cycle(total_steps=budget))`` of the default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", suggest_module.NoSuggestionWarning)
        suggestion = curves.ours.suggestion()
    if not suggestion.ok:
        add(ONE_CYCLE, task, seed, math.nan, None)
        return
    kwargs = suggestion.one_cycle(total_steps=task.steps)
    key = f"{task.key}|onecycle|{json.dumps(kwargs, sort_keys=True)}|seed={seed}"
    outcome = cached_outcome(cache, key, lambda: training.train_one_cycle(task, seed, kwargs))
    add(ONE_CYCLE, task, seed, suggestion.lr, outcome)


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
    """Mean regret per task (rows) for some methods (columns), with the best grid LR."""
    head = "| task | best grid LR | " + " | ".join(labels) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(labels)]
    for name, grid in grids.items():
        cells = []
        for label in labels:
            regrets = [methods[label].scores[(name, s)].regret for s in SEEDS]
            cells.append(f"{statistics.fmean(regrets):.3f}")
        lines.append(f"| {name} | {grid.best_lr:.3g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(methods: dict[str, Method], grids: dict[str, Grid], out: Path) -> list[Path]:
    """One PNG per task (and an overview): the grid's held-out loss against LR, every method's
    suggestion marked at the held-out loss its training reached (one marker per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    finders = [m for m in methods.values() if m.label not in LR_FREE and m.label != ONE_CYCLE]
    markers = "ovs^<>Dph*P"
    paths = []
    overview, axes = plt.subplots(3, 4, figsize=(24, 15))
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
    methods, grids, _ = evaluate(tasks, grid_cache, runs_cache)
    grid_cache.flush()
    runs_cache.flush()
    default = ours(suggest_module.DEFAULT_METHOD)
    names = [t.name for t in tasks]
    dev = [n for n in names if n in DEV_TASKS]
    confirm = [n for n in names if n in CONFIRM_TASKS]
    report = [
        f"# Suggestion quality: {len(tasks)} tasks x {len(SEEDS)} seeds",
        "",
        "Command: `nice -n 10 .venv/bin/python -m benchmarks.suggestion_quality.run "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"Machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} thread. "
        f"This run: wall {time.perf_counter() - wall:.0f} s, CPU {time.process_time() - cpu:.0f} s "
        "(runs found in the caches are not recomputed).",
        "",
        "## All tasks",
        "",
        table(methods),
        "",
        f"## Dev split ({', '.join(dev)})",
        "",
        table(methods, dev),
        "",
        f"## Confirm split ({', '.join(confirm)})",
        "",
        table(methods, confirm),
        "",
        "## Mean regret per task",
        "",
        per_task_table(
            methods,
            grids,
            [default, FASTAI_VALLEY, LIGHTNING, TORCH_LR_FINDER, PRODIGY, SCHEDULE_FREE],
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

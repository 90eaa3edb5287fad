"""What a whole batch-size search costs against the bare steps it ran, and its throughput.

For each case, a search (``find_batch_size``) runs; then the same steps run in a bare loop:
for every size that fitted, ``steps_per_trial`` optimizer steps (``DataLoader`` fetch, forward,
backward, ``AdamW.step``) with no snapshot, no restore and no meter. The figure is the search's
wall time over the bare loop's. Each repeat is a fresh process that runs every case twice (a
warm-up, then the timed one); with ``--compare DIR`` (another version's source tree, e.g. the
commit before the meter ran only where it is read: ``git archive <commit> | tar -x -C DIR``)
the repeats alternate between this code and that one. Medians over the repeats.

The problem is the demo's (``lrfinder_plugins.demo.make_problem``: 4096 samples, MLP
32-128-128-10 with BatchNorm and dropout, AdamW), on one CPU thread.

Cases: ``guided`` and ``binsearch`` against the demo's 2 MiB ``memory_budget`` and against
the real limit (no budget; the dataset length, 4096, caps the sizes).

Usage:
    .venv/bin/python -m benchmarks.batch_size_overhead [--repeats 9] [--compare DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_plugins.demo import MEMORY_BUDGET, make_problem

ROOT = Path(__file__).resolve().parents[1]

STEPS = 3
CASES: dict[str, dict[str, Any]] = {
    "guided, 2 MiB budget": {"mode": "guided", "memory_budget": MEMORY_BUDGET},
    "binsearch, 2 MiB budget": {"mode": "binsearch", "memory_budget": MEMORY_BUDGET},
    "guided, no budget": {"mode": "guided", "memory_budget": None},
    "binsearch, no budget": {"mode": "binsearch", "memory_budget": None},
}


def bare_steps(model: torch.nn.Module, data: Any, sizes: list[int]) -> float:
    """Seconds for ``STEPS`` plain steps at each size (a fresh loader per size, as a trial)."""
    model = copy.deepcopy(model)  # the searches restore theirs; these steps train a copy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for size in sizes:
        loader = torch.utils.data.DataLoader(data, batch_size=size, drop_last=True)
        batches = iter(loader)
        for _ in range(STEPS):
            batch = next(batches, None)
            if batch is None:  # cycled, as a trial cycles its loader
                batches = iter(loader)
                batch = next(batches)
            inputs, targets = batch
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    return time.perf_counter() - start


def bare_rate(model: torch.nn.Module, data: Any, size: int) -> float:
    """Samples per second of ``STEPS`` bare steps at ``size`` (as a trial counts them)."""
    return size * STEPS / bare_steps(model, data, [size])


def run_cases(model: torch.nn.Module, data: Any) -> dict[str, Any]:
    """Every case once: the search's seconds, the bare steps' seconds, the first sizes' rates."""
    out: dict[str, Any] = {}
    for case, options in CASES.items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        result = find_batch_size(
            model,
            optimizer,
            torch.nn.functional.cross_entropy,
            dataset=data,
            progress=False,
            steps_per_trial=STEPS,
            **options,
        )
        seconds = time.perf_counter() - start
        fitted = [t.size for t in result.trials if t.fitted]
        rates = {
            t.size: (t.samples_per_second, bare_rate(model, data, t.size))
            for t in result.trials[:3]
            if t.samples_per_second is not None
        }
        out[case] = {
            "search": seconds,
            "bare": bare_steps(model, data, fitted),
            "trials": [t.size for t in result.trials],
            "rates": rates,
        }
    return out


def child() -> None:
    """One repeat of every case in this process (the code on ``sys.path``); JSON on stdout."""
    torch.set_num_threads(1)
    data, model = make_problem()
    run_cases(model, data)  # warm-up: imports, first allocations
    print(json.dumps(run_cases(model, data)))


def main(argv: list[str] | None = None) -> None:
    """Run every case ``--repeats`` times in fresh processes, interleaved with ``--compare``'s
    code when given, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a source tree of another version (e.g. `git archive <commit> | tar -x -C DIR`): "
        "its lrfinder_plugins and lrfinder_adapters run the same cases, interleaved",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child()
    trees: dict[str, Path | None] = {"this": None}
    if args.compare is not None:
        trees[f"{args.compare}"] = args.compare
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    for _ in range(args.repeats):
        for label, tree in trees.items():
            env = dict(os.environ, OMP_NUM_THREADS="1")
            if tree is not None:
                env["PYTHONPATH"] = os.pathsep.join([str(tree / "adapters"), str(tree)])
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.batch_size_overhead", "--child"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, one thread, "
        f"{args.repeats} repeats (fresh processes, interleaved), medians"
    )
    print("| code | case | trials | search s | bare steps s | search / bare |")
    print("|---|---|---|---|---|---|")
    for label, repeats in runs.items():
        for case in CASES:
            rows = [r[case] for r in repeats]
            search = statistics.median(r["search"] for r in rows)
            bare = statistics.median(r["bare"] for r in rows)
            ratio = statistics.median(r["search"] / r["bare"] for r in rows)
            print(
                f"| {label} | {case} | {len(rows[-1]['trials'])} | {search:.3f} | {bare:.3f} "
                f"| {ratio:.2f}x |"
            )
    print()
    print("Throughput a search reports at its first sizes / a bare loop's at them (medians):")
    for label, repeats in runs.items():
        for case in CASES:
            sizes = repeats[-1][case]["rates"]
            ratios = {
                size: statistics.median(
                    r[case]["rates"][size][0] / r[case]["rates"][size][1]
                    for r in repeats
                    if size in r[case]["rates"]
                )
                for size in sizes
            }
            text = ", ".join(f"{size}: {value:.2f}" for size, value in ratios.items())
            print(f"- {label}, {case}: {text}")


if __name__ == "__main__":
    main()

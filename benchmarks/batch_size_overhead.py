"""What a whole batch-size search costs against the bare steps it ran, and its throughput.

For each case, a search (``find_batch_size``) runs; then the same steps run in a bare loop:
for every size that fitted, ``steps_per_trial`` optimizer steps (``DataLoader`` fetch, forward,
backward, ``AdamW.step``) with no snapshot, no restore and no meter. The figure is the search's
wall time over the bare loop's (medians over interleaved repeats: search, bare, search, ...).
A ``meter-all`` row runs the same search with every trial fully under the memory meter (what
every trial cost before the meter ran only where the search reads it).

The problem is the demo's (``lrfinder_plugins.demo.make_problem``: 4096 samples, MLP
32-128-128-10 with BatchNorm and dropout, AdamW), on one CPU thread.

Cases: ``guided`` and ``binsearch`` against the demo's 2 MiB ``memory_budget``, and
``binsearch`` against the real limit (no budget; the dataset length caps it at 4096).

Usage:
    .venv/bin/python -m benchmarks.batch_size_overhead [--repeats 9]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_plugins import BatchSizeSearch
from lrfinder_plugins.demo import MEMORY_BUDGET, make_problem

STEPS = 3
CASES: dict[str, dict[str, Any]] = {
    "guided, 2 MiB budget": {"mode": "guided", "memory_budget": MEMORY_BUDGET},
    "binsearch, 2 MiB budget": {"mode": "binsearch", "memory_budget": MEMORY_BUDGET},
    "binsearch, no budget": {"mode": "binsearch", "memory_budget": None},
}


@contextmanager
def meter_everywhere() -> Iterator[None]:
    """Every trial read (so fully metered), as before the search said which it reads."""
    original = BatchSizeSearch.reads_profile
    BatchSizeSearch.reads_profile = property(lambda self: True)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        BatchSizeSearch.reads_profile = original  # type: ignore[method-assign]


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


def main(argv: list[str] | None = None) -> None:
    """Run every case ``--repeats`` times, interleaved, and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data, model = make_problem()
    loss = torch.nn.functional.cross_entropy
    rows: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, list[int]] = {}
    rates: dict[str, dict[int, list[tuple[float, float]]]] = {}

    def search(case: str, options: dict[str, Any]) -> Any:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        result = find_batch_size(
            model, optimizer, loss, dataset=data, progress=False, steps_per_trial=STEPS, **options
        )
        return result, time.perf_counter() - start

    runs: list[tuple[str, Callable[[], Any]]] = []
    for case, options in CASES.items():
        runs.append((case, lambda o=options, c=case: search(c, o)))
        runs.append((case + " (meter-all)", lambda o=options, c=case: _metered(search, c, o)))
    for _ in range(args.repeats):
        for name, run in runs:
            result, seconds = run()
            fitted = [t.size for t in result.trials if t.fitted]
            sizes[name] = [t.size for t in result.trials]
            bare = bare_steps(model, data, fitted)
            row = rows.setdefault(name, {"search": [], "bare": [], "ratio": []})
            row["search"].append(seconds)
            row["bare"].append(bare)
            row["ratio"].append(seconds / bare)
            if name == "binsearch, no budget" or name.endswith("(meter-all)"):
                for trial in result.trials[:3]:  # the small sizes: 2, 4, 8
                    if trial.samples_per_second is not None:
                        pair = (trial.samples_per_second, bare_rate(model, data, trial.size))
                        rates.setdefault(name, {}).setdefault(trial.size, []).append(pair)
    print(f"torch {torch.__version__}, one thread, {args.repeats} interleaved repeats, medians")
    print("| case | trials | search s | bare steps s | search / bare |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        print(
            f"| {name} | {len(sizes[name])} | {med['search']:.3f} | {med['bare']:.3f} "
            f"| {med['ratio']:.2f}x |"
        )
    print()
    print("Throughput the search reports at its first sizes / a bare loop's (medians):")
    for name, by_size in rates.items():
        ratios = {
            size: statistics.median(s / b for s, b in pairs) for size, pairs in by_size.items()
        }
        print(f"- {name}: " + ", ".join(f"{size}: {r:.2f}" for size, r in ratios.items()))


def _metered(search: Callable[[str, dict[str, Any]], Any], case: str, options: Any) -> Any:
    with meter_everywhere():
        return search(case, options)


if __name__ == "__main__":
    main()

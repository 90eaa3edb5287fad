"""How the suggestion methods scale with the number of points (issue 14, item 2).

For each size, a fresh synthetic curve (a sigmoid descent, a late blow-up, 5% noise; LRs from
1e-7 to 10, exponential) is read by ``result.suggestions()`` (every registered method, one
shared curve analysis) and by each method alone (the analysis cache emptied first, so each pays
it), and fastai's valley rule as fastai computes it (the O(n^2) double loop, the peer) is timed
against ours (O(n log n)) on the same smoothed points, up to ``--peer-max`` points (it takes
minutes beyond). Times are the median of ``--repeat`` runs.

Usage (the RESULTS.md figures):
    .venv/bin/python -m benchmarks.suggestion_scaling --repeat 3
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time
import warnings
from collections.abc import Callable

from lrfinder_plugins import RangeTestResult, StopReason
from lrfinder_plugins import suggest as _suggest
from lrfinder_plugins.suggest import ema, longest_decreasing_run, registered


def curve(n: int, seed: int = 0) -> RangeTestResult:
    """A range-test result of ``n`` points with a descent, a minimum and a blow-up."""
    rnd = random.Random(seed)
    lrs = [1e-7 * (10 / 1e-7) ** (i / (n - 1)) for i in range(n)]
    losses = [
        2.0 / (1 + math.exp((i / n - 0.6) * 12))
        + 0.5
        + math.exp((i / n - 0.85) * 30)
        + 0.05 * rnd.random()
        for i in range(n)
    ]
    smoothed = ema(losses, 0.98)
    return RangeTestResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed,
        stop_reason=StopReason.BUDGET,
        options={"num_iter": n, "start_lr": 1e-7, "end_lr": 10.0},
    )


def quadratic_run(losses: list[float]) -> tuple[int, int]:
    """fastai's valley double loop (the peer)."""
    run = [1] * len(losses)
    best_end, best_start = 0, 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[best_end] < run[i]:
                best_end, best_start = i, i - run[i]
    return best_start, best_end


def timed(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        _suggest._ANALYSES.clear()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--peer-max", type=int, default=10_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    methods = registered()
    header = ["points", "suggestions()", *methods, "fastai valley loop", "ours / fastai loop"]
    print(" | ".join(header))
    for n in args.sizes:
        result = curve(n)
        row = [f"{n:,}", f"{timed(result.suggestions, args.repeat):.3f} s"]
        for fn in methods.values():
            row.append(f"{timed(lambda fn=fn, r=result: fn(r), args.repeat) * 1000:.1f} ms")
        points = ema(result.losses, 0.98)
        if n <= args.peer_max:
            ours = timed(lambda p=points: longest_decreasing_run(p), args.repeat)
            peer = timed(lambda p=points: quadratic_run(p), 1)
            if longest_decreasing_run(points) != quadratic_run(points):
                raise RuntimeError(f"the two valley forms disagree at {n} points")
            row += [f"{peer:.3f} s", f"{ours / peer:.5f}"]
        else:
            row += ["(not run)", "-"]
        print(" | ".join(row))


if __name__ == "__main__":
    main()

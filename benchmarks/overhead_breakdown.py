"""Where a small-step range test's overhead goes: fixed costs per test, and the engine per step.

Two measurements, on the smallest model of ``benchmarks.overhead`` (MLP 64-16-16-10, SGD,
batch 16, one thread):

1. Fixed costs: ``find_lr(num_iter=2)`` against two bare steps, with each part of the test
   timed on its own (the finder's and step's set-up, the session, the snapshot and its RNG
   part, the restore and its RNG part, the session's end), medians over ``--calls`` calls.
2. The engine per step: ``run_range_test`` driving a step that does nothing (``run()`` returns
   a float) for 100 and 10,000 points: what the session, the test and the driver add per step.
3. The same parts in place (``--in-place``): a 100-step ``find_lr`` and a 100-step bare loop
   take turns, as in ``benchmarks.overhead``, so each part runs after the other loop's steps
   have filled the caches, as it does for a user; an optimizer step hook stamps every step's
   end, which splits each run into the time before its first step ended, the steps between,
   and the time after its last step. A third run drives a minimal step (the bare loop's body,
   no snapshot) through ``run_range_test``: between it and the bare loop is the engine's cost
   per step in place, between it and ``find_lr`` the ``TorchStep``'s.

Usage:
    .venv/bin/python -m benchmarks.overhead_breakdown [--calls 250] [--in-place 40]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy
import torch

import lrfinder_adapters._torch_state as torch_state
import lrfinder_adapters.pytorch as pytorch
import lrfinder_plugins._driver as driver
from benchmarks.overhead import bare_loop, make
from lrfinder_plugins import RangeTest

PARTS: tuple[tuple[Any, str, str], ...] = (
    (pytorch.LearningRateFinder, "__init__", "finder set-up (checks)"),
    (pytorch.LearningRateFinder, "prepare", "prepare (argument checks, TorchStep, RangeTest)"),
    (pytorch.TorchStep, "__init__", "  of which TorchStep set-up"),
    (driver.RangeTestSession, "__init__", "session set-up"),
    (pytorch.TorchStep, "snapshot", "snapshot"),
    (torch_state.RngState, "capture", "  of which RNG states"),
    (pytorch.TorchStep, "restore", "restore"),
    (torch_state.RngState, "restore", "  of which RNG states"),
    (driver.RangeTestSession, "finish", "session end"),
)


def _timed(times: dict[str, list[float]], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times.setdefault(label, []).append(time.perf_counter() - start)

    return wrapper


class _MinimalStep:
    """A hand-written loop's step behind the engine: what is left is the engine's cost in place.

    ``run()`` is ``bare_loop``'s body (fetch, ``zero_grad``, forward and loss, backward, step,
    ``loss.item()``); the snapshot only restarts the loader, the restore does nothing.
    """

    reducer = None

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: torch.utils.data.DataLoader,
    ) -> None:
        self.model, self.optimizer, self.loader = model, optimizer, loader
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.batches: Any = None
        self.loss: Any = None

    def snapshot(self) -> None:
        self.batches = iter(self.loader)

    def restore(self, snapshot: None) -> None:
        self.loss = None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def run(self) -> float:
        inputs, targets = next(self.batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.loss = loss  # as a loop's variable keeps it until the next step
        self.optimizer.step()
        return loss.item()


class _NoStep:
    """A training step that does nothing: what is left is the engine's own cost."""

    reducer = None

    def snapshot(self) -> None:
        return None

    def restore(self, snapshot: None) -> None:
        pass

    def set_lr(self, lr: float) -> None:
        pass

    def run(self) -> float:
        return 1.0


RNG_PARTS: tuple[tuple[Any, str, str], ...] = (
    (random, "getstate", "    Python random.getstate"),
    (numpy.random, "get_state", "    NumPy get_state"),
    (torch, "get_rng_state", "    torch.get_rng_state"),
    (random, "setstate", "    Python random.setstate"),
    (numpy.random, "set_state", "    NumPy set_state"),
    (torch, "set_rng_state", "    torch.set_rng_state"),
)


def in_place(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    repeats: int,
) -> None:
    """Print each part's median time within 100-step runs that alternate with bare loops."""
    loss_fn = torch.nn.CrossEntropyLoss()
    stamps: list[float] = []
    handle = optimizer.register_step_post_hook(lambda *_: stamps.append(time.perf_counter()))

    def ours() -> None:
        pytorch.find_lr(
            model, optimizer, loss_fn, loader, num_iter=100, diverge_threshold=1e300, progress=False
        )

    def bare() -> None:
        bare_loop(model, optimizer, loader, steps=100)

    minimal = _MinimalStep(model, optimizer, loader)

    def engine() -> None:
        driver.run_range_test(
            minimal, RangeTest(num_iter=100, diverge_threshold=1e300), progress=False
        )

    runs = {"bare": bare, "engine + minimal step": engine, "ours": ours}
    for _ in range(3):  # warm-up
        for fn in runs.values():
            fn()
    parts: dict[str, list[float]] = {}
    split: dict[str, list[tuple[float, float, float, float]]] = {which: [] for which in runs}
    wrapped = PARTS + RNG_PARTS
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    try:
        for (owner, name, label), (_, _, fn) in zip(wrapped, originals):
            setattr(owner, name, _timed(parts, label, fn))
        for i in range(repeats):
            order = list(runs.items())
            for which, fn in order[i % 3 :] + order[: i % 3]:  # each goes first in turn
                stamps.clear()
                start = time.perf_counter()
                fn()
                end = time.perf_counter()
                gaps = [b - a for a, b in itertools.pairwise(stamps)]
                split[which].append(
                    (end - start, stamps[0] - start, statistics.median(gaps), end - stamps[-1])
                )
    finally:
        handle.remove()
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    us = 1e6
    print(f"\nIn place: {repeats} 100-step runs each, taking turns")
    print("| part of a 100-step find_lr, in place | µs (median) |")
    print("|---|---:|")
    for _, _, label in wrapped:
        print(f"| {label} | {statistics.median(parts[label]) * us:.0f} |")
    print()
    print(
        "| run | whole (ms) | until its first step ended (µs) | a step (µs) | after its last step (µs) |"
    )
    print("|---|---:|---:|---:|---:|")
    for which in runs:
        whole, first, gap, after = (statistics.median(c) for c in zip(*split[which]))
        print(
            f"| {which} | {whole * 1e3:.2f} | {first * us:.0f} | {gap * us:.1f} | {after * us:.0f} |"
        )


def main(argv: list[str] | None = None) -> int:
    """Print the fixed-cost table and the engine's cost per step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=250)
    parser.add_argument(
        "--in-place", type=int, default=0, metavar="REPEATS", help="also time the parts in place"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, optimizer, loader = make(16, 16, optimizer="sgd")
    loss_fn = torch.nn.CrossEntropyLoss()

    def ours() -> None:
        pytorch.find_lr(
            model, optimizer, loss_fn, loader, num_iter=2, diverge_threshold=1e300, progress=False
        )

    def bare() -> None:
        bare_loop(model, optimizer, loader, steps=2)

    totals: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(20):  # warm-up
        ours()
        bare()
    for _ in range(args.calls):  # unwrapped: the totals carry no timing wrapper
        for name, fn in (("ours", ours), ("bare", bare)):
            start = time.perf_counter()
            fn()
            totals[name].append(time.perf_counter() - start)
    parts: dict[str, list[float]] = {}
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]
    try:
        for (owner, name, label), (_, _, fn) in zip(PARTS, originals):
            setattr(owner, name, _timed(parts, label, fn))
        for _ in range(args.calls):
            ours()
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    us = 1e6
    ours_t, bare_t = statistics.median(totals["ours"]), statistics.median(totals["bare"])
    print(f"{platform.machine()}, torch {torch.__version__}, one thread, {args.calls} calls")
    print("| part of find_lr(num_iter=2) | µs (median) |")
    print("|---|---:|")
    for _, _, label in PARTS:
        print(f"| {label} | {statistics.median(parts[label]) * us:.0f} |")
    print(f"| find_lr(num_iter=2), whole | {ours_t * us:.0f} |")
    print(f"| two bare steps | {bare_t * us:.0f} |")
    print(f"| difference | {(ours_t - bare_t) * us:.0f} |")
    print()
    print("| engine alone, a step that does nothing | µs per step (median of 20) |")
    print("|---|---:|")
    for points in (100, 10_000):
        runs = []
        for _ in range(20):
            start = time.perf_counter()
            driver.run_range_test(
                _NoStep(), RangeTest(num_iter=points, diverge_threshold=None), progress=False
            )
            runs.append(time.perf_counter() - start)
        print(f"| {points} points | {statistics.median(runs) / points * us:.2f} |")
    if args.in_place:
        in_place(model, optimizer, loader, args.in_place)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

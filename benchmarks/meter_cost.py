"""What the batch-size meter costs per step, against a bare step and a do-nothing dispatch mode.

One training step of the demo's model (``lrfinder_plugins.demo.make_problem``: MLP 32-128-128-10
with BatchNorm and dropout, AdamW) at a small batch, on one CPU thread, three ways, interleaved
in rounds: bare; under a ``TorchDispatchMode`` that only calls each operator (the floor of any
op-by-op meter written in Python); under :class:`lrfinder_adapters._memory.TensorMeter` with a
``memory_budget`` (what a budgeted trial's metered step pays). Prints medians over the rounds,
in microseconds per step, and the ratios to the bare step.

Usage:
    .venv/bin/python -m benchmarks.meter_cost [--batch 8] [--steps 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrfinder_adapters._memory import TensorMeter
from lrfinder_plugins.demo import make_problem


class CallOnly(TorchDispatchMode):
    """A dispatch mode that only calls the operator."""

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        return func(*args, **(kwargs or {}))


def main(argv: list[str] | None = None) -> int:
    """Print the per-step cost of each way, and its ratio to the bare step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data, model = make_problem()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs, targets = data.tensors[0][: args.batch], data.tensors[1][: args.batch]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()

    ways: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "bare": contextlib.nullcontext,
        "dispatch mode, call only": CallOnly,
        "TensorMeter with a budget": lambda: TensorMeter(2**30),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            for _ in range(20):
                with way():
                    step()
            start = time.perf_counter()
            for _ in range(args.steps):
                with way():
                    step()
            times[name].append((time.perf_counter() - start) / args.steps * 1e6)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, one thread, batch {args.batch}, medians of {args.rounds}")
    print("| way | us per step | / bare |")
    print("|---|---:|---:|")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"| {name} | {value:.0f} | {value / bare:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

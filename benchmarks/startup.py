"""Start-up: ``lrfinder demo`` against a hand-written script doing the same range test, fresh processes.

Contenders, each a fresh ``python`` process (so every import is paid), alternating, the first
one rotating every repeat:

- ``lrfinder demo --no-progress``: the batch-size search (with the noise scale), the range test
  at the size found, two plots and two JSON files.
- ``hand-written``: what a user writes without us: import torch and matplotlib, the demo's data
  and model (``make_problem``), AdamW, the same 100-step exponential sweep at a fixed batch,
  ``loss.item()`` each step, one PNG of the curve.
- ``import torch + one AdamW step``: the floor every torch program pays (torch's import, and the
  first optimizer's lazy ``torch._dynamo`` import).

``--busy`` keeps one core busy with another process for the whole run (the issue's "machine is
busy" condition: one other process holding a core). Reported: median wall and CPU seconds (the
child's user + system time) and the paired ratio against the hand-written script.

Usage:
    .venv/bin/python -m benchmarks.startup --repeats 5 --busy
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HAND_WRITTEN = """
import torch, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from lrfinder_plugins.demo import make_problem
torch.set_num_threads(1)
dataset, model = make_problem()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True)
lrs, losses, batches = [], [], iter(loader)
for i in range(100):
    try:
        x, y = next(batches)
    except StopIteration:
        batches = iter(loader)
        x, y = next(batches)
    lr = 1e-7 * (10.0 / 1e-7) ** (i / 99)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    lrs.append(lr)
    losses.append(loss.item())
fig, ax = plt.subplots(figsize=(8, 5))
ax.plot(lrs, losses)
ax.set_xscale("log")
fig.savefig(sys.argv[1] + "/curve.png", dpi=120)
"""

FLOOR = """
import torch
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model(torch.ones(1, 4)).sum().backward()
optimizer.step()
"""


def command(name: str, out: str) -> list[str]:
    """The argv of one contender writing into ``out``."""
    if name == "lrfinder demo":
        script = "from lrfinder_plugins.cli import main; main()"
        return [sys.executable, "-c", script, "demo", "--no-progress", "--output-dir", out]
    source = "import sys\n" + (HAND_WRITTEN if name == "hand-written" else FLOOR)
    return [sys.executable, "-c", source, out]


def run_once(name: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh process."""
    with tempfile.TemporaryDirectory(prefix="lrf-startup-") as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command(name, out), check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _spin() -> None:  # pragma: no cover - runs in the busy process
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="hold one core with another process")
    args = parser.parse_args()
    names = ["lrfinder demo", "hand-written", "import torch + one AdamW step"]
    busy = None
    if args.busy:
        busy = multiprocessing.Process(target=_spin, daemon=True)
        busy.start()
    try:
        for name in names:  # warm the page cache and .pyc files
            run_once(name)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(run_once(name))
    finally:
        if busy is not None:
            busy.terminate()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{'one core held by a busy process' if args.busy else 'no extra load'}, "
        f"Python {platform.python_version()}, {args.repeats} repeats"
    )
    base = times["hand-written"]
    for name in names:
        walls = [w for w, _ in times[name]]
        cpus = [c for _, c in times[name]]
        ratio = statistics.median(w / b for (w, _), (b, _) in zip(times[name], base))
        print(
            f"{name:>32}: wall {statistics.median(walls):5.2f} s, CPU {statistics.median(cpus):5.2f} s,"
            f" wall / hand-written {ratio:.2f}"
        )


if __name__ == "__main__":
    main()

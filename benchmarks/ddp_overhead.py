"""Per-step overhead of the distributed LR range test against a bare 2-process DDP loop.

Every rank runs, on the same DDP-wrapped MLP (64-W-W-1, ReLU, a tanh output so the loss stays
finite up to LR 10 and every test runs all its steps; SGD with momentum 0.9, MSE loss) and the
same pre-made batches (a list in memory, one batch per step, sharded per rank), these
contenders, interleaved, the first one rotating every repeat:

- ``bare``: a hand-written loop of the same steps: every param group's LR set from the
  exponential schedule 1e-7..10 (``lr = start * (end / start) ** (i / (n - 1))``), zero_grad,
  forward, MSE loss, backward (DDP all-reduces the gradients), ``optimizer.step()``, then a
  ``dist.all_reduce`` of the detached loss and ``.item()`` on it (the loss every rank records
  each step). To be fair to ours, which saves and restores the training state, it copies the
  model's and the optimizer's ``state_dict`` to CPU memory before the loop and loads them back
  after it.
- ``bare, no snapshot``: the same loop without the copy and the load.
- ``ours``: ``lrfinder_adapters.pytorch.find_lr(model, optimizer, mse, batches, start_lr=1e-7,
  end_lr=10, num_iter=steps, diverge_threshold=None, progress=False)``: snapshot, the steps
  (one asynchronous ``all_reduce`` of two float64 per step on the search's private gloo group,
  waited for after the next step: the default ``overlap``) and restore.
- ``ours, no overlap``: the same with ``overlap=False``: each step's reduce waited for at the
  end of that step.
- with ``--diagnose``, ``bare, 6-float reduce``: ``bare``, but each step all-reduces 6 float64
  numbers (loss x samples, samples, 4 zeros) on a private gloo group opened once beforehand, as
  our reducer does; ours / this isolates what is ours beyond the collective.

Each call is timed with ``time.perf_counter()`` around the whole of it, after a
``dist.barrier()`` (outside the timed region) so both ranks start together; a call's time is the
slower rank's. Before every call the model and optimizer are put back (untimed) to the same
starting state (weights and momentum buffers after two small steps), so every contender does
the same arithmetic. One untimed call of each contender warms up first. Reported per width: the
median wall time per step of each contender, and the median, min and max over repeats of the
ratio ours / X paired within a repeat, with the ratio of the fastest runs. ``--json`` also gets
every run's wall time and both ranks' CPU time.

Usage (2 processes; only rank 0 prints; the RESULTS.md figures):
    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        benchmarks/ddp_overhead.py --repeat 21 --diagnose --json /tmp/ddp_overhead.json

Options: ``--steps 100`` (steps per test), ``--repeat 9``, ``--width 64 512 768`` (on 2 CPU
cores about 5-7, 12 and 17-20 ms per step), ``--batch 64`` (samples per rank and step),
``--diagnose``, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lrfinder_adapters.pytorch import find_lr

FEATURES = 64
START_LR, END_LR = 1e-7, 10.0
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def make(
    width: int, batch: int, steps: int, rank: int, world: int
) -> tuple[nn.Module, torch.optim.Optimizer, Batches]:
    """The DDP model, its optimizer and this rank's shard of ``steps`` global batches."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(FEATURES, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 1),
        nn.Tanh(),  # a bounded output: the loss stays finite up to LR 10, so all steps run
    )
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(FEATURES, 1, generator=gen)
    batches = []
    for _ in range(steps):  # one batch per step: nothing is cycled
        x = torch.randn(batch * world, FEATURES, generator=gen)
        y = torch.tanh(x @ w / 8) + 0.1 * torch.randn(batch * world, 1, generator=gen)
        batches.append((x[rank::world].contiguous(), y[rank::world].contiguous()))
    # Two small steps, so the state every contender starts from has momentum buffers.
    for x, y in batches[:2]:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.mse_loss(ddp(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return ddp, optimizer, batches


def save_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """CPU copies of the model's and the optimizer's state_dict."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),
    )


def load_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: tuple[Any, Any]) -> None:
    model.load_state_dict(state[0])
    optimizer.load_state_dict(state[1])


def bare_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    steps: int,
    vector_group: Any = None,
) -> list[float]:
    """What a user would write by hand: exponential LR, one step per batch, the reduced loss.

    ``vector_group``: instead of the loss alone, all-reduce 6 float64 numbers on that group, as
    our reducer does (the ``--diagnose`` contender).
    """
    losses: list[float] = []
    world = dist.get_world_size()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        lr = START_LR * (END_LR / START_LR) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if vector_group is None:
            reduced = loss.detach().clone()
            dist.all_reduce(reduced)
            losses.append(reduced.item() / world)
        else:
            n = float(x.shape[0])
            values = torch.tensor([loss.item() * n, n, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
            dist.all_reduce(values, group=vector_group)
            total = values.tolist()
            losses.append(total[0] / total[1])
    return losses


def bare(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, steps: int) -> None:
    saved = save_state(model, optimizer)
    bare_loop(model, optimizer, batches, steps)
    load_state(model, optimizer, saved)


def bare_no_snapshot(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, steps: int
) -> None:
    bare_loop(model, optimizer, batches, steps)


def ours(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    steps: int,
    overlap: bool | None = None,
) -> None:
    result = find_lr(
        model,
        optimizer,
        nn.functional.mse_loss,
        batches,
        start_lr=START_LR,
        end_lr=END_LR,
        num_iter=steps,
        diverge_threshold=None,
        progress=False,
        overlap=overlap,
    )
    if len(result) != steps:
        raise RuntimeError(
            f"the range test ran {len(result)} of {steps} steps (stopped: {result.stop_reason})"
        )


def bare_vector(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, steps: int, group: Any
) -> None:
    saved = save_state(model, optimizer)
    bare_loop(model, optimizer, batches, steps, vector_group=group)
    load_state(model, optimizer, saved)


def contenders(diagnose: bool) -> dict[str, Callable[..., None]]:
    out: dict[str, Callable[..., None]] = {
        "bare": bare,
        "bare, no snapshot": bare_no_snapshot,
        "ours": ours,
        # The same search deciding each step at its end (overlap=False): its reduce not
        # overlapped with the next step, as before overlap existed.
        "ours, no overlap": lambda *args: ours(*args, overlap=False),
    }
    if diagnose:
        # Opened once, outside the timed region: ours opens (and closes) its own in every test.
        group = dist.new_group(backend="gloo")
        out["bare, 6-float reduce"] = lambda *args: bare_vector(*args, group)
    return out


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, steal time included)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed(
    fn: Callable[..., None], setup: Callable[[], None], *args: Any
) -> tuple[float, float, float]:
    """One call: the slower rank's wall seconds, both ranks' CPU seconds, and the cores that
    other programs (and the hypervisor's steal) kept busy meanwhile, on average.

    The setup and the barrier are not timed. The numbers are reduced, so every rank has the same.
    """
    setup()
    dist.barrier()
    busy, cpu, start = busy_seconds(), time.process_time(), time.perf_counter()
    fn(*args)
    elapsed = time.perf_counter() - start
    used, busy = time.process_time() - cpu, busy_seconds() - busy
    numbers = torch.tensor([elapsed, busy], dtype=torch.float64)
    dist.all_reduce(numbers, op=dist.ReduceOp.MAX)
    total_used = torch.tensor([used], dtype=torch.float64)
    dist.all_reduce(total_used)
    elapsed, busy = numbers.tolist()
    used = float(total_used.item())
    return elapsed, used, max(0.0, busy - used) / elapsed


def paired(ours: list[float], base: list[float]) -> dict[str, float]:
    """The ratios ours / base paired by repeat: median, min, max; and the fastest runs' ratio."""
    ratios = [o / b for o, b in zip(ours, base)]
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "of_fastest": min(ours) / min(base),
    }


def bench_width(
    width: int,
    batch: int,
    steps: int,
    repeat: int,
    rank: int,
    world: int,
    contestants: dict[str, Callable[..., None]],
    max_foreign: float,
    max_attempts: int,
) -> dict[str, Any]:
    model, optimizer, batches = make(width, batch, steps, rank, world)
    start_state = save_state(model, optimizer)

    def reset() -> None:
        # A copy: optimizer.load_state_dict keeps the tensors it is given, and steps change them.
        load_state(model, optimizer, copy.deepcopy(start_state))
        optimizer.zero_grad(set_to_none=True)

    args = (model, optimizer, batches, steps)
    for fn in contestants.values():  # warm-up
        timed(fn, reset, *args)
    wall: dict[str, list[float]] = {name: [] for name in contestants}
    cpu: dict[str, list[float]] = {name: [] for name in contestants}
    foreign_kept: list[float] = []
    discarded: list[float] = []
    order = list(contestants.items())
    attempt = 0
    while len(wall["ours"]) < repeat and attempt < max_attempts:
        # Rotate who goes first each repeat, so warm caches and clocks favour no one.
        shift = attempt % len(order)
        attempt += 1
        runs = {name: timed(fn, reset, *args) for name, fn in order[shift:] + order[:shift]}
        foreign = max(run[2] for run in runs.values())
        if foreign > max_foreign:  # another program ran meanwhile: this repeat is not kept
            discarded.append(foreign)
            continue
        foreign_kept.append(foreign)
        for name, (seconds, cpu_seconds, _) in runs.items():
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds)
    if not wall["ours"]:
        raise RuntimeError(
            f"width {width}: every one of {attempt} repeats ran beside another program (more "
            f"than {max_foreign} of a core); raise --max-foreign or --max-attempts"
        )
    bases = [name for name in contestants if name != "ours"]
    return {
        "width": width,
        "params": sum(p.numel() for p in model.parameters()),
        "batch_per_rank": batch,
        "repeats_kept": len(wall["ours"]),
        "repeats_discarded": len(discarded),
        "foreign_cores_kept": foreign_kept,
        "foreign_cores_discarded": discarded,
        "wall_s": wall,
        "cpu_s_both_ranks": cpu,
        "median_ms_per_step": {
            name: statistics.median(samples) / steps * 1000 for name, samples in wall.items()
        },
        "ours_over": {name: paired(wall["ours"], wall[name]) for name in bases},
        "cpu_ours_over": {name: paired(cpu["ours"], cpu[name]) for name in bases},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--width", type=int, nargs="+", default=[64, 512, 768])
    parser.add_argument("--batch", type=int, default=64, help="samples per rank and step")
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="add a bare loop that all-reduces 6 float64 numbers (as ours) on a private group",
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=math.inf,
        help="drop a repeat in which other programs kept more than this many cores busy on "
        "average during any of its calls (e.g. 0.1 on a machine that is mostly idle; default: "
        "keep every repeat)",
    )
    parser.add_argument(
        "--max-attempts", type=int, default=None, help="repeats tried at most (default 3 x repeat)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures there")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    contestants = contenders(args.diagnose)
    results = [
        bench_width(
            width,
            args.batch,
            args.steps,
            args.repeat,
            rank,
            world,
            contestants,
            args.max_foreign,
            args.max_attempts or 3 * args.repeat,
        )
        for width in args.width
    ]
    if rank == 0:
        report(args, world, results)
    dist.destroy_process_group()


def report(args: argparse.Namespace, world: int, results: list[dict[str, Any]]) -> None:
    """Print the table (rank 0) and write the figures to ``--json``."""
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, gloo, {world} processes, "
        "1 thread each"
    )
    print(
        f"model: DDP(MLP {FEATURES}-W-W-1, ReLU, tanh out), SGD momentum 0.9, MSE, batch "
        f"{args.batch} per rank, {args.steps} steps, {args.repeat} repeats"
    )
    print(
        "ms/step: the median wall time per step over repeats. ours / X: the median (min-max) "
        "over repeats of the ratio paired within a repeat, [the fastest runs' ratio]"
    )
    short = {
        "bare": "bare",
        "bare, no snapshot": "no-snap",
        "bare, 6-float reduce": "6-float",
        "ours, no overlap": "no-overlap",
    }
    names = list(results[0]["median_ms_per_step"])
    bases = [n for n in names if n != "ours"]
    columns = [f"{short.get(n, n)} ms/step" for n in names]
    columns += [f"ours / {short[n]}" for n in bases]
    head = f"{'width':>6} {'params':>8} {'kept':>5} {'others':>6} | "
    print(head + " | ".join(f"{c:>27}" for c in columns))

    def ratio(r: dict[str, float]) -> str:
        return f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f}) [{r['of_fastest']:.3f}]"

    for res in results:
        ms = res["median_ms_per_step"]
        cells = [f"{ms[n]:.2f}" for n in names]
        cells += [ratio(res["ours_over"][n]) for n in bases]
        kept = f"{res['repeats_kept']}/{res['repeats_kept'] + res['repeats_discarded']}"
        others = statistics.median(res["foreign_cores_kept"])
        print(
            f"{res['width']:>6} {res['params']:>8} {kept:>5} {others:>6.2f} | "
            + " | ".join(f"{c:>27}" for c in cells)
        )
    print(
        "kept: repeats kept / tried (dropped: other programs kept more than --max-foreign "
        f"{args.max_foreign} cores busy during one of its calls); others: the cores other "
        "programs kept busy meanwhile (median over the kept repeats of the busiest call)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "machine": platform.machine(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "backend": "gloo",
                    "world_size": world,
                    "batch_per_rank": args.batch,
                    "steps": args.steps,
                    "repeat": args.repeat,
                    "max_foreign": args.max_foreign,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

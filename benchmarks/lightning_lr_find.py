"""Our ``Tuner(trainer).lr_find`` against Lightning's own, on the same LightningModule and data.

Contenders, run on the same LightningModule (an MLP 64-W-W-10, ReLU, cross-entropy, AdamW at
1e-3, built afresh from the same seed for every call) and the same pre-made batches (a list in
memory served by a ``DataLoader(batch_size=None)``, at least ``--steps`` of them, so one epoch
holds the whole sweep), each call on a fresh ``Trainer(accelerator="cpu", logger=False,
enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
max_epochs=1, default_root_dir=<a fresh temporary folder>)``:

- ``ours``: ``lrfinder_adapters.lightning.Tuner(trainer).lr_find(model, loader,
  num_training=steps, early_stop_threshold=None, update_attr=False)``: saves the training state
  in memory, runs Lightning's fit loop for the sweep, restores in memory.
- ``lightning``: ``lightning.pytorch.tuner.Tuner(trainer).lr_find(model, loader, ...)`` with the
  same arguments: writes a checkpoint ``.lr_find_<uuid>.ckpt`` to ``default_root_dir``, runs
  the sweep (with its own tqdm bar, silenced here), restores from the checkpoint and deletes it.

Both record every one of the ``--steps`` points (checked: ``len(result.result)`` for ours,
``len(lr_finder.results["lr"])`` for Lightning's; a run with fewer raises). Interleaved: every
repeat runs both, the first one alternating; one untimed call of each (the one checked for what
it leaves behind) warms up first. Only the ``lr_find`` call is timed (``time.perf_counter()``),
not building the model and the Trainer. Reported per width: the median wall time of each, the
median (min-max) over repeats of the ratio ours / lightning paired within a repeat, the points
each recorded, the bare step time (a hand-written forward/backward/step, for scale), the cores
other programs kept busy (from ``/proc/stat``, less our process's CPU time), and what each call
left behind: files in ``default_root_dir`` and whether the model (parameters, gradients,
buffers, train/eval mode) and the random generators are bitwise as before
(``lrfinder_adapters.testing.capture_state`` with a throwaway optimizer), and which checkpoint
files it wrote (``trainer.save_checkpoint`` watched, in the untimed call only).

Usage (the RESULTS.md figures):
    .venv/bin/python -m benchmarks.lightning_lr_find --repeat 15 --json /tmp/lightning_lr_find.json

Options: ``--repeat 7``, ``--steps 100``, ``--sizes 64:32 512:256`` (width:batch; on 2 busy
CPU cores a bare step of about 1 and 10 ms), ``--json PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.tuner import Tuner as LightningTuner

from lrfinder_adapters.lightning import Tuner as OurTuner
from lrfinder_adapters.testing import capture_state, state_differences

FEATURES = 64
CLASSES = 10


class MLP(pl.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def make_batches(batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, FEATURES, generator=generator),
            torch.randint(0, CLASSES, (batch,), generator=generator),
        )
        for _ in range(count)
    ]


def make_model(width: int) -> MLP:
    torch.manual_seed(0)
    return MLP(width)


def make_trainer(root: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        default_root_dir=root,
    )


def ours(trainer: pl.Trainer, model: MLP, loader: Any, steps: int) -> int:
    found = OurTuner(trainer).lr_find(
        model, loader, num_training=steps, early_stop_threshold=None, update_attr=False
    )
    assert found is not None
    return len(found.result)


def theirs(trainer: pl.Trainer, model: MLP, loader: Any, steps: int) -> int:
    found = LightningTuner(trainer).lr_find(
        model, loader, num_training=steps, early_stop_threshold=None, update_attr=False
    )
    assert found is not None
    return len(found.results["lr"])


CONTENDERS: dict[str, Callable[[pl.Trainer, MLP, Any, int], int]] = {
    "ours": ours,
    "lightning": theirs,
}


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, steal time included)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def call(name: str, width: int, loader: Any, steps: int, check_state: bool) -> dict[str, Any]:
    """One timed ``lr_find``: seconds, points, other programs' cores, and what it left behind."""
    model = make_model(width)
    throwaway = torch.optim.SGD(model.parameters(), lr=0.1)
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(root)
        before = capture_state(model, throwaway) if check_state else None
        written: list[str] = []
        if check_state:  # see what the call writes, before Lightning deletes it again
            save = trainer.save_checkpoint

            def spy(path: Any, *args: Any, **kwargs: Any) -> None:
                save(path, *args, **kwargs)
                written.append(f"{Path(path).name} ({Path(path).stat().st_size:,} bytes)")

            trainer.save_checkpoint = spy  # type: ignore[method-assign]
        sink = io.StringIO()
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            busy, cpu, start = busy_seconds(), time.process_time(), time.perf_counter()
            points = CONTENDERS[name](trainer, model, loader, steps)
            elapsed = time.perf_counter() - start
            used, busy = time.process_time() - cpu, busy_seconds() - busy
        if points < steps:
            raise RuntimeError(f"{name} recorded {points} points, fewer than the {steps} steps")
        left = sorted(p.name for p in Path(root).iterdir())
        out: dict[str, Any] = {
            "seconds": elapsed,
            "points": points,
            "others": max(0.0, busy - used) / elapsed,
            "files_left": left,
            "checkpoints_written": written,
        }
        if before is not None:
            after = capture_state(model, throwaway)
            out["differences"] = state_differences(before, after)
        return out


def bare_ms_per_step(width: int, batches: list[Any], steps: int) -> float:
    """A hand-written forward/backward/step loop's median ms per step (the scale of a step)."""
    model = make_model(width)
    optimizer = model.configure_optimizers()
    times = []
    for x, y in batches[:steps]:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.training_step((x, y), 0)
        loss.backward()
        optimizer.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:]) * 1000


def summarize_differences(lines: list[str]) -> str:
    """The parts of the state that changed, e.g. ``grads (5), rng (1)``; ``none`` if none."""
    counts: dict[str, int] = {}
    for line in lines:
        part = line.split("]")[0].removeprefix("state['").rstrip("'")
        counts[part] = counts.get(part, 0) + 1
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none: bitwise equal"


def bench_size(width: int, batch: int, steps: int, repeat: int) -> dict[str, Any]:
    batches = make_batches(batch, steps)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    params = sum(p.numel() for p in make_model(width).parameters())
    bare = bare_ms_per_step(width, batches, steps)
    checks = {name: call(name, width, loader, steps, check_state=True) for name in CONTENDERS}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    order = list(CONTENDERS)
    for r in range(repeat):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            runs[name].append(call(name, width, loader, steps, check_state=False))
    seconds = {name: [run["seconds"] for run in rs] for name, rs in runs.items()}
    ratios = [o / t for o, t in zip(seconds["ours"], seconds["lightning"])]
    return {
        "width": width,
        "batch": batch,
        "params": params,
        "bare_ms_per_step": bare,
        "median_s": {name: statistics.median(s) for name, s in seconds.items()},
        "ours_over_lightning": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
        "points": {name: sorted({run["points"] for run in rs}) for name, rs in runs.items()},
        "others_median": statistics.median(
            max(a["others"], b["others"]) for a, b in zip(runs["ours"], runs["lightning"])
        ),
        "left_behind": {
            name: {
                "files": check["files_left"],
                "checkpoints_written": check["checkpoints_written"],
                "state": summarize_differences(check["differences"]),
                "differences": check["differences"][:20],
            }
            for name, check in checks.items()
        },
        "seconds": seconds,
        "others": {name: [run["others"] for run in rs] for name, rs in runs.items()},
    }


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}, lightning "
        f"{lightning.__version__}, 1 torch thread"
    )
    print(
        f"model: MLP {FEATURES}-W-W-{CLASSES}, AdamW, cross-entropy; lr_find num_training="
        f"{args.steps}, early_stop_threshold=None, update_attr=False; {args.repeat} repeats"
    )
    print(
        f"{'W:batch':>9} {'params':>8} {'bare ms/step':>12} {'others':>6} | {'ours s':>7} "
        f"{'lightning s':>11} | {'ours / lightning':>18} | {'points':>9}"
    )
    for res in results:
        med = res["median_s"]
        ratio = res["ours_over_lightning"]
        cell = f"{ratio['median']:.3f} ({ratio['min']:.2f}-{ratio['max']:.2f})"
        points = "/".join(",".join(map(str, res["points"][n])) for n in CONTENDERS)
        print(
            f"{res['width']:>5}:{res['batch']:<3} {res['params']:>8} "
            f"{res['bare_ms_per_step']:>12.2f} {res['others_median']:>6.2f} | "
            f"{med['ours']:>7.3f} {med['lightning']:>11.3f} | {cell:>18} | {points:>9}"
        )
    print(
        "ours s / lightning s: median wall time of one lr_find call; ours / lightning: median "
        "(min-max) of the ratio paired within a repeat; points: ours/lightning; others: cores "
        "other programs kept busy (median over repeats of the busier call)"
    )
    print("left behind (one untimed call each, per width):")
    for res in results:
        for name, left in res["left_behind"].items():
            files = ", ".join(left["files"]) or "no files left"
            wrote = ", ".join(left["checkpoints_written"]) or "no checkpoint"
            print(
                f"  W={res['width']:<4} {name:>9}: wrote {wrote}; {files}; "
                f"model and RNG: {left['state']}"
            )
            for line in left["differences"][:3]:
                print(f"      {line.splitlines()[0]}")
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
                    "lightning": lightning.__version__,
                    "steps": args.steps,
                    "repeat": args.repeat,
                    "results": results,
                },
                indent=2,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--sizes", nargs="+", default=["64:32", "512:256"], help="width:batch, one per size"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures there")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lrfinder_plugins"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    results = []
    for size in args.sizes:
        width, batch = (int(v) for v in size.split(":"))
        results.append(bench_size(width, batch, args.steps, args.repeat))
    report(args, results)


if __name__ == "__main__":
    main()

"""Batch-size finders under real memory limits: ours vs Lightning's and accelerate's.

For each model (``mlp``: Linear 4 -> 32768 -> 10; ``conv``: a 3x3 convolution with 32 channels,
BatchNorm, ReLU, max-pool and a linear head on 3x32x32 images; ``transformer``: one encoder
layer, d_model 32, 4 heads, 64 tokens) and each limit (``RLIMIT_AS`` = the address space after a
small warm-up step + ``--headroom-mib``: 0.5, 1 and 2 GiB), every contender runs in a fresh
subprocess, so running out of memory is a real ``DefaultCPUAllocator`` failure, not a
simulation. Each reports the size it found, its trials (and how many ran out of memory) and its
wall time; the found size is then run again in the same process and in a fresh one. The true
limit comes from an independent bisection in its own process (doubling from 16 to the first
failure, then bisection to 0.5% of the size).

Contenders: ``find_batch_size`` in each mode (``guided``, ``binsearch``, ``power``), Lightning's
``Tuner.scale_batch_size`` (``power``, ``binsearch``), accelerate's ``find_executable_batch_size``
(from its default ``starting_batch_size=128`` and from 16384, the others' ``max_val``). All use
``init_val=2``, ``max_trials=25``, ``steps_per_trial=3``, ``margin=0.05`` where they have them.

Every child runs on one thread (``OMP_NUM_THREADS=1``) with oneDNN off (its scratch memory
outlives a failure). glibc's allocator is pinned (``MALLOC_ARENA_MAX=1``,
``MALLOC_MMAP_THRESHOLD_=131072``) from the start in the bisection, the re-fits and the other
libraries' children; ours get no such environment: ``find_batch_size`` pins it itself before
its first trial (``pin_allocator``), as it would for a user. A pinned child's cap is its own
address space after the warm-up + the headroom; ours are capped at the same absolute number a
pinned child has (measured once per cell by a ``base`` child): an unpinned process holds 15-32
MiB more address space after the warm-up, and pinning gives part of it back, room the fresh
re-fit process would not have.

Usage:
    .venv/bin/python benchmarks/batch_size.py [--models mlp,conv,transformer]
        [--headroom-mib 512,1024,2048] [--only ours-guided,...] [--repeat 1] [--write FILE]
        [--json FILE] [--log FILE] [--limits mlp@512=1304,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSES, SAMPLES = 10, 16384
STEPS, INIT, MAX_TRIALS, MARGIN, MAX_VAL = 3, 2, 25, 0.05, 16384
MODELS = ("mlp", "conv", "transformer")
CONTENDERS = (
    "ours-guided",
    "ours-binsearch",
    "ours-power",
    "lightning-binsearch",
    "lightning-power",
    "accelerate-128",
    "accelerate-16384",
)
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
PINNED_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc pinned from the start as our search pins it at its first trial: for the bisection,
the re-fit and the other libraries' contenders (ours pins itself)."""


# -- the workload (runs in the child) ----------------------------------------------------------
DEVICE = "cpu"  # set by --device in the child
MODEL = "mlp"  # set by --model in the child


def _network() -> Any:
    import torch
    from torch import nn

    if MODEL == "mlp":  # Linear 4 -> 32768, ReLU, Linear 32768 -> 10
        return nn.Sequential(nn.Linear(4, 32768), nn.ReLU(), nn.Linear(32768, CLASSES))
    if MODEL == "conv":  # 3x32x32 images: conv 3x3 (32 channels), BatchNorm, ReLU, pool, linear
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 16 * 16, CLASSES),
        )

    class Transformer(nn.Module):  # 64 tokens of a 1000-word vocabulary, one encoder layer
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 32)
            self.encoder = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
            self.head = nn.Linear(32, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(x)).mean(dim=1))

    return Transformer()


def _inputs() -> Any:
    import torch

    if MODEL == "mlp":
        return torch.randn(SAMPLES, 4)
    if MODEL == "conv":
        return torch.randn(SAMPLES // 4, 3, 32, 32).repeat(4, 1, 1, 1)
    return torch.randint(0, 1000, (SAMPLES, 64))


def _workload() -> tuple[Any, Any, Any]:
    import torch

    torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    model = _network().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.utils.data.TensorDataset(_inputs(), torch.randint(0, CLASSES, (SAMPLES,)))
    return model, optimizer, data


def _steps(model: Any, optimizer: Any, data: Any, size: int, steps: int = STEPS) -> None:
    """``steps`` plain training steps at ``size`` (the accelerate body, the re-run, the scan)."""
    import torch

    loader = torch.utils.data.DataLoader(data, batch_size=size, drop_last=True)
    batches = iter(loader)
    for _ in range(steps):
        batch = next(batches, None)
        if batch is None:  # fewer batches than steps at this size: start the loader again
            batches = iter(loader)
            batch = next(batches)
        x, y = (t.to(DEVICE) for t in batch)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _vm_size() -> int:
    """This process's address space (``VmSize``), in bytes."""
    return next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )


def _limit_memory(headroom: int, cap: int | None = None) -> None:
    """Cap what this process may use to what it uses now plus ``headroom`` (on the CPU: to
    ``cap`` bytes of address space when given)."""
    if DEVICE == "cuda":
        import torch

        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        allowed = torch.cuda.memory_reserved() + headroom
        torch.cuda.set_per_process_memory_fraction(allowed / total)
        return
    import resource

    limit = cap if cap is not None else _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


def _is_oom(error: BaseException) -> bool:
    from lrfinder_adapters._oom import builtin_is_oom

    return builtin_is_oom(error)


def _fits(model: Any, optimizer: Any, data: Any, size: int) -> bool:
    import gc

    try:
        _steps(model, optimizer, data, size)
        ok = True
    except RuntimeError as error:
        if not _is_oom(error):
            raise
        ok = False
    optimizer.state.clear()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if DEVICE == "cuda":
        import torch

        torch.cuda.empty_cache()
    return ok


def _ours(mode: str) -> Callable[[Any, Any, Any], dict[str, Any]]:
    def run(model: Any, optimizer: Any, data: Any) -> dict[str, Any]:
        import torch

        from lrfinder_adapters.batch_size import find_batch_size

        result = find_batch_size(
            model,
            optimizer,
            torch.nn.functional.cross_entropy,
            dataset=data,
            mode=mode,
            init_val=INIT,
            max_trials=MAX_TRIALS,
            steps_per_trial=STEPS,
            max_val=MAX_VAL,
            margin=MARGIN,
            progress=False,
        )
        return {
            "found": result.batch_size,
            "trials": [[t.size, t.fitted] for t in result.trials],
            "stop": str(result.stop_reason),
            # What each trial read (MiB): the capacity after it and its measured peak.
            "capacity_mib": [_mib(t.capacity_bytes) for t in result.trials],
            "peak_mib": [_mib(t.peak_bytes) for t in result.trials],
        }

    return run


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 2)


def _lightning(mode: str) -> Callable[[Any, Any, Any], dict[str, Any]]:
    def run(model: Any, optimizer: Any, data: Any) -> dict[str, Any]:
        import tempfile

        import lightning.pytorch as pl
        import torch
        from lightning.pytorch.tuner import Tuner

        trials: list[list[Any]] = []

        class Module(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = model
                self.batch_size = INIT

            def forward(self, x: Any) -> Any:
                return self.net(x)

            def training_step(self, batch: Any, _index: int) -> Any:
                x, y = batch
                return torch.nn.functional.cross_entropy(self(x), y)

            def configure_optimizers(self) -> Any:
                return torch.optim.Adam(self.parameters(), lr=1e-3)

            def train_dataloader(self) -> Any:
                return torch.utils.data.DataLoader(data, batch_size=self.batch_size)

            def on_train_start(self) -> None:
                trials.append([self.batch_size, 0])

            def on_train_batch_end(self, *_: Any) -> None:
                trials[-1][1] += 1

        with tempfile.TemporaryDirectory() as root:
            trainer = pl.Trainer(
                accelerator="gpu" if DEVICE == "cuda" else "cpu",
                devices=1,
                max_epochs=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=root,
            )
            module = Module()
            found = Tuner(trainer).scale_batch_size(
                module,
                mode=mode,
                steps_per_trial=STEPS,
                init_val=INIT,
                max_trials=MAX_TRIALS,
                margin=MARGIN,
                max_val=MAX_VAL,
            )
        model.to(DEVICE)  # the trainer's teardown moved it back to the CPU
        return {"found": found, "trials": [[s, n >= STEPS] for s, n in trials], "stop": ""}

    return run


def _accelerate(start: int) -> Callable[[Any, Any, Any], dict[str, Any]]:
    def run(model: Any, optimizer: Any, data: Any) -> dict[str, Any]:
        from accelerate.utils import find_executable_batch_size

        trials: list[list[Any]] = []

        @find_executable_batch_size(starting_batch_size=start)
        def train(batch_size: int) -> int:
            trials.append([batch_size, False])
            _steps(model, optimizer, data, batch_size)
            trials[-1][1] = True
            return batch_size

        return {"found": train(), "trials": trials, "stop": ""}

    return run


RUNNERS: dict[str, Callable[[Any, Any, Any], dict[str, Any]]] = {
    "ours-guided": _ours("guided"),
    "ours-binsearch": _ours("binsearch"),
    "ours-power": _ours("power"),
    "lightning-binsearch": _lightning("binsearch"),
    "lightning-power": _lightning("power"),
    "accelerate-128": _accelerate(128),
    "accelerate-16384": _accelerate(MAX_VAL),
}


def _bisect(model: Any, optimizer: Any, data: Any) -> dict[str, Any]:
    """The true limit, independently: doubling from 16 to the first failure, then bisection to
    0.5% of the size (the allocator is pinned from the start, so outcomes depend on the size
    alone)."""
    low, high = 0, 16
    while high <= MAX_VAL and _fits(model, optimizer, data, high):
        low, high = high, 2 * high
    if high > MAX_VAL:
        return {"found": low, "trials": [], "stop": "max_val"}
    while high - low > max(1, low // 200):
        middle = (low + high) // 2
        low, high = (middle, high) if _fits(model, optimizer, data, middle) else (low, middle)
    return {"found": low, "trials": [], "stop": ""}


def worker(
    name: str, headroom_mib: int, size: int | None = None, cap: int | None = None
) -> dict[str, Any]:
    """Run one contender (or the bisection, or a re-fit of ``size``) in this process under the
    memory limit (``cap`` bytes of address space when given); return its figures. ``base``
    only reports the address space a pinned child has where the others are capped."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    model, optimizer, data = _workload()
    # Warm up (threads, lazy imports) at a small size, before the cap: a large one would leave
    # glibc's heap holding freed memory that differs between the pinned and unpinned children.
    _fits(model, optimizer, data, 32)
    if name.startswith("lightning"):
        import lightning.pytorch  # noqa: F401  (its import is not part of the search)
    if name.startswith("accelerate"):
        import accelerate  # noqa: F401
    if name == "base":
        return {"vm_size": _vm_size()}
    _limit_memory(headroom_mib * 2**20, cap)
    if name == "refit":
        assert size is not None
        return {"fits": _fits(model, optimizer, data, size)}
    start = time.perf_counter()
    figures = (_bisect if name == "bisect" else RUNNERS[name])(model, optimizer, data)
    figures["seconds"] = time.perf_counter() - start
    found = figures["found"]
    figures["refit_same"] = bool(found) and _fits(model, optimizer, data, found)
    figures["torch"] = torch.__version__
    return figures


def run_child(
    name: str,
    headroom_mib: int,
    timeout: float,
    *,
    model: str = "mlp",
    device: str = "cpu",
    size: int | None = None,
    cap: int | None = None,
) -> dict[str, Any]:
    """Run ``worker(name)`` in a fresh interpreter: one thread; glibc pinned from the start
    except for our contenders, which pin it themselves."""
    env = {**os.environ, **CHILD_ENV}
    for variable in PINNED_ENV:
        env.pop(variable, None)
    if not name.startswith("ours"):
        env.update(PINNED_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "adapters")])
    command = [sys.executable, __file__, "--worker", name, "--headroom-mib", str(headroom_mib)]
    command += ["--device", device, "--models", model]
    if size is not None:
        command += ["--size", str(size)]
    if cap is not None:
        command += ["--cap-bytes", str(cap)]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": [f"timed out after {timeout:.0f} s"]}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _versions() -> str:
    import importlib.metadata as md

    names = ("torch", "lightning", "accelerate")
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _span(values: list[float], fmt: str = "{:.0f}") -> str:
    """The median, with the range when the repeats differ."""
    middle = fmt.format(statistics.median(values))
    if min(values) == max(values):
        return middle
    return f"{middle} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _goals(guided: dict[str, Any], limit: int) -> list[tuple[str, bool]]:
    """Issue 13's goal for the guided mode, in one cell."""
    ooms = sum(not fitted for _, fitted in guided["trials"])
    return [
        (">= 95% of (1 - margin) x limit", guided["found"] >= 0.95 * (1 - MARGIN) * limit),
        ("<= 5 trials", len(guided["trials"]) <= 5),
        ("<= 1 out of memory", ooms <= 1),
        ("fits again in a fresh process", bool(guided.get("refit"))),
    ]


Cell = tuple[str, int]  # (model, headroom MiB)


def report(cells: dict[Cell, dict[str, Any]], device: str) -> str:
    """The results as one Markdown table (median and range over the repeats), the goal check of
    the guided mode in every cell, and the trial sequences of the first repeat."""
    lines = [
        "| model | limit | true limit | contender | found | % of (1 - margin) × limit | trials "
        "| out of memory | wall s | re-run fits (same / fresh process) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    goal_lines: list[str] = []
    sequences: list[str] = []
    for (model, headroom), cell in cells.items():
        limit = cell["limit"]
        where = f"| {model} | {headroom / 1024:g} GiB | {limit} |"
        for name, rows in cell["runs"].items():
            good = [row for row in rows if "error" not in row]
            if not good:
                lines.append(f"{where} {name} | error: {rows[0]['error']} | | | | | |")
                continue
            found = [row["found"] or 0 for row in good]
            same = "yes" if all(row["refit_same"] for row in good) else "NO"
            fresh = "yes" if all(row.get("refit") for row in good) else "NO"
            share = [100 * f / ((1 - MARGIN) * limit) for f in found]
            lines.append(
                f"{where} {name} | {_span(found)} | {_span(share, '{:.1f}')} | "
                f"{_span([len(row['trials']) for row in good])} | "
                f"{_span([sum(not f for _, f in row['trials']) for row in good])} | "
                f"{_span([row['seconds'] for row in good], '{:.1f}')} | {same} / {fresh} |"
            )
            seq = " ".join(f"{size}{'' if fit else '✗'}" for size, fit in good[0]["trials"])
            sequences.append(f"- {model}, {headroom / 1024:g} GiB, {name}: {seq}")
        guided = [row for row in cell["runs"].get("ours-guided", []) if "trials" in row]
        if guided:
            checks = [_goals(row, limit) for row in guided]
            verdicts = [
                f"{'met' if all(c[i][1] for c in checks) else 'MISSED'} "
                f"({sum(c[i][1] for c in checks)}/{len(checks)}) {text}"
                for i, (text, _) in enumerate(checks[0])
            ]
            goal_lines.append(f"- {model}, {headroom / 1024:g} GiB: " + "; ".join(verdicts))
    return "\n".join(
        [
            f"Device {device}. The limit is the address space (RLIMIT_AS) over the warmed-up "
            "process; the true limit is an independent bisection in a fresh process; each "
            "contender runs in a fresh process, and its answer is run again there and in a "
            "fresh process.",
            "",
            *lines,
            "",
            "Goal (issue 13, ours-guided in every cell, over the repeats):",
            "",
            *goal_lines,
            "",
            "Trial sequences of the first repeat (size, ✗ = out of memory):",
            "",
            *sequences,
        ]
    )


def run_cell(
    model: str, headroom: int, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """The bisection and every contender (with a fresh-process re-fit) for one model and limit;
    ``--limits`` gives a cell's bisected limit from an earlier run instead."""
    known = dict(item.split("=") for item in args.limits.split(",") if item)
    if f"{model}@{headroom}" in known:
        limit_row = {"found": int(known[f"{model}@{headroom}"]), "seconds": 0.0, "reused": True}
    else:
        limit_row = run_child("bisect", headroom, args.timeout, model=model, device=args.device)
    if "error" in limit_row:
        raise SystemExit(f"the bisection failed ({model}, {headroom} MiB): {limit_row['error']}")
    print(f"{model} {headroom} MiB true limit: {limit_row}", file=sys.stderr)
    if args.log:
        with args.log.open("a") as log:
            log.write(
                json.dumps({"model": model, "headroom": headroom, "bisect": limit_row}) + "\n"
            )
    cap = None  # ours: the absolute cap a pinned child has (see the module docstring)
    if args.device == "cpu" and any(name.startswith("ours") for name in names):
        base = run_child("base", headroom, args.timeout, model=model, device=args.device)
        if "error" in base:
            raise SystemExit(f"the base child failed ({model}): {base['error']}")
        cap = base["vm_size"] + headroom * 2**20
        print(f"{model} {headroom} MiB: ours capped at {cap / 2**20:.1f} MiB", file=sys.stderr)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.repeat):
        for name in names:
            row = run_child(
                name,
                headroom,
                args.timeout,
                model=model,
                device=args.device,
                cap=cap if name.startswith("ours") else None,
            )
            if cap is not None and name.startswith("ours"):
                row["cap_mib"] = round(cap / 2**20, 1)
            if row.get("found"):
                refit = run_child(
                    "refit",
                    headroom,
                    args.timeout,
                    model=model,
                    device=args.device,
                    size=row["found"],
                )
                row["refit"] = bool(refit.get("fits"))
            runs[name].append(row)
            print(f"{model} {headroom} MiB {name}: {row}", file=sys.stderr)
            if args.log:  # each row as it ends, so a long run that dies keeps what it measured
                with args.log.open("a") as log:
                    log.write(json.dumps({"model": model, "headroom": headroom, name: row}) + "\n")
    return {"limit": limit_row["found"], "bisect_seconds": limit_row["seconds"], "runs": runs}


def main(argv: list[str] | None = None) -> None:
    """Run every contender (each in its own process) for every model and limit; print the table."""
    global DEVICE, MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom-mib", default="512,1024,2048", help="comma-separated limits")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated names")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cap-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="also write the Markdown report there")
    parser.add_argument("--json", type=Path, help="also write the raw figures there")
    parser.add_argument("--log", type=Path, help="append each contender's figures as it ends")
    parser.add_argument(
        "--limits",
        default="",
        help="reuse bisected limits from an earlier run: MODEL@MIB=SIZE,... (e.g. mlp@512=1304)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        DEVICE, MODEL = args.device, args.models
        print(json.dumps(worker(args.worker, int(args.headroom_mib), args.size, args.cap_bytes)))
        return
    start = time.perf_counter()
    cells = {
        (model, int(headroom)): run_cell(model, int(headroom), args.only.split(","), args)
        for model in args.models.split(",")
        for headroom in args.headroom_mib.split(",")
    }
    text = report(cells, args.device)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )
    if args.device == "cuda":
        import torch

        machine += f", {torch.cuda.get_device_name(0)}"
    command = "python benchmarks/batch_size.py " + " ".join(argv or sys.argv[1:])
    minutes = (time.perf_counter() - start) / 60
    text = (
        f"Command: `{command.strip()}` ({minutes:.0f} minutes)\n\n{text}\n\n"
        f"Machine: {machine}; {_versions()}.\n"
    )
    print(text)
    if args.write:
        args.write.write_text(text)
    if args.json:
        rows = {f"{model}@{headroom}": cell for (model, headroom), cell in cells.items()}
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Batch-size finders under one real memory limit: ours vs Lightning's and accelerate's.

Every contender runs in a fresh subprocess on the same model, data and address-space limit
(``RLIMIT_AS`` = the address space after a warm-up step + ``--headroom-mib``), so running out of
memory is a real ``DefaultCPUAllocator`` failure, not a simulation. Each reports the size it
found, its trials (and how many ran out of memory) and its wall time; then the found size is run
again in the same process to check that it really fits. The true limit comes from an independent
linear scan in its own process (stride 16 up to the first failure, then stride 1).

Contenders: ``find_batch_size`` in each mode (``guided``, ``binsearch``, ``power``), Lightning's
``Tuner.scale_batch_size`` (``power``, ``binsearch``), accelerate's ``find_executable_batch_size``
(from its default ``starting_batch_size=128`` and from 8192, the others' ``max_val``). All use
``init_val=2``, ``max_trials=25``, ``steps_per_trial=3``, ``margin=0.05`` where they have them.

The subprocesses pin what would otherwise make the limit depend on history, equally for all:
one thread (``OMP_NUM_THREADS=1``), glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``: the
dynamic one leaves freed memory in the heap after a failure) and oneDNN off (its scratch memory
outlives a failure and poisons later trials).

Usage:
    .venv/bin/python benchmarks/batch_size.py [--headroom-mib 128] [--only ours-guided,...]
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
FEATURES, WIDTH, CLASSES, SAMPLES = 4, 16384, 10, 16384
STEPS, INIT, MAX_TRIALS, MARGIN, MAX_VAL = 3, 2, 25, 0.05, 8192
CONTENDERS = (
    "ours-guided",
    "ours-binsearch",
    "ours-power",
    "lightning-binsearch",
    "lightning-power",
    "accelerate-128",
    "accelerate-8192",
)
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_MMAP_THRESHOLD_": "131072",
    "PYTHONHASHSEED": "0",
}


# -- the workload (runs in the child) ----------------------------------------------------------
DEVICE = "cpu"  # set by --device in the child


def _workload() -> tuple[Any, Any, Any]:
    import torch

    torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, CLASSES)
    ).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.utils.data.TensorDataset(
        torch.randn(SAMPLES, FEATURES), torch.randint(0, CLASSES, (SAMPLES,))
    )
    return model, optimizer, data


def _steps(model: Any, optimizer: Any, data: Any, size: int, steps: int = STEPS) -> None:
    """``steps`` plain training steps at ``size`` (the accelerate body, the re-run, the scan)."""
    import torch

    loader = torch.utils.data.DataLoader(data, batch_size=size, drop_last=True)
    batches = iter(loader)
    for _ in range(steps):
        x, y = (t.to(DEVICE) for t in next(batches))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _limit_memory(headroom: int) -> None:
    """Cap what this process may use to what it uses now plus ``headroom``."""
    if DEVICE == "cuda":
        import torch

        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        allowed = torch.cuda.memory_reserved() + headroom
        torch.cuda.set_per_process_memory_fraction(allowed / total)
        return
    import resource

    vm_size = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmSize:")
    )
    resource.setrlimit(resource.RLIMIT_AS, (vm_size + headroom, resource.RLIM_INFINITY))


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
        }

    return run


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
    "accelerate-8192": _accelerate(MAX_VAL),
}


def _scan(model: Any, optimizer: Any, data: Any) -> dict[str, Any]:
    size = 16
    while _fits(model, optimizer, data, size):
        size += 16
    last = size - 16
    while _fits(model, optimizer, data, last + 1):
        last += 1
    return {"found": last, "trials": [], "stop": ""}


def worker(name: str, headroom_mib: int) -> dict[str, Any]:
    """Run one contender in this process under the memory limit; return its figures."""
    import logging

    import torch

    logging.disable(logging.WARNING)
    model, optimizer, data = _workload()
    # Warm up above the limit-to-be: threads, lazy imports and the allocators' one-off
    # reservations (they grow with the largest batch run so far) are made before the cap.
    _fits(model, optimizer, data, 4096)
    if name.startswith("lightning"):
        import lightning.pytorch  # noqa: F401  (its import is not part of the search)
    if name.startswith("accelerate"):
        import accelerate  # noqa: F401
    _limit_memory(headroom_mib * 2**20)
    start = time.perf_counter()
    figures = (_scan if name == "scan" else RUNNERS[name])(model, optimizer, data)
    figures["seconds"] = time.perf_counter() - start
    found = figures["found"]
    figures["refit"] = bool(found) and _fits(model, optimizer, data, found)
    figures["torch"] = torch.__version__
    return figures


def run_child(name: str, headroom_mib: int, timeout: float, device: str = "cpu") -> dict[str, Any]:
    """Run ``worker(name)`` in a fresh interpreter with the pinned environment."""
    env = {**os.environ, **CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "adapters")])
    command = [sys.executable, __file__, "--worker", name, "--headroom-mib", str(headroom_mib)]
    command += ["--device", device]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
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


def _goals(guided: dict[str, Any], lightning: dict[str, Any], limit: int) -> list[tuple[str, bool]]:
    ooms = sum(not fitted for _, fitted in guided["trials"])
    return [
        ("found >= Lightning binsearch's", guided["found"] >= lightning["found"]),
        (
            "found >= 95% of the limit less the margin",
            guided["found"] >= 0.95 * (1 - MARGIN) * limit,
        ),
        (
            "trials <= half of Lightning binsearch's",
            2 * len(guided["trials"]) <= len(lightning["trials"]),
        ),
        ("at most 2 out-of-memory trials", ooms <= 2),
        ("the found size fits when run again", bool(guided["refit"])),
    ]


def report(runs: dict[str, list[dict[str, Any]]], limit: int, headroom: int, device: str) -> str:
    """The results as a Markdown table (median and range over the repeats) plus the goal check."""
    repeats = max(len(rows) for rows in runs.values())
    lines = [
        f"Device {device}; headroom {headroom} MiB over the warmed-up process; {repeats} "
        f"repeat(s) per contender, each in a fresh process. True limit (linear scan): "
        f"**{limit}**; (1 - margin) × limit = {(1 - MARGIN) * limit:.0f}.",
        "",
        "| contender | found | % of limit | trials | out of memory | wall s | re-run fits |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in runs.items():
        good = [row for row in rows if "error" not in row]
        if not good:
            lines.append(f"| {name} | error: {rows[0]['error']} | | | | | |")
            continue
        found = [row["found"] or 0 for row in good]
        lines.append(
            f"| {name} | {_span(found)} | {_span([100 * f / limit for f in found], '{:.1f}')} | "
            f"{_span([len(row['trials']) for row in good])} | "
            f"{_span([sum(not f for _, f in row['trials']) for row in good])} | "
            f"{_span([row['seconds'] for row in good], '{:.1f}')} | "
            f"{'yes' if all(row['refit'] for row in good) else 'NO'} |"
        )
    pairs = list(zip(runs.get("ours-guided", []), runs.get("lightning-binsearch", [])))
    pairs = [(g, lb) for g, lb in pairs if "trials" in g and "trials" in lb]
    if pairs:
        checks = [_goals(g, lb, limit) for g, lb in pairs]
        lines += [
            "",
            f"Goal (ours-guided against Lightning binsearch, each of {len(pairs)} repeats):",
        ]
        for i, (text, _) in enumerate(checks[0]):
            met = sum(check[i][1] for check in checks)
            lines.append(
                f"- {'met' if met == len(checks) else 'MISSED'} ({met}/{len(checks)}): {text}"
            )
    lines += ["", "Trial sequences of the first repeat (size, ✗ = out of memory):", ""]
    for name, rows in runs.items():
        if "trials" in rows[0]:
            seq = " ".join(f"{size}{'' if fitted else '✗'}" for size, fitted in rows[0]["trials"])
            lines.append(f"- {name}: {seq}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every contender (each in its own process) and print the table."""
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom-mib", type=int, default=128)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated names")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per contender")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="also write the Markdown report there")
    args = parser.parse_args(argv)
    if args.worker:
        DEVICE = args.device
        print(json.dumps(worker(args.worker, args.headroom_mib)))
        return
    limit_row = run_child("scan", args.headroom_mib, args.timeout, args.device)
    if "error" in limit_row:
        raise SystemExit(f"the linear scan failed: {limit_row['error']}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only.split(",")}
    for _ in range(args.repeat):
        for name in runs:
            runs[name].append(run_child(name, args.headroom_mib, args.timeout, args.device))
            print(f"{name}: {runs[name][-1]}", file=sys.stderr)
    text = report(runs, limit_row["found"], args.headroom_mib, args.device)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )
    if args.device == "cuda":
        import torch

        machine += f", {torch.cuda.get_device_name(0)}"
    command = "python benchmarks/batch_size.py " + " ".join(argv or sys.argv[1:])
    text = f"Command: `{command.strip()}`\n\n{text}\n\nMachine: {machine}; {_versions()}.\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()

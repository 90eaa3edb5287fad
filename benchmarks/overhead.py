"""Per-step overhead of the LR range test against a bare training loop (and torch-lr-finder).

Runs a 100-step range test (snapshot and restore included) and a hand-written loop of the same
100 steps (exponential LR set by hand, forward, backward, step, ``loss.item()``) on the same
model and data, alternating them, and prints each one's median time and the ratio.

Lightning's ``Tuner.lr_find`` (real, on the same MLP as a LightningModule and the same batches,
a fresh ``Trainer`` per call, not timed) is in the same table when lightning is installed.
Ratios are medians of ratios paired within a repeat (every contender runs once per repeat, the
order rotating), and the ratio of each contender's fastest run to the bare loop's fastest (the
figure least moved by a noisy machine: interference only ever adds time). ``--clock thread`` times with ``time.thread_time()`` (this thread's CPU time;
torch runs on one thread): on a machine that other programs keep busy it leaves out the time
this process waits for a core, which wall time (the default) counts.

Usage:
    .venv/bin/python -m benchmarks.overhead [--repeats 15] [--widths 512] [--batch 128]
    .venv/bin/python -m benchmarks.overhead --widths 16,128,1024 --batch 32 --clock thread
    .venv/bin/python -m benchmarks.overhead --device cuda   # + the one-step-late loss read
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from lrfinder_adapters.pytorch import find_lr

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def make(
    width: int, batch: int, device: str = "cpu", seed: int = 0, optimizer: str = "adamw"
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
    """The same model and batches for every contender, already on ``device``.

    The loader serves pre-made batches (``batch_size=None``): a DataLoader indexing GPU
    tensors sample by sample would cost more than the steps and drown what is measured.
    """
    torch.manual_seed(seed)
    batches = [
        (torch.randn(batch, 64, device=device), torch.randint(0, 10, (batch,), device=device))
        for _ in range(100)  # one pass holds the sweep: Lightning's fit stops at an epoch's end
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).to(device)
    return model, OPTIMIZERS[optimizer](model.parameters(), lr=1e-3), loader


def bare_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    steps: int = 100,
    read_each_step: bool = True,
) -> list[float]:
    """What a user would write by hand: exponential LR, one step per batch, record the loss.

    ``read_each_step=False``: keep the losses as tensors and read them all after the loop (no
    host-device synchronisation per step on a GPU: the floor no per-step reader can beat).
    """
    loss_fn = torch.nn.CrossEntropyLoss()
    losses: list[float] = []
    kept: list[torch.Tensor] = []
    start, end = 1e-7, 10.0
    batches = iter(loader)
    for i in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        lr = start * (end / start) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        if read_each_step:
            losses.append(loss.item())
        else:
            kept.append(loss.detach())
    return losses or [t.item() for t in kept]


def bare_loop_read_at_end(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
) -> None:
    bare_loop(model, optimizer, loader, read_each_step=False)


def ours(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    overlap: bool | None = None,
) -> None:
    find_lr(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        loader,
        num_iter=100,
        diverge_threshold=1e300,
        progress=False,
        overlap=overlap,
    )


def ours_no_overlap(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
) -> None:
    ours(model, optimizer, loader, overlap=False)


def torch_lr_finder(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
) -> None:
    from torch_lr_finder import LRFinder

    device = next(model.parameters()).device
    finder = LRFinder(model, optimizer, torch.nn.CrossEntropyLoss(), device=device)
    finder.range_test(loader, start_lr=1e-7, end_lr=10.0, num_iter=100, diverge_th=1e300)
    finder.reset()


def lightning_tuner(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
) -> Callable[[], object]:
    """Lightning's own ``Tuner.lr_find`` on the same weights and batches (set up untimed)."""
    import tempfile

    from lightning.pytorch.tuner import Tuner

    from benchmarks.lightning_lr_find import MLP, make_trainer

    width = model[2].in_features  # type: ignore[index]
    kind = type(optimizer)

    class Module(MLP):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return kind(self.parameters(), lr=1e-3)

    module = Module(width)
    module.net.load_state_dict(model.state_dict())
    root = tempfile.mkdtemp(prefix="lrf-bench-")
    trainer = make_trainer(root)

    def run() -> object:
        return Tuner(trainer).lr_find(
            module,
            loader,
            min_lr=1e-7,
            max_lr=10.0,
            num_training=100,
            early_stop_threshold=None,
            update_attr=False,
        )

    return run


SETUP_ONLY = {lightning_tuner}
"""Contenders that return the call to time: their set-up (a Trainer) is not timed."""

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def timed(fn: Callable[..., object], *args: object, clock: str = "wall") -> float:
    """Seconds one call takes (peer output, e.g. torch-lr-finder's tqdm bar, is silenced)."""
    now = CLOCKS[clock]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        if fn in SETUP_ONLY:
            call: Callable[[], object] = fn(*args)  # type: ignore[assignment]
        else:

            def call() -> object:
                return fn(*args)

        start = now()
        call()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return now() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--widths", default="512", help="comma-separated hidden widths")
    parser.add_argument("--width", type=int, default=None, help="one width (old spelling)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="also time a bare loop that reads its losses after the loop and ours with "
        "overlap=False (always on with --device cuda)",
    )
    args = parser.parse_args()
    widths = [args.width] if args.width is not None else [int(w) for w in args.widths.split(",")]
    torch.set_num_threads(1)
    contenders: dict[str, Callable[..., object]] = {
        "bare loop": bare_loop,
        "lrfinder-plugins": ours,
    }
    if args.device == "cuda" or args.overlap:
        # On a GPU ours reads each loss one step late by default (overlap): against a bare
        # loop that reads every loss at once (.item(), a sync per step), one that reads them
        # all after the loop (no sync), and ours reading at once (overlap=False).
        contenders["bare loop, losses read at the end"] = bare_loop_read_at_end
        contenders["lrfinder-plugins, overlap=False"] = ours_no_overlap
    if importlib.util.find_spec("torch_lr_finder") is not None:
        contenders["torch-lr-finder"] = torch_lr_finder
    else:
        print("torch-lr-finder not installed: skipped (pip install torch-lr-finder)")
    if args.device == "cpu" and importlib.util.find_spec("lightning") is not None:
        contenders["Lightning Tuner.lr_find"] = lightning_tuner
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
        f"device {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
        f"torch {torch.__version__}, 1 CPU thread, clock {args.clock}"
    )
    for width in widths:
        times = bench(contenders, width, args)
        base_samples = times["bare loop"]
        base = statistics.median(base_samples)
        print(
            f"model: MLP 64-{width}-{width}-10, {args.optimizer}, batch {args.batch}, 100 steps, "
            f"{args.repeats} repeats: bare step {base * 10:.3f} ms"
        )
        for name, samples in times.items():
            ratios = [t / b for t, b in zip(samples, times["bare loop"])]
            print(
                f"{name:>34}: median {statistics.median(samples) * 1000:8.1f} ms   "
                f"paired ratio vs bare loop {statistics.median(ratios):.3f} "
                f"({min(ratios):.3f}-{max(ratios):.3f}); "
                f"fastest {min(samples) * 1000:8.1f} ms, ratio {min(samples) / min(base_samples):.3f}"
            )


def bench(
    contenders: dict[str, Callable[..., object]], width: int, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Each contender's times at one width: a warm-up each, then interleaved repeats."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        timed(fn, *make(width, args.batch, args.device, optimizer=args.optimizer), clock=args.clock)
    order = list(contenders.items())
    for repeat in range(args.repeats):
        # Rotate who goes first each repeat, so warm caches and clocks favour no one.
        shift = repeat % len(order)
        for name, fn in order[shift:] + order[:shift]:
            made = make(width, args.batch, args.device, optimizer=args.optimizer)
            times[name].append(timed(fn, *made, clock=args.clock))
    return times


if __name__ == "__main__":
    main()

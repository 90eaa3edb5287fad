"""Per-step overhead of the LR range test against a bare training loop (and torch-lr-finder).

Runs a 100-step range test (snapshot and restore included) and a hand-written loop of the same
100 steps (exponential LR set by hand, forward, backward, step, ``loss.item()``) on the same
model and data, alternating them, and prints each one's median time and the ratio.

Usage:
    .venv/bin/python -m benchmarks.overhead [--repeats 15] [--width 512] [--batch 128]
    .venv/bin/python -m benchmarks.overhead --device cuda   # + the one-step-late loss read
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import platform
import statistics
import time
from collections.abc import Callable

import torch

from lrfinder_adapters.pytorch import find_lr


def make(
    width: int, batch: int, device: str = "cpu", seed: int = 0
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
    """The same model and batches for every contender, already on ``device``.

    The loader serves pre-made batches (``batch_size=None``): a DataLoader indexing GPU
    tensors sample by sample would cost more than the steps and drown what is measured.
    """
    torch.manual_seed(seed)
    batches = [
        (torch.randn(batch, 64, device=device), torch.randint(0, 10, (batch,), device=device))
        for _ in range(25)
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 10),
    ).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), loader


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


def timed(fn: Callable[..., object], *args: object) -> float:
    """Seconds one call takes (peer output, e.g. torch-lr-finder's tqdm bar, is silenced)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="also time a bare loop that reads its losses after the loop and ours with "
        "overlap=False (always on with --device cuda)",
    )
    args = parser.parse_args()
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
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        timed(fn, *make(args.width, args.batch, args.device))
    order = list(contenders.items())
    for repeat in range(args.repeats):
        # Rotate who goes first each repeat, so warm caches and clocks favour no one.
        shift = repeat % len(order)
        for name, fn in order[shift:] + order[:shift]:
            times[name].append(timed(fn, *make(args.width, args.batch, args.device)))
    base = statistics.median(times["bare loop"])
    print(
        f"machine: {platform.machine()}, device {args.device}"
        f"{' (' + torch.cuda.get_device_name() + ')' if args.device == 'cuda' else ''}, "
        f"torch {torch.__version__}, 1 CPU thread"
    )
    print(
        f"model: MLP 64-{args.width}-{args.width}-10, batch {args.batch}, 100 steps, {args.repeats} repeats"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:>18}: median {median * 1000:8.1f} ms   ratio vs bare loop {median / base:.3f}"
        )


if __name__ == "__main__":
    main()

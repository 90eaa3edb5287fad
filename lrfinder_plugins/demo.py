"""The built-in example behind ``lrfinder demo``: a small model on synthetic data, no downloads."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_plugins import _validate

if TYPE_CHECKING:
    import torch

    from lrfinder_plugins._batch_search import BatchSizeResult
    from lrfinder_plugins._results import RangeTestResult
    from lrfinder_plugins.suggest import Suggestion

log = logging.getLogger("lrfinder_plugins")

INITIAL_LR = 1e-3
MEMORY_BUDGET = 2 * 2**20
"""The demo's pretend device: 2 MiB for the model, its optimizer state and activations."""


@dataclass(frozen=True)
class DemoRun:
    """What the demo found and where it wrote it."""

    result: RangeTestResult
    suggestion: Suggestion
    old_lr: float
    plot_path: Path
    json_path: Path
    batch: BatchSizeResult | None = None
    batch_size: int = 0
    memory_budget: int = MEMORY_BUDGET
    batch_plot: Path | None = None


def make_problem(
    *, samples: int = 4096, features: int = 32, classes: int = 10, seed: int = 0
) -> tuple[torch.utils.data.TensorDataset, torch.nn.Module]:
    """A classification problem drawn from a random teacher network, and a student MLP to train.

    The data is generated in code (no downloads) with its own generator, so the global RNG is
    untouched and the problem is the same on every machine.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=gen)
    teacher = torch.randn(features, classes, generator=gen)
    logits = torch.tanh(inputs @ torch.randn(features, features, generator=gen)) @ teacher
    targets = (logits + 0.5 * torch.randn(samples, classes, generator=gen)).argmax(dim=1)
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Linear(features, 128),
            torch.nn.BatchNorm1d(128),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(128, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, classes),
        )
    return dataset, model


def run_demo(
    *,
    output_dir: str | Path = ".logs",
    plot_path: str | Path | None = None,
    json_path: str | Path | None = None,
    num_iter: int = 100,
    batch_size: int | None = None,
    memory_budget: int = MEMORY_BUDGET,
    method: str | None = None,
    progress: bool = True,
    threads: int = 1,
) -> DemoRun:
    """Find the batch size, run the LR range test at it, save the plot and JSON, apply the LR.

    The batch size comes first (the best LR depends on it), as ``tune()`` does: the search runs
    real training steps against a pretend device of ``memory_budget`` bytes, so it ends in about
    a second on a CPU.

    Args:
        output_dir: where the plot and JSON go unless their paths are given.
        plot_path: the PNG path (default ``<output_dir>/lr_finder_plot.png``).
        json_path: the JSON path (default ``<output_dir>/lr_finder.json``).
        num_iter: the most range-test steps.
        batch_size: the training batch size (``None``: find it with ``find_batch_size``).
        memory_budget: the bytes the batch-size search may use at its peak.
        method: the suggestion method (``None``: the default).
        progress: show a progress bar.
        threads: torch's intra-op threads for the demo (put back after). One by default: the
            demo's MLP multiplies matrices too small for a second thread to pay, and on a
            machine whose other core is busy two threads wait on each other (measured on 2
            cores with another process running: 7.5 s with one, 15 s with two).
    """
    import torch

    from lrfinder_adapters.batch_size import find_batch_size

    threads = _validate.int_at_least("threads", threads, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dataset, model = make_problem()
        # Seeded inside fork_rng: the same curve on every run (dropout draws from the global
        # generator), and the caller's RNG is left alone.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            batch = None
            size = batch_size
            if size is None:
                probe_optimizer = torch.optim.AdamW(model.parameters(), lr=INITIAL_LR)
                batch = find_batch_size(
                    model,
                    probe_optimizer,
                    torch.nn.functional.cross_entropy,
                    dataset=dataset,
                    memory_budget=memory_budget,
                    progress=progress,
                    noise_scale=True,
                    gns_max_steps=20,
                )
                size = int(batch.batch_size or 1)  # find_batch_size raises when nothing fits
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(1)
            )
            run = _find_and_save(
                model, loader, output_dir, plot_path, json_path, num_iter, method, progress
            )
        batch_plot = None
        if batch is not None:
            batch_plot = Path(output_dir) / "batch_size_plot.png"
            batch.plot(batch_plot)
            batch.save_json(Path(output_dir) / "batch_size.json")
        return dataclasses.replace(
            run, batch=batch, batch_size=size, memory_budget=memory_budget, batch_plot=batch_plot
        )
    finally:
        torch.set_num_threads(before)


def _find_and_save(
    model: torch.nn.Module,
    loader: Any,
    output_dir: str | Path,
    plot_path: str | Path | None,
    json_path: str | Path | None,
    num_iter: int,
    method: str | None,
    progress: bool,
) -> DemoRun:
    import torch

    from lrfinder_adapters.pytorch import LearningRateFinder

    optimizer = torch.optim.AdamW(model.parameters(), lr=INITIAL_LR)
    finder = LearningRateFinder(
        model, optimizer, torch.nn.CrossEntropyLoss(), "cpu", progress=progress
    )
    finder.find_lr(loader, start_lr=1e-7, end_lr=10.0, num_iter=num_iter, method=method)
    result = finder._require_result()
    suggestion = result.suggestion(method)
    if suggestion.confidence == 0:  # apply_suggestion refuses it (unless forced): say so below
        old_lr = max(float(g["lr"]) for g in optimizer.param_groups)
    else:
        old_lr, _ = finder.apply_suggestion(suggestion)
    output_dir = Path(output_dir)
    plot = Path(plot_path) if plot_path is not None else output_dir / "lr_finder_plot.png"
    saved = Path(json_path) if json_path is not None else output_dir / "lr_finder.json"
    finder.plot(output_path=plot)
    result.save_json(saved)
    return DemoRun(result, suggestion, old_lr, plot, saved)


def describe(run: DemoRun) -> list[str]:
    """The lines ``lrfinder demo`` prints for a run."""
    result, suggestion = run.result, run.suggestion
    options: dict[str, Any] = result.options
    if math.isfinite(suggestion.lower) and math.isfinite(suggestion.upper):
        cycle = suggestion.one_cycle()
        one_cycle = (
            f"  OneCycleLR(optimizer, max_lr={cycle['max_lr']:.2e}, "
            f"div_factor={cycle['div_factor']:.1f}, cycle_momentum=False, total_steps=...)"
        )
        usable = f"  usable range: {suggestion.lower:.2e} … {suggestion.upper:.2e}"
    else:
        one_cycle = f"  OneCycleLR hint: max_lr ≈ {3 * suggestion.lr:.2e} (about 3× the suggestion)"
        usable = "  usable range: none (the curve shows no clear descent)"
    confidence = f"confidence {suggestion.confidence:.2f}" + (
        f": {suggestion.reason}" if suggestion.reason else ""
    )
    lines = []
    if run.batch is not None:
        lines += [
            "Batch-size search on the built-in example (synthetic 10-class data, MLP with "
            f"BatchNorm, AdamW), pretend device of {run.memory_budget / 2**20:g} MiB, mode guided:",
            run.batch.summary(),
            f"✓ Optimal batch size found: {run.batch.batch_size}",
            f"  batch-size plot (throughput, knee, B_simple) saved to: {run.batch_plot}",
        ]
    return [
        *lines,
        f"LR range test at batch size {run.batch_size} (the same model and data)",
        f"  tested range: {options['start_lr']:.2e} → {options['end_lr']:.2e} ({options['mode']})",
        f"  points: {len(result)} of {options['num_iter']}, "
        f"LRs {result.lrs[0]:.2e} … {result.lrs[-1]:.2e}",
        f"  stopped: {result.stop_reason}",
        f"✓ Suggested learning rate: {suggestion.lr:.2e} (method: {suggestion.method}, {confidence})",
        (
            f"  optimizer LR left at {run.old_lr:.2e}: a confidence-0 suggestion is not applied"
            if suggestion.confidence == 0
            else f"  Updated optimizer LR: {run.old_lr:.2e} → {suggestion.lr:.2e}"
        ),
        usable,
        one_cycle,
        f"  LR finder plot saved to: {run.plot_path}",
        f"  results saved to: {run.json_path}",
    ]

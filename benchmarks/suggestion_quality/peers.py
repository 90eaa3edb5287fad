"""Range tests: ours (lrfinder-plugins), the real Lightning and torch-lr-finder, fastai's protocol.

Each function runs one range test for ``(task, seed)`` from the same initial model and returns the
curve (and, for the peers, the LR their own code suggests). Lightning and torch-lr-finder are the
real packages at their defaults. fastai is not installed (it pulls torchvision); its protocol is
reproduced with our engine (``lr_find`` defaults: 1e-7 to 10, 100 steps, stop when the EMA-0.98
smoothed loss passes 4x its best or is NaN), and its ``valley`` and ``minimum`` rules are applied
by ``lrfinder_plugins.suggest.valley`` / ``minimum``, which mirror fastai's code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import warnings
from typing import Any

import torch

from benchmarks.suggestion_quality.tasks import Task
from lrfinder_plugins import RangeTestResult


def our_range_test(task: Task, seed: int, **options: Any) -> RangeTestResult:
    """Our ``find_lr`` at its defaults (1e-7 to 10, 100 points, smoothing 0.05, divergence 5x)."""
    from lrfinder_adapters.pytorch import find_lr

    model = task.build_model(seed)
    optimizer = task.optimizer(list(model.parameters()), 1e-3)
    return find_lr(model, optimizer, task.loss, task.loader(seed), progress=False, **options)


def our_val_range_test(task: Task, seed: int, batch_norm: str) -> RangeTestResult:
    """Our ``find_lr`` at its defaults with a ``val_loader``: the held-out split as one batch
    (the split the regret is scored on, as a user would pass their validation loader), BatchNorm
    on ``val_batch_norm=batch_norm`` (``"batch"``: the default; ``"running"``: plain eval mode)."""
    data = task.split
    return our_range_test(
        task, seed, val_loader=[(data.x_val, data.y_val)], val_batch_norm=batch_norm
    )


def fastai_range_test(task: Task, seed: int) -> RangeTestResult:
    """fastai's ``lr_find`` protocol, run by our engine (fastai itself is not installed)."""
    return our_range_test(task, seed, smooth_factor=0.98, diverge_threshold=4.0)


def torch_lr_finder_range_test(task: Task, seed: int) -> tuple[float, dict[str, list[float]]]:
    """torch-lr-finder's ``range_test`` (its defaults, start at 1e-7 as its README) + its rule.

    Returns:
        ``(suggested_lr, {"lr": [...], "loss": [...]})`` (its smoothed losses).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torch_lr_finder import LRFinder

    model = task.build_model(seed)
    optimizer = task.optimizer(list(model.parameters()), 1e-7)
    finder = LRFinder(model, optimizer, task.loss, device="cpu")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        finder.range_test(task.loader(seed), end_lr=10, num_iter=100)
        fig, ax = plt.subplots()
        try:
            _, lr = finder.plot(ax=ax, suggest_lr=True)  # skip_start=10, skip_end=5 (defaults)
        except RuntimeError:  # too few points for its rule
            lr = math.nan
        finally:
            plt.close(fig)
        finder.reset()
    history = {
        "lr": [float(x) for x in finder.history["lr"]],
        "loss": [float(x) for x in finder.history["loss"]],
    }
    return float(lr), history


def lightning_range_test(task: Task, seed: int) -> tuple[float, dict[str, list[float]]]:
    """Lightning's ``Tuner(trainer).lr_find(module, loader)`` at its defaults.

    Defaults: 1e-8 to 1, 100 steps, exponential, stop at 4x the best smoothed loss, suggestion
    by ``_LRFinder.suggestion()`` (steepest gradient against the LR, skip 10 first, 1 last).

    Returns:
        ``(suggested_lr, {"lr": [...], "loss": [...]})``; NaN when Lightning suggests nothing.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = task.build_model(seed)
            self.lr = 1e-3

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return task.loss(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return task.optimizer(list(self.net.parameters()), self.lr)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    module = Module()
    sink = io.StringIO()
    with (
        tempfile.TemporaryDirectory() as root,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=task.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        finder = Tuner(trainer).lr_find(module, train_dataloaders=task.loader(seed))
    assert finder is not None
    lr = finder.suggestion()
    results = {
        "lr": [float(x) for x in finder.results["lr"]],
        "loss": [float(x) for x in finder.results["loss"]],
    }
    return (math.nan if lr is None else float(lr)), results

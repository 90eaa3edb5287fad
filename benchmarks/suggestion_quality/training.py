"""Fixed-budget training and held-out evaluation (the ground truth every suggestion is scored on)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.suggestion_quality.tasks import Task

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Outcome:
    """The result of one training run.

    Attributes:
        val_loss: the held-out loss after the budget (``inf`` when a loss or a parameter became
            non-finite). Whether the run *diverged* is judged against the untrained model's loss
            (``Grid.blew_up``).
    """

    val_loss: float


@torch.no_grad()
def held_out_loss(task: Task, model: nn.Module) -> float:
    """The mean loss on the held-out split, in eval mode."""
    model.eval()
    data = task.split
    return float(task.loss(model(data.x_val), data.y_val))


def untrained_loss(task: Task, seed: int) -> float:
    """The held-out loss of the freshly initialised model."""
    return held_out_loss(task, task.build_model(seed))


def _finish(task: Task, model: nn.Module, finite: bool) -> Outcome:
    loss = held_out_loss(task, model) if finite else math.inf
    return Outcome(loss if math.isfinite(loss) else math.inf)


def train(task: Task, lr: float, seed: int) -> Outcome:
    """Train ``task``'s model with its optimizer at a constant ``lr`` for its step budget."""
    model = task.build_model(seed)
    optimizer = task.optimizer(list(model.parameters()), lr)
    return _run(task, model, optimizer, seed)


def _run(
    task: Task,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    seed: int,
    before_eval: Callable[[], None] | None = None,
    after_step: Callable[[], None] | None = None,
) -> Outcome:
    model.train()
    finite = True
    for inputs, targets in itertools.islice(task.batches(seed), task.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model(inputs), targets)
        if not torch.isfinite(loss):
            finite = False
            break
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
    if finite and any(not torch.isfinite(p).all() for p in model.parameters()):
        finite = False
    if finite and before_eval is not None:
        before_eval()
    return _finish(task, model, finite)


def train_one_cycle(task: Task, seed: int, one_cycle: dict[str, Any]) -> Outcome:
    """Train with the task's optimizer under ``OneCycleLR(optimizer, **one_cycle)``, stepped per step.

    With several param groups ``max_lr`` is a list (one per group); the optimizer is built at the
    largest (the reference group's), and ``OneCycleLR`` then sets each group's own schedule."""
    model = task.build_model(seed)
    peak = one_cycle["max_lr"]
    optimizer = task.optimizer(
        list(model.parameters()), float(max(peak) if isinstance(peak, list) else peak)
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **one_cycle)
    return _run(task, model, optimizer, seed, after_step=scheduler.step)


def train_prodigy(task: Task, seed: int) -> Outcome:
    """Train with Prodigy at its defaults (``lr=1.0``) for the task's budget, instead of its optimizer."""
    from prodigyopt import Prodigy

    model = task.build_model(seed)
    return _run(task, model, Prodigy(model.parameters()), seed)


def train_schedule_free(task: Task, seed: int) -> Outcome:
    """Train with schedule-free AdamW at its defaults (``lr=0.0025``, no warmup).

    As its README asks, ``optimizer.train()`` before training and ``optimizer.eval()`` before
    evaluation; with BatchNorm, the running statistics are recomputed at the evaluation weights
    (50 training batches in train mode, no gradients) first.
    """
    from schedulefree import AdamWScheduleFree

    model = task.build_model(seed)
    optimizer = AdamWScheduleFree(model.parameters())
    optimizer.train()

    def before_eval() -> None:
        optimizer.eval()
        if any(isinstance(m, BN_TYPES) for m in model.modules()):
            model.train()
            with torch.no_grad():
                for inputs, _ in itertools.islice(task.batches(seed + 777), 50):
                    model(inputs)

    return _run(task, model, optimizer, seed, before_eval)

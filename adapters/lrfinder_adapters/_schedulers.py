"""Checking LR schedulers against their optimizer, and moving a schedule to a new LR.

:func:`check_schedulers` refuses, before a search touches anything, a ``schedulers=`` that is not
a list of LR schedulers of the search's optimizer. :func:`rescale` moves every LR an attached
schedule holds (the param groups' ``lr``, ``initial_lr``, ``max_lr``, ``min_lr``; each scheduler's
``base_lrs``, ``_last_lr``, ``max_lrs``, ``eta_min``, ``min_lrs``) by one factor per param group, so
the schedule keeps its shape and its next steps continue from the new LR instead of jumping back
to the old one. Every scheduler torch ships is linear in those values, which is what makes one
factor exact; a scheduler class torch does not ship is refused, since how it uses the LR is
unknown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.optim import lr_scheduler

if TYPE_CHECKING:
    from lrfinder_plugins.suggest import Suggestion

PEAK_KINDS = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)
"""Schedulers whose defining LR is a peak (``max_lr``) rather than a base."""

KNOWN_KINDS = (
    lr_scheduler.LambdaLR,
    lr_scheduler.MultiplicativeLR,
    lr_scheduler.StepLR,
    lr_scheduler.MultiStepLR,
    lr_scheduler.ConstantLR,
    lr_scheduler.LinearLR,
    lr_scheduler.ExponentialLR,
    lr_scheduler.SequentialLR,
    lr_scheduler.PolynomialLR,
    lr_scheduler.CosineAnnealingLR,
    lr_scheduler.ChainedScheduler,
    lr_scheduler.ReduceLROnPlateau,
    lr_scheduler.CyclicLR,
    lr_scheduler.CosineAnnealingWarmRestarts,
    lr_scheduler.OneCycleLR,
)
"""Every scheduler kind torch ships (``torch.optim.lr_scheduler``)."""

_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
_LIST_ATTRS = ("base_lrs", "_last_lr", "max_lrs", "min_lrs")
_SCALAR_ATTRS = ("eta_min", "default_min_lr")


def check_schedulers(schedulers: Any, optimizer: torch.optim.Optimizer) -> tuple[Any, ...]:
    """Return ``schedulers`` as a tuple, or raise unless it is a list of ``optimizer``'s schedulers.

    Raises:
        TypeError: ``schedulers`` is a single scheduler, not a list, or holds something that is
            not an LR scheduler.
        ValueError: a scheduler drives another optimizer.
    """
    if _is_scheduler(schedulers):
        raise TypeError(
            f"schedulers must be a list of LR schedulers, got a single {type(schedulers).__name__}; "
            "pass schedulers=[scheduler]"
        )
    if isinstance(schedulers, (str, bytes, dict)) or not isinstance(schedulers, Sequence):
        raise TypeError(
            f"schedulers must be a list of LR schedulers, got {schedulers!r} "
            f"({type(schedulers).__name__}); pass schedulers=[scheduler] or leave it out"
        )
    for position, scheduler in enumerate(schedulers):
        if not _is_scheduler(scheduler):
            raise TypeError(
                "schedulers must hold LR schedulers (with state_dict/load_state_dict), got "
                f"{scheduler!r} ({type(scheduler).__name__}) at schedulers[{position}]; pass "
                "schedulers=[scheduler] with the schedulers built on the optimizer"
            )
        owner = getattr(scheduler, "optimizer", optimizer)
        if not _same_optimizer(owner, optimizer):
            raise ValueError(
                f"schedulers[{position}] ({type(scheduler).__name__}) drives another optimizer "
                f"({type(owner).__name__} at {id(owner):#x}), not the one being searched; pass the "
                "schedulers built on this optimizer (e.g. OneCycleLR(optimizer, ...))"
            )
    return tuple(schedulers)


def _same_optimizer(owner: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``owner`` is ``optimizer`` or a wrapper of it (Accelerate's ``.optimizer``)."""
    for _ in range(4):  # wrappers nest a level or two; never loop on a cycle
        if owner is optimizer:
            return True
        owner = getattr(owner, "optimizer", None)
    return False


def _is_scheduler(value: Any) -> bool:
    return (
        hasattr(value, "state_dict")
        and hasattr(value, "load_state_dict")
        and (hasattr(value, "step") and not isinstance(value, torch.optim.Optimizer))
    )


def flatten(schedulers: Sequence[Any]) -> list[Any]:
    """Every scheduler, the children of ``SequentialLR``/``ChainedScheduler`` included, once."""
    out: list[Any] = []
    for scheduler in schedulers:
        for item in [scheduler, *flatten(getattr(scheduler, "_schedulers", ()))]:
            if all(item is not seen for seen in out):
                out.append(item)
    return out


def check_known(schedulers: Sequence[Any]) -> None:
    """Raise unless every scheduler (children included) is a kind torch ships."""
    for scheduler in flatten(schedulers):
        if type(scheduler) not in KNOWN_KINDS:
            raise TypeError(
                f"apply_suggestion cannot move a {type(scheduler).__name__}: it is not one of "
                "torch's LR schedulers, so how it uses the LR is unknown; set the LR yourself, "
                "or build the scheduler after apply_suggestion()"
            )


def reference_lrs(optimizer: torch.optim.Optimizer, schedulers: Sequence[Any]) -> list[float]:
    """Each param group's LR that a suggestion replaces: the schedule's peak for a
    ``OneCycleLR``/``CyclicLR``, else its base (``initial_lr``), else the current LR."""
    every = flatten(schedulers)
    groups = optimizer.param_groups
    one_cycle = [s for s in every if isinstance(s, lr_scheduler.OneCycleLR)]
    cyclic = [s for s in every if isinstance(s, lr_scheduler.CyclicLR)]
    if one_cycle:
        return [float(g["max_lr"]) for g in groups]
    if cyclic:
        return [float(lr) for lr in cyclic[0].max_lrs]
    if any(hasattr(s, "base_lrs") for s in every):
        return [float(g.get("initial_lr", g["lr"])) for g in groups]
    return [float(g["lr"]) for g in groups]


def is_peak(schedulers: Sequence[Any]) -> bool:
    """Whether the attached schedule is defined by its peak (``OneCycleLR``, ``CyclicLR``)."""
    return any(isinstance(s, PEAK_KINDS) for s in flatten(schedulers))


def rescale(
    optimizer: torch.optim.Optimizer, schedulers: Sequence[Any], factors: Sequence[float]
) -> None:
    """Multiply every LR the param groups and the schedulers hold by each group's factor."""
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"LR factors must be finite and > 0, got {list(factors)}")
    for group, factor in zip(optimizer.param_groups, factors):
        for key in _GROUP_KEYS:
            if isinstance(group.get(key), torch.Tensor):
                group[key].mul_(factor)  # in place: a capturable optimizer holds on to it
            elif key in group:
                group[key] = float(group[key]) * factor
    # A scalar (eta_min) is shared by every group; the groups' factors agree when their LR
    # ratios are the ones the test recorded, so the largest group's factor is used.
    top = max(range(len(factors)), key=lambda i: float(optimizer.param_groups[i]["lr"]))
    for scheduler in flatten(schedulers):
        for name in _LIST_ATTRS:
            values = getattr(scheduler, name, None)
            if isinstance(values, list) and len(values) == len(factors):
                setattr(scheduler, name, [v * f for v, f in zip(values, factors)])
        for name in _SCALAR_ATTRS:
            value = getattr(scheduler, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(scheduler, name, value * factors[top])


def move_schedule(
    optimizer: torch.optim.Optimizer, schedulers: Sequence[Any], suggestion: Suggestion
) -> None:
    """Move the optimizer and its schedulers to ``suggestion``, keeping the schedule's shape.

    The peak of a ``OneCycleLR``/``CyclicLR`` schedule goes to the suggestion's ``upper`` end
    (its ``lr`` when it has no range); every other schedule's base goes to its ``lr``.

    Raises:
        TypeError: a scheduler is not a kind torch ships.
        ValueError: the schedule sits at LR 0 (no factor can move it).
    """
    check_known(schedulers)
    peak = is_peak(schedulers) and math.isfinite(suggestion.upper)
    scale = suggestion.upper / suggestion.lr if peak else 1.0
    references = reference_lrs(optimizer, schedulers)
    if not all(math.isfinite(r) and r > 0 for r in references):
        raise ValueError(
            f"the attached schedule's LRs are {references}; a schedule at LR 0 cannot be moved "
            "by a factor: build the scheduler after apply_suggestion()"
        )
    rescale(
        optimizer, schedulers, [lr * scale / r for lr, r in zip(suggestion.group_lrs, references)]
    )

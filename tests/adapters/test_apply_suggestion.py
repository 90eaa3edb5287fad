"""apply_suggestion(): the optimizer and every attached scheduler kind come out consistent."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as sched

from lrfinder_adapters.pytorch import LearningRateFinder
from lrfinder_plugins import Suggestion
from tests.adapters.conftest import assert_state_bitwise_equal, capture_state, make_mlp

OLD_LR, NEW_LR = 1e-2, 3e-4
LOWER, UPPER = NEW_LR / 10**0.4, NEW_LR * 10**0.25
STEPS = 12

Factory = Callable[[torch.optim.Optimizer, float], Any]


def suggestion(confidence: float = 1.0, groups: int = 1, ratio: float = 0.1) -> Suggestion:
    """A hand-made suggestion at NEW_LR (the largest group) with its usable range."""
    ratios = [ratio] * (groups - 1) + [1.0]
    return Suggestion(
        "margin",
        NEW_LR,
        0,
        group_lrs=tuple(NEW_LR * r for r in ratios),
        confidence=confidence,
        lower=LOWER,
        upper=UPPER,
    )


def optimizer_for(lr: float, groups: int = 1, ratio: float = 0.1) -> torch.optim.Optimizer:
    """SGD with momentum over a fresh MLP; with two groups the first runs at ``ratio`` x lr."""
    model = make_mlp()
    if groups == 1:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        first, *rest = list(model.parameters())
        optimizer = torch.optim.SGD(
            [{"params": [first], "lr": lr * ratio}, {"params": rest, "lr": lr}], momentum=0.9
        )
    optimizer.model = model  # type: ignore[attr-defined]  # the finder needs the owner
    return optimizer


def finder_for(optimizer: torch.optim.Optimizer, *schedulers: Any) -> LearningRateFinder:
    """A finder over the optimizer's model, with ``schedulers`` attached."""
    model = optimizer.model  # type: ignore[attr-defined]
    return LearningRateFinder(model, optimizer, None, progress=False, schedulers=list(schedulers))


def _shares(o: torch.optim.Optimizer, lr: float) -> list[float]:
    """``lr`` for the largest group and the same ratios for the others as the optimizer's."""
    top = max(float(g["lr"]) for g in o.param_groups)
    return [lr * float(g["lr"]) / top for g in o.param_groups]


def _sequential(o: torch.optim.Optimizer, lr: float) -> Any:
    warmup = sched.LinearLR(o, start_factor=0.1, total_iters=3)
    cosine = sched.CosineAnnealingLR(o, T_max=8, eta_min=lr / 50)
    return sched.SequentialLR(o, [warmup, cosine], milestones=[3])


def _chained(o: torch.optim.Optimizer, lr: float) -> Any:
    return sched.ChainedScheduler([sched.ConstantLR(o, 0.5, 4), sched.ExponentialLR(o, 0.9)])


# Each builds a scheduler whose defining LR is ``lr``: the base for most, the peak for OneCycleLR
# and CyclicLR (their LR bounds are given relative to it, so a moved schedule has a reference).
KINDS: dict[str, tuple[Factory, bool]] = {
    "LambdaLR": (lambda o, lr: sched.LambdaLR(o, lambda e: 1 / (1 + e)), False),
    "MultiplicativeLR": (lambda o, lr: sched.MultiplicativeLR(o, lambda e: 0.95), False),
    "StepLR": (lambda o, lr: sched.StepLR(o, step_size=3, gamma=0.5), False),
    "MultiStepLR": (lambda o, lr: sched.MultiStepLR(o, milestones=[2, 5], gamma=0.3), False),
    "ConstantLR": (lambda o, lr: sched.ConstantLR(o, factor=0.25, total_iters=4), False),
    "LinearLR": (lambda o, lr: sched.LinearLR(o, start_factor=0.2, total_iters=5), False),
    "ExponentialLR": (lambda o, lr: sched.ExponentialLR(o, gamma=0.8), False),
    "PolynomialLR": (lambda o, lr: sched.PolynomialLR(o, total_iters=8, power=2.0), False),
    "CosineAnnealingLR": (
        lambda o, lr: sched.CosineAnnealingLR(o, T_max=6, eta_min=lr / 20),
        False,
    ),
    "CosineAnnealingWarmRestarts": (
        lambda o, lr: sched.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=lr / 20),
        False,
    ),
    "SequentialLR": (_sequential, False),
    "ChainedScheduler": (_chained, False),
    "ReduceLROnPlateau": (
        lambda o, lr: sched.ReduceLROnPlateau(o, factor=0.5, patience=0, min_lr=lr / 5),
        False,
    ),
    "OneCycleLR": (
        lambda o, lr: sched.OneCycleLR(
            o, max_lr=_shares(o, lr), total_steps=STEPS + 1, cycle_momentum=False
        ),
        True,
    ),
    "CyclicLR": (
        lambda o, lr: sched.CyclicLR(
            o,
            base_lr=[x / 10 for x in _shares(o, lr)],
            max_lr=_shares(o, lr),
            step_size_up=3,
            cycle_momentum=False,
        ),
        True,
    ),
}


def schedule(optimizer: torch.optim.Optimizer, scheduler: Any) -> list[float]:
    """Every group's LR over STEPS optimizer + scheduler steps (a flat metric for plateau)."""
    lrs: list[float] = []
    for _ in range(STEPS):
        lrs += [float(g["lr"]) for g in optimizer.param_groups]
        optimizer.step()
        if isinstance(scheduler, sched.ReduceLROnPlateau):
            scheduler.step(1.0)
        else:
            scheduler.step()
    return lrs


def test_every_scheduler_kind_torch_ships_is_covered() -> None:
    """The table holds every LRScheduler subclass torch.optim.lr_scheduler defines."""
    shipped = {
        name
        for name, value in vars(sched).items()
        if isinstance(value, type)
        and issubclass(value, sched.LRScheduler)
        and not name.startswith("_")
        and value is not sched.LRScheduler
    }
    assert shipped <= set(KINDS)


@pytest.mark.parametrize("groups", [1, 2], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_scheduler_continues_as_if_built_at_the_new_lr(kind: str, groups: int) -> None:
    """After apply_suggestion, stepping the scheduler gives the schedule built at the new LR."""
    factory, peak = KINDS[kind]
    target = UPPER if peak else NEW_LR
    optimizer = optimizer_for(OLD_LR, groups)
    scheduler = factory(optimizer, OLD_LR)
    before = max(g["lr"] for g in optimizer.param_groups)
    old, new = finder_for(optimizer, scheduler).apply_suggestion(suggestion(groups=groups))
    reference_optimizer = optimizer_for(target, groups)
    reference = factory(reference_optimizer, target)
    assert old == before
    assert new == pytest.approx(max(g["lr"] for g in reference_optimizer.param_groups))
    moved, expected = schedule(optimizer, scheduler), schedule(reference_optimizer, reference)
    assert moved == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_one_cycle_peaks_at_the_suggestions_upper_end() -> None:
    """The issue's case: OneCycleLR's warm-up now rises from the new start to upper, not down."""
    optimizer = optimizer_for(OLD_LR)
    scheduler = sched.OneCycleLR(optimizer, max_lr=OLD_LR, total_steps=20, cycle_momentum=False)
    finder_for(optimizer, scheduler).apply_suggestion(suggestion())
    lrs = schedule(optimizer, scheduler)
    assert max(lrs) <= UPPER * (1 + 1e-12)
    assert lrs[0] == pytest.approx(UPPER / 25) and lrs[5] == pytest.approx(UPPER, rel=0.05)
    assert optimizer.param_groups[0]["max_lr"] == pytest.approx(UPPER)


def test_without_schedulers_every_group_gets_its_share() -> None:
    """No scheduler: each group is set to the suggestion's LR for it (ratios kept)."""
    optimizer = optimizer_for(OLD_LR, groups=2)
    finder = finder_for(optimizer)
    old, new = finder.apply_suggestion(suggestion(groups=2))
    assert (old, new) == (OLD_LR, NEW_LR)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([NEW_LR * 0.1, NEW_LR])


def refused(finder: LearningRateFinder, optimizer: torch.optim.Optimizer, **kwargs: Any) -> str:
    """Call apply_suggestion, expect a refusal, check the optimizer is untouched; the message."""
    before = capture_state(finder.model, optimizer)
    with pytest.raises((ValueError, TypeError)) as info:
        finder.apply_suggestion(**kwargs)
    assert_state_bitwise_equal(before, capture_state(finder.model, optimizer))
    return str(info.value)


def test_zero_confidence_is_refused_with_the_reason() -> None:
    """A confidence-0 suggestion changes nothing and says why and how to force it."""
    optimizer = optimizer_for(OLD_LR)
    finder = finder_for(optimizer)
    flat = Suggestion("margin", NEW_LR, 0, (NEW_LR,), "no usable descent: flat", 0.0, LOWER, UPPER)
    message = refused(finder, optimizer, suggestion=flat)
    assert "confidence 0" in message and "flat" in message and "force=True" in message
    assert optimizer.param_groups[0]["lr"] == OLD_LR


def test_zero_confidence_is_applied_when_forced() -> None:
    """force=True applies a confidence-0 suggestion."""
    optimizer = optimizer_for(OLD_LR)
    finder = finder_for(optimizer)
    flat = Suggestion("margin", NEW_LR, 0, (NEW_LR,), "flat", 0.0, LOWER, UPPER)
    assert finder.apply_suggestion(flat, force=True) == (OLD_LR, NEW_LR)


def test_attached_but_unpassed_scheduler_is_refused() -> None:
    """An optimizer with a scheduler's keys but no schedulers= is refused, naming the fix."""
    optimizer = optimizer_for(OLD_LR)
    sched.OneCycleLR(optimizer, max_lr=OLD_LR, total_steps=10)
    finder = finder_for(optimizer)
    assert "schedulers=[scheduler]" in refused(finder, optimizer, suggestion=suggestion())


def test_unknown_scheduler_class_is_refused() -> None:
    """A scheduler class torch does not ship is refused by name, nothing changed."""

    class Custom(sched.StepLR):
        pass

    optimizer = optimizer_for(OLD_LR)
    scheduler = Custom(optimizer, step_size=2)
    message = refused(finder_for(optimizer, scheduler), optimizer, suggestion=suggestion())
    assert "Custom" in message and "after apply_suggestion()" in message


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        pytest.param(1e-3, TypeError, "suggestion must be a Suggestion", id="float"),
        pytest.param(Suggestion("m", math.nan, None), ValueError, "no LR", id="nan"),
    ],
)
def test_bad_suggestion_is_refused(value: Any, error: type[Exception], fragment: str) -> None:
    """A non-Suggestion, or one without an LR, is refused before anything changes."""
    optimizer = optimizer_for(OLD_LR)
    finder = finder_for(optimizer)
    with pytest.raises(error, match=fragment):
        finder.apply_suggestion(value)
    assert optimizer.param_groups[0]["lr"] == OLD_LR

"""LR schedules for the range test: pure functions from a point index to a learning rate.

Each factory is keyword-only and returns a :data:`Schedule`; both are registered by name through
the ``lrfinder_register_schedules`` hook, so ``mode="exponential"`` looks the factory up there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

from lrfinder_plugins.hookspecs import hookimpl

Schedule = Callable[[int], float]
"""Maps a point index ``0 .. num_iter - 1`` to the learning rate used at that point."""


class ScheduleFactory(Protocol):
    """Builds a :data:`Schedule` that starts at ``start_lr`` and ends exactly at ``end_lr``."""

    def __call__(self, *, start_lr: float, end_lr: float, num_iter: int) -> Schedule: ...


def exponential(*, start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    """LRs evenly spaced in log space: ``start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))``.

    Example:
        >>> schedule = exponential(start_lr=1e-3, end_lr=1.0, num_iter=4)
        >>> [round(schedule(i), 6) for i in range(4)]
        [0.001, 0.01, 0.1, 1.0]
    """
    log_start, log_end, last = math.log(start_lr), math.log(end_lr), num_iter - 1

    def schedule(index: int) -> float:
        if index >= last:
            return end_lr
        if index <= 0:
            return start_lr
        # Clamped: exp(log(x)) can land one float step outside a very narrow range.
        return min(
            max(math.exp(log_start + (log_end - log_start) * (index / last)), start_lr), end_lr
        )

    return schedule


def linear(*, start_lr: float, end_lr: float, num_iter: int) -> Schedule:
    """LRs evenly spaced: ``start_lr + (end_lr - start_lr) * i / (num_iter - 1)``.

    Example:
        >>> schedule = linear(start_lr=0.0001, end_lr=0.0004, num_iter=4)
        >>> [round(schedule(i), 6) for i in range(4)]
        [0.0001, 0.0002, 0.0003, 0.0004]
    """
    last = num_iter - 1

    def schedule(index: int) -> float:
        if index >= last:
            return end_lr
        if index <= 0:
            return start_lr
        return min(max(start_lr + (end_lr - start_lr) * (index / last), start_lr), end_lr)

    return schedule


BUILTIN: Mapping[str, ScheduleFactory] = {"exponential": exponential, "linear": linear}
"""The schedules every range test knows without asking the plugins."""


@hookimpl
def lrfinder_register_schedules() -> Mapping[str, ScheduleFactory]:
    """Register the built-in schedules."""
    return BUILTIN


def registered() -> dict[str, ScheduleFactory]:
    """Every registered schedule (built-ins and plugins), by name.

    Raises:
        ValueError: two plugins register the same name (both are named in the message).
    """
    from lrfinder_plugins._manager import collect_registry

    return collect_registry("lrfinder_register_schedules")


def resolve(mode: str | ScheduleFactory) -> ScheduleFactory:
    """The schedule factory ``mode`` names (or ``mode`` itself, when it is one).

    A built-in name needs no plugin; another name is looked up among the plugins' schedules.

    Raises:
        ValueError: no schedule has that name (the message lists the registered ones).
        TypeError: ``mode`` is neither a name nor callable.

    Example:
        >>> resolve("linear") is linear
        True
    """
    if callable(mode) and not isinstance(mode, str):
        return mode
    if not isinstance(mode, str):
        raise TypeError(
            f"mode must be a schedule name or a schedule factory, got {mode!r} "
            f"({type(mode).__name__}); pass e.g. mode='exponential'"
        )
    if mode in BUILTIN:
        return BUILTIN[mode]
    known = registered()
    if mode not in known:
        raise ValueError(
            f"mode must be one of {sorted(known)}, got {mode!r}; a plugin can add more through "
            "the lrfinder_register_schedules hook"
        )
    return known[mode]

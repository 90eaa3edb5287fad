"""Argument checks shared by every entry point: each error names the argument, value and fix."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _is_real(value: Any) -> bool:
    # numbers.Real admits NumPy scalars (np.float32, np.int64); bool is an int but never a number here.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_finite(name: str, value: Any, example: str = "1e-7") -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0, got {value!r}; pass e.g. {name}={example}"
        )
    return float(value)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum}, got {value!r}; pass {name}={minimum} or more"
        )
    return int(value)


def in_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` if it is a number in ``[0, 1)``, else raise."""
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__})"
        )
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (0 = no smoothing, closer to 1 = more), got {value!r}; "
            f"pass e.g. {name}=0.05"
        )
    return float(value)


def greater_than_one(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number > 1, else raise."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number > 1, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 1.0:
        raise ValueError(f"{name} must be a finite number > 1, got {value!r}; pass e.g. {name}=5.0")
    return float(value)


def one_of(name: str, value: Any, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {sorted(choices)}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value

"""Argument checks shared by every entry point: each error names the argument, value and fix."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any


def _is_real(value: Any) -> bool:
    # numbers.Real admits NumPy scalars (np.float32, np.int64); bool is an int but never a number here.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_finite(name: str, value: Any, example: str = "1e-7") -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a number, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}={example}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0, got {value!r}; pass e.g. {name}={example}"
        )
    return float(value)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        whole = isinstance(value, float) and value.is_integer() and value >= minimum
        example = int(value) if whole else max(minimum, 1)  # memory_budget=1.5e6: 1500000
        raise TypeError(
            f"{name} must be an int, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}={example}"
        )
    if value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum}, got {value!r}; pass {name}={minimum} or more"
        )
    return int(value)


def in_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` if it is a number in ``[0, 1)``, else raise."""
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a number in [0, 1), got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}=0.05"
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
        raise TypeError(
            f"{name} must be a number > 1, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}=5.0"
        )
    if not math.isfinite(value) or value <= 1.0:
        raise ValueError(f"{name} must be a finite number > 1, got {value!r}; pass e.g. {name}=5.0")
    return float(value)


def one_of(name: str, value: Any, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {sorted(choices)}, got {value!r}")
    if value not in choices:
        close = nearest_name(value, choices) if value else None
        hint = f"; did you mean {name}={close!r}?" if close else ""
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}{hint}")
    return value


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} must be True or False, got {value!r}; pass {name}=True or {name}=False"
        )
    return value


PEER_NAMES = {
    # torch-lr-finder's range_test
    "step_mode": "mode",
    "smooth_f": "smooth_factor",
    "diverge_th": "diverge_threshold",
    # fastai's lr_find
    "num_it": "num_iter",
    "suggest_funcs": "method",
    # Lightning's lr_find / scale_batch_size, Accelerate's find_executable_batch_size
    "min_lr": "start_lr",
    "max_lr": "end_lr",
    "early_stop_threshold": "diverge_threshold",
    "starting_batch_size": "init_val",
    "init_size": "init_val",
    "max_size": "max_val",
    "max_batch_size": "max_val",
    "accumulate_grad_batches": "accumulation_steps",
    "gradient_accumulation_steps": "accumulation_steps",
    "gradient_clip_val": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm",
}
"""Names the peers (torch-lr-finder, fastai, Lightning, Accelerate) use for our options."""


_SAME_OPTION = (
    # Our entry points name one setting differently where they mirror a peer's API (Lightning's
    # Tuner takes num_training and min_lr, our find_lr num_iter and start_lr).
    ("num_iter", "num_training", "num_training_steps"),
    ("method", "suggest_method"),
)


def _aliases() -> dict[str, frozenset[str]]:
    groups: list[set[str]] = [set(pair) for pair in PEER_NAMES.items()]
    groups += [set(names) for names in _SAME_OPTION]
    merged: list[set[str]] = []
    for group in groups:
        for other in [m for m in merged if m & group]:
            group |= other
            merged.remove(other)
        merged.append(group)
    return {name: frozenset(group) for group in merged for name in group}


_ALIASES = _aliases()
"""Each option name with every name the same setting goes by (ours and the peers')."""


def nearest_name(name: str, accepted: Iterable[str]) -> str | None:
    """The accepted option a mistyped or peer-named ``name`` most likely means, if any.

    A peer's name for the setting first (``max_size`` -> ``max_val``, Lightning's ``min_lr`` ->
    ``start_lr`` and back), then the closest accepted spelling, then a typo of another name of
    an accepted setting (``num_iters`` -> ``num_training`` where ``num_training`` is the name).
    """
    accepted = list(accepted)

    def alias_in_accepted(known: str) -> str | None:
        return next((a for a in sorted(_ALIASES.get(known, ())) if a in accepted), None)

    found = alias_in_accepted(name)
    if found is not None and found != name:
        return found
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.6)
    if close:
        return close[0]
    near = difflib.get_close_matches(name, list(_ALIASES), n=1, cutoff=0.8)
    return alias_in_accepted(near[0]) if near else None


class UnknownOptionError(TypeError):
    """A keyword option the call does not take (a ``TypeError``, as Python's own for a bad
    keyword); the message names the nearest accepted option. Raised before anything runs."""


def known_options(where: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Raise :class:`UnknownOptionError` unless every name in ``given`` is in ``accepted``.

    The message names each unknown option with the nearest accepted name (``max_size`` →
    ``max_val``) and lists what ``where`` accepts.

    Example:
        >>> known_options("batch_options", ["max_size"], ["max_val", "mode"])
        Traceback (most recent call last):
        ...
        lrfinder_plugins._validate.UnknownOptionError: unknown option(s) ['max_size'] in batch_options (did you mean max_val= for max_size?); batch_options accepts ['max_val', 'mode']
    """
    accepted = sorted(accepted)
    unknown = sorted(set(given) - set(accepted))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = nearest_name(name, accepted)
        if close is not None:
            hints.append(f"{close}= for {name}")
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise UnknownOptionError(
        f"unknown option(s) {unknown} in {where}{hint}; {where} accepts {accepted}"
    )

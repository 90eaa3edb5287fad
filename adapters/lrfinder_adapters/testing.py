"""Test helpers for torch adapters: a bitwise check that a search left the training state alone.

:func:`capture_state` takes an independent deep copy of everything a range test or a batch-size
search must leave as it found it, and :func:`assert_state_bitwise_equal` fails, listing every
difference, unless two such copies are bitwise equal: tensors by dtype, shape and raw bytes
(so a NaN payload or ``-0.0`` counts), floats by their IEEE bytes. It is an independent check:
it shares no code with the snapshot the adapters restore from (:mod:`lrfinder_adapters.state`).

The framework-free fakes of :mod:`lrfinder_plugins.testing`, :class:`FakeStep` and
:class:`FakeProbe`, are re-exported here.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> before = capture_state(model, optimizer)
    >>> assert_state_bitwise_equal(before, capture_state(model, optimizer))  # untouched
    >>> _ = torch.rand(1)  # draws from the global generator
    >>> assert_state_bitwise_equal(before, capture_state(model, optimizer))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: state changed:
    state['rng']['torch_cpu']: tensor bytes differ:...
"""

from __future__ import annotations

from lrfinder_adapters import require

require("torch", "torch")

import copy  # noqa: E402
import enum  # noqa: E402
import random  # noqa: E402
import struct  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from lrfinder_plugins.testing import FakeProbe, FakeStep  # noqa: E402

__all__ = [
    "FakeProbe",
    "FakeStep",
    "assert_state_bitwise_equal",
    "capture_state",
    "rng_state",
    "state_differences",
    "tensor_bytes",
]


def _numpy() -> ModuleType | None:
    """NumPy, if it is installed (it is optional here)."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def rng_state() -> dict[str, Any]:
    """Every generator a search may consume: Python's ``random``, torch's CPU generator, and
    NumPy's global one when NumPy is installed (key ``"numpy"``, absent otherwise).

    Example:
        >>> before = rng_state()
        >>> assert_state_bitwise_equal(before, rng_state())
    """
    state: dict[str, Any] = {"python": random.getstate()}
    np = _numpy()
    if np is not None:
        state["numpy"] = np.random.get_state()
    state["torch_cpu"] = torch.get_rng_state()
    return state


def _scaler_state(scaler: Any) -> dict[str, Any]:
    per_optimizer = {
        key: copy.deepcopy(dict(value)) for key, value in scaler._per_optimizer_states.items()
    }
    return {
        "state_dict": copy.deepcopy(scaler.state_dict()),
        "scale": None if scaler._scale is None else scaler._scale.detach().clone(),
        "growth_tracker": (
            None if scaler._growth_tracker is None else scaler._growth_tracker.detach().clone()
        ),
        "per_optimizer_states": per_optimizer,
    }


def capture_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
) -> dict[str, Any]:
    """A deep copy of everything a range test or batch-size search must leave as it found it.

    Parameters (values, ``requires_grad``, gradients), buffers, every module's train/eval mode,
    the optimizer's ``state_dict`` and the ``_opt_called`` attribute LR schedulers set on it,
    each scheduler's ``state_dict``, the ``GradScaler``'s state (scale, growth tracker,
    per-optimizer bookkeeping) and :func:`rng_state`. Compare two with
    :func:`assert_state_bitwise_equal`.

    Args:
        model: the model.
        optimizer: its optimizer.
        schedulers: LR schedulers (anything with ``state_dict``).
        scaler: a ``torch.amp.GradScaler``, or ``None``.
    """
    params = dict(model.named_parameters())
    return {
        "params": {name: p.detach().clone() for name, p in params.items()},
        "requires_grad": {name: p.requires_grad for name, p in params.items()},
        "grads": {
            name: None if p.grad is None else p.grad.detach().clone() for name, p in params.items()
        },
        "buffers": {name: b.detach().clone() for name, b in model.named_buffers()},
        "training": {name: m.training for name, m in model.named_modules()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "optimizer_attrs": {"_opt_called": optimizer.__dict__.get("_opt_called", "<absent>")},
        "schedulers": [copy.deepcopy(s.state_dict()) for s in schedulers],
        "scaler": None if scaler is None else _scaler_state(scaler),
        "rng": rng_state(),
    }


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t``, on the CPU, as a flat ``uint8`` tensor (so NaN payloads and
    ``-0.0`` count).

    Example:
        >>> torch.equal(tensor_bytes(torch.tensor([0.0])), tensor_bytes(torch.tensor([-0.0])))
        False
    """
    t = t.detach()
    to_local = getattr(t, "to_local", None)  # a DTensor (FSDP2): this rank's own shard
    if to_local is not None:
        t = to_local()
    return t.cpu().contiguous().reshape(-1).view(torch.uint8)


def _differences(before: Any, after: Any, path: str, np: ModuleType | None) -> Iterator[str]:
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        if not (isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)):
            yield f"{path}: {type(before).__name__} != {type(after).__name__}"
        elif (before.dtype, before.shape) != (after.dtype, after.shape):
            yield f"{path}: {before.dtype}{tuple(before.shape)} != {after.dtype}{tuple(after.shape)}"
        elif not torch.equal(tensor_bytes(before), tensor_bytes(after)):
            yield f"{path}: tensor bytes differ:\n  before={before!r}\n  after={after!r}"
        return
    if type(before) is not type(after):
        yield f"{path}: {type(before).__name__} != {type(after).__name__}"
    elif np is not None and isinstance(before, np.ndarray):
        if (before.dtype, before.shape) != (after.dtype, after.shape) or (
            before.tobytes() != after.tobytes()
        ):
            yield f"{path}: array bytes differ"
    elif isinstance(before, float):
        if struct.pack("<d", before) != struct.pack("<d", after):
            yield f"{path}: {before!r} != {after!r} (bitwise)"
    elif isinstance(before, dict):
        if list(before) != list(after):
            yield f"{path}: keys {list(before)} != {list(after)}"
        for key in before:
            if key in after:
                yield from _differences(before[key], after[key], f"{path}[{key!r}]", np)
    elif isinstance(before, (list, tuple)):
        if len(before) != len(after):
            yield f"{path}: length {len(before)} != {len(after)}"
        for i, (b, a) in enumerate(zip(before, after)):
            yield from _differences(b, a, f"{path}[{i}]", np)
    elif isinstance(before, (str, int, bool, type(None), enum.Enum, torch.device, torch.dtype)):
        if before != after:
            yield f"{path}: {before!r} != {after!r}"
    elif before is not after:
        yield f"{path}: {before!r} is not {after!r}"


def state_differences(before: Any, after: Any, path: str = "state") -> list[str]:
    """Every bitwise difference between two :func:`capture_state` (or :func:`rng_state`)
    results, one line each, named by its path (``state['params']['0.weight']: ...``).

    Tensors compare by dtype, shape and raw bytes; NumPy arrays by dtype, shape and bytes;
    floats by their IEEE bytes; dicts by their keys in order, then value by value; lists and
    tuples item by item; other values by equality (or, for objects without a meaningful
    equality, identity). An empty list means bitwise equal.
    """
    return list(_differences(before, after, path, _numpy()))


def assert_state_bitwise_equal(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail, listing every difference, unless two :func:`capture_state` results are bitwise equal.

    Tensors compare by dtype, shape and raw bytes; floats by their IEEE bytes (see
    :func:`state_differences`).

    Raises:
        AssertionError: ``"state changed:"`` and one line per difference.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> before = capture_state(model, optimizer)
        >>> with torch.no_grad():
        ...     _ = model.bias.add_(1.0)
        >>> assert_state_bitwise_equal(before, capture_state(model, optimizer))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: state changed:
        state['params']['bias']: tensor bytes differ:...
    """
    problems = state_differences(before, after)
    if problems:  # not an assert statement: it must also fail under python -O
        raise AssertionError("state changed:\n" + "\n".join(problems))

"""Fixtures for the raw-PyTorch adapter tests: tiny models and data, and a bitwise state check."""

from __future__ import annotations

import copy
import enum
import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


# -- the bitwise state check -----------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every generator a range test may consume: python ``random``, NumPy, torch CPU."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch_cpu": torch.get_rng_state(),
    }


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
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
) -> dict[str, Any]:
    """A deep copy of everything a range test must leave as it found it."""
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
    """The raw bytes of ``t`` (so NaN payloads and -0.0 count)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _differences(before: Any, after: Any, path: str) -> Iterator[str]:
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
    elif isinstance(before, np.ndarray):
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
                yield from _differences(before[key], after[key], f"{path}[{key!r}]")
    elif isinstance(before, (list, tuple)):
        if len(before) != len(after):
            yield f"{path}: length {len(before)} != {len(after)}"
        for i, (b, a) in enumerate(zip(before, after)):
            yield from _differences(b, a, f"{path}[{i}]")
    elif isinstance(before, (str, int, bool, type(None), enum.Enum, torch.device, torch.dtype)):
        if before != after:
            yield f"{path}: {before!r} != {after!r}"
    elif before is not after:
        yield f"{path}: {before!r} is not {after!r}"


def assert_state_bitwise_equal(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Fail, listing every difference, unless two :func:`capture_state` results are bitwise equal.

    Tensors compare by dtype, shape and raw bytes; floats by their IEEE bytes.
    """
    problems = list(_differences(before, after, "state"))
    assert not problems, "state changed:\n" + "\n".join(problems)


# -- models and data -------------------------------------------------------------------------------
class CountingLoader:
    """A re-iterable loader over fixed batches that counts the batches handed out."""

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = list(batches)
        self.fetched = 0
        self.passes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        for batch in self.batches:
            self.fetched += 1
            yield batch


def make_batches(
    count: int, *, batch_size: int = 8, features: int = 4, outputs: int = 1, seed: int = 0
) -> list[Batch]:
    """``count`` regression batches drawn from a private generator (the global RNG is untouched)."""
    gen = torch.Generator().manual_seed(seed)
    true_w = torch.randn(features, outputs, generator=gen)
    batches = []
    for _ in range(count):
        x = torch.randn(batch_size, features, generator=gen)
        batches.append((x, x @ true_w + 0.1 * torch.randn(batch_size, outputs, generator=gen)))
    return batches


def make_mlp(features: int = 4, hidden: int = 8, outputs: int = 1, seed: int = 0) -> nn.Module:
    """Linear → BatchNorm → ReLU → Dropout → Linear, initialised from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, outputs),
        )


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    *,
    scheduler: Any = None,
) -> None:
    """Ordinary training steps, so the optimizer (and scheduler) state is not empty."""
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The models here are tiny: with several intra-op threads on a busy 2-core machine, thread
    # hand-offs cost 100x the arithmetic (seconds per test instead of milliseconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def batches() -> list[Batch]:
    """Four small regression batches (8 x 4 inputs, 8 x 1 targets)."""
    return make_batches(4)


@pytest.fixture
def model() -> nn.Module:
    """A small MLP with BatchNorm and Dropout."""
    return make_mlp()


@pytest.fixture
def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum over ``model``."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


@pytest.fixture
def mse() -> Any:
    """The mean squared error, as a ``loss_fn(outputs, targets)``."""
    return nn.functional.mse_loss

"""Fixtures for the raw-PyTorch adapter tests: tiny models and data; the bitwise state check
(from :mod:`lrfinder_adapters.testing`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
import torch
from torch import nn

# The bitwise state check is public (lrfinder_adapters.testing); the tests import it from here.
from lrfinder_adapters.testing import (  # noqa: F401
    assert_state_bitwise_equal,
    capture_state,
    rng_state,
    tensor_bytes,
)

Batch = tuple[torch.Tensor, torch.Tensor]


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

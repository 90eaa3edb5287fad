"""A DataLoader's own generator (shuffle=True, generator=g) is put back like the global RNGs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from lrfinder_adapters.pytorch import find_lr, loader_generators
from tests.adapters.conftest import make_mlp


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))


def order(loader: DataLoader) -> list[float]:
    """The first input feature of every sample, in the order one epoch yields them."""
    return [float(x) for inputs, _ in loader for x in inputs[:, 0]]


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # random data
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d, g: DataLoader(d, batch_size=8, shuffle=True, generator=g), id="loader-generator"),
        pytest.param(lambda d, g: DataLoader(d, batch_size=8, sampler=RandomSampler(d, generator=g)), id="sampler-generator"),
    ],
)  # fmt: skip
def test_loader_generator_is_restored(make: object) -> None:
    """After find_lr the loader shuffles exactly as it would have without the search."""
    data = dataset()
    untouched = make(data, torch.Generator().manual_seed(1))  # type: ignore[operator]
    searched = make(data, torch.Generator().manual_seed(1))  # type: ignore[operator]
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    find_lr(model, optimizer, torch.nn.functional.mse_loss, searched, num_iter=20, progress=False)
    assert order(searched) == order(untouched)


def test_loader_generators_finds_each_generator_once() -> None:
    """The loader's and its sampler's generator are the same object here: listed once."""
    g = torch.Generator()
    loader = DataLoader(dataset(), batch_size=8, shuffle=True, generator=g)
    assert loader_generators(loader, None) == [g]
    assert loader_generators([(1, 2)]) == []


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # random data
@pytest.mark.timeout(120)
@pytest.mark.parametrize("epoch_first", [False, True], ids=["search-first", "epoch-first"])
def test_persistent_workers_start_the_next_epoch_as_without_the_search(epoch_first: bool) -> None:
    """persistent_workers=True: workers the search started are shut down afterwards, so the
    user's next epoch starts them as it would have (its base seed and shuffle order unchanged);
    workers that ran an epoch before the search are left running."""
    data = dataset()
    orders, kept = [], []
    for search in (False, True):
        loader = DataLoader(
            data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1),
            num_workers=1, persistent_workers=True,
        )  # fmt: skip
        if epoch_first:
            order(loader)
        before = loader._iterator
        if search:
            model = make_mlp()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            find_lr(
                model, optimizer, torch.nn.functional.mse_loss, loader, num_iter=5, progress=False
            )
            kept.append(loader._iterator is before)
        orders.append(order(loader))
    assert orders[0] == orders[1]
    assert kept == [True]  # None before a first epoch (started and dropped), else the same one

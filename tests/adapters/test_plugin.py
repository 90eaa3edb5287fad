"""The raw-PyTorch adapter as an entry-point plugin: range_test / batch_size_search on a model."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_plugins import (
    NoSuggestionWarning,
    batch_size_search,
    find_lr,
    get_plugin_manager,
    hookimpl,
    range_test,
)
from lrfinder_plugins._batch_driver import is_oom
from lrfinder_plugins._manager import reset_plugin_manager
from tests.adapters.conftest import Batch, assert_state_bitwise_equal, capture_state, make_mlp


def test_range_test_on_a_model_matches_find_lr(
    model: nn.Module, optimizer: torch.optim.Optimizer, mse: Any, batches: list[Batch]
) -> None:
    """range_test(model, ...) through the plugin gives find_lr's points, state restored bitwise."""
    before = capture_state(model, optimizer)
    options = {"start_lr": 1e-4, "end_lr": 1.0, "num_iter": 12, "progress": False}
    generic = range_test(model, optimizer=optimizer, loss_fn=mse, train_loader=batches, **options)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    with warnings.catch_warnings():  # find_lr also suggests; this curve is too short for that
        warnings.simplefilter("ignore", NoSuggestionWarning)
        direct = find_lr(model, optimizer, mse, batches, **options)
    assert (generic.lrs, generic.losses) == (direct.lrs, direct.losses)


def test_range_test_keeps_param_group_ratios(mse: Any, batches: list[Batch]) -> None:
    """Two param groups: the TorchStep's group_ratios reach the result."""
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}]
    )
    result = range_test(
        model, optimizer=optimizer, loss_fn=mse, train_loader=batches, num_iter=5, progress=False
    )
    assert result.group_ratios == pytest.approx((1.0, 0.1))


def test_range_test_names_missing_options(model: nn.Module, optimizer: Any) -> None:
    """A model without its optimizer or data: a TypeError naming what is missing."""
    with pytest.raises(TypeError, match=r"needs train_loader="):
        range_test(model, optimizer=optimizer)


def test_range_test_rejects_unknown_options(
    model: nn.Module, optimizer: Any, batches: list[Batch]
) -> None:
    """Options go to TorchStep, which rejects the ones it does not know."""
    with pytest.raises(TypeError, match="warp_speed"):
        range_test(model, optimizer=optimizer, train_loader=batches, warp_speed=True)


def test_batch_size_search_on_a_model(
    model: nn.Module, optimizer: torch.optim.Optimizer, mse: Any
) -> None:
    """batch_size_search(model, ...) finds a tested size under a memory budget; state restored."""
    data = torch.utils.data.TensorDataset(torch.randn(256, 4), torch.randn(256, 1))
    before = capture_state(model, optimizer)
    result = batch_size_search(
        model,
        optimizer=optimizer,
        loss_fn=mse,
        dataset=data,
        memory_budget=200_000,
        steps_per_trial=1,
        max_trials=8,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert result.batch_size is not None
    assert result.batch_size in {t.size for t in result.trials if t.fitted}
    assert all(t.size <= 256 for t in result.trials)  # the dataset length bounds the search


def test_blocked_torch_adapter_leaves_no_adapter(
    model: nn.Module, optimizer: Any, batches: list[Batch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With lrfinder.torch blocked, nothing in the core knows torch: a TypeError says so."""
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.torch")
    reset_plugin_manager()
    with pytest.raises(TypeError, match=r"torch\.nn.*Sequential.*lrfinder\.protocols"):
        range_test(model, optimizer=optimizer, train_loader=batches)


def test_builtin_oom_classifier_is_a_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's is_oom knows CUDA's message through lrfinder.torch, and not without it."""
    error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_oom(error) and is_oom(torch.OutOfMemoryError("x"))
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.torch")
    reset_plugin_manager()
    assert not is_oom(error)


def test_specific_adapter_is_asked_before_the_torch_adapter(
    model: nn.Module, optimizer: Any, batches: list[Batch]
) -> None:
    """The torch adapter is trylast: a plugin for a kind of torch model answers first."""
    from lrfinder_plugins import hookimpl

    seen: list[str] = []

    class Specific:
        @hookimpl
        def lrfinder_make_step(self, target: Any, options: Any) -> None:
            seen.append(type(target).__name__)

    get_plugin_manager().register(Specific(), name="test.specific")
    range_test(
        model,
        optimizer=optimizer,
        train_loader=batches,
        loss_fn=nn.functional.mse_loss,
        num_iter=3,
        progress=False,
    )
    assert seen == ["Sequential"]


def test_a_duplicate_suggester_name_fails_find_lr_before_any_step(
    batches: list[Batch], mse: Any
) -> None:
    """A name two plugins register is found when find_lr checks its arguments, not after the
    whole test (where the suggestion's lookup would fail)."""
    from lrfinder_adapters.pytorch import find_lr
    from lrfinder_plugins.suggest import make_suggestion

    class Clash:
        @hookimpl
        def lrfinder_register_suggesters(self) -> dict[str, Any]:
            return {"valley": lambda result: make_suggestion(result, "valley", result.lrs[0])}

    get_plugin_manager().register(Clash(), name="test.clash")
    model = make_mlp()
    calls: list[int] = []

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return mse(out, y)

    with pytest.raises(ValueError, match=r"'valley'.*'test\.clash'|'test\.clash'.*'valley'"):
        find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, batches, progress=False)
    assert calls == []

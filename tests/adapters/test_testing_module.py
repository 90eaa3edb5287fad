"""lrfinder_adapters.testing and lrfinder_adapters.state: the public checker and snapshot."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lrfinder_plugins.testing
from lrfinder_adapters import _torch_state, state, testing
from lrfinder_adapters.testing import (
    assert_state_bitwise_equal,
    capture_state,
    rng_state,
    state_differences,
    tensor_bytes,
)
from tests.adapters import conftest
from tests.adapters.conftest import Batch, make_batches, make_mlp, train_steps


@pytest.fixture
def trained() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """An MLP after two SGD-with-momentum steps (so the optimizer has state) and a scheduler."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    train_steps(model, optimizer, make_batches(2), scheduler=scheduler)
    return model, optimizer, scheduler


def test_an_untouched_model_passes(
    trained: tuple[nn.Module, torch.optim.Optimizer, object],
) -> None:
    """Two captures with nothing in between are bitwise equal."""
    model, optimizer, scheduler = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))
    assert state_differences(before, capture_state(model, optimizer, schedulers=[scheduler])) == []


def test_a_changed_parameter_is_caught(
    trained: tuple[nn.Module, torch.optim.Optimizer, object],
) -> None:
    """One weight moved by one ulp fails, naming the parameter."""
    model, optimizer, _ = trained
    before = capture_state(model, optimizer)
    weight = model.get_parameter("0.weight")
    with torch.no_grad():
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))
    with pytest.raises(AssertionError, match=r"state\['params'\]\['0.weight'\]: tensor bytes"):
        assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_a_sign_flipped_zero_is_caught() -> None:
    """0.0 and -0.0 compare equal, but not bitwise: the checker sees the difference."""
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        model.bias.zero_()
    before = capture_state(model, optimizer)
    with torch.no_grad():
        model.bias.neg_()
    assert torch.equal(before["params"]["bias"], model.bias.detach())
    with pytest.raises(AssertionError, match=r"\['bias'\]"):
        assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_a_changed_optimizer_state_is_caught(
    trained: tuple[nn.Module, torch.optim.Optimizer, object],
) -> None:
    """A momentum buffer changed in place fails, naming the optimizer state."""
    model, optimizer, _ = trained
    before = capture_state(model, optimizer)
    buffer = optimizer.state[model.get_parameter("0.weight")]["momentum_buffer"]
    buffer.mul_(2.0)
    with pytest.raises(AssertionError, match=r"state\['optimizer'\]\['state'\]\[0\]"):
        assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_a_changed_lr_and_scheduler_are_caught(
    trained: tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR],
) -> None:
    """A scheduler step changes the param group's LR and the scheduler's state: both listed."""
    model, optimizer, scheduler = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    optimizer.step()
    scheduler.step()
    problems = state_differences(before, capture_state(model, optimizer, schedulers=[scheduler]))
    assert any("['param_groups'][0]['lr']" in p for p in problems)
    assert any(p.startswith("state['schedulers'][0]") for p in problems)


def test_a_changed_torch_rng_is_caught(
    trained: tuple[nn.Module, torch.optim.Optimizer, object],
) -> None:
    """One draw from torch's global generator fails, naming it."""
    model, optimizer, _ = trained
    before = capture_state(model, optimizer)
    torch.rand(1)
    with pytest.raises(AssertionError, match=r"state\['rng'\]\['torch_cpu'\]"):
        assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_a_changed_python_or_numpy_rng_is_caught() -> None:
    """A draw from Python's random or NumPy's global generator fails, naming the generator."""
    before = rng_state()
    random.random()
    assert any(p.startswith("state['python']") for p in state_differences(before, rng_state()))
    before = rng_state()
    np.random.rand()
    assert any(p.startswith("state['numpy']") for p in state_differences(before, rng_state()))


def test_numpy_is_left_out_when_it_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NumPy, rng_state has no numpy entry and the checker still works."""
    monkeypatch.setitem(sys.modules, "numpy", None)  # `import numpy` now raises ImportError
    before = rng_state()
    assert set(before) == {"python", "torch_cpu"}
    assert state_differences(before, rng_state()) == []
    torch.rand(1)
    assert state_differences(before, rng_state()) != []


def test_tensor_bytes_are_the_raw_bytes() -> None:
    """tensor_bytes tells NaN payloads apart that torch.equal cannot compare."""
    quiet = torch.tensor([float("nan")])
    payload = quiet.view(torch.int32).add(1).view(torch.float32)
    assert torch.isnan(payload).all()
    assert not torch.equal(tensor_bytes(quiet), tensor_bytes(payload))
    assert tensor_bytes(torch.zeros(2, 3)).dtype == torch.uint8


def test_state_capture_and_restore_round_trip(
    trained: tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR],
    batches: list[Batch],
) -> None:
    """lrfinder_adapters.state.capture/restore put back what training changed, bitwise."""
    model, optimizer, scheduler = trained
    before = capture_state(model, optimizer, schedulers=[scheduler])
    saved = state.capture(model, optimizer, schedulers=[scheduler])
    train_steps(model, optimizer, batches, scheduler=scheduler)
    torch.rand(3)
    assert state_differences(before, capture_state(model, optimizer, schedulers=[scheduler]))
    state.restore(saved, model, optimizer, schedulers=[scheduler])
    saved.close()
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_public_modules_re_export_the_same_objects() -> None:
    """state re-exports _torch_state; testing re-exports the core fakes; conftest re-exports testing."""
    for name in state.__all__:
        assert getattr(state, name) is getattr(_torch_state, name)
    assert testing.FakeStep is lrfinder_plugins.testing.FakeStep
    assert testing.FakeProbe is lrfinder_plugins.testing.FakeProbe
    for name in ("assert_state_bitwise_equal", "capture_state", "rng_state", "tensor_bytes"):
        assert getattr(conftest, name) is getattr(testing, name)

"""An error raised in the user's model or loss passes through unchanged, with a PEP 678 note."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_adapters.pytorch import find_lr
from tests.adapters.conftest import (
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
)


class Boom(Exception):
    """The user's own error type."""


def loss_failing_at(call: int) -> Any:
    """An MSE loss that raises Boom on its ``call``-th call (1-based)."""
    calls = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        if len(calls) == call:
            raise Boom("the user's loss failed")
        return nn.functional.mse_loss(outputs, targets)

    return loss_fn


def test_range_test_error_passes_through_with_a_note_naming_step_and_lr() -> None:
    """Same type and message; the note names the step, the LR and the batch."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = capture_state(model, optimizer)
    with pytest.raises(Boom) as info:
        find_lr(model, optimizer, loss_failing_at(3), make_batches(4), num_iter=10, progress=False)
    assert str(info.value) == "the user's loss failed"
    (note,) = info.value.__notes__
    assert note.startswith("lrfinder: raised in the LR range test at step 3 of 10 (LR ")
    assert "batch of 8 samples" in note
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_batch_size_error_passes_through_with_a_note_naming_the_size() -> None:
    """A non-OOM error in a trial: same type and message; the note names the trial's size."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    with pytest.raises(Boom) as info:
        find_batch_size(
            model, optimizer, loss_failing_at(1), dataset=data, init_val=4, progress=False,
            memory_budget=2**30,
        )  # fmt: skip
    assert info.value.__notes__ == [
        "lrfinder: raised in the batch-size search, in trial 1 at batch size 4"
    ]


def test_note_is_added_once() -> None:
    """An error seen by nested searches gets one note, the innermost's."""
    from lrfinder_plugins._seams import note_where

    error = Boom("x")
    note_where(error, "in A")
    note_where(error, "in B")
    assert error.__notes__ == ["lrfinder: raised in A"]

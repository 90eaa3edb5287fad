"""The distributed options on one process: clear errors, and the single-process path untouched."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_adapters.pytorch import TorchStep, find_lr
from lrfinder_plugins import LocalReducer
from tests.adapters.conftest import (
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"distributed": "yes"}, TypeError, r"distributed must be True, False or None, got 'yes'"),
        ({"distributed": True}, ValueError, r"distributed=True but no torch.distributed process"),
        ({"all_reduce_grads": True}, ValueError, r"all_reduce_grads=True need an initialised"),
        ({"all_reduce_grads": 1}, TypeError, r"all_reduce_grads must be True or False, got 1"),
        ({"fault_timeout": -1.0}, ValueError, r"fault_timeout"),
    ],
    ids=[
        "distributed-not-bool",
        "distributed-without-group",
        "grads-without-group",
        "grads-not-bool",
        "negative-fault-timeout",
    ],
)
def test_bad_distributed_options_fail_before_anything_runs(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option raises naming it, and the model and RNG are untouched."""
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    dataset = torch.utils.data.TensorDataset(*make_batches(1, batch_size=64)[0])
    before = capture_state(model, optimizer)
    with pytest.raises(error, match=match):
        find_lr(
            model, optimizer, nn.functional.mse_loss, make_batches(4), progress=False, **options
        )
    with pytest.raises(error, match=match):
        find_batch_size(
            model,
            optimizer,
            nn.functional.mse_loss,
            dataset=dataset,
            progress=False,
            **options,
        )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_one_process_uses_the_local_reducer_and_no_lookahead() -> None:
    """Without a process group the step reduces nothing and fetches no batch ahead."""
    model = make_mlp()
    step = TorchStep(
        model, torch.optim.SGD(model.parameters(), lr=0.01), nn.functional.mse_loss, make_batches(2)
    )
    assert isinstance(step.reducer, LocalReducer) and not step.lookahead


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")
def test_the_result_states_one_process_and_the_global_batch() -> None:
    """world_size 1, global batch = batch x accumulation steps."""
    model = make_mlp()
    result = find_lr(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.functional.mse_loss,
        make_batches(8),
        num_iter=4,
        accumulation_steps=2,
        progress=False,
    )
    assert result.world_size == 1 and result.global_batch == 16


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")
def test_lookahead_on_one_process_stops_with_the_data() -> None:
    """lookahead=True: a one-shot iterator of 3 batches gives 3 points, then data_exhausted."""
    model = make_mlp()
    result = find_lr(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        nn.functional.mse_loss,
        iter(make_batches(3)),
        num_iter=10,
        lookahead=True,
        progress=False,
    )
    assert len(result) == 3 and str(result.stop_reason) == "data_exhausted"


@pytest.mark.parametrize("world", [2, 7, 31], ids=lambda w: f"world-{w}")
def test_two_number_step_form_sums_exactly(world: int) -> None:
    """pack_step's two numbers, summed over ranks, unpack to the sum of the outcomes."""
    from lrfinder_adapters.distributed import pack_step, unpack_step
    from lrfinder_plugins import StepOutcome

    outcomes = [
        StepOutcome(
            loss_sum=0.5 * r,
            samples=8 + r,
            non_finite=r % 2,
            skipped=(r // 2) % 2,
            out_of_data=int(r == world - 1),
            errors=int(r == 0),
        )
        for r in range(world)
    ]
    packed = [pack_step(o, world) for o in outcomes]
    assert all(len(p) == 2 for p in packed)
    total = unpack_step([sum(column) for column in zip(*packed)])
    assert total.to_vector() == [sum(column) for column in zip(*(o.to_vector() for o in outcomes))]


def test_a_large_world_sends_the_six_number_form() -> None:
    """32 ranks or more: every field travels on its own."""
    from lrfinder_adapters.distributed import pack_step
    from lrfinder_plugins import StepOutcome

    assert len(pack_step(StepOutcome.of_loss(1.0, 4), 32)) == 6


def test_samples_the_two_number_form_cannot_hold_are_an_error() -> None:
    """A fractional sample count raises (the reducer turns it into this rank's failure)."""
    from lrfinder_adapters.distributed import pack_step
    from lrfinder_plugins import StepOutcome

    with pytest.raises(ValueError, match="samples must be a whole number"):
        pack_step(StepOutcome.of_loss(1.0, 2.5), 2)


@pytest.mark.parametrize(
    ("target", "world", "expected"),
    [(None, 4, None), (1024, 1, 1024), (1024, 4, 256)],
    ids=["no-target", "one-rank", "four-ranks"],
)
def test_a_global_target_batch_is_split_over_the_ranks(
    target: int | None, world: int, expected: int | None
) -> None:
    """per_rank_target divides the global batch by the world size."""
    from lrfinder_adapters.distributed import per_rank_target

    assert per_rank_target(target, world) == expected


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [(1001, ValueError, r"multiple of it; pass e\.g\. target_batch=1000"), ("64", TypeError, "")],
    ids=["not-a-multiple", "not-an-int"],
)
def test_a_bad_global_target_batch_names_the_fix(
    target: object, error: type[Exception], match: str
) -> None:
    """A target that is no int, or not a multiple of the ranks, fails naming target_batch."""
    from lrfinder_adapters.distributed import per_rank_target

    with pytest.raises(error, match=f"target_batch.*{match}"):
        per_rank_target(target, 8)  # type: ignore[arg-type]

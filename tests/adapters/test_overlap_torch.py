"""TorchStep with ``overlap``: each step decided one step late, the same results bit for bit.

On a GPU the point of ``overlap`` is that step k's loss is read after step k+1 is queued (and
under DDP that its reduce travels meanwhile). The arithmetic must not change: these tests run
the same range tests on CPU both ways and compare every recorded loss bitwise, the stop reason,
the error raised, and the restored state.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.pytorch import TorchStep, find_lr
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state
from lrfinder_plugins import RangeTest, run_range_test

pytestmark = pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")


def mlp() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))


def batches(count: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(count):
        x = torch.randn(size, 5, generator=gen)
        out.append((x, x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(size, 1, generator=gen)))
    return out


def failing_at(n: int) -> Any:
    calls = {"n": 0}

    def compute_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyError("bad batch")
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    return compute_loss


CASES: dict[str, dict[str, Any]] = {
    "budget": {"test": {"end_lr": 1e-2, "diverge_threshold": None}},
    "diverged": {"test": {"end_lr": 10.0}},
    "non_finite": {"test": {"end_lr": 1e8, "diverge_threshold": None}},
    "exhausted": {"data": "one-shot", "test": {"diverge_threshold": None}},
    "exhausted, lookahead": {
        "data": "one-shot",
        "step": {"lookahead": True},
        "test": {"diverge_threshold": None},
    },
    "accumulation": {"step": {"accumulation_steps": 3}, "test": {"end_lr": 10.0}},
    "validation": {"step": {"val_loader": batches(2), "val_batches": 2}, "test": {}},
    "clipping": {"step": {"max_grad_norm": 0.5}, "test": {"end_lr": 10.0}},
    "error": {"step": {"compute_loss": "fails at 4"}, "test": {}},
}


def sweep(case: dict[str, Any], overlap: bool) -> tuple[Any, TorchStep]:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data: Any = batches(6)
    if case.get("data") == "one-shot":
        data = iter(batches(7))
    options = dict(case.get("step", {}))
    if options.get("compute_loss") == "fails at 4":
        options["compute_loss"] = failing_at(4)
    step = TorchStep(model, optimizer, nn.functional.mse_loss, data, overlap=overlap, **options)
    test = RangeTest(**{"start_lr": 1e-4, "num_iter": 16, **case["test"]})
    before = capture_state(model, optimizer)
    try:
        seen: Any = run_range_test(step, test, progress=False)
    except KeyError as error:
        seen = (type(error), str(error), test.result())
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return seen, step


@pytest.mark.parametrize("name", list(CASES))
def test_overlap_records_the_same_losses_bitwise(name: str) -> None:
    """Every loss, LR and stop reason (or error) equal, bit for bit; the state restored."""
    at_end, end_step = sweep(CASES[name], overlap=False)
    late, late_step = sweep(CASES[name], overlap=True)
    assert late_step.overlap and not end_step.overlap
    assert late == at_end
    result = at_end if not isinstance(at_end, tuple) else at_end[2]
    assert len(result) >= 3, "each case records a few points before it stops"


def test_the_stops_the_cases_are_about() -> None:
    """The cases stop the way they are named (so the comparison above covers each rule)."""
    ends = {name: sweep(case, overlap=True)[0] for name, case in CASES.items()}
    assert str(ends["budget"].stop_reason) == "budget"
    assert str(ends["diverged"].stop_reason) == "diverged"
    assert str(ends["non_finite"].stop_reason) == "non_finite"
    assert (
        str(ends["exhausted"].stop_reason)
        == "data_exhausted"
        == str(ends["exhausted, lookahead"].stop_reason)
    )
    assert len(ends["exhausted"]) == 7 == len(ends["exhausted, lookahead"])
    assert ends["error"][0] is KeyError


def test_overlap_is_off_by_default_on_one_cpu_process() -> None:
    """Nothing to overlap on one CPU process: the default decides each step at its end."""
    model = mlp()
    step = TorchStep(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, batches(1)
    )
    assert step.overlap is False


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"keep_weights": True}, "overlap=True cannot be combined with keep_weights=True"),
        ({"scaler": torch.amp.GradScaler("cpu")}, "overlap=True cannot be combined with a scaler"),
        ({"overlap": "yes"}, "overlap"),
    ],
)
def test_overlap_that_cannot_hold_is_refused_before_anything_runs(
    options: dict[str, Any], match: str
) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = capture_state(model, optimizer)
    options = {"overlap": True, **options}
    with pytest.raises((ValueError, TypeError), match=match):
        find_lr(model, optimizer, nn.functional.mse_loss, batches(2), progress=False, **options)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


def test_keep_weights_and_a_scaler_turn_the_default_off() -> None:
    """Left at None, overlap stays off where it could not hold (no error)."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = TorchStep(model, optimizer, nn.functional.mse_loss, batches(1), keep_weights=True)
    scaled = TorchStep(
        model, optimizer, nn.functional.mse_loss, batches(1), scaler=torch.amp.GradScaler("cpu")
    )
    assert kept.overlap is False and scaled.overlap is False

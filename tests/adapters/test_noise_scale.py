"""The noise scale from real gradients: the monitor against per-example gradients, and
find_batch_size(noise_scale=True) end to end (restore, summary, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_adapters.gradient_noise import NoiseScaleMonitor, exact_noise_scale
from lrfinder_plugins import BatchSizeResult
from tests.adapters.conftest import assert_state_bitwise_equal, capture_state


def regression(
    samples: int = 512, features: int = 8, noise: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, features, generator=gen)
    w = torch.randn(features, 1, generator=gen)
    return x, x @ w + noise * torch.randn(samples, 1, generator=gen)


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    micro: int,
    windows: int,
    accumulation: int = 4,
) -> NoiseScaleMonitor:
    """Accumulation windows of random micro-batches at fixed parameters (lr=0)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = NoiseScaleMonitor(
        model, optimizer, micro_batch_size=micro, accumulation_steps=accumulation
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(windows):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            index = torch.randint(0, len(x), (micro,), generator=gen)
            loss = nn.functional.mse_loss(model(x[index]), y[index]) / accumulation
            loss.backward()
        optimizer.step()
    monitor.close()
    return monitor


@pytest.mark.parametrize("hidden", [0, 16], ids=["linear", "mlp"])
def test_two_batch_estimate_matches_per_example_gradients(hidden: int) -> None:
    """At the same parameters, the estimate is within a factor of 2 of the exact B_simple and
    its interval holds it."""
    torch.manual_seed(0)
    x, y = regression()
    model = (
        nn.Linear(8, 1)
        if hidden == 0
        else nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    )
    exact = exact_noise_scale(model, nn.functional.mse_loss, x, y)
    estimate = measure(model, x, y, micro=4, windows=300).estimate
    assert estimate is not None
    assert exact / 2 <= estimate.b_simple <= 2 * exact, (estimate, exact)
    assert estimate.low <= exact <= estimate.high, (estimate, exact)


def test_monitor_leaves_the_training_unchanged() -> None:
    """With the monitor attached, the weights after training are bitwise those without it."""
    x, y = regression()
    results = []
    for attach in (False, True):
        torch.manual_seed(0)
        model = nn.Linear(8, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        monitor = (
            NoiseScaleMonitor(model, optimizer, micro_batch_size=8, accumulation_steps=2)
            if attach
            else None
        )
        for i in range(6):
            optimizer.zero_grad()
            for j in range(2):
                rows = slice(16 * i + 8 * j, 16 * i + 8 * j + 8)
                (nn.functional.mse_loss(model(x[rows]), y[rows]) / 2).backward()
            optimizer.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if monitor is not None:
            assert monitor.steps == 6 and len(monitor.history) == 5
            monitor.close()
    assert torch.equal(results[0], results[1])


def test_find_batch_size_reports_noise_scale_knee_and_recommendation(tmp_path: Path) -> None:
    """noise_scale=True measures at the answer; the state is bitwise restored; the summary and
    the JSON carry the throughput, the knee, B_simple and the recommendation."""
    torch.manual_seed(0)
    x, y = regression(samples=1024)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = capture_state(model, optimizer)
    result = find_batch_size(
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=torch.utils.data.TensorDataset(x, y),
        memory_budget=300_000,
        progress=False,
        noise_scale=True,
        gns_max_steps=20,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert result.noise_scale is not None and 3 <= result.noise_scale.steps <= 20
    assert result.knee in result.throughput and result.recommendation is not None
    assert result.recommendation.lr_rule == "sqrt"
    assert result.recommendation.batch_size <= result.batch_size
    text = result.summary()
    assert "knee at" in text and "B_simple" in text and "recommended:" in text
    path = result.save_json(tmp_path / "batch.json")
    data = json.loads(path.read_text())
    assert data["knee"] == result.knee and data["recommendation"]["batch_size"] > 0
    assert BatchSizeResult.load_json(path) == result


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"noise_scale": "yes"}, TypeError, "noise_scale must be True or False"),
        ({"noise_scale": True, "gns_precision": 2.0}, ValueError, "gns_precision"),
        ({"noise_scale": True, "gns_max_steps": 1}, ValueError, "gns_max_steps"),
        ({"knee_tolerance": 1.0}, ValueError, "knee_tolerance"),
    ],
    ids=["noise-scale-type", "precision", "max-steps", "knee"],
)
def test_bad_noise_scale_options_fail_before_any_trial(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """A bad option raises before anything runs, naming it."""
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    before = capture_state(model, optimizer)
    with pytest.raises(error, match=match):
        find_batch_size(
            model, optimizer, make_loader=lambda n: calls.append(n) or [], progress=False, **options
        )
    assert calls == [] and not before.keys() - capture_state(model, optimizer).keys()


def test_noise_scale_with_a_step_fn_is_refused() -> None:
    """A step_fn runs whole steps: the micro-batches cannot be read, so it says so up front."""
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="noise_scale=True needs dataset= or make_loader="):
        find_batch_size(model, optimizer, step_fn=lambda n: None, noise_scale=True, progress=False)


def test_monitor_needs_two_micro_batches_on_one_process() -> None:
    """On one process, accumulation_steps=1 gives no small batch: a ValueError says what to pass."""
    model = nn.Linear(8, 1)
    with pytest.raises(ValueError, match="accumulation_steps=2 or more"):
        NoiseScaleMonitor(model, torch.optim.SGD(model.parameters(), lr=0.1), micro_batch_size=4)


def test_exact_noise_scale_checks_its_data() -> None:
    """Mismatched or scalar data is refused before any gradient, naming the argument."""
    model = nn.Linear(8, 1)
    x, y = regression(samples=16)
    with pytest.raises(ValueError, match="same number"):
        exact_noise_scale(model, nn.functional.mse_loss, x, y[:8])
    with pytest.raises(TypeError, match="targets must be a tensor"):
        exact_noise_scale(model, nn.functional.mse_loss, x, torch.tensor(1.0))

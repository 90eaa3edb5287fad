"""The gradient noise scale, the throughput knee and the recommendation: the pure arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lrfinder_plugins import BatchSizeResult, BatchSizeSearch, NoiseScale, NoiseScaleEstimator
from lrfinder_plugins.noise_scale import (
    hardware_friendly,
    lr_rule_for,
    recommend,
    scale_lr,
    throughput_knee,
    two_batch,
)


def simulate(
    rng: np.random.Generator, *, replicates: int, steps: int, micro: int, window: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Squared norms of Gaussian per-example gradients: |G|² = 0.5, tr Σ = 50 (B_simple 100)."""
    dim = 50
    mean = np.full(dim, 0.1)
    # The mean of `micro` examples is G + N(0, I / micro): draw it directly.
    micro_means = mean + rng.standard_normal((replicates, steps, window, dim)) / math.sqrt(micro)
    small = (micro_means**2).sum(-1).mean(-1)  # the mean |G_small|² of the window
    big = (micro_means.mean(2) ** 2).sum(-1)  # |G_big|² of the window's mean
    return small, big, 50.0 / 0.5


def estimate(small: np.ndarray, big: np.ndarray, b_small: int, b_big: int) -> NoiseScale:
    estimator = NoiseScaleEstimator()
    for s, b in zip(small, big):
        estimator.update(float(s), float(b), b_small=b_small, b_big=b_big)
    result = estimator.estimate()
    assert result is not None
    return result


def test_two_batch_estimates_are_unbiased() -> None:
    """Averaged over many steps, the per-step |G|² and tr Σ estimates match the truth."""
    small, big, _ = simulate(
        np.random.default_rng(0), replicates=1, steps=20000, micro=16, window=4
    )
    pairs = [two_batch(float(s), float(b), 16, 64) for s, b in zip(small[0], big[0])]
    gradient_sq = np.mean([p[0] for p in pairs])
    trace = np.mean([p[1] for p in pairs])
    assert gradient_sq == pytest.approx(0.5, rel=0.05)
    assert trace == pytest.approx(50.0, rel=0.02)


def test_interval_covers_the_true_noise_scale_at_its_stated_rate() -> None:
    """The delta-method 95% interval holds the true B_simple in 90-99% of 400 simulated runs."""
    small, big, truth = simulate(
        np.random.default_rng(1), replicates=400, steps=100, micro=16, window=4
    )
    hits = [estimate(s, b, 16, 64) for s, b in zip(small, big)]
    coverage = np.mean([e.low <= truth <= e.high for e in hits])
    assert 0.90 <= coverage <= 0.99, coverage
    # and the estimate is close: the ratio of means is consistent
    assert np.median([e.b_simple for e in hits]) == pytest.approx(truth, rel=0.1)


def test_steps_for_predicts_the_steps_a_precision_needs() -> None:
    """After the predicted number of steps, the relative half-width is near the precision asked."""
    small, big, _ = simulate(np.random.default_rng(2), replicates=1, steps=2000, micro=16, window=4)
    first = estimate(small[0, :50], big[0, :50], 16, 64)
    needed = first.steps_for(0.1)
    assert needed is not None and needed > 50
    later = estimate(small[0, :needed], big[0, :needed], 16, 64)
    assert 0.06 <= later.relative_half_width <= 0.15


def test_ratio_of_means_not_mean_of_ratios() -> None:
    """The estimate divides the mean tr Σ by the mean |G|² (one step alone can be negative)."""
    estimator = NoiseScaleEstimator()
    steps = [(3.0, 1.5), (2.0, 1.9)]  # per step: (|G|², tr Σ) = (1, 2) then (1.87, 0.13)
    for s, b in steps:
        estimator.update(s, b, b_small=1, b_big=4)
    pairs = [two_batch(s, b, 1, 4) for s, b in steps]
    expected = sum(p[1] for p in pairs) / sum(p[0] for p in pairs)
    assert estimator.estimate().b_simple == pytest.approx(expected)  # type: ignore[union-attr]


def test_gradient_buried_in_noise_gives_an_unbounded_estimate() -> None:
    """When the mean |G|² is not positive, B_simple is infinite and the interval unbounded."""
    estimator = NoiseScaleEstimator()
    for _ in range(3):
        estimator.update(4.0, 0.5, b_small=1, b_big=2)  # |G|² estimate: -3
    result = estimator.estimate()
    assert result is not None and math.isinf(result.b_simple) and math.isinf(result.high)
    assert result.steps_for(0.2) is None and not estimator.precise_enough(0.2)


def test_noise_scale_round_trips_through_a_dict() -> None:
    """to_dict/from_dict keep every field; infinities travel as null."""
    finite = NoiseScale(120.0, 90.0, 180.0, 40, gradient_sq=0.5, trace=60.0, b_small=8, b_big=32)
    unbounded = NoiseScale(math.inf, 0.0, math.inf, 3)
    assert NoiseScale.from_dict(finite.to_dict()) == finite
    assert unbounded.to_dict()["b_simple"] is None
    back = NoiseScale.from_dict(unbounded.to_dict())
    assert math.isinf(back.b_simple) and math.isinf(back.high) and back.steps == 3


@pytest.mark.parametrize(
    ("rates", "tolerance", "knee"),
    [
        ({8: 500.0, 16: 900.0, 32: 960.0, 64: 980.0}, 0.05, 32),
        ({8: 500.0, 16: 900.0, 32: 960.0, 64: 980.0}, 0.0, 64),
        ({8: 500.0, 16: 900.0, 32: 960.0, 64: 980.0}, 0.10, 16),
        ({4: 100.0, 8: 120.0, 16: 110.0}, 0.05, 8),  # slower again past the best
        ({}, 0.05, None),
    ],
    ids=["five-percent", "zero-tolerance", "ten-percent", "peak-in-the-middle", "no-trials"],
)
def test_knee_is_the_smallest_size_near_the_best_throughput(
    rates: dict[int, float], tolerance: float, knee: int | None
) -> None:
    """The knee is the smallest size within the tolerance of the best measured throughput."""
    assert throughput_knee(rates, tolerance) == knee


@pytest.mark.parametrize(
    ("size", "at_most", "expected"),
    [
        (1, None, 1),
        (3.1, None, 4),
        (7, None, 8),
        (100, None, 96),
        (115, None, 112),
        (300, 100, 96),
        (7, 6, 4),
        (12, 12, 8),
    ],
)
def test_hardware_friendly_sizes(size: float, at_most: int | None, expected: int) -> None:
    """Sizes round to 1, 2, 4 or a multiple of 8, never above ``at_most``."""
    assert hardware_friendly(size, at_most=at_most) == expected


def test_lr_rules_follow_the_optimizer_family() -> None:
    """SGD scales linearly, Adam-style optimizers by the square root, others are unknown."""
    assert [lr_rule_for(n) for n in ("SGD", "AdamW", "Adam", "RMSprop", "Prodigy", None)] == [
        "linear",
        "sqrt",
        "sqrt",
        "sqrt",
        None,
        None,
    ]
    assert scale_lr(0.1, 256, 1024, "linear") == pytest.approx(0.4)
    assert scale_lr(1e-3, 256, 64, "sqrt") == pytest.approx(5e-4)


def test_recommendation_is_the_smaller_of_the_fit_and_the_critical_batch() -> None:
    """Below B_crit the fit wins; above it B_crit does, rounded; a target gets accumulation."""
    scale = NoiseScale(b_simple=100.0, low=80.0, high=130.0, steps=30)
    assert recommend(64, scale).batch_size == 64
    small = recommend(512, scale, optimizer="AdamW")
    assert (small.batch_size, small.lr_rule) == (96, "sqrt") and "critical" in small.reason
    split = recommend(512, scale, world_size=2, target_batch=512)
    assert (split.batch_size, split.accumulation_steps, split.global_batch) == (48, 5, 480)
    assert "over twice B_crit" in split.reason
    assert recommend(100).batch_size == 96 and "noise_scale=True" in recommend(100).reason


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: throughput_knee({8: 1.0}, 1.5), "knee_tolerance must be in"),
        (lambda: two_batch(1.0, 1.0, 8, 8), "0 < b_small < b_big"),
        (lambda: NoiseScaleEstimator(confidence=1.0), "confidence must be in"),
        (lambda: NoiseScaleEstimator().update(-1.0, 1.0, b_small=1, b_big=2), "small_sq"),
        (lambda: scale_lr(0.1, 8, 16, "cubic"), "rule must be one of"),
        (lambda: recommend(0), "fits must be >= 1"),
        (lambda: BatchSizeSearch(knee_tolerance=-0.1), "knee_tolerance"),
    ],
    ids=["knee", "sizes", "confidence", "negative-norm", "rule", "fits", "search-option"],
)
def test_bad_input_names_the_argument(call: object, match: str) -> None:
    """Bad arguments raise before anything runs, naming the argument."""
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]


def test_result_reports_knee_noise_scale_and_recommendation() -> None:
    """summary() and the JSON carry the throughput, the knee, B_simple and the advice."""
    search = BatchSizeSearch(mode="power", init_val=8, steps_per_trial=2)
    seconds = {8: 0.08, 16: 0.09, 32: 0.16, 64: 0.31}
    while not search.finished:
        size = search.next_size()
        search.record(size, size <= 64, seconds=seconds.get(size, 1.0))
    result = search.result()
    scale = NoiseScale(b_simple=30.0, low=20.0, high=45.0, steps=12)
    result = BatchSizeResult(
        **{
            **result.__dict__,
            "noise_scale": scale,
            "options": {**result.options, "optimizer": "SGD"},
        }
    )
    assert result.knee == 32 and result.throughput[8] == pytest.approx(200.0)
    text = result.summary()
    assert "knee at 32" in text and "B_simple ≈ 30" in text and "recommended: 32" in text
    data = result.to_dict()
    assert data["knee"] == 32 and data["recommendation"]["batch_size"] == 32
    assert data["recommendation"]["lr_rule"] == "linear"
    assert BatchSizeResult.from_dict(data) == result


def test_plot_shows_throughput_knee_and_noise_scale(tmp_path: Path) -> None:
    """result.plot() draws throughput against size with the knee, B_simple and the advice."""
    search = BatchSizeSearch(mode="power", init_val=8, steps_per_trial=2)
    while not search.finished:
        size = search.next_size()
        search.record(size, size <= 64, seconds=0.01 * size**0.5)
    result = search.result()
    result = BatchSizeResult(**{**result.__dict__, "noise_scale": NoiseScale(30.0, 20.0, 45.0, 12)})
    figure = result.plot(tmp_path / "batch.png")
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert (tmp_path / "batch.png").read_bytes()[:4] == b"\x89PNG"
    assert any(label.startswith("knee") for label in labels)
    assert "B_simple ≈ 30" in labels and "recommended: 32" in labels

"""The default ``margin`` method, confidence and reason, the usable range and ``one_cycle()``."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfinder_plugins import NoSuggestionWarning, RangeTestResult, StopReason
from lrfinder_plugins.suggest import (
    BUILTIN,
    DEFAULT_METHOD,
    DESCENT_FRACTION,
    FALLBACK_WIDTH_DECADES,
    MARGIN_DECADES,
    SMOOTHING_DECADES,
    LowConfidenceWarning,
    Suggestion,
    analyse_curve,
    smooth_in_log_lr,
)

from .curves import result_from_losses, sigmoid_curve, v_curve

MARGIN = 10**MARGIN_DECADES


def lr_at(result: RangeTestResult, i: int) -> float:
    return result.lrs[i]


def noisy(values: list[float], spread: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [v + rng.gauss(0.0, spread) for v in values]


def descent_then_blowup(points: int = 100) -> list[float]:
    """A clean curve over 1e-6..1: flat at 2.0, falls to 0.5 around 1e-3, blows up past 0.1."""

    def loss(log_lr: float) -> float:
        descent = 1.5 / (1.0 + math.exp(5.0 * (log_lr + 3.0)))
        blow_up = 50.0 * (log_lr + 1.0) if log_lr > -1.0 else 0.0
        return 0.5 + descent + blow_up

    return [loss(-6.0 + 6.0 * i / (points - 1)) for i in range(points)]


# -- the default method ----------------------------------------------------------------------
def test_margin_is_the_default() -> None:
    """suggestion() without a method uses margin, the measured default."""
    result = result_from_losses(descent_then_blowup())
    assert DEFAULT_METHOD == "margin" and result.suggestion() == result.suggestion("margin")


def test_margin_is_the_geometric_mean_of_minimum_and_blowup_over_the_margin() -> None:
    """Without the descent cap, margin = sqrt(lr at the smoothed minimum * lr at the blow-up)
    / 10**1.4."""
    result = result_from_losses(descent_then_blowup())
    analysis = analyse_curve(result, descent_fraction=0)
    assert analysis is not None
    expected = math.sqrt(analysis.lr_min * analysis.lr_blowup) / MARGIN
    assert result.suggestion("margin", descent_fraction=0).lr == pytest.approx(expected, rel=1e-12)


def test_margin_is_never_above_where_the_loss_made_its_fraction_of_the_descent() -> None:
    """The default is min(the uncapped margin, lr_descended); lr_descended is the first LR from
    which the smoothed loss stays 0.4 of the way down its descent up to the minimum."""
    for losses in (descent_then_blowup(), sigmoid_curve(), v_curve()):
        result = result_from_losses(losses)
        capped, free = analyse_curve(result), analyse_curve(result, descent_fraction=0)
        assert capped is not None and free is not None
        assert capped.lr == pytest.approx(min(free.lr, capped.lr_descended), rel=1e-12)
        assert result.suggestion().lr == pytest.approx(capped.lr, rel=1e-12)
        # the smoothed curve the analysis reads (up to the blow-up)
        kept = [i for i, lr in enumerate(result.lrs) if lr <= capped.lr_blowup]
        xs = [math.log10(result.lrs[i]) for i in kept]
        smoothed = smooth_in_log_lr(xs, [result.losses[i] for i in kept], SMOOTHING_DECADES)
        level = capped.start_loss - DESCENT_FRACTION * capped.depth
        lowest = result.lrs.index(capped.lr_min)
        at = result.lrs.index(capped.lr_descended)
        assert all(y <= level for y in smoothed[at : lowest + 1])
        assert at == 0 or smoothed[at - 1] > level


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-5.0, max_value=50.0, allow_nan=False),
            st.sampled_from([math.nan, math.inf]),
        ),
        min_size=8,
        max_size=120,
    ),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_the_cap_only_lowers_and_grows_with_the_fraction(
    losses: list[float], low: float, high: float
) -> None:
    """On any curve (non-finite points included): the capped suggestion is never above the
    uncapped one nor, where the cap applies (a descent that stands out of the noise), above
    lr_descended; a larger fraction never gives a lower suggestion; a curve without such a
    descent is not capped."""
    low, high = sorted((low, high))
    result = result_from_losses(losses)
    free = analyse_curve(result, descent_fraction=0)
    a, b = analyse_curve(result, descent_fraction=low), analyse_curve(result, descent_fraction=high)
    if free is None:  # fewer than 8 finite points
        assert a is None and b is None
        return
    assert a is not None and b is not None
    tolerance = 1 + 1e-12
    for capped, fraction in ((a, low), (b, high)):
        assert capped.lr <= free.lr * tolerance
        assert capped.lr_descended <= capped.lr_min
        if fraction > 0 and capped.depth > 0 and capped.depth >= 2 * capped.noise:
            assert capped.lr <= capped.lr_descended * tolerance
        else:
            assert capped.lr == free.lr
    if low > 0:
        assert a.lr <= b.lr * tolerance


@pytest.mark.parametrize("fraction", [-0.1, 1.5, math.nan])
def test_a_descent_fraction_outside_0_1_is_refused(fraction: float) -> None:
    """A bad descent_fraction raises a ValueError naming it, its value and the range."""
    result = result_from_losses(descent_then_blowup())
    with pytest.raises(ValueError, match=r"descent_fraction must be in \[0, 1\].*got"):
        result.suggestion("margin", descent_fraction=fraction)


def test_the_cap_holds_a_bounded_loss_that_never_blows_up_on_its_descent() -> None:
    """Fine-tuning's shape: a 3-class cross-entropy falls from 1.25 to 0.8 and climbs back past
    its start without reaching 5x its lowest, so the blow-up is read at the sweep's last LR.
    Uncapped, margin lands past the minimum; capped, it stays on the descent."""

    def loss(log_lr: float) -> float:
        descent = 0.45 / (1.0 + math.exp(-4.0 * (log_lr + 2.5)))
        climb = 0.6 / (1.0 + math.exp(-4.0 * (log_lr + 0.8)))
        return 1.25 - descent + climb

    result = result_from_losses([loss(-6.0 + 7.0 * i / 99) for i in range(100)], end_lr=10.0)
    capped, free = analyse_curve(result), analyse_curve(result, descent_fraction=0)
    assert capped is not None and free is not None
    assert not free.blew_up and free.lr_blowup == result.lrs[-1]
    assert free.lr > 10**-2.5  # uncapped: past the middle of the descent
    assert capped.lr == pytest.approx(capped.lr_descended, rel=1e-12)
    assert capped.lr < 10**-2.5 < capped.lr_min


def test_margin_stays_well_below_the_blowup() -> None:
    """The suggestion is at least the margin (22x) below the LR where the loss blew up."""
    for losses in (descent_then_blowup(), sigmoid_curve(), v_curve()):
        result = result_from_losses(losses)
        analysis = analyse_curve(result)
        assert analysis is not None and result.suggestion().lr <= analysis.lr_blowup / MARGIN


def test_blowup_is_where_the_loss_passes_five_times_its_lowest() -> None:
    """The blow-up point is the first past the minimum above 5x the lowest smoothed loss."""
    result = result_from_losses(descent_then_blowup())
    analysis = analyse_curve(result)
    assert analysis is not None
    first_above = next(
        i for i, x in enumerate(result.losses) if x > 5 * 0.5 and result.lrs[i] > 1e-2
    )
    assert analysis.lr_blowup == pytest.approx(lr_at(result, first_above), rel=0.3)


def test_a_single_spike_does_not_move_the_suggestion() -> None:
    """A lone spike (one bad batch) before the minimum changes nothing: medians drop it."""
    clean = result_from_losses(descent_then_blowup())
    spiky_losses = descent_then_blowup()
    spiky_losses[60] = 40.0
    spiky = result_from_losses(spiky_losses)
    assert spiky.suggestion().lr == pytest.approx(clean.suggestion().lr, rel=0.05)


def test_suggestion_does_not_depend_on_the_stop_rule() -> None:
    """A sweep that ran on past the blow-up (no early stop) gets the same suggestion."""
    losses = descent_then_blowup()
    analysis = analyse_curve(result_from_losses(losses))
    assert analysis is not None
    cut = next(i for i, lr in enumerate(result_from_losses(losses).lrs) if lr > analysis.lr_blowup)
    stopped = result_from_losses(losses[:cut], num_iter=100, stop_reason=StopReason.DIVERGED)
    full = result_from_losses(losses)
    assert stopped.suggestion().lr == pytest.approx(full.suggestion().lr, rel=1e-9)


def test_suggestion_barely_depends_on_the_number_of_points() -> None:
    """The smoothing window is in decades, so 300 points suggest within 0.1 decade of 100."""
    few = result_from_losses(descent_then_blowup(100)).suggestion().lr
    many = result_from_losses(descent_then_blowup(300)).suggestion().lr
    assert abs(math.log10(many / few)) < 0.1


def test_margin_works_on_negative_losses() -> None:
    """A loss that goes below zero (e.g. a negative log-likelihood) still gets a confident LR."""
    result = result_from_losses([x - 3.0 for x in sigmoid_curve()])
    suggestion = result.suggestion()
    assert suggestion.ok and suggestion.confidence > 0


def test_run_stopped_on_nan_counts_as_a_blowup() -> None:
    """A curve that ends on NaN has blown up at its last finite point."""
    losses = [*descent_then_blowup()[:85], math.nan]
    analysis = analyse_curve(result_from_losses(losses, num_iter=100))
    assert analysis is not None and analysis.blew_up


def test_too_few_points_for_margin_warn_and_give_nan() -> None:
    """Under 8 finite points there is no curve to read: NoSuggestionWarning and lr=nan."""
    result = result_from_losses([3.0, 2.5, 2.0, 1.5, 1.0, 2.0, 4.0])
    with pytest.warns(NoSuggestionWarning, match="margin"):
        suggestion = result.suggestion()
    assert not suggestion.ok and "num_iter" in suggestion.reason
    assert analyse_curve(result) is None


# -- confidence and reason ----------------------------------------------------------------------
def test_clean_descent_is_confident_and_quiet() -> None:
    """A clear descent gets confidence 1, no reason, and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        suggestion = result_from_losses(descent_then_blowup()).suggestion()
    assert suggestion.confidence == 1.0 and suggestion.reason == ""


def test_flat_curve_warns_and_says_so() -> None:
    """A flat curve: LowConfidenceWarning, confidence 0 and a reason naming the problem."""
    result = result_from_losses([1.0] * 100)
    with pytest.warns(LowConfidenceWarning, match="flat"):
        suggestion = result.suggestion()
    assert suggestion.ok and suggestion.confidence == 0.0 and "flat" in suggestion.reason


def test_noise_without_descent_warns_and_says_so() -> None:
    """Pure batch noise until a blow-up: no usable descent, said and warned."""
    losses = [*noisy([1.0] * 85, 0.2), 5.0, 10.0, 20.0]
    result = result_from_losses(losses, num_iter=100, stop_reason=StopReason.DIVERGED)
    with pytest.warns(LowConfidenceWarning, match="noise"):
        suggestion = result.suggestion()
    assert suggestion.confidence == 0.0 and "batch-to-batch noise" in suggestion.reason


@pytest.mark.parametrize("points", [9, 12, 20])
def test_noise_on_a_sparse_sweep_is_not_read_as_a_confident_descent(points: int) -> None:
    """A 30-point sweep (3-4 points per smoothing window) of pure noise cut short by a NaN:
    the noise is read from point-to-point differences too, so the smoothed curve following
    the noise is not taken for a descent (before: confidence above 0 on 40 of 200 seeds at 9
    points and 77 at 20, up to 1.0)."""
    confident = []
    for seed in range(60):
        rnd = random.Random(seed)
        losses = [rnd.gauss(1.1, 0.04) for _ in range(points)]
        result = result_from_losses(losses, num_iter=30, stop_reason=StopReason.NON_FINITE)
        analysis = analyse_curve(result)
        assert analysis is not None
        confident.append(analysis.confidence)
    assert max(confident) < 0.5
    assert sum(c > 0 for c in confident) <= 0.2 * len(confident)


def test_a_real_descent_on_a_sparse_sweep_stays_confident() -> None:
    """The same 30-point sweep over a descent and its blow-up, with the same noise: confident."""
    rnd = random.Random(0)
    losses = [2.0 - min(i, 18) / 18 + rnd.gauss(0, 0.04) for i in range(22)] + [5.0, 9.0]
    result = result_from_losses(losses, num_iter=30, stop_reason=StopReason.DIVERGED)
    analysis = analyse_curve(result)
    assert analysis is not None and analysis.confidence == 1.0


@pytest.mark.parametrize("seed", range(12))
def test_noisy_curve_falls_back_to_the_blowup(seed: int) -> None:
    """Without a usable descent the LR comes from the blow-up alone (min is noise), and the
    descent cap, which would read that noise, does not apply."""
    losses = [*noisy([1.0] * 85, 0.2, seed), 5.0, 10.0, 20.0]
    result = result_from_losses(losses, num_iter=100, stop_reason=StopReason.DIVERGED)
    analysis = analyse_curve(result)
    assert analysis is not None and analysis.depth < 2 * analysis.noise
    # the typical distance below the blow-up stands in for the minimum
    stand_in = math.log10(analysis.lr_blowup) - FALLBACK_WIDTH_DECADES
    expected = 10 ** ((stand_in + math.log10(analysis.lr_blowup)) / 2 - MARGIN_DECADES)
    assert analysis.lr == pytest.approx(expected, rel=1e-9)


def test_diverging_from_the_first_points_warns_and_says_so() -> None:
    """A loss that only rises: the start LR is already too high, and the reason says so."""
    result = result_from_losses([1.0 + 0.05 * i for i in range(40)], num_iter=100)
    with pytest.warns(LowConfidenceWarning, match="start_lr"):
        suggestion = result.suggestion()
    assert suggestion.confidence == 0.0 and "rises from the first points" in suggestion.reason


def test_blowup_within_a_few_points_warns_and_says_so() -> None:
    """A loss that blows up within a few points (a linear sweep from a tiny LR) cannot be read."""
    result = result_from_losses([2.0, 0.5, 15.0, *[50.0 + i for i in range(30)]])
    with pytest.warns(LowConfidenceWarning, match=r"blows up after only \d points"):
        suggestion = result.suggestion()
    assert suggestion.confidence == 0.0


def test_still_falling_at_the_end_halves_the_confidence() -> None:
    """A curve still falling at end_lr says to raise end_lr and is less confident."""
    result = result_from_losses([2.0 - i / 100 for i in range(100)])
    suggestion = result.suggestion()
    assert "raise end_lr" in suggestion.reason and suggestion.confidence == 0.5


def test_low_confidence_warning_is_a_no_suggestion_warning() -> None:
    """One filter on NoSuggestionWarning silences both warnings."""
    assert issubclass(LowConfidenceWarning, NoSuggestionWarning)


def test_every_method_carries_the_curves_confidence() -> None:
    """Confidence, reason and range describe the curve: every built-in method gets them."""
    suggestions = result_from_losses([1.0] * 100).suggestions()
    assert all(s.confidence == 0.0 and "flat" in s.reason for s in suggestions.values())


def test_suggestions_collects_quietly_with_every_field() -> None:
    """suggestions(): every method, each with its index, LR, name, confidence and range."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        suggestions = result_from_losses(descent_then_blowup()).suggestions()
    assert set(suggestions) == set(BUILTIN) and "margin" in suggestions
    for name, s in suggestions.items():
        assert s.method == name and s.ok and s.index is not None
        assert s.confidence == 1.0 and s.lower < s.upper


def test_hand_built_suggestion_is_not_assessed() -> None:
    """A Suggestion built by hand has no confidence or range (NaN)."""
    suggestion = Suggestion("x", 1e-3, 0)
    assert math.isnan(suggestion.confidence) and math.isnan(suggestion.lower)


# -- the usable range and one_cycle ----------------------------------------------------------------
def test_range_brackets_the_suggestion() -> None:
    """lower = lr / 10**0.4 and upper = lr * 10**0.25 (dev split: 80% of runs regret <= 0.1)."""
    suggestion = result_from_losses(descent_then_blowup()).suggestion()
    assert suggestion.lower == pytest.approx(suggestion.lr / 10**0.4)
    assert suggestion.upper == pytest.approx(suggestion.lr * 10**0.25)


@pytest.mark.parametrize("method", sorted(BUILTIN))
@pytest.mark.parametrize(
    "curve", [descent_then_blowup, sigmoid_curve, v_curve], ids=lambda f: f.__name__
)
def test_every_method_has_its_own_range_around_its_own_lr(method: str, curve: object) -> None:
    """Each method's range contains its LR (same width), and its one_cycle peak is above it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSuggestionWarning)
        suggestion = result_from_losses(curve()).suggestion(method)  # type: ignore[operator]
    assert suggestion.lower < suggestion.lr < suggestion.upper
    assert suggestion.lower == pytest.approx(suggestion.lr / 10**0.4)
    assert suggestion.upper == pytest.approx(suggestion.lr * 10**0.25)
    kwargs = suggestion.one_cycle()
    assert kwargs["max_lr"] > suggestion.lr
    assert kwargs["max_lr"] / kwargs["div_factor"] == pytest.approx(suggestion.lower)


def test_one_cycle_derives_max_lr_and_warmup_from_the_range() -> None:
    """max_lr is the range's upper end; the warm-up starts at its lower end."""
    suggestion = result_from_losses(descent_then_blowup()).suggestion()
    kwargs = suggestion.one_cycle()
    assert kwargs["max_lr"] == suggestion.upper
    assert kwargs["max_lr"] / kwargs["div_factor"] == pytest.approx(suggestion.lower)
    assert kwargs["final_div_factor"] == 1e4 and kwargs["pct_start"] == 0.3
    assert "total_steps" not in kwargs


def test_one_cycle_takes_total_steps_and_overrides() -> None:
    """total_steps is passed on; any key can be overridden."""
    kwargs = result_from_losses(descent_then_blowup()).suggestion().one_cycle(1000, pct_start=0.25)
    assert kwargs["total_steps"] == 1000 and kwargs["pct_start"] == 0.25


def test_one_cycle_gives_each_param_group_its_max_lr() -> None:
    """Several param groups: max_lr is a list in the groups' ratios."""
    result = result_from_losses(descent_then_blowup(), group_ratios=(0.1, 1.0))
    suggestion = result.suggestion()
    assert suggestion.one_cycle()["max_lr"] == pytest.approx(
        [suggestion.upper * 0.1, suggestion.upper]
    )


def test_one_cycle_without_a_range_raises() -> None:
    """No suggestion, no range: one_cycle() raises ValueError saying why."""
    with pytest.warns(NoSuggestionWarning):
        suggestion = result_from_losses([1.0, 1.0]).suggestion()
    with pytest.raises(ValueError, match="no usable LR range"):
        suggestion.one_cycle()


def test_one_cycle_kwargs_build_a_torch_scheduler() -> None:
    """The keyword arguments are accepted by torch's OneCycleLR as they are."""
    torch = pytest.importorskip("torch")
    kwargs = result_from_losses(descent_then_blowup()).suggestion().one_cycle(total_steps=10)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, **kwargs)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(kwargs["max_lr"] / kwargs["div_factor"])
    assert scheduler.total_steps == 10


# -- smoothing and the plot ---------------------------------------------------------------------
def test_smoothing_drops_a_spike_and_keeps_a_line() -> None:
    """A straight line stays straight; a lone spike of +98 moves it by at most one step (0.02)."""
    xs = [i / 10 for i in range(50)]
    line = [2.0 - x / 5 for x in xs]
    spiky = list(line)
    spiky[25] = 100.0
    inside = slice(4, -4)
    kept = smooth_in_log_lr(xs, line, 0.25)
    assert max(abs(a - b) for a, b in zip(kept[inside], line[inside])) < 1e-9
    smoothed = smooth_in_log_lr(xs, spiky, 0.25)
    assert max(abs(a - b) for a, b in zip(smoothed[inside], line[inside])) <= 0.02 + 1e-9


def test_plot_overlays_several_methods_and_shades_the_range() -> None:
    """plot(suggest=[...]) marks each method; the first one's usable range is shaded."""
    pytest.importorskip("matplotlib")
    result = result_from_losses(descent_then_blowup())
    figure = result.plot(suggest=["margin", "valley", "steepest"])
    ax = figure.axes[0]
    marked = [c.get_label().split(":")[0] for c in ax.collections]
    bands = [p for p in ax.patches if p.get_label().startswith("usable range")]
    assert marked == ["margin", "valley", "steepest"] and len(bands) == 1


def test_plot_can_leave_the_range_out() -> None:
    """show_range=False draws no band."""
    pytest.importorskip("matplotlib")
    figure = result_from_losses(descent_then_blowup()).plot(show_range=False)
    assert not [p for p in figure.axes[0].patches if p.get_label().startswith("usable range")]


@pytest.mark.parametrize("method", ["valley", "steepest", "minimum"])
def test_plot_band_contains_the_marked_lr_of_any_method(method: str) -> None:
    """The shaded band is the first method's own range, so it contains that method's marker."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figure = result_from_losses(sigmoid_curve()).plot(suggest=method)
    ax = figure.axes[0]
    (band,) = [p for p in ax.patches if p.get_label().startswith("usable range")]
    (x,) = ax.collections[0].get_offsets()[:, 0]
    left, right = band.get_x(), band.get_x() + band.get_width()
    plt.close(figure)
    assert left < x < right


# -- the benchmark's shortcut to the rule ----------------------------------------------------------


@pytest.mark.parametrize(
    "losses",
    [
        descent_then_blowup(),
        noisy(descent_then_blowup(), 0.05, seed=3),
        [*noisy([1.0] * 85, 0.2, 1), 5.0, 10.0, 20.0],  # no usable descent: no cap
        [2.0 - 1.5 * i / 59 for i in range(60)] + [0.5 + 0.3 * i for i in range(40)],  # bounded
    ],
    ids=["clean", "noisy-descent", "noise-only", "bounded"],
)
def test_the_benchmarks_joint_choice_reads_the_rule_as_the_library_does(
    losses: list[float],
) -> None:
    """``benchmarks/suggestion_quality/selection.py`` scores every margin and fraction from one
    analysis per fraction; its shortcut must give the LR ``analyse_curve`` gives for each."""
    from benchmarks.suggestion_quality.selection import FRACTIONS, Constants, _lr, _parts

    result = result_from_losses(losses, num_iter=100, stop_reason=StopReason.BUDGET)
    for width in (0.2, 0.4):
        parts = _parts(result, width, 0.73)
        for margin in (0.5, 1.4, 2.5):
            for fraction in (FRACTIONS[0], 0.4, FRACTIONS[-1]):
                expected = Constants(width, margin, 0.73, fraction).lr(result)
                assert _lr(parts, margin, fraction) == pytest.approx(expected, rel=1e-12)

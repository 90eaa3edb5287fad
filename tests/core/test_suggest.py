"""The built-in suggestion methods on hand-made curves, the registry, and the pure helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrfinder_plugins import LowConfidenceWarning, NoSuggestionWarning, RangeTestResult, Suggestion
from lrfinder_plugins.suggest import BUILTIN, DEFAULT_METHOD, gradient, suggest

from .curves import drop_curve, result_from_losses, sigmoid_curve, v_curve

METHODS = sorted(BUILTIN)
methods = pytest.mark.parametrize("method", METHODS)


# -- hand-made curves --------------------------------------------------------------------------
def test_valley_picks_fastais_point_on_the_longest_descent() -> None:
    """V curve: valley picks point 39, about half-way down the longest descent."""
    # The window starts at point 10 (num_iter // 10); the smoothed loss falls until point 70, a
    # run of 61 points; fastai's rule goes -1 + int(61 / 3) + int(61 / 6) = 29 points into it.
    result = result_from_losses(v_curve())
    assert result.suggestion("valley").lr == result.lrs[39]


def test_minimum_is_a_tenth_of_the_lr_at_the_lowest_smoothed_loss() -> None:
    """V curve: the smoothed loss is lowest at point 70 (the blow-up lifts it at once)."""
    result = result_from_losses(v_curve())
    assert result.suggestion("minimum").lr == result.lrs[70] / 10


def test_torch_lr_finder_suggests_at_the_edge_of_divergence() -> None:
    """V curve: torch_lr_finder picks point 69, just before the blow-up (the peer's weakness)."""
    # Its light smoothing lags the straight descent, so the slope keeps steepening until the
    # last central difference that does not reach into the blow-up.
    result = result_from_losses(v_curve())
    assert result.suggestion("torch_lr_finder").index == 69


def test_steepest_marks_a_sudden_drop() -> None:
    """Drop curve: steepest marks the step (point 49, the first of two equal slopes across it)."""
    # The moving median keeps the step sharp; the central differences at 49 and 50 both span it.
    result = result_from_losses(drop_curve())
    assert result.suggestion("steepest").index == 49


def test_lightning_marks_the_first_point_after_a_drop() -> None:
    """Drop curve: against linear LR the fall is steepest right after the drop (point 50)."""
    result = result_from_losses(drop_curve())
    assert result.suggestion("lightning").index == 50


def test_steepest_finds_the_middle_of_a_sigmoid_descent() -> None:
    """Sigmoid curve: the steepest fall per unit of log-LR is within 0.1 decade of 10**-3.5."""
    lr = result_from_losses(sigmoid_curve()).suggestion("steepest").lr
    assert abs(math.log10(lr) + 3.5) < 0.1


@methods
def test_every_method_suggests_on_the_descent(method: str) -> None:
    """Sigmoid curve: every method lands past the plateau and below the LR of the lowest loss."""
    result = result_from_losses(sigmoid_curve())
    lr = result.suggestion(method).lr
    assert 1e-5 < lr < result.lrs[82]


@methods
def test_flat_curve_still_gives_an_lr_inside_the_sweep(method: str) -> None:
    """A flat curve (LR range too low) gets an LR from the swept range, flagged low-confidence."""
    result = result_from_losses([1.0] * 100)
    with pytest.warns(LowConfidenceWarning, match="no usable descent"):
        suggestion = result.suggestion(method)
    assert suggestion.confidence == 0.0
    assert result.lrs[0] / 10 <= suggestion.lr <= result.lrs[-1]


@methods
def test_too_short_curve_warns_and_gives_nan(method: str) -> None:
    """Five points leave nothing after skipping the start and end: NoSuggestionWarning, lr=nan."""
    result = result_from_losses([3.0, 2.0, 1.0, 2.0, 3.0])
    with pytest.warns(NoSuggestionWarning, match=method):
        suggestion = result.suggestion(method)
    assert math.isnan(suggestion.lr) and suggestion.index is None and not suggestion.ok


@methods
def test_missing_suggestion_says_why(method: str) -> None:
    """A missing suggestion carries a reason that tells the user what to change."""
    with pytest.warns(NoSuggestionWarning):
        suggestion = result_from_losses([1.0, 1.0]).suggestion(method)
    assert "num_iter" in suggestion.reason


@methods
def test_run_stopped_on_nan_still_gets_a_suggestion(method: str) -> None:
    """A run that stopped on NaN gets a suggestion from its finite points."""
    result = result_from_losses([*v_curve()[:60], math.nan], num_iter=100)
    assert result.suggestion(method).ok


def test_torch_lr_finder_refuses_nan_inside_its_window() -> None:
    """A NaN inside the kept points gives no suggestion (the peer would pick the NaN's point)."""
    losses = v_curve()
    losses[40] = math.nan
    with pytest.warns(NoSuggestionWarning, match="torch_lr_finder"):
        suggestion = result_from_losses(losses).suggestion("torch_lr_finder")
    assert not suggestion.ok


def test_steepest_keeps_points_aligned_after_a_nan() -> None:
    """A NaN in the middle of a curve does not shift the later points' LRs in steepest."""
    losses = drop_curve()
    losses[20] = math.nan
    assert result_from_losses(losses).suggestion("steepest").index == 49


# -- the registry --------------------------------------------------------------------------------
def test_default_method_is_margin() -> None:
    """suggestion() without a method uses the documented (measured) default, margin."""
    result = result_from_losses(sigmoid_curve())
    assert DEFAULT_METHOD == "margin" and result.suggestion() == result.suggestion("margin")


def test_unknown_method_raises_listing_the_registered_names() -> None:
    """An unknown method raises ValueError naming it and every registered method."""
    with pytest.raises(ValueError, match="'slide'") as caught:
        result_from_losses(sigmoid_curve()).suggestion("slide")
    assert all(name in str(caught.value) for name in METHODS)


def test_suggest_passes_options_to_the_method() -> None:
    """Keyword options reach the method (here minimum's divisor)."""
    result = result_from_losses(v_curve())
    assert suggest(result, "minimum", divisor=1.0).lr == result.lrs[70]


def test_suggestions_returns_every_method() -> None:
    """suggestions() maps every registered method name to that method's suggestion."""
    result = result_from_losses(sigmoid_curve())
    suggestions = result.suggestions()
    assert {name: s.method for name, s in suggestions.items()} == {name: name for name in METHODS}
    assert all(suggestions[name] == result.suggestion(name) for name in METHODS)


def test_suggestions_on_a_short_curve_do_not_warn() -> None:
    """suggestions() collects missing suggestions quietly (each has lr=nan and a reason)."""
    suggestions = result_from_losses([1.0, 2.0]).suggestions()
    assert all(not s.ok and s.reason for s in suggestions.values())


@methods
def test_group_lrs_keep_the_ratios(method: str) -> None:
    """A suggestion gives every param group its LR, in the groups' recorded ratios."""
    result = result_from_losses(sigmoid_curve(), group_ratios=(0.1, 0.5, 1.0))
    suggestion = result.suggestion(method)
    assert suggestion.group_lrs == (suggestion.lr * 0.1, suggestion.lr * 0.5, suggestion.lr)


@methods
def test_index_is_the_nearest_point_in_log_lr(method: str) -> None:
    """A suggestion's index is the recorded point nearest to its LR on the log axis."""
    result = result_from_losses(sigmoid_curve())
    suggestion = result.suggestion(method)
    distances = [abs(math.log(lr / suggestion.lr)) for lr in result.lrs]
    assert suggestion.index == int(np.argmin(distances))


def test_suggestion_ok_is_false_for_nan() -> None:
    """Suggestion.ok tells a real LR from a missing one."""
    assert Suggestion("x", 1e-3, 0).ok and not Suggestion("x", math.nan, None).ok


def test_suggestions_work_on_a_result_without_options() -> None:
    """A result built by hand (no options) is treated as one group and its own length planned."""
    curve = sigmoid_curve()
    result = result_from_losses(curve)
    bare = RangeTestResult(result.lrs, result.losses, result.smoothed_losses, result.stop_reason)
    assert bare.suggestion().lr == result.suggestion().lr


# -- the pure gradient -------------------------------------------------------------------------
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(y=st.lists(values, min_size=2, max_size=50))
def test_gradient_equals_numpy_on_unit_spacing(y: list[float]) -> None:
    """Without coordinates, gradient is numpy.gradient bit for bit."""
    assert gradient(y) == np.gradient(np.array(y)).tolist()


@st.composite
def curves_with_coordinates(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    y = draw(st.lists(values, min_size=2, max_size=50))
    steps = draw(st.lists(st.floats(0.01, 100.0), min_size=len(y) - 1, max_size=len(y) - 1))
    start = draw(st.floats(-100.0, 100.0))
    return y, np.cumsum([start, *steps]).tolist()


@given(curve=curves_with_coordinates())
def test_gradient_equals_numpy_with_coordinates(curve: tuple[list[float], list[float]]) -> None:
    """With uneven coordinates, gradient matches numpy.gradient(y, x) to rounding."""
    y, x = curve
    scale = max(map(abs, y)) / min(np.diff(x))
    np.testing.assert_allclose(
        gradient(y, x), np.gradient(np.array(y), np.array(x)), rtol=1e-9, atol=1e-9 * scale
    )


def test_gradient_needs_two_points() -> None:
    """One point has no slope: ValueError."""
    with pytest.raises(ValueError, match="2 points"):
        gradient([1.0])


@given(
    lrs=st.lists(st.floats(1e-9, 1e3), min_size=1, max_size=60),
    lr=st.floats(1e-10, 1e4),
    sort=st.booleans(),
)
def test_nearest_index_is_the_first_nearest_point(lrs: list[float], lr: float, sort: bool) -> None:
    from lrfinder_plugins.suggest import nearest_index

    if sort:
        lrs = sorted(lrs)
    target = math.log(lr)
    expected = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i]) - target))
    assert nearest_index(lrs, lr) == expected

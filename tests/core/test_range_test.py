"""RangeTest, the sans-I/O state machine: LRs proposed, losses smoothed, stop rules, validation."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrfinder_plugins import RangeTest, StopReason
from lrfinder_plugins._range_test import group_ratios
from lrfinder_plugins.schedules import exponential, linear

from .curves import recorded

finite_losses = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
smoothings = st.floats(min_value=0.0, max_value=0.999, exclude_max=True)


def no_stop(**options: Any) -> RangeTest:
    """A test that only stops on its budget (or a non-finite loss)."""
    return RangeTest(**{"diverge_threshold": None, **options})


def total_variation(values: list[float]) -> float:
    return sum(abs(b - a) for a, b in itertools.pairwise(values))


# -- the LRs it proposes ----------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "factory"), [("exponential", exponential), ("linear", linear)])
def test_next_lr_follows_the_schedule(mode: str, factory: Any) -> None:
    """The LRs proposed (and recorded) are the schedule's, point by point."""
    test = recorded(no_stop(start_lr=1e-5, end_lr=0.1, num_iter=9, mode=mode), [1.0] * 9)
    schedule = factory(start_lr=1e-5, end_lr=0.1, num_iter=9)
    assert test.lrs == [schedule(i) for i in range(9)]


def test_next_lr_repeats_until_a_loss_is_recorded() -> None:
    """Asking twice without recording gives the same LR (a push driver may ask more than once)."""
    test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=3)
    assert test.next_lr() == test.next_lr() == 1e-3


def test_record_stores_the_lr_that_was_proposed() -> None:
    """Each point pairs a loss with the LR proposed before it (not the next step's LR)."""
    test = recorded(no_stop(start_lr=1e-3, end_lr=1.0, num_iter=4), [4.0, 3.0])
    assert list(zip(test.lrs, test.losses)) == [(1e-3, 4.0), (pytest.approx(1e-2), 3.0)]


# -- smoothing ---------------------------------------------------------------------------------
@given(loss=finite_losses, smoothing=smoothings)
def test_first_smoothed_loss_is_the_first_loss(loss: float, smoothing: float) -> None:
    """Bias correction counts from the first point, so smoothed[0] == loss[0] for any smoothing."""
    test = recorded(no_stop(smoothing=smoothing, num_iter=3), [loss])
    assert test.smoothed_losses[0] == pytest.approx(loss, rel=1e-12, abs=1e-300)


def test_smoothing_matches_a_hand_computed_example() -> None:
    """smoothing=0.5 over losses 4, 2, 1 gives 4, 8/3, 12/7 (avg_t / (1 - 0.5**t), t from 1)."""
    test = recorded(no_stop(smoothing=0.5, num_iter=3), [4.0, 2.0, 1.0])
    assert test.smoothed_losses == pytest.approx([4.0, 8.0 / 3.0, 12.0 / 7.0], rel=1e-15)


@given(losses=st.lists(finite_losses, min_size=2, max_size=30))
def test_zero_smoothing_keeps_raw_losses(losses: list[float]) -> None:
    """smoothing=0 means no smoothing: the smoothed curve is the raw curve, bit for bit."""
    test = recorded(no_stop(smoothing=0.0, num_iter=len(losses)), losses)
    assert test.smoothed_losses == losses


@pytest.mark.parametrize(("lower", "higher"), [(0.0, 0.3), (0.3, 0.6), (0.6, 0.9)], ids=str)
def test_higher_smoothing_gives_a_smoother_curve(lower: float, higher: float) -> None:
    """On a zig-zag curve, a higher smoothing leaves less total variation."""
    zigzag = [1.0 + (0.5 if i % 2 else -0.5) for i in range(40)]
    less = recorded(no_stop(smoothing=lower, num_iter=40), zigzag).smoothed_losses
    more = recorded(no_stop(smoothing=higher, num_iter=40), zigzag).smoothed_losses
    assert total_variation(more) < total_variation(less)


# -- stop rules --------------------------------------------------------------------------------
def test_runs_until_the_budget() -> None:
    """num_iter points are recorded, then the test stops with "budget"."""
    test = recorded(RangeTest(num_iter=5), [1.0] * 10)
    assert (len(test.losses), test.stop_reason) == (5, StopReason.BUDGET)


def test_not_finished_before_the_last_point() -> None:
    """The budget rule does not fire one point early."""
    test = recorded(RangeTest(num_iter=5), [1.0] * 4)
    assert not test.finished and test.stop_reason is None


def test_stops_when_the_smoothed_loss_passes_threshold_times_best() -> None:
    """smoothed > diverge_threshold * best stops with "diverged"; the diverging point is kept."""
    test = recorded(
        RangeTest(num_iter=10, smoothing=0.0, diverge_threshold=5.0), [1.0, 0.5, 2.6, 1.0]
    )
    assert (test.losses, test.stop_reason) == ([1.0, 0.5, 2.6], StopReason.DIVERGED)


def test_reaching_exactly_threshold_times_best_is_not_divergence() -> None:
    """The rule is a strict "greater than": smoothed == 5 * best goes on."""
    test = recorded(RangeTest(num_iter=10, smoothing=0.0, diverge_threshold=5.0), [1.0, 5.0])
    assert not test.finished


def test_divergence_is_judged_on_the_smoothed_loss() -> None:
    """One raw spike past the threshold does not stop a smoothed test."""
    test = recorded(RangeTest(num_iter=10, smoothing=0.9, diverge_threshold=5.0), [1.0, 1.0, 6.0])
    assert test.smoothed_losses[-1] < 5.0 and not test.finished


def test_divergence_with_negative_losses_uses_the_distance_above_best() -> None:
    """best = -2, threshold 5: diverged once the loss rises more than 4 * |best| = 8 above best."""
    test = recorded(RangeTest(num_iter=10, smoothing=0.0, diverge_threshold=5.0), [-2.0, 6.0, 6.5])
    assert (test.losses, test.stop_reason) == ([-2.0, 6.0, 6.5], StopReason.DIVERGED)


def test_no_threshold_never_diverges() -> None:
    """diverge_threshold=None runs the whole budget however high the loss goes."""
    test = recorded(no_stop(num_iter=3, smoothing=0.0), [1.0, 1e6, 1e12])
    assert test.stop_reason == StopReason.BUDGET


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_loss_stops_at_once(bad: float) -> None:
    """A NaN or infinite loss is recorded as a point and stops the test with "non_finite"."""
    test = recorded(RangeTest(num_iter=100), [1.0, bad, 1.0])
    assert len(test.losses) == 2 and test.stop_reason == StopReason.NON_FINITE


def test_non_finite_loss_is_kept_in_both_curves() -> None:
    """The stopping NaN is kept in both curves, so a plot or file shows why the test stopped."""
    test = recorded(RangeTest(num_iter=100), [1.0, math.nan])
    assert math.isnan(test.losses[-1]) and math.isnan(test.smoothed_losses[-1])


@pytest.mark.parametrize(
    "reason", [StopReason.DATA_EXHAUSTED, "data_exhausted"], ids=["enum", "str"]
)
def test_stop_from_outside(reason: StopReason | str) -> None:
    """stop() ends a running test with the given reason (enum member or its value)."""
    test = recorded(RangeTest(num_iter=10), [1.0])
    test.stop(reason)
    assert test.finished and test.stop_reason is StopReason.DATA_EXHAUSTED


def test_stop_is_a_no_op_once_stopped() -> None:
    """The first reason wins: stopping a finished test does not overwrite why it stopped."""
    test = recorded(RangeTest(num_iter=2), [1.0, 1.0])
    test.stop(StopReason.INTERRUPTED)
    assert test.stop_reason == StopReason.BUDGET


def test_stop_with_an_unknown_reason_raises() -> None:
    """A reason that is not a StopReason value raises ValueError."""
    with pytest.raises(ValueError, match="tired"):
        RangeTest(num_iter=2).stop("tired")


def test_next_lr_after_stop_raises() -> None:
    """Asking for another LR after the test stopped raises RuntimeError naming the reason."""
    test = recorded(RangeTest(num_iter=2), [1.0, 1.0])
    with pytest.raises(RuntimeError, match="budget"):
        test.next_lr()


def test_record_after_stop_raises() -> None:
    """Recording a loss after the test stopped raises instead of growing the curve."""
    test = recorded(RangeTest(num_iter=2), [1.0, 1.0])
    with pytest.raises(RuntimeError):
        test.record(1.0)


def test_result_reflects_the_points_so_far() -> None:
    """result() before the end is a snapshot with stop_reason None."""
    result = recorded(RangeTest(num_iter=5), [3.0, 2.0]).result()
    assert (result.losses, result.stop_reason) == ((3.0, 2.0), None)


def test_result_carries_the_validated_options() -> None:
    """The result stores the settings it was made with (for files and plots)."""
    result = RangeTest(start_lr=1e-4, end_lr=1, num_iter=3, group_ratios=[0.5, 1]).result()
    assert result.options == {
        "start_lr": 1e-4,
        "end_lr": 1.0,
        "num_iter": 3,
        "mode": "exponential",
        "smoothing": 0.05,
        "diverge_threshold": 5.0,
        "group_ratios": [0.5, 1.0],
    }


# -- param groups ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("initial", "expected"),
    [
        ([1e-3], (1.0,)),
        ([1e-4, 1e-3], (0.1, 1.0)),
        ([2e-3, 1e-3, 4e-3], (0.5, 0.25, 1.0)),
        ([0.0, 0.0], (1.0, 1.0)),
        ([], ()),
    ],
    ids=["one-group", "two-groups", "largest-in-the-middle", "all-zero", "no-groups"],
)
def test_group_ratios(initial: list[float], expected: tuple[float, ...]) -> None:
    """Each group's LR as a fraction of the largest; all-zero LRs sweep every group alike."""
    assert group_ratios(initial) == pytest.approx(expected)


def test_group_lrs_keep_the_ratios_at_every_point() -> None:
    """Every point's group LRs are the swept LR times each group's ratio."""
    test = recorded(no_stop(start_lr=1e-3, end_lr=1.0, num_iter=2, group_ratios=(0.1, 1.0)), [1, 1])
    assert test.result().group_lrs == ((1e-4, 1e-3), (0.1, 1.0))


def test_empty_group_ratios_raise() -> None:
    """A test must sweep at least one param group."""
    with pytest.raises(ValueError, match="group_ratios"):
        RangeTest(group_ratios=())


# -- argument validation -----------------------------------------------------------------------
BAD_ARGUMENTS = [
    pytest.param(
        {"start_lr": 1.0, "end_lr": 0.1},
        ValueError,
        ["start_lr=1.0", "end_lr=0.1"],
        id="start-above-end",
    ),
    pytest.param(
        {"start_lr": 0.1, "end_lr": 0.1},
        ValueError,
        ["start_lr=0.1", "end_lr=0.1"],
        id="start-equals-end",
    ),
    pytest.param({"start_lr": 0.0}, ValueError, ["start_lr", "0.0"], id="start-zero"),
    pytest.param({"start_lr": -1e-3}, ValueError, ["start_lr", "-0.001"], id="start-negative"),
    pytest.param({"end_lr": -1.0}, ValueError, ["end_lr", "-1.0"], id="end-negative"),
    pytest.param({"start_lr": math.nan}, ValueError, ["start_lr", "nan"], id="start-nan"),
    pytest.param({"end_lr": math.inf}, ValueError, ["end_lr", "inf"], id="end-inf"),
    pytest.param({"start_lr": "1e-7"}, TypeError, ["start_lr", "'1e-7'"], id="start-str"),
    pytest.param({"num_iter": 1}, ValueError, ["num_iter", "1"], id="num-iter-one"),
    pytest.param({"num_iter": 0}, ValueError, ["num_iter", "0"], id="num-iter-zero"),
    pytest.param({"num_iter": 10.0}, TypeError, ["num_iter", "10.0"], id="num-iter-float"),
    pytest.param({"smoothing": 1.0}, ValueError, ["smoothing", "1.0"], id="smoothing-one"),
    pytest.param({"smoothing": -0.1}, ValueError, ["smoothing", "-0.1"], id="smoothing-negative"),
    pytest.param({"smoothing": math.nan}, ValueError, ["smoothing", "nan"], id="smoothing-nan"),
    pytest.param(
        {"diverge_threshold": 1.0}, ValueError, ["diverge_threshold", "1.0"], id="threshold-one"
    ),
    pytest.param(
        {"diverge_threshold": 0.5},
        ValueError,
        ["diverge_threshold", "0.5"],
        id="threshold-below-one",
    ),
    pytest.param(
        {"diverge_threshold": math.inf},
        ValueError,
        ["diverge_threshold", "inf"],
        id="threshold-inf",
    ),
    pytest.param(
        {"mode": "cosine"},
        ValueError,
        ["mode", "'cosine'", "exponential", "linear"],
        id="mode-unknown",
    ),
    pytest.param({"mode": None}, TypeError, ["mode", "None"], id="mode-none"),
    pytest.param({"start_lr": True}, TypeError, ["start_lr", "True"], id="start-bool"),
    pytest.param({"end_lr": True}, TypeError, ["end_lr", "True"], id="end-bool"),
    pytest.param({"num_iter": True}, TypeError, ["num_iter", "True"], id="num-iter-bool"),
    pytest.param({"smoothing": False}, TypeError, ["smoothing", "False"], id="smoothing-bool"),
    pytest.param(
        {"diverge_threshold": True}, TypeError, ["diverge_threshold", "True"], id="threshold-bool"
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "fragments"), BAD_ARGUMENTS)
def test_bad_argument_raises_naming_argument_and_value(
    kwargs: dict[str, Any], error: type[Exception], fragments: list[str]
) -> None:
    """A bad argument raises ValueError/TypeError whose message names the argument and the value."""
    with pytest.raises(error) as caught:
        RangeTest(**kwargs)
    assert all(fragment in str(caught.value) for fragment in fragments), str(caught.value)

"""The built-in LR schedules: monotone, exact at both ends, looked up by name through mode=."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lrfinder_plugins import RangeTest
from lrfinder_plugins._manager import collect_registry
from lrfinder_plugins.schedules import exponential, linear

SCHEDULES = {"exponential": exponential, "linear": linear}


@st.composite
def lr_ranges(draw: st.DrawFn) -> tuple[float, float, int]:
    """A valid (start_lr, end_lr, num_iter), end_lr at least a relative 1e-9 above start_lr.

    Ranges only a few float steps wide are left out: there exp(log(...)) rounding can put the
    exponential schedule's inner points one ulp outside [start_lr, end_lr]; no sweep is that narrow.
    """
    start_lr = draw(st.floats(min_value=1e-12, max_value=1e3))
    end_lr = draw(st.floats(min_value=start_lr, max_value=1e4, exclude_min=True))
    assume(end_lr >= start_lr * (1 + 1e-9))
    return start_lr, end_lr, draw(st.integers(min_value=2, max_value=1000))


schedule_names = pytest.mark.parametrize("name", sorted(SCHEDULES))


@schedule_names
@given(lr_range=lr_ranges())
def test_schedule_is_non_decreasing(name: str, lr_range: tuple[float, float, int]) -> None:
    """Every LR is at least the one before it, for any valid range."""
    start_lr, end_lr, num_iter = lr_range
    schedule = SCHEDULES[name](start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)
    lrs = [schedule(i) for i in range(num_iter)]
    assert all(a <= b for a, b in itertools.pairwise(lrs))


@schedule_names
@given(lr_range=lr_ranges())
def test_schedule_starts_exactly_at_start_lr(name: str, lr_range: tuple[float, float, int]) -> None:
    """Point 0 uses start_lr exactly (no rounding through log/exp)."""
    start_lr, end_lr, num_iter = lr_range
    assert SCHEDULES[name](start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)(0) == start_lr


@schedule_names
@given(lr_range=lr_ranges())
def test_schedule_ends_exactly_at_end_lr(name: str, lr_range: tuple[float, float, int]) -> None:
    """Point num_iter - 1 uses end_lr exactly (no rounding through log/exp)."""
    start_lr, end_lr, num_iter = lr_range
    schedule = SCHEDULES[name](start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)
    assert schedule(num_iter - 1) == end_lr


@schedule_names
@given(lr_range=lr_ranges())
def test_schedule_stays_inside_the_range(name: str, lr_range: tuple[float, float, int]) -> None:
    """No LR leaves [start_lr, end_lr]."""
    start_lr, end_lr, num_iter = lr_range
    schedule = SCHEDULES[name](start_lr=start_lr, end_lr=end_lr, num_iter=num_iter)
    assert all(start_lr <= schedule(i) <= end_lr for i in range(num_iter))


def test_exponential_is_evenly_spaced_in_log_space() -> None:
    """Exponential: each LR is the previous one times the same factor."""
    schedule = exponential(start_lr=1e-4, end_lr=1.0, num_iter=5)
    assert [schedule(i) for i in range(5)] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_linear_is_evenly_spaced() -> None:
    """Linear: each LR is the previous one plus the same step."""
    schedule = linear(start_lr=0.1, end_lr=0.5, num_iter=5)
    assert [schedule(i) for i in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_builtin_schedules_are_registered_by_name() -> None:
    """The plugin registry maps "exponential" and "linear" to the built-in factories."""
    registry = collect_registry("lrfinder_register_schedules")
    assert registry == {"exponential": exponential, "linear": linear}


@schedule_names
def test_mode_selects_the_registered_schedule(name: str) -> None:
    """RangeTest(mode=name) proposes exactly the LRs of the schedule registered as name."""
    test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=7, mode=name, diverge_threshold=None)
    proposed = []
    while not test.finished:
        proposed.append(test.next_lr())
        test.record(1.0)
    schedule = SCHEDULES[name](start_lr=1e-3, end_lr=1.0, num_iter=7)
    assert proposed == [schedule(i) for i in range(7)]


def _schedule(values: list[object]) -> object:
    """A schedule factory returning ``values`` (padded to num_iter with the last one)."""

    def factory(*, start_lr: float, end_lr: float, num_iter: int) -> object:
        return lambda i: values[min(i, len(values) - 1)]

    return factory


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ([1e-4, float("nan"), 1.0], ValueError, r"returned nan at point 1"),
        ([1e-4, -0.5, 1.0], ValueError, r"returned -0\.5 at point 1"),
        ([1e-4, "0.01", 1.0], TypeError, r"returned '0\.01' \(str\) at point 1, not a number"),
        ([1e-4, None, 1.0], TypeError, r"returned None \(NoneType\) at point 1"),
        ([1e-4, 0.5, 0.1, 1.0], ValueError, r"falls from 0\.5 to 0\.1 at point 2"),
        ([1e-3, 0.1, 1.0], ValueError, r"gives 0\.001 at point 0, not 0\.0001"),
        ([1e-4, 0.1, 5.0], ValueError, r"gives 5\.0 at point 3, not 1\.0"),
    ],
    ids=["nan", "negative", "str", "None", "falls", "start", "end"],
)
def test_a_schedule_that_breaks_its_contract_fails_when_the_test_is_built(
    values: list[object], error: type[Exception], message: str
) -> None:
    """Every planned LR is checked up front (finite, > 0, rising from start_lr to end_lr), so a
    broken plugin schedule never trains a model at a negative or NaN LR."""
    with pytest.raises(error, match=message):
        RangeTest(start_lr=1e-4, end_lr=1.0, num_iter=4, mode=_schedule(values))  # type: ignore[arg-type]


def test_an_error_a_schedule_raises_names_it() -> None:
    """A schedule that raises: its own error, with a note naming the schedule."""

    def broken(*, start_lr: float, end_lr: float, num_iter: int) -> object:
        raise ZeroDivisionError("schedule bug")

    with pytest.raises(ZeroDivisionError) as caught:
        RangeTest(start_lr=1e-4, end_lr=1.0, num_iter=4, mode=broken)  # type: ignore[arg-type]
    assert "raised by the LR schedule 'broken'" in "".join(caught.value.__notes__)

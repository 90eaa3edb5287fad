"""Parity: ``valley`` and ``minimum`` against fastai's rules (fastai is not installed: too heavy).

The reference below restates fastai 2's ``fastai/callback/schedule.py``: ``Learner.lr_find``
keeps ``recorder.losses[num_it // 10 : -5]`` (``AvgSmoothLoss``: ``beta=0.98``, bias corrected
with ``count`` starting at 1), cuts the curve at its first NaN, then
- ``valley``: ``lds[i]`` is the longest strictly decreasing subsequence ending at ``i``;
  ``max_end`` the first ``i`` with the largest ``lds``; ``max_start = max_end - lds[max_end]``
  (-1 for a run from the first point; 0 when nothing falls);
  ``sections = (max_end - max_start) / 3``; the answer is
  ``lrs[max_start + int(sections) + int(sections / 2)]`` (Python indexing, so -1 is the last point);
- ``minimum``: ``lrs[losses.argmin()] / 10``.
It is written independently of ``lrfinder_plugins.suggest`` (not a copy of its loops), so the two
are compared, not one checked against itself.
"""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrfinder_plugins import NoSuggestionWarning, RangeTestResult
from lrfinder_plugins.suggest import minimum, valley

from .curves import result_from_losses, sigmoid_curve, v_curve


def fastai_smoothed(raw: list[float]) -> list[float]:
    """fastai's AvgSmoothLoss over the raw losses (beta=0.98, count from 1)."""
    beta, val, smoothed = 0.98, 0.0, []
    for count, loss in enumerate(raw, start=1):
        # fastai uses torch.lerp(loss, val, beta): the same average up to the last bit.
        val = beta * val + (1 - beta) * loss
        smoothed.append(val / (1 - beta**count))
    return smoothed


def fastai_window(raw: list[float], num_it: int) -> list[int]:
    """The point indices fastai's lr_find hands to its suggestion functions."""
    smoothed = fastai_smoothed(raw)
    kept = list(range(len(raw)))[num_it // 10 : -5]
    first_nan = next((k for k, i in enumerate(kept) if math.isnan(smoothed[i])), len(kept))
    return kept[:first_nan]


def fastai_valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley rule, restated: longest decreasing run, then about 1/2 of the way down."""
    longest: list[int] = []
    for i, loss in enumerate(losses):
        before = [longest[j] for j in range(i) if losses[j] > loss]
        longest.append(1 + max(before, default=0))
    max_end = longest.index(max(longest))
    # fastai only sets max_start when a run grows, so a curve that never falls keeps (0, 0).
    max_start = max_end - longest[max_end] if longest[max_end] > 1 else 0
    sections = (max_end - max_start) / 3
    return lrs[max_start + int(sections) + int(sections / 2)]


def fastai_minimum(lrs: list[float], losses: list[float]) -> float:
    return lrs[losses.index(min(losses))] / 10


def reference(result: RangeTestResult, rule: str) -> float:
    raw = list(result.losses)
    kept = fastai_window(raw, int(result.options["num_iter"]))
    smoothed = fastai_smoothed(raw)
    lrs, losses = [result.lrs[i] for i in kept], [smoothed[i] for i in kept]
    return fastai_valley(lrs, losses) if rule == "valley" else fastai_minimum(lrs, losses)


def ours_quietly(result: RangeTestResult, rule: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSuggestionWarning)
        return (valley if rule == "valley" else minimum)(result).lr


rules = pytest.mark.parametrize("rule", ["valley", "minimum"])


@rules
@pytest.mark.parametrize("curve", [v_curve(), sigmoid_curve()], ids=["v", "sigmoid"])
def test_same_lr_as_fastai_on_hand_made_curves(rule: str, curve: list[float]) -> None:
    """On the hand-made curves valley and minimum give fastai's LR exactly."""
    result = result_from_losses(curve)
    assert ours_quietly(result, rule) == reference(result, rule)


@st.composite
def fastai_runs(draw: st.DrawFn) -> RangeTestResult:
    """A raw curve, maybe stopped short of its planned num_iter on a NaN, as RangeTest stops."""
    raw = draw(st.lists(st.floats(1e-3, 1e3), min_size=8, max_size=150))
    planned = len(raw) + draw(st.integers(0, 50))
    if planned > len(raw) and draw(st.booleans()):
        raw.append(math.nan)
    return result_from_losses(raw, num_iter=max(planned, len(raw)))


@rules
@given(result=fastai_runs())
def test_same_lr_as_fastai_on_random_curves(rule: str, result: RangeTestResult) -> None:
    """Wherever fastai's rule can answer ours gives its LR exactly, else nan."""
    # Deliberate gap: on a single usable point fastai's valley returns it; ours declines (nan).
    # On none, fastai raises IndexError; ours declines too.
    kept = fastai_window(list(result.losses), int(result.options["num_iter"]))
    if len(kept) < (2 if rule == "valley" else 1):
        assert math.isnan(ours_quietly(result, rule))
    else:
        assert ours_quietly(result, rule) == reference(result, rule)


def test_strictly_falling_window_lands_on_its_last_point_when_short() -> None:
    """fastai's quirk, kept: a 2-point falling window gives max_start = -1 and picks lrs[-1]."""
    result = result_from_losses([5.0, 5.0, 4.0, 3.0, 9.0, 9.0, 9.0, 9.0, 9.0], num_iter=20)
    assert fastai_window(list(result.losses), 20) == [2, 3]
    assert valley(result).lr == result.lrs[3]


@given(
    losses=st.one_of(
        st.lists(st.floats(-1e6, 1e6), max_size=200),
        st.lists(st.integers(0, 5).map(float), max_size=200),  # many ties
    )
)
def test_the_n_log_n_run_is_the_double_loops(losses: list[float]) -> None:
    from benchmarks.suggestion_scaling import quadratic_run  # fastai's double loop, the peer
    from lrfinder_plugins.suggest import longest_decreasing_run

    assert longest_decreasing_run(losses) == quadratic_run(losses)

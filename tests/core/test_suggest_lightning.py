"""Parity: our ``lightning`` method against the installed Lightning's ``_LRFinder.suggestion()``.

Lightning's ``_LRCallback.on_train_batch_end`` stores, per optimizer step, an EMA of the loss
(``beta=0.98``) divided by ``1 - beta ** (trainer.global_step + 1)``; ``global_step`` is already 1
at the first step, so its bias correction counts from 2. ``_LRFinder.suggestion()`` then keeps
``[skip_begin:-skip_end]``, drops non-finite points and takes the argmin of
``torch.gradient(losses, spacing=[lrs])``. We hand it exactly the losses it would have stored.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfinder_plugins import NoSuggestionWarning, RangeTestResult, StopReason
from lrfinder_plugins.schedules import exponential, linear
from lrfinder_plugins.suggest import lightning

from .curves import drop_curve, result_from_losses, sigmoid_curve, v_curve

torch = pytest.importorskip("torch")
lr_finder = pytest.importorskip("lightning.pytorch.tuner.lr_finder")


def lightning_stored_losses(raw: list[float], beta: float = 0.98) -> list[float]:
    """The losses _LRCallback appends: its arithmetic, with global_step counting from 1."""
    avg, stored = 0.0, []
    for global_step, loss in enumerate(raw, start=1):
        avg = beta * avg + (1 - beta) * loss
        stored.append(avg / (1 - beta ** (global_step + 1)))
    return stored


def peer_suggestion(result: RangeTestResult, **options: int) -> float | None:
    """Lightning's own suggestion for the run that recorded ``result``'s raw losses."""
    finder = lr_finder._LRFinder("exponential", result.lrs[0], result.lrs[-1], len(result))
    finder.results = {"lr": list(result.lrs), "loss": lightning_stored_losses(list(result.losses))}
    return finder.suggestion(**options)


def ours_quietly(result: RangeTestResult, **options: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoSuggestionWarning)
        return lightning(result, **options).lr


@contextlib.contextmanager
def torch_default_float64() -> Iterator[None]:
    """Make Lightning's torch.tensor(list) float64, so only exact ties can tell the rules apart."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "losses",
    [v_curve(), drop_curve(), sigmoid_curve(), [*v_curve()[:60], math.nan]],
    ids=["v", "drop", "sigmoid", "stopped-on-nan"],
)
def test_same_lr_as_lightning_on_hand_made_curves(losses: list[float]) -> None:
    """On the hand-made curves our method returns Lightning's LR (Lightning in its own float32)."""
    result = result_from_losses(losses, num_iter=100)
    assert lightning(result).lr == peer_suggestion(result)


def test_too_few_points_is_no_suggestion_for_both() -> None:
    """Where Lightning returns None (under 2 usable points) ours warns and returns nan."""
    result = result_from_losses([3.0] * 12)
    with pytest.warns(NoSuggestionWarning):
        ours = lightning(result).lr
    assert math.isnan(ours) and peer_suggestion(result) is None


@st.composite
def lightning_runs(draw: st.DrawFn) -> tuple[RangeTestResult, int, int]:
    """A raw curve at exponential or linear LRs, maybe ending on a non-finite loss, and skips."""
    raw = draw(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=150))
    if draw(st.booleans()):
        raw.append(draw(st.sampled_from([math.nan, math.inf])))
    start_lr = draw(st.floats(1e-8, 1e-2))
    end_lr = start_lr * 10 ** draw(st.integers(1, 9))
    factory = draw(st.sampled_from([exponential, linear]))
    schedule = factory(start_lr=start_lr, end_lr=end_lr, num_iter=len(raw))
    result = RangeTestResult(
        lrs=tuple(schedule(i) for i in range(len(raw))),
        losses=tuple(raw),
        smoothed_losses=tuple(raw),
        stop_reason=StopReason.BUDGET,
    )
    return result, draw(st.integers(0, 20)), draw(st.integers(1, 10))


def steepest_in_window(
    result: RangeTestResult, skip_begin: int, skip_end: int
) -> dict[float, float]:
    """numpy's slope at each usable LR of Lightning's window, to judge a tie."""
    stored = lightning_stored_losses(list(result.losses))[skip_begin:-skip_end]
    lrs = list(result.lrs)[skip_begin:-skip_end]
    kept = [(lr, loss) for lr, loss in zip(lrs, stored) if math.isfinite(loss)]
    slopes = np.gradient([loss for _, loss in kept], [lr for lr, _ in kept])
    return {lr: float(slope) for (lr, _), slope in zip(kept, slopes)}


@settings(deadline=None, max_examples=80)
@given(run=lightning_runs())
def test_same_lr_as_lightning_on_random_curves(run: tuple[RangeTestResult, int, int]) -> None:
    """Any curve, LR spacing and skips: Lightning's LR (or a tie to rounding), nan for its None."""
    result, skip_begin, skip_end = run
    options = {"skip_begin": skip_begin, "skip_end": skip_end}
    ours = ours_quietly(result, **options)
    with torch_default_float64():
        theirs = peer_suggestion(result, **options)
    if theirs is None:
        assert math.isnan(ours)
    elif ours != theirs:
        slopes = steepest_in_window(result, skip_begin, skip_end)
        scale = max(abs(s) for s in slopes.values())
        assert slopes[ours] == pytest.approx(slopes[theirs], rel=1e-9, abs=1e-12 * scale)

"""Parity: our ``torch_lr_finder`` method against the installed torch-lr-finder's own suggestion.

torch-lr-finder picks its LR inside ``LRFinder.plot(suggest_lr=True)``: it slices
``history["loss"][skip_start:-skip_end]`` and takes ``np.gradient(losses).argmin()``. We feed it
the history its ``range_test`` would have stored for a raw curve and compare LRs exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfinder_plugins import NoSuggestionWarning
from lrfinder_plugins.suggest import torch_lr_finder

from .curves import drop_curve, result_from_losses, sigmoid_curve, v_curve

torch = pytest.importorskip("torch")
torch_lr_finder_module = pytest.importorskip("torch_lr_finder")
plt = pytest.importorskip("matplotlib.pyplot")


def peer_history(raw: list[float], smooth_f: float) -> list[float]:
    """history["loss"] as LRFinder.range_test stores it: the first loss as is, then
    ``smooth_f * loss + (1 - smooth_f) * previous`` (only when smooth_f > 0)."""
    history: list[float] = []
    for loss in raw:
        if history and smooth_f > 0:
            loss = smooth_f * loss + (1 - smooth_f) * history[-1]
        history.append(loss)
    return history


@pytest.fixture(scope="module")
def peer() -> Iterator[tuple[Any, Any]]:
    """A real torch-lr-finder LRFinder (on a throwaway model) and axes for its plot()."""
    model = torch.nn.Linear(1, 1)
    finder = torch_lr_finder_module.LRFinder(
        model, torch.optim.SGD(model.parameters(), lr=1e-7), torch.nn.MSELoss()
    )
    fig, ax = plt.subplots()
    yield finder, ax
    plt.close(fig)


def peer_suggestion(
    peer: tuple[Any, Any],
    lrs: list[float],
    raw: list[float],
    *,
    smooth_f: float = 0.05,
    skip_start: int = 10,
    skip_end: int = 5,
) -> float:
    """torch-lr-finder's own suggestion for the run that recorded ``raw`` at ``lrs``."""
    finder, ax = peer
    finder.history = {"lr": list(lrs), "loss": peer_history(raw, smooth_f)}
    ax.cla()
    _, lr = finder.plot(skip_start=skip_start, skip_end=skip_end, suggest_lr=True, ax=ax)
    return float(lr)


@pytest.mark.parametrize(
    "curve", [v_curve(), drop_curve(), sigmoid_curve()], ids=["v", "drop", "sigmoid"]
)
def test_same_lr_as_torch_lr_finder_on_hand_made_curves(
    peer: tuple[Any, Any], curve: list[float]
) -> None:
    """On the hand-made curves our method returns torch-lr-finder's LR exactly."""
    result = result_from_losses(curve)
    assert torch_lr_finder(result).lr == peer_suggestion(peer, list(result.lrs), curve)


@st.composite
def peer_runs(draw: st.DrawFn) -> tuple[list[float], float, int, int]:
    """A finite raw curve, a smoothing factor (0 included) and skip_start / skip_end."""
    raw = draw(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=120))
    smooth_f = draw(st.sampled_from([0.0, 0.05]) | st.floats(0.0, 0.99))
    return raw, smooth_f, draw(st.integers(0, 20)), draw(st.integers(0, 10))


@settings(deadline=None, max_examples=60)
@given(run=peer_runs())
def test_same_lr_as_torch_lr_finder_on_random_curves(
    peer: tuple[Any, Any], run: tuple[list[float], float, int, int]
) -> None:
    """Any finite curve, smooth_f and skips: torch-lr-finder's LR, or both decline to suggest."""
    # Declining: it raises RuntimeError ("Need at least ... iterations"), ours warns with nan.
    raw, smooth_f, skip_start, skip_end = run
    result = result_from_losses(raw)
    options: dict[str, Any] = {"smooth_f": smooth_f, "skip_start": skip_start, "skip_end": skip_end}
    if len(raw) < skip_start + skip_end + 2:
        with pytest.raises(RuntimeError, match="iterations"):
            peer_suggestion(peer, list(result.lrs), raw, **options)
        with pytest.warns(NoSuggestionWarning):
            assert math.isnan(torch_lr_finder(result, **options).lr)
        return
    ours = torch_lr_finder(result, **options).lr  # warnings are errors here (pyproject)
    assert ours == peer_suggestion(peer, list(result.lrs), raw, **options)

"""NoiseScaleCallback in a real Lightning fit: B_simple logged as training goes on."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("lightning")

import torch

from lrfinder_adapters.lightning import NoiseScaleCallback
from tests.adapters.test_lightning import Regressor, _trainer

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


def test_callback_logs_the_noise_scale_during_fit() -> None:
    """With accumulation, every optimizer step adds a pair; the estimate is logged."""
    torch.manual_seed(0)
    callback = NoiseScaleCallback(log_every_n_steps=1)
    trainer = _trainer(max_epochs=3, max_steps=12, accumulate_grad_batches=4, callbacks=[callback])
    trainer.fit(Regressor(lr=1e-2))
    assert [step for step, _ in callback.history] == list(range(2, 13))
    last = callback.history[-1][1]
    assert last.steps == 12 and last.b_small == 32 and last.b_big == 128
    assert math.isfinite(last.b_simple) and last.b_simple > 0
    assert trainer.callback_metrics["noise_scale/b_simple"].item() == pytest.approx(last.b_simple)


def test_callback_without_accumulation_on_one_process_says_what_to_pass() -> None:
    """One process, no accumulation: no small batch, so the fit stops with the fix."""
    trainer = _trainer(max_steps=2, callbacks=[NoiseScaleCallback()])
    with pytest.raises(ValueError, match="accumulation_steps=2 or more"):
        trainer.fit(Regressor())


def test_bad_callback_options_fail_at_construction() -> None:
    """A bad option raises before any fit, naming it."""
    with pytest.raises(ValueError, match="window must be >= 3"):
        NoiseScaleCallback(window=1)
    with pytest.raises(ValueError, match="confidence must be in"):
        NoiseScaleCallback(confidence=1.5)


def test_lightning_batch_size_finder_reports_the_knee_and_a_recommendation() -> None:
    """BatchSizeFinder's result carries every fitted trial's throughput, the knee and advice."""
    from lrfinder_adapters.lightning import BatchSizeFinder
    from tests.adapters.test_lightning import BUDGET, Sized

    finder = BatchSizeFinder(mode="binsearch", init_val=32, memory_budget=BUDGET, progress=False)
    finder._early_exit = True
    _trainer(callbacks=[finder]).fit(Sized())
    result = finder.result
    assert result is not None and result.throughput
    assert all(rate > 0 for rate in result.throughput.values())
    assert result.knee in result.throughput
    advice = result.recommendation
    assert advice is not None and advice.batch_size <= (result.batch_size or 0)
    assert "knee at" in result.summary() and "recommended:" in result.summary()


def test_batch_size_finder_measures_the_noise_scale_at_the_answer() -> None:
    """noise_scale=True: measuring steps at the answer through the fit loop (two micro-batches
    per step); the state is bitwise what it was, counters and settings too."""
    import lightning.pytorch as pl

    from lrfinder_adapters.lightning import BatchSizeFinder
    from tests.adapters.test_lightning import BUDGET, Sized, _assert_put_back, _Probe

    pl.seed_everything(0, verbose=False)
    before, after = _Probe(prime=True), _Probe()
    finder = BatchSizeFinder(
        mode="binsearch", memory_budget=BUDGET, progress=False, noise_scale=True, gns_max_steps=12
    )
    trainer = _trainer(callbacks=[before, finder, after], limit_train_batches=4)
    trainer.fit(Sized())
    _assert_put_back(before, after, trainer, finder)
    assert trainer.accumulate_grad_batches == 1
    result = finder.result
    assert result is not None and result.noise_scale is not None
    assert 3 <= result.noise_scale.steps <= 12 and result.noise_scale.b_small == result.batch_size
    assert result.noise_scale.b_simple > 0 and "B_simple" in result.summary()
    assert result.options["noise_scale_precision"] > 0 and result.recommendation is not None
    # The optimizer is named, so the recommendation says how to move the LR (Adam: sqrt).
    assert result.options["optimizer"] == "Adam" and result.recommendation.lr_rule == "sqrt"


def test_tuner_passes_the_noise_scale_options_and_refuses_bad_ones() -> None:
    from lrfinder_adapters.lightning import BatchSizeFinder, Tuner
    from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state
    from tests.adapters.test_lightning import BUDGET, Sized

    model = Sized()
    shadow = torch.optim.SGD(model.parameters(), lr=0.1)  # only to fit capture_state's signature
    state = capture_state(model, shadow)
    found = Tuner(_trainer()).scale_batch_size(
        model, mode="binsearch", memory_budget=BUDGET, progress=False, noise_scale=True,
        gns_max_steps=5,
    )  # fmt: skip
    assert found == model.batch_size
    assert_state_bitwise_equal(state, capture_state(model, shadow))
    with pytest.raises(ValueError, match="gns_precision"):
        BatchSizeFinder(noise_scale=True, gns_precision=2.0)
    with pytest.raises(TypeError, match="noise_scale must be True or False"):
        BatchSizeFinder(noise_scale="yes")

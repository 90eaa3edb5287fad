"""BatchSizeSearch, the batch-size search as a state machine, against memory oracles."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfinder_plugins import BatchSizeResult, BatchSizeSearch, BatchStopReason, BatchTrial
from lrfinder_plugins._batch_search import MemoryModel, accumulation_for

Peak = Callable[[int], "int | Mapping[str, int] | None"]


@dataclass
class Oracle:
    """A pretend device: sizes up to ``limit`` fit; optional peaks and a capacity reading."""

    limit: int
    peak: Peak | None = None
    capacity: int | None = None

    def fits(self, size: int) -> bool:
        return size <= self.limit


def linear_memory(limit: int, *, fixed: int = 50_000_000, per_sample: int = 200_000) -> Oracle:
    """Memory that grows linearly with the batch; the capacity sits between limit and limit + 1."""
    return Oracle(
        limit,
        peak=lambda n: fixed + per_sample * n,
        capacity=fixed + per_sample * limit + per_sample // 2,
    )


def phase_switch_memory(limit: int) -> Oracle:
    """The optimizer step holds the peak at small sizes, activations at large ones."""
    act_fixed, per_sample, opt_peak = 20_000_000, 200_000, 90_000_000
    return Oracle(
        limit,
        peak=lambda n: {"forward_backward": act_fixed + per_sample * n, "optimizer": opt_peak},
        capacity=act_fixed + per_sample * limit + per_sample // 2,
    )


def run(oracle: Oracle | Callable[[int], bool], **options: object) -> BatchSizeResult:
    """Drive a search to the end against ``oracle``."""
    if not isinstance(oracle, Oracle):
        fits, oracle = oracle, Oracle(0)
        oracle.fits = fits  # type: ignore[method-assign]
    search = BatchSizeSearch(**options)  # type: ignore[arg-type]
    while not search.finished:
        size = search.next_size()
        fitted = oracle.fits(size)
        peak = oracle.peak(size) if (oracle.peak and fitted) else None
        search.record(size, fitted, peak, capacity_bytes=oracle.capacity)
    return search.result()


def sizes(result: BatchSizeResult) -> list[int]:
    return [t.size for t in result.trials]


def fitted_sizes(result: BatchSizeResult) -> set[int]:
    return {t.size for t in result.trials if t.fitted}


# -- each mode against a threshold -------------------------------------------------------------
def test_power_doubles_until_a_size_runs_out_of_memory() -> None:
    """power: 2, 4, ... 128 (out of memory); the answer is 64, the last size that fitted, run
    again after the failure (which may have changed what fits)."""
    result = run(Oracle(100), mode="power")
    assert sizes(result) == [2, 4, 8, 16, 32, 64, 128, 64]
    assert result.batch_size == 64 and result.oom_trials == 1
    assert result.trials[-1].role == "verify"
    assert result.stop_reason is BatchStopReason.LIMIT_FOUND


def test_binsearch_bisects_like_lightning_then_runs_the_margin_size() -> None:
    """binsearch: Lightning's bisection to a one-sample bracket, then one trial of 95 = 0.95 x 100;
    after two failures in a row the lower end is run again before it is bisected from (a failure
    may have changed what fits)."""
    result = run(Oracle(100), mode="binsearch", margin=0.05)
    assert sizes(result) == [2, 4, 8, 16, 32, 64, 128, 96, 112, 104, 96, 100, 102, 101, 100, 95]
    assert [t.role for t in result.trials if t.size == 96] == ["bisect", "recheck"]
    assert result.batch_size == 95 and result.trials[-1].role == "verify"


def test_binsearch_without_margin_returns_the_exact_limit() -> None:
    """With margin=0 the answer is the largest size that fits, found to one sample."""
    result = run(Oracle(777), mode="binsearch", margin=0.0)
    assert result.batch_size == 777 and result.smallest_oom == 778


def test_guided_without_memory_figures_bisects_to_the_tolerance() -> None:
    """guided with no peaks falls back to doubling and bisection, stopping at 1% of the size."""
    guided = run(Oracle(1000), mode="guided")
    binsearch = run(Oracle(1000), mode="binsearch")
    assert guided.batch_size is not None and binsearch.batch_size is not None
    assert guided.batch_size >= binsearch.batch_size
    assert len(guided.trials) < len(binsearch.trials)


@pytest.mark.parametrize("limit", [37, 610, 1250, 3000, 8000])
def test_guided_with_linear_memory_jumps_to_the_limit(limit: int) -> None:
    """Measured peaks and a true capacity: 3 small sizes, a jump, a closing probe, the answer."""
    result = run(linear_memory(limit))
    assert len(result.trials) <= 7 and result.oom_trials <= 1
    assert result.batch_size is not None
    assert math.floor(0.95 * limit) <= result.batch_size <= limit


@pytest.mark.parametrize(("capacity", "limit"), [(80_000_000, 300), (10_000_000, 300), (None, 5)])
def test_guided_with_memory_that_does_not_grow_still_answers(
    capacity: int | None, limit: int
) -> None:
    """A peak flat in the size predicts no limit (or, above the capacity, none that fits): the
    search falls back to doubling and bisection instead of failing on an infinite aim, and
    answers a size that fitted."""
    result = run(Oracle(limit, peak=lambda n: 50_000_000, capacity=capacity))
    assert result.batch_size is not None and result.batch_size <= limit
    assert result.batch_size in fitted_sizes(result)


def test_flat_memory_without_max_val_doubles_instead_of_aiming_at_no_size() -> None:
    """No max_val and no dataset length: nothing bounds an aim from a flat peak, so the
    search doubles (as without a memory model) rather than aim at its 2**62 sentinel."""
    result = run(
        Oracle(10**6, peak=lambda n: 50_000_000, capacity=80_000_000), max_val=None, max_trials=12
    )
    assert max(sizes(result)) < 2**40
    assert result.stop_reason is BatchStopReason.MAX_TRIALS


def test_guided_sees_a_phase_switch_coming() -> None:
    """A flat optimizer peak does not hide the activations that overtake it at larger sizes."""
    result = run(phase_switch_memory(1250))
    assert len(result.trials) <= 7 and result.oom_trials <= 1
    assert result.batch_size is not None and result.batch_size >= math.floor(0.95 * 1250)


@pytest.mark.parametrize("error", [-0.1, -0.03])
def test_guided_trusts_a_low_capacity_reading_on_the_safe_side(error: float) -> None:
    """A capacity read too low costs batch size, never a failure: the answer keeps the margin
    under the limit the reading allows, in four trials."""
    oracle = linear_memory(1250)
    assert oracle.capacity is not None
    oracle.capacity = int(oracle.capacity * (1 + error))
    result = run(oracle)
    assert result.oom_trials == 0 and len(result.trials) == 4
    assert result.stop_reason is BatchStopReason.PREDICTION_HELD
    allowed = (oracle.capacity - 50_000_000) / 200_000  # the limit under the reading
    assert math.floor(0.95 * allowed) - 1 <= (result.batch_size or 0) <= 1250


@pytest.mark.parametrize("error", [0.03, 0.1])
def test_guided_recovers_from_a_high_capacity_reading(error: float) -> None:
    """A capacity off by up to 10% too high costs trials, not correctness."""
    oracle = linear_memory(1250)
    assert oracle.capacity is not None
    oracle.capacity = int(oracle.capacity * (1 + error))
    result = run(oracle)
    assert result.batch_size is not None and result.batch_size in fitted_sizes(result)
    assert math.floor(0.95 * 1250) - 15 <= result.batch_size <= 1250
    assert len(result.trials) <= 12


# -- bounds, init_val, margin, trial budget ----------------------------------------------------
@pytest.mark.parametrize("init_val", [1, 3, 7, 64])
def test_the_first_trial_is_init_val(init_val: int) -> None:
    """init_val is honoured on the first trial (Lightning ignores it)."""
    for mode in ("power", "binsearch", "guided"):
        assert run(Oracle(300), mode=mode, init_val=init_val).trials[0].size == init_val


def test_max_val_stops_the_search_at_a_size_that_fits() -> None:
    """Nothing runs out of memory below max_val: the answer is max_val itself, tested."""
    result = run(Oracle(10**9), mode="power", max_val=100)
    assert sizes(result) == [2, 4, 8, 16, 32, 64, 100]
    assert result.batch_size == 100 and result.stop_reason is BatchStopReason.MAX_VAL


def test_upper_bound_stops_the_search_at_the_dataset_length() -> None:
    """The dataset length bounds the search like max_val, with its own stop reason."""
    result = run(linear_memory(10**6), upper_bound=500)
    assert result.batch_size == 500 and result.stop_reason is BatchStopReason.UPPER_BOUND
    assert all(t.size <= 500 for t in result.trials)


def test_init_val_above_the_bound_is_an_error() -> None:
    """init_val larger than max_val or the dataset length fails before anything runs."""
    with pytest.raises(ValueError, match=r"init_val=64 .* max_val=32"):
        BatchSizeSearch(init_val=64, max_val=32)
    with pytest.raises(ValueError, match="upper_bound"):
        BatchSizeSearch(init_val=64, upper_bound=10)


@pytest.mark.parametrize("mode", ["power", "binsearch", "guided"])
def test_an_init_val_that_does_not_fit_halves_until_one_does(mode: str) -> None:
    """64, 32, 16, 8 run out of memory; 4 fits; the answer never exceeds the limit."""
    result = run(Oracle(5), mode=mode, init_val=64)
    assert sizes(result)[:5] == [64, 32, 16, 8, 4]
    assert result.batch_size in {4, 5}


def test_nothing_fits_ends_with_no_batch_size() -> None:
    """When even 1 runs out of memory the answer is None and the stop reason says why."""
    result = run(Oracle(0), init_val=8)
    assert sizes(result) == [8, 4, 2, 1]
    assert result.batch_size is None and result.stop_reason is BatchStopReason.NOTHING_FITS


def test_max_trials_spends_the_last_trial_on_a_usable_answer() -> None:
    """When the budget runs out mid-bisection, the last trial verifies the margin size."""
    result = run(Oracle(8191), mode="binsearch", max_trials=25)
    assert len(result.trials) == 25 and result.stop_reason is BatchStopReason.MAX_TRIALS
    assert result.trials[-1].role == "verify"
    assert result.batch_size == result.trials[-1].size


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.2, 0.5])
def test_the_margin_keeps_its_share_of_the_limit_free(margin: float) -> None:
    """The answer is at most (1 - margin) x the largest size not known to fail."""
    result = run(Oracle(1000), mode="binsearch", margin=margin)
    assert result.smallest_oom == 1001
    assert result.batch_size == max(1, math.floor((1 - margin) * 1000))


# -- target batch ------------------------------------------------------------------------------
def test_target_batch_splits_into_accumulation_steps() -> None:
    """A global batch of 256 with at most 95 per step: 64 per step, 4 accumulation steps."""
    result = run(Oracle(100), mode="binsearch", target_batch=256)
    assert (result.batch_size, result.accumulation_steps) == (64, 4)
    assert result.effective_batch == 256 and 64 in fitted_sizes(result)


def test_a_target_below_the_limit_needs_no_accumulation() -> None:
    """A target that fits is run as it is (and verified)."""
    result = run(Oracle(100), mode="binsearch", target_batch=48)
    assert (result.batch_size, result.accumulation_steps) == (48, 1)
    assert 48 in fitted_sizes(result)


@pytest.mark.parametrize(
    ("target", "largest", "expected"),
    [(256, 100, (64, 4)), (48, 64, (48, 1)), (97, 50, (1, 97)), (1000, 999, (500, 2))],
)
def test_accumulation_for(target: int, largest: int, expected: tuple[int, int]) -> None:
    """The per-step batch is at most ``largest`` and batch x steps == target exactly."""
    batch, steps = accumulation_for(target, largest)
    assert (batch, steps) == expected and batch * steps == target and batch <= largest


# -- the memory model --------------------------------------------------------------------------
def test_memory_model_predicts_the_moment_that_takes_over() -> None:
    """Per-moment lines: the flat moment leads at 8, the growing one limits at 200."""
    model = MemoryModel.fit([2, 4, 8], [[1000 + 10 * s, 1200] for s in (2, 4, 8)])
    assert model is not None
    assert model.peak(8) == 1200 and model.peak(100) == 2000
    assert model.limit(3000) == 200


def test_memory_model_refuses_memory_that_is_not_linear_yet() -> None:
    """A total peak that bends (flat, then growing) fails the backtest: measure more first."""
    assert MemoryModel.fit([2, 4, 8], [[1000], [1000], [1400]]) is None


# -- protocol and validation -------------------------------------------------------------------
def test_record_must_name_the_proposed_size() -> None:
    """Recording another size than next_size() is a driver bug, reported as such."""
    search = BatchSizeSearch()
    with pytest.raises(ValueError, match=r"record\(size=3\) but the search proposed 2"):
        search.record(3, True)


def test_a_fitted_trial_must_have_run_every_step() -> None:
    """A size fits only if all steps_per_trial steps ran."""
    search = BatchSizeSearch(steps_per_trial=3)
    with pytest.raises(ValueError, match="steps_per_trial=3"):
        search.record(2, True, steps=1)


def test_next_size_after_the_end_raises() -> None:
    """A finished search proposes nothing."""
    search = BatchSizeSearch(max_trials=1)
    search.record(2, True)
    assert search.finished
    with pytest.raises(RuntimeError, match="already stopped"):
        search.next_size()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"mode": "linear"}, ValueError, "mode must be one of"),
        ({"init_val": 0}, ValueError, "init_val must be >= 1"),
        ({"init_val": 2.0}, TypeError, "init_val must be an int"),
        ({"max_trials": 0}, ValueError, "max_trials must be >= 1"),
        ({"steps_per_trial": 0}, ValueError, "steps_per_trial must be >= 1"),
        ({"max_val": 0}, ValueError, "max_val must be >= 1"),
        ({"margin": 1.0}, ValueError, r"margin must be in \[0, 1\)"),
        ({"margin": "5%"}, TypeError, "margin must be a number"),
        ({"target_batch": 0}, ValueError, "target_batch must be >= 1"),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_arguments_fail_naming_argument_and_value(
    options: dict[str, object], error: type[Exception], match: str
) -> None:
    """Each bad argument raises a TypeError/ValueError that names it."""
    with pytest.raises(error, match=match):
        BatchSizeSearch(**options)  # type: ignore[arg-type]


# -- results -----------------------------------------------------------------------------------
def test_result_round_trips_through_json(tmp_path: Path) -> None:
    """A result saves as standard JSON and loads back equal."""
    result = run(phase_switch_memory(300), target_batch=600)
    path = result.save_json(tmp_path / "batch.json")
    assert json.loads(path.read_text())["batch_size"] == result.batch_size
    assert BatchSizeResult.load_json(path) == result


def test_throughput_reads_the_timed_steps_and_old_files_load_without_them() -> None:
    """A trial that timed its bare steps (its last ran under a meter) reports their throughput;
    the fields survive JSON, and a file written before them loads (the whole trial timed)."""
    timed = BatchTrial(size=8, fitted=True, steps=3, seconds=3.0, timed_steps=2, timed_seconds=1.0)
    assert timed.samples_per_second == 16.0
    result = BatchSizeResult(8, 1, (timed,), BatchStopReason.LIMIT_FOUND)
    assert BatchSizeResult.from_dict(result.to_dict()).trials == (timed,)
    old = result.to_dict()
    for trial in old["trials"]:
        del trial["timed_steps"], trial["timed_seconds"]
    assert BatchSizeResult.from_dict(old).trials[0].samples_per_second == 8.0


def test_from_dict_rejects_other_formats() -> None:
    """Loading something that is not a batch-size result says so."""
    with pytest.raises(ValueError, match="not a batch-size search result"):
        BatchSizeResult.from_dict({"format": "lrfinder-range-test"})


def test_summary_lists_every_trial_and_the_answer() -> None:
    """summary() has a line per trial and ends with the answer and the stop reason."""
    result = run(Oracle(100), mode="power")
    lines = result.summary().splitlines()
    answer = len(result.trials)  # then the recommendation and the LR advice
    assert len(lines) == answer + 3
    assert "128 out of memory" in lines[answer - 2] and lines[answer].startswith("batch size 64")
    assert lines[answer + 1].startswith("recommended: 64") and lines[-1].startswith("LR:")


# -- properties --------------------------------------------------------------------------------
@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Callable[[int], bool], Peak | None, int | None, dict]:
    limit = draw(st.integers(0, 5000))
    kind = draw(st.sampled_from(["threshold", "flaky", "linear", "phased"]))
    peak: Peak | None = None
    capacity = None
    if kind == "flaky":  # memory that is not monotone in the batch size
        seed = draw(st.integers(0, 2**32 - 1))

        def fits(n: int) -> bool:
            return n <= limit or random.Random(seed * 31 + n).random() < 0.2

    else:

        def fits(n: int) -> bool:
            return n <= limit

    if kind in ("linear", "phased"):
        oracle = linear_memory(limit) if kind == "linear" else phase_switch_memory(limit)
        peak, capacity = oracle.peak, oracle.capacity
        if draw(st.booleans()):
            capacity = int(capacity * draw(st.floats(0.5, 2.0)))  # type: ignore[operator]
    options = {
        "mode": draw(st.sampled_from(["guided", "binsearch", "power"])),
        "init_val": draw(st.integers(1, 64)),
        "max_trials": draw(st.integers(1, 30)),
        "margin": draw(st.sampled_from([0.0, 0.05, 0.1, 0.5])),
        "max_val": draw(st.one_of(st.none(), st.integers(64, 10_000))),
        "upper_bound": draw(st.one_of(st.none(), st.integers(64, 10_000))),
        "target_batch": draw(st.one_of(st.none(), st.integers(1, 20_000))),
    }
    return fits, peak, capacity, options


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_property_never_answers_an_untested_size(scenario: tuple) -> None:
    """Whatever memory does, the answer is a size that ran, the first trial is init_val, a size
    runs twice only with a failure in between, nothing passes the bounds, the budget holds and the search replays the same."""
    fits, peak, capacity, options = scenario

    def drive() -> BatchSizeResult:
        oracle = Oracle(0, peak=peak, capacity=capacity)
        oracle.fits = fits  # type: ignore[method-assign]
        return run(oracle, **options)

    result = drive()
    tried = sizes(result)
    bounds = [b for b in (options["max_val"], options["upper_bound"]) if b is not None]
    assert tried[0] == options["init_val"]
    assert len(tried) <= options["max_trials"]
    for i, size in enumerate(tried):  # a size runs again only after a failure since its last run
        earlier = max((j for j in range(i) if tried[j] == size), default=None)
        if earlier is not None:
            assert result.trials[earlier].fitted, (tried, i)
            assert not all(t.fitted for t in result.trials[earlier + 1 : i]), (tried, i)
    assert all(1 <= s <= min(bounds, default=2**62) for s in tried)
    assert result.batch_size is None or result.batch_size in fitted_sizes(result)
    if result.batch_size is None:  # nothing fitted below the smallest failing size
        assert result.largest_fit is None
    elif (
        options["target_batch"] is not None and result.stop_reason is not BatchStopReason.MAX_TRIALS
    ):
        assert result.batch_size * result.accumulation_steps == options["target_batch"]
    assert drive() == result  # deterministic: every DDP rank fed the same records agrees


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5000), st.sampled_from([0.0, 0.05, 0.2]), st.integers(1, 64))
def test_property_threshold_answers_keep_the_margin(limit: int, margin: float, init: int) -> None:
    """Against a threshold, a found limit gives an answer within (1 - margin) of it: at most
    (1 - margin) x the first failing size less one, and (in binsearch) exactly Lightning's."""
    for mode in ("power", "binsearch", "guided"):
        result = run(Oracle(limit), mode=mode, margin=margin, init_val=init, max_val=None)
        if result.stop_reason is not BatchStopReason.LIMIT_FOUND:
            continue
        assert result.batch_size is not None and result.smallest_oom is not None
        assert result.batch_size <= limit
        assert result.batch_size <= max(1, math.floor((1 - margin) * (result.smallest_oom - 1)))
        if mode == "binsearch":
            assert result.batch_size == max(1, math.floor((1 - margin) * limit))


def test_trials_are_frozen_records() -> None:
    """A trial cannot be changed after it was recorded."""
    trial = BatchTrial(size=4, fitted=True, steps=3)
    with pytest.raises(AttributeError):
        trial.size = 5  # type: ignore[misc]


# -- an out-of-memory trial changes the state; the guided mode predicts first -------------------
@dataclass
class ShrinkingOracle(Oracle):
    """Memory whose limit drops once a trial has run out of memory (an allocator that keeps an
    arena, or freed heap, after a failure): ``limit`` before any failure, ``after`` since."""

    after: int = 0
    failed: bool = False

    def fits(self, size: int) -> bool:
        ok = size <= (self.after if self.failed else self.limit)
        self.failed = self.failed or not ok
        return ok


@pytest.mark.parametrize("mode", ["power", "binsearch", "guided"])
def test_the_answer_fitted_after_the_last_failure(mode: str) -> None:
    """A size that fitted before a failure is not answered once the limit dropped below it: the
    answer ran (and fitted) after the last out-of-memory trial, under the lower limit."""
    result = run(ShrinkingOracle(1000, after=900), mode=mode)
    last_failure = max(i for i, t in enumerate(result.trials) if not t.fitted)
    after = [t.size for t in result.trials[last_failure + 1 :] if t.fitted]
    assert result.batch_size is not None and result.batch_size in after
    assert result.batch_size <= 900


def test_binsearch_reruns_the_lower_end_after_two_failures_in_a_row() -> None:
    """512 fitted, then 1024 and 768 failed: 512 runs again before 640 is tried."""
    search = BatchSizeSearch(mode="binsearch", init_val=512)
    search.record(512, True)
    assert search.next_size() == 1024
    search.record(1024, False)
    assert search.next_size() == 768
    search.record(768, False)
    assert (search.next_size(), search._proposal) == (512, (512, "recheck"))


@pytest.mark.parametrize("limit", [37, 610, 1250, 3000, 8000])
def test_guided_predicts_first_and_stops_when_the_prediction_holds(limit: int) -> None:
    """Linear memory and a true capacity: 2, 4, 8, then (1 - margin) x the predicted limit,
    which fits with the predicted peak: four trials, none out of memory."""
    result = run(linear_memory(limit))
    assert sizes(result)[:3] == [2, 4, 8] and len(result.trials) == 4
    assert result.oom_trials == 0 and result.stop_reason is BatchStopReason.PREDICTION_HELD
    assert result.trials[-1].role == "jump" and result.batch_size == result.trials[-1].size
    assert math.floor(0.95 * limit) - 1 <= result.batch_size <= math.floor(0.95 * (limit + 1))


def test_guided_aims_again_when_the_peak_misses_the_prediction() -> None:
    """Memory that grows faster at large sizes: the first aim fits with a peak above the
    prediction, so the model is re-fitted through the two largest sizes and aims lower; the
    answer keeps the margin and no trial runs out of memory."""
    fixed, per_sample, capacity = 50_000_000, 200_000, 300_000_000

    def peak(n: int) -> int:
        return fixed + per_sample * n + (per_sample * 3 // 100 * (n - 16) if n > 16 else 0)

    limit = max(n for n in range(1, 5000) if peak(n) <= capacity)
    result = run(Oracle(limit, peak=peak, capacity=capacity))
    assert [t.role for t in result.trials][3:] == ["jump", "predict"]
    assert result.oom_trials == 0 and len(result.trials) <= 5
    assert 0.95 * 0.95 * limit <= (result.batch_size or 0) <= 0.95 * limit + 1


def test_guided_after_an_out_of_memory_aim_aims_below_it_from_the_new_reading() -> None:
    """The reading before the jump was too high (freed heap counted twice); the failure's own
    reading is true: the next aim fits, in five trials with one out of memory."""
    fixed, per_sample, limit = 50_000_000, 200_000, 1250
    true_capacity = fixed + per_sample * limit + per_sample // 2
    search = BatchSizeSearch()
    while not search.finished:
        size = search.next_size()
        fitted = size <= limit
        failed = any(not t.fitted for t in search.trials) or not fitted
        reading = true_capacity if failed else int(true_capacity * 1.15)
        search.record(
            size, fitted, fixed + per_sample * size if fitted else None, capacity_bytes=reading
        )
    result = search.result()
    assert len(result.trials) == 5 and result.oom_trials == 1
    assert result.stop_reason is BatchStopReason.PREDICTION_HELD
    assert math.floor(0.95 * limit) - 1 <= (result.batch_size or 0) <= limit


@pytest.mark.parametrize("max_trials", range(5, 20))
def test_a_budget_that_runs_out_still_answers_a_size_run_after_the_last_failure(
    max_trials: int,
) -> None:
    """Whenever the budget ends the search, the answer ran after the last failure: the last
    trial runs the answer, or the search stops one trial early when it already ran."""
    result = run(ShrinkingOracle(1000, after=900), mode="binsearch", max_trials=max_trials)
    failures = [i for i, t in enumerate(result.trials) if not t.fitted]
    after = [t.size for t in result.trials[(failures[-1] + 1 if failures else 0) :] if t.fitted]
    assert result.batch_size in after and len(result.trials) <= max_trials


@pytest.mark.parametrize("later_drop", [0.0, 0.01])
def test_guided_answers_under_the_reading_an_aim_leaves(later_drop: float) -> None:
    """The aim fits with the predicted peak, but leaves memory taken that is no tensor (MKL's
    cached GEMM buffers: the capacity read after it is 3.5% lower, as a conv net's 16-17 MiB
    of 490 is): it no longer keeps the margin under that reading, so the search runs the size
    that does, once, and answers it (5 trials, none out of memory), even when that run lowers
    the reading a little more (``later_drop``): the margin is there for that."""
    fixed, per_sample = 50_000_000, 200_000
    capacity = fixed + per_sample * 1250
    search = BatchSizeSearch()
    while not search.finished:
        size = search.next_size()
        aims = sum(t.size > 100 for t in search.trials)
        before = capacity * (1.0 if aims == 0 else 0.965)
        after = capacity * (1.0 if size <= 100 else 0.965 - later_drop * aims)
        peak = fixed + per_sample * size
        search.record(size, peak <= before, peak, capacity_bytes=int(after))
    result = search.result()
    low_limit = (capacity * 0.965 - fixed) / per_sample
    assert [t.role for t in result.trials][3:] == ["jump", "verify"], result.summary()
    assert result.oom_trials == 0 and result.stop_reason is BatchStopReason.PREDICTION_HELD
    assert 0.95 * low_limit - 2 <= (result.batch_size or 0) <= 0.95 * low_limit + 1
    assert result.batch_size == result.trials[-1].size < result.trials[-2].size


def test_guided_settles_below_an_aim_and_recovers_if_that_run_fails() -> None:
    """The size run under the reading an aim left runs out of memory (memory is not what the
    reading said): the search goes on from that failure and answers only a size that fitted
    after it."""
    fixed, per_sample = 50_000_000, 200_000
    capacity = fixed + per_sample * 1250
    search = BatchSizeSearch()
    while not search.finished:
        size = search.next_size()
        peak = fixed + per_sample * size
        fitted = len(search.trials) != 4  # the fifth trial (the settle run) fails
        reading = int(capacity * (1.0 if size <= 100 else 0.965))
        search.record(size, fitted, peak if fitted else None, capacity_bytes=reading)
    result = search.result()
    assert result.trials[4].role == "verify" and not result.trials[4].fitted, result.summary()
    after = [t.size for t in result.trials[5:] if t.fitted]
    assert result.batch_size in after and result.batch_size < result.trials[4].size


def test_guided_stops_at_once_when_the_reading_after_the_aim_rises() -> None:
    """A reading that rises after the aim (freed memory returned) changes nothing: 4 trials."""
    fixed, per_sample = 50_000_000, 200_000
    capacity = fixed + per_sample * 1250
    search = BatchSizeSearch()
    while not search.finished:
        size = search.next_size()
        reading = int(capacity * 1.05) if size > 100 else capacity
        search.record(size, True, fixed + per_sample * size, capacity_bytes=reading)
    result = search.result()
    assert len(result.trials) == 4 and result.stop_reason is BatchStopReason.PREDICTION_HELD

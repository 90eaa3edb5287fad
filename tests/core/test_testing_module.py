"""lrfinder_plugins.testing: FakeStep and FakeProbe behave as documented and drive the searches."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest

from lrfinder_plugins import (
    BatchProbe,
    BatchSizeSearch,
    BatchSizeSession,
    NothingFitsError,
    RangeTest,
    RangeTestSession,
    StepOutcome,
    StopReason,
    TrainingStep,
    TrialReport,
    get_plugin_manager,
    hookimpl,
    range_test,
    run_batch_size_search,
    run_range_test,
)
from lrfinder_plugins.spi import run_step, run_trial, search_with_probe
from lrfinder_plugins.testing import FakeProbe, FakeStep, default_loss


def drive(step: FakeStep, num_iter: int = 10, **options: Any) -> Any:
    """run_range_test over ``step`` without a progress bar."""
    return run_range_test(step, RangeTest(num_iter=num_iter, **options), progress=False)


# -- FakeStep ---------------------------------------------------------------------------------------
def test_fakes_satisfy_the_protocols() -> None:
    """FakeStep is a TrainingStep and FakeProbe a BatchProbe (runtime-checkable protocols)."""
    assert isinstance(FakeStep(), TrainingStep) and isinstance(FakeProbe(), BatchProbe)


def test_default_curve_diverges_and_everything_is_restored() -> None:
    """The default curve dips then blows up: the test diverges; snapshot first, restore last."""
    step = FakeStep()
    result = drive(step, num_iter=100)
    assert result.stop_reason == StopReason.DIVERGED and 50 < len(result) < 100
    assert list(result.losses) == [default_loss(lr) for lr in result.lrs]
    assert step.lrs == list(result.lrs) and step.runs == len(result)
    assert step.events[0] == "snapshot" and step.events[-2:] == ["restore", "close"]
    assert step.events[1:-2] == ["set_lr", "run"] * len(result)
    assert step.restored and step.state == (0.0, 0.01)


def test_losses_are_a_deterministic_function_of_the_lr() -> None:
    """Two runs give the same points; loss_at replaces the curve."""
    assert drive(FakeStep()).losses == drive(FakeStep()).losses
    assert set(drive(FakeStep(lambda lr: 3.0), diverge_threshold=None).losses) == {3.0}


def test_raise_at_is_re_raised_after_the_restore() -> None:
    """The error of step N reaches the caller, after restore and close ran."""
    error = ValueError("boom")
    step = FakeStep(raise_at=3, error=error)
    with pytest.raises(ValueError) as raised:
        drive(step)
    assert raised.value is error and step.runs == 3
    assert step.events[-3:] == ["run", "restore", "close"] and step.restored


def test_raise_at_without_an_error_names_the_step() -> None:
    """The default error is a RuntimeError naming the failing step."""
    with pytest.raises(RuntimeError, match="step 2 failed"):
        drive(FakeStep(raise_at=2))


def test_keyboard_interrupt_at_a_step_is_re_raised_after_the_restore() -> None:
    """A KeyboardInterrupt as the error plays a Ctrl-C: restored, then re-raised."""
    step = FakeStep(raise_at=2, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        drive(step)
    assert step.restored


def test_nan_stops_the_test_as_non_finite() -> None:
    """A NaN at step N stops the test there (non_finite), the state restored."""
    step = FakeStep(nan_at=5)
    result = drive(step)
    assert result.stop_reason == StopReason.NON_FINITE and len(result) == 5
    assert math.isnan(result.losses[-1]) and step.restored


def test_exhaustion_stops_the_test_as_data_exhausted() -> None:
    """StopIteration at step N: N - 1 points, data_exhausted, the state restored."""
    step = FakeStep(exhaust_at=4)
    result = drive(step)
    assert result.stop_reason == StopReason.DATA_EXHAUSTED and len(result) == 3
    assert step.runs == 4 and step.weight == 0.0 and step.restored


def test_skipped_steps_are_not_points() -> None:
    """Steps in skip_at return None: they run but record nothing."""
    step = FakeStep(skip_at={2, 3})
    assert step.run() is not None and step.run() is None
    result = drive(FakeStep(skip_at={2, 3}), num_iter=6, diverge_threshold=None)
    assert len(result) == 6 and result.options["skipped_steps"] == 2


def test_samples_make_every_step_a_step_outcome() -> None:
    """With samples=, run() returns StepOutcome records: a loss, a skip, a NaN."""
    step = FakeStep(lambda lr: 0.5, samples=16, skip_at={2}, nan_at=3)
    assert step.run() == StepOutcome.of_loss(0.5, 16)
    assert step.run() == StepOutcome.skipped_step()
    assert step.run().non_finite == 1  # type: ignore[union-attr]
    result = drive(FakeStep(samples=16))
    assert result.options["global_batch"] == 16


def test_restore_refuses_a_snapshot_it_did_not_take() -> None:
    """restore() with a foreign object raises ValueError: a driver bug is loud."""
    step = FakeStep()
    with pytest.raises(ValueError, match="not one of its snapshots"):
        step.restore(FakeStep().snapshot())


def test_restored_turns_true_only_after_a_restore() -> None:
    """restored is False while a step's changes are live, True once restore put them back."""
    step = FakeStep()
    snapshot = step.snapshot()
    step.set_lr(0.5)
    step.run()
    assert not step.restored and step.state == (1.0, 0.5)
    step.restore(snapshot)
    assert step.restored and step.state == (0.0, 0.01)


def test_a_session_push_loop_restores_and_re_raises() -> None:
    """A loop pushing into RangeTestSession: the error re-raised after the caller's restore."""
    step = FakeStep(raise_at=4)
    session = RangeTestSession(RangeTest(num_iter=10), progress=False)
    snapshot = step.snapshot()
    with pytest.raises(RuntimeError, match="step 4 failed"):
        try:
            session.start()
            while not session.finished:
                step.set_lr(session.next_lr())
                session.end_step(run_step(step))
        finally:
            step.restore(snapshot)
            snapshot.close()
            result = session.finish()
    assert result.stop_reason == StopReason.INTERRUPTED and len(result) == 3
    assert step.restored


def test_a_session_push_loop_stops_when_the_data_runs_out() -> None:
    """run_step turns the StopIteration of exhaust_at into data_exhausted."""
    step = FakeStep(exhaust_at=3, samples=8)
    session = RangeTestSession(RangeTest(num_iter=10), progress=False)
    session.start()
    while not session.finished:
        step.set_lr(session.next_lr())
        session.end_step(run_step(step))
    result = session.finish()
    assert result.stop_reason == StopReason.DATA_EXHAUSTED and len(result) == 2


class FakeAdapter:
    """An adapter plugin answering make_step / make_probe with the fakes (target: a dict)."""

    @hookimpl
    def lrfinder_make_step(self, target: Any, options: Mapping[str, Any]) -> FakeStep | None:
        return FakeStep(**options) if isinstance(target, dict) else None

    @hookimpl
    def lrfinder_make_probe(self, target: Any, options: Mapping[str, Any]) -> FakeProbe | None:
        return FakeProbe(**options) if isinstance(target, dict) else None


def test_the_entry_points_run_the_fakes_an_adapter_plugin_builds() -> None:
    """range_test / search_with_probe read group_ratios and upper_bound from the fakes."""
    get_plugin_manager().register(FakeAdapter(), name="test.fake")
    result = range_test({}, num_iter=5, group_ratios=(0.5, 1.0), progress=False)
    assert result.options["group_ratios"] == [0.5, 1.0] and len(result) == 5
    probe = FakeProbe(limit=100, upper_bound=20)
    found = search_with_probe(probe, mode="power", margin=0.0, progress=False)
    assert found.batch_size == 20 and max(probe.tried) == 20


# -- FakeProbe --------------------------------------------------------------------------------------
def test_probe_fits_up_to_its_limit_and_reports_memory() -> None:
    """Sizes up to limit fit (peak and capacity reported when asked); above it MemoryError."""
    probe = FakeProbe(limit=8, bytes_per_sample=10, base_bytes=100, capacity_bytes=500)
    assert probe.try_batch_size(8, 3) == TrialReport(steps=3, peak_bytes=180, capacity_bytes=500)
    with pytest.raises(MemoryError, match="a batch of 9 does not fit"):
        probe.try_batch_size(9, 3)
    assert FakeProbe().try_batch_size(4, 2) == TrialReport(steps=2)
    assert probe.tried == [8, 9] and probe.allocated == 17


def test_batch_size_search_restores_after_every_trial() -> None:
    """Power mode over limit=100 finds 64 (run again after 128 failed); every trial is followed
    by a restore."""
    probe = FakeProbe(limit=100)
    found = run_batch_size_search(probe, BatchSizeSearch(mode="power"), progress=False)
    assert found.batch_size == 64 and probe.tried == [2, 4, 8, 16, 32, 64, 128, 64]
    trials = [event for size in probe.tried for event in (f"try {size}", "restore")]
    assert probe.events == ["snapshot", *trials, "close"]
    assert probe.restores == 8 and probe.restored and probe.allocated == 0


def test_guided_search_uses_the_reported_memory() -> None:
    """With peak and capacity reported, the guided search needs far fewer trials to the limit."""
    measured = FakeProbe(limit=300, bytes_per_sample=1000, base_bytes=5000, capacity_bytes=305000)
    blind = FakeProbe(limit=300)
    for probe in (measured, blind):
        found = run_batch_size_search(probe, BatchSizeSearch(margin=0.0), progress=False)
        assert found.batch_size == 300 and probe.restored
    assert len(measured.tried) < len(blind.tried) / 2


def test_fail_at_is_re_raised_after_the_restore() -> None:
    """An error that is not out of memory ends the search, after the restore."""
    error = OSError("disk gone")
    probe = FakeProbe(fail_at=8, error=error)
    with pytest.raises(OSError) as raised:
        run_batch_size_search(probe, BatchSizeSearch(mode="power"), progress=False)
    assert raised.value is error and probe.tried[-1] == 8
    assert probe.events[-2:] == ["restore", "close"] and probe.restored


def test_nothing_fits_is_raised_after_the_restore() -> None:
    """limit=0: not even a batch of one fits; NothingFitsError, the state restored."""
    probe = FakeProbe(limit=0)
    with pytest.raises(NothingFitsError):
        run_batch_size_search(probe, BatchSizeSearch(mode="power"), progress=False)
    assert probe.tried[-1] == 1 and probe.restored and probe.events[-1] == "close"


def test_a_batch_session_push_loop_finds_the_limit() -> None:
    """A loop pushing run_trial reports into BatchSizeSession finds what the driver finds."""
    probe = FakeProbe(limit=50)
    session = BatchSizeSession(BatchSizeSearch(mode="binsearch", margin=0.0), progress=False)
    snapshot = probe.snapshot()
    session.start()
    while not session.finished:
        size = session.next_size()
        report = run_trial(probe, size, 3)
        probe.restore(snapshot)
        session.end_trial(size, report)
    assert session.finish().batch_size == 50 and probe.restored


def test_probe_restore_refuses_a_snapshot_it_did_not_take() -> None:
    """FakeProbe.restore() with a foreign object raises ValueError."""
    with pytest.raises(ValueError, match="not one of its snapshots"):
        FakeProbe().restore(object())

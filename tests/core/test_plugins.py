"""Plugins through pluggy (suggesters, schedules, observers) and the run_range_test driver."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from lrfinder_plugins import (
    PluginError,
    Point,
    RangeTest,
    RangeTestResult,
    SearchInfo,
    StopReason,
    Suggestion,
    TrainingStep,
    get_plugin_manager,
    hookimpl,
    run_range_test,
)
from lrfinder_plugins._manager import reset_plugin_manager
from lrfinder_plugins.schedules import exponential
from lrfinder_plugins.spi import MAX_SKIPPED_STEPS
from lrfinder_plugins.suggest import make_suggestion

from .curves import result_from_losses, sigmoid_curve


class FakeStep:
    """A pure-Python training step: its loss is a function of the LR it was given.

    ``raise_at`` / ``skip_at`` / ``exhaust_at`` make the n-th call to run() (1-based) raise
    RuntimeError, return None (a skipped AMP step) or raise StopIteration (data ran out).
    """

    def __init__(
        self,
        loss_at: Callable[[float], float] = lambda lr: 1.0 + lr,
        *,
        raise_at: int | None = None,
        skip_at: set[int] | frozenset[int] = frozenset(),
        exhaust_at: int | None = None,
    ) -> None:
        self.loss_at = loss_at
        self.raise_at, self.skip_at, self.exhaust_at = raise_at, skip_at, exhaust_at
        self.lr = 0.0
        self.runs = 0
        self.events: list[str] = []
        self.snapshot_object = Snapshot(self)

    def snapshot(self) -> Snapshot:
        self.events.append("snapshot")
        return self.snapshot_object

    def restore(self, snapshot: Any) -> None:
        self.events.append("restore" if snapshot is self.snapshot_object else "restore-wrong")

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def run(self) -> float | None:
        self.runs += 1
        if self.runs == self.raise_at:
            raise RuntimeError("step failed")
        if self.runs == self.exhaust_at:
            raise StopIteration
        if self.runs in self.skip_at:
            return None
        return self.loss_at(self.lr)


class Snapshot:
    """A snapshot with close(): the driver must close it after restoring."""

    def __init__(self, step: FakeStep) -> None:
        self.step = step

    def close(self) -> None:
        self.step.events.append("close")


class Recorder:
    """An observer plugin that writes down every hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def lrfinder_search_started(self, search: SearchInfo) -> None:
        self.calls.append(("started", search))

    @hookimpl
    def lrfinder_step_recorded(self, search: SearchInfo, point: Point) -> None:
        self.calls.append(("step_recorded", point))

    @hookimpl
    def lrfinder_search_finished(self, search: SearchInfo, result: RangeTestResult) -> None:
        self.calls.append(("finished", result))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def recorder() -> Recorder:
    plugin = Recorder()
    get_plugin_manager().register(plugin, name="test.recorder")
    return plugin


def small_test(**options: Any) -> RangeTest:
    return RangeTest(**{"start_lr": 1e-4, "end_lr": 1.0, "num_iter": 5, **options})


def first_point(result: RangeTestResult, **options: Any) -> Suggestion:
    return make_suggestion(result, "first-point", result.lrs[options.get("at", 0)])


class SuggesterPlugin:
    @hookimpl
    def lrfinder_register_suggesters(self) -> Mapping[str, Any]:
        return {"first-point": first_point}


def steps(*, start_lr: float, end_lr: float, num_iter: int) -> Callable[[int], float]:
    """A schedule: start_lr for the first half, end_lr for the second."""
    return lambda i: start_lr if i < num_iter // 2 else end_lr


class SchedulePlugin:
    @hookimpl
    def lrfinder_register_schedules(self) -> Mapping[str, Any]:
        return {"steps": steps}


# -- registries ----------------------------------------------------------------------------------
def test_plugin_suggester_is_usable_by_name() -> None:
    """A suggester registered by a plugin answers result.suggestion(method=its name)."""
    get_plugin_manager().register(SuggesterPlugin(), name="test.suggesters")
    result = result_from_losses(sigmoid_curve())
    assert result.suggestion(method="first-point").lr == result.lrs[0]


def test_plugin_suggester_receives_options() -> None:
    """Keyword options given to suggestion() reach the plugin's method."""
    get_plugin_manager().register(SuggesterPlugin(), name="test.suggesters")
    result = result_from_losses(sigmoid_curve())
    assert result.suggestion(method="first-point", at=3).lr == result.lrs[3]


def test_plugin_suggester_appears_in_suggestions() -> None:
    """suggestions() includes plugin methods beside the built-ins."""
    get_plugin_manager().register(SuggesterPlugin(), name="test.suggesters")
    suggestions = result_from_losses(sigmoid_curve()).suggestions()
    assert {"first-point", "valley"} <= set(suggestions)


def test_unregistered_plugin_suggester_is_gone() -> None:
    """The registry is read at each lookup, so unregistering takes effect at once."""
    plugin = SuggesterPlugin()
    get_plugin_manager().register(plugin, name="test.suggesters")
    get_plugin_manager().unregister(plugin)
    with pytest.raises(ValueError, match="first-point"):
        result_from_losses(sigmoid_curve()).suggestion("first-point")


def test_failing_plugin_suggester_is_left_out_of_suggestions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """suggestions() logs a plugin method that raises, names it, and returns the others."""

    def broken(result: RangeTestResult) -> Suggestion:
        raise ZeroDivisionError("suggester bug")

    class Broken:
        @hookimpl
        def lrfinder_register_suggesters(self) -> Mapping[str, Any]:
            return {"broken": broken}

    get_plugin_manager().register(Broken(), name="test.broken")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        suggestions = result_from_losses(sigmoid_curve()).suggestions()
    assert "broken" not in suggestions and "valley" in suggestions and "'broken'" in caplog.text


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (0.1, r"returned 0\.1 \(float\), not a Suggestion"),
        (None, r"returned None \(NoneType\), not a Suggestion"),
        (Suggestion(method="bad", lr=-0.01, index=0), r"suggested lr=-0\.01; an LR must be > 0"),
        (Suggestion(method="bad", lr=0.0, index=0), r"suggested lr=0\.0; an LR must be > 0"),
    ],
    ids=["float", "None", "negative", "zero"],
)
def test_a_plugin_method_returning_no_usable_suggestion_is_named(
    returned: Any, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a plugin's method returns is checked: not a Suggestion, or an LR <= 0, is a
    PluginError naming the plugin (never an LR applied to an optimizer); suggestions() logs it
    and leaves it out."""

    class Bad:
        @hookimpl
        def lrfinder_register_suggesters(self) -> Mapping[str, Any]:
            return {"bad": lambda result: returned}

    get_plugin_manager().register(Bad(), name="test.bad")
    result = result_from_losses(sigmoid_curve())
    with pytest.raises(PluginError, match=rf"'bad' of plugin 'test\.bad' {problem}"):
        result.suggestion("bad")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        assert "bad" not in result.suggestions()
    assert not Suggestion(method="x", lr=-1.0, index=None).ok


def test_an_observer_editing_the_result_cannot_change_what_the_caller_gets() -> None:
    """lrfinder_search_finished gets its own copy of the result's options (the one mutable
    part of a frozen result): an observer that edits it leaves the caller's result as it was."""

    class Editor:
        @hookimpl
        def lrfinder_search_finished(self, search: SearchInfo, result: RangeTestResult) -> None:
            result.options["mode"] = "hacked"
            result.options.pop("group_ratios")

    get_plugin_manager().register(Editor(), name="test.editor")
    result = run_range_test(FakeStep(), small_test(), progress=False)
    assert result.options["mode"] == "exponential" and result.options["group_ratios"] == [1.0]


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("raise", r"plugin 'test\.registry' failed in lrfinder_register_suggesters: RuntimeError"),
        ("list", r"plugin 'test\.registry': lrfinder_register_suggesters returned list"),
        ("nonstr", r"registers 42; names must be non-empty strings"),
    ],
)
def test_a_broken_registry_hook_is_a_plugin_error_naming_it(hook: str, message: str) -> None:
    """A registry hook that raises, returns no mapping or registers a non-string name: every
    lookup fails with a PluginError naming the plugin and how to block it."""

    class Registry:
        @hookimpl
        def lrfinder_register_suggesters(self) -> Any:
            if hook == "raise":
                raise RuntimeError("registry bug")
            return [first_point] if hook == "list" else {42: first_point}

    get_plugin_manager().register(Registry(), name="test.registry")
    with pytest.raises(PluginError, match=message) as caught:
        result_from_losses(sigmoid_curve()).suggestion()
    assert caught.value.plugin == "test.registry" and "LRFINDER_DISABLE_PLUGINS" in str(
        caught.value
    )


def test_an_adapter_hook_returning_no_step_is_a_type_error_naming_the_methods() -> None:
    """lrfinder_make_step answering with something that is no training step: a TypeError that
    names the methods a step needs and the plugins answering the hook."""
    from lrfinder_plugins import range_test

    class Adapter:
        @hookimpl
        def lrfinder_make_step(self, target: Any, options: Any) -> Any:
            return 42 if target == "mine" else None

    get_plugin_manager().register(Adapter(), name="test.adapter")
    with pytest.raises(TypeError, match=r"returned 42 \(int\), which has no snapshot\(\), "):
        range_test("mine")


def test_plugin_schedule_is_usable_as_mode() -> None:
    """A schedule registered by a plugin answers RangeTest(mode=its name)."""
    get_plugin_manager().register(SchedulePlugin(), name="test.schedules")
    result = run_range_test(FakeStep(), small_test(mode="steps", num_iter=4), progress=False)
    assert result.lrs == (1e-4, 1e-4, 1.0, 1.0)


def test_duplicate_suggester_name_raises_naming_both_plugins() -> None:
    """Two plugins registering the same name is an error that names both of them."""

    class Clash:
        @hookimpl
        def lrfinder_register_suggesters(self) -> Mapping[str, Any]:
            return {"valley": first_point}

    get_plugin_manager().register(Clash(), name="test.clash")
    with pytest.raises(ValueError, match="'valley'") as caught:
        result_from_losses(sigmoid_curve()).suggestion()
    assert "'lrfinder.suggest'" in str(caught.value) and "'test.clash'" in str(caught.value)


def test_duplicate_schedule_name_raises_naming_both_plugins() -> None:
    """A plugin re-registering "linear" makes the registry lookup raise, naming both plugins."""

    class Clash:
        @hookimpl
        def lrfinder_register_schedules(self) -> Mapping[str, Any]:
            return {"linear": steps}

    get_plugin_manager().register(Clash(), name="test.clash")
    with pytest.raises(ValueError, match=r"'lrfinder\.schedules'.*'test\.clash'"):
        RangeTest(mode="a-plugin-schedule")


def test_a_built_in_schedule_builds_no_plugin_manager() -> None:
    """RangeTest with a built-in schedule (or a factory) never asks the plugins."""
    from lrfinder_plugins import _manager

    _manager.reset_plugin_manager()
    RangeTest(mode="linear")
    RangeTest(mode=steps)
    assert _manager._manager is None


def test_registering_none_adds_nothing() -> None:
    """A register hook may return None."""

    class Nothing:
        @hookimpl
        def lrfinder_register_suggesters(self) -> None:
            return None

    get_plugin_manager().register(Nothing(), name="test.nothing")
    assert set(result_from_losses(sigmoid_curve()).suggestions()) == {
        "lightning",
        "margin",
        "minimum",
        "steepest",
        "torch_lr_finder",
        "valley",
    }


# -- the blocklist ---------------------------------------------------------------------------------
def test_builtin_plugins_are_registered_by_name() -> None:
    """The built-in suggesters, schedules and progress bar are ordinary named plugins."""
    names = {name for name, _ in get_plugin_manager().list_name_plugin()}
    assert {"lrfinder.suggest", "lrfinder.schedules", "lrfinder.progress"} <= names


def test_disable_env_blocks_the_progress_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """LRFINDER_DISABLE_PLUGINS=lrfinder.progress keeps the progress bar out of the manager."""
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", " lrfinder.progress , other.plugin")
    reset_plugin_manager()
    manager = get_plugin_manager()
    assert manager.get_plugin("lrfinder.progress") is None and manager.is_blocked(
        "lrfinder.progress"
    )


def test_progress_bar_is_drawn_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """With the progress plugin on, a run with progress=True draws a tqdm bar on stderr."""
    run_range_test(FakeStep(), small_test(), progress=True, description="sweeping")
    assert "sweeping" in capsys.readouterr().err


def test_blocked_progress_plugin_draws_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With lrfinder.progress blocked, progress=True draws no bar."""
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.progress")
    reset_plugin_manager()
    run_range_test(FakeStep(), small_test(), progress=True, description="sweeping")
    assert capsys.readouterr().err == ""


def test_progress_false_draws_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=False draws no bar even with the plugin on."""
    run_range_test(FakeStep(), small_test(), progress=False, description="sweeping")
    assert capsys.readouterr().err == ""


# -- observers -------------------------------------------------------------------------------------
def test_observers_are_called_in_order(recorder: Recorder) -> None:
    """started, then one step_recorded per point, then finished once."""
    run_range_test(FakeStep(), small_test(), progress=False)
    assert recorder.names() == ["started"] + ["step_recorded"] * 5 + ["finished"]


def test_observers_see_the_points_and_the_result(recorder: Recorder) -> None:
    """Each Point matches the result's point; finished gets the returned result."""
    result = run_range_test(FakeStep(), small_test(), progress=False)
    points = [p for name, p in recorder.calls if name == "step_recorded"]
    expected = [
        Point(i, result.lrs[i], result.losses[i], result.smoothed_losses[i]) for i in range(5)
    ]
    assert points == expected and recorder.calls[-1] == ("finished", result)


def test_observers_get_one_search_info_per_search(recorder: Recorder) -> None:
    """All hook calls of one search share a SearchInfo describing it."""
    run_range_test(FakeStep(), small_test(), progress=False, description="sweep")
    search = recorder.calls[0][1]
    assert (search.kind, search.total, search.description, search.progress) == (
        "lr_range_test",
        5,
        "sweep",
        False,
    )


def test_observer_may_take_fewer_arguments() -> None:
    """A hook implementation naming only some arguments gets just those."""
    seen: list[StopReason | None] = []

    class OnlyResult:
        @hookimpl
        def lrfinder_search_finished(self, result: RangeTestResult) -> None:
            seen.append(result.stop_reason)

    get_plugin_manager().register(OnlyResult(), name="test.only-result")
    run_range_test(FakeStep(), small_test(), progress=False)
    assert seen == [StopReason.BUDGET]


def test_failing_observer_is_logged_and_the_run_goes_on(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer that raises is logged with its plugin name; the test still runs to the end."""

    class Broken:
        @hookimpl
        def lrfinder_step_recorded(self, point: Point) -> None:
            raise ZeroDivisionError("observer bug")

    get_plugin_manager().register(Broken(), name="test.broken")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        result = run_range_test(FakeStep(), small_test(), progress=False)
    assert result.stop_reason == StopReason.BUDGET and len(result) == 5
    assert any("'test.broken'" in r.getMessage() and r.exc_info for r in caplog.records)


def test_failing_observer_is_dropped_for_the_rest_of_the_search(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After its first error a plugin is not called again in that search (one log line, not 5)."""
    calls: list[int] = []

    class Broken:
        @hookimpl
        def lrfinder_step_recorded(self, point: Point) -> None:
            calls.append(point.index)
            raise ZeroDivisionError("observer bug")

        @hookimpl
        def lrfinder_search_finished(self) -> None:
            calls.append(-1)

    get_plugin_manager().register(Broken(), name="test.broken")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        run_range_test(FakeStep(), small_test(), progress=False)
    assert calls == [0] and len(caplog.records) == 1


def test_failing_finished_observer_still_returns_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error in search_finished is logged; run_range_test still returns the result."""

    class Broken:
        @hookimpl
        def lrfinder_search_finished(self) -> None:
            raise ZeroDivisionError("observer bug")

    get_plugin_manager().register(Broken(), name="test.broken")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        result = run_range_test(FakeStep(), small_test(), progress=False)
    assert len(result) == 5 and "'test.broken'" in caplog.text


# -- the driver ------------------------------------------------------------------------------------
def test_fake_step_follows_the_protocol() -> None:
    """The test double is a TrainingStep (the runtime-checkable protocol)."""
    assert isinstance(FakeStep(), TrainingStep)


def test_driver_records_the_step_losses_at_the_proposed_lrs() -> None:
    """Each point is the loss the step returned at the LR the test proposed."""
    result = run_range_test(
        FakeStep(lambda lr: 2.0 - lr), small_test(smoothing=0.0), progress=False
    )
    assert result.losses == tuple(2.0 - lr for lr in result.lrs)


def test_driver_snapshots_then_restores_and_closes() -> None:
    """The state is saved once, restored once from that snapshot, then the snapshot is closed."""
    step = FakeStep()
    run_range_test(step, small_test(), progress=False)
    assert step.events == ["snapshot", "restore", "close"]


def test_driver_stops_on_divergence() -> None:
    """A loss blowing up stops the run early with "diverged"."""
    step = FakeStep(lambda lr: 1.0 if lr < 0.1 else 100.0)
    result = run_range_test(step, small_test(smoothing=0.0), progress=False)
    assert result.stop_reason == StopReason.DIVERGED and step.runs == 4


def test_step_error_restores_and_propagates(recorder: Recorder) -> None:
    """A failing step: state restored, finished once with "interrupted", the error re-raised."""
    step = FakeStep(raise_at=3)
    with pytest.raises(RuntimeError, match="step failed"):
        run_range_test(step, small_test(), progress=False)
    finished = [r for name, r in recorder.calls if name == "finished"]
    assert step.events == ["snapshot", "restore", "close"]
    assert len(finished) == 1 and finished[0].stop_reason == StopReason.INTERRUPTED
    assert len(finished[0]) == 2


def test_keyboard_interrupt_restores_and_propagates(recorder: Recorder) -> None:
    """Ctrl-C during a step is handled like any error: restore, "interrupted", re-raise."""

    def interrupt(lr: float) -> float:
        raise KeyboardInterrupt

    step = FakeStep(interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_range_test(step, small_test(), progress=False)
    assert step.events == ["snapshot", "restore", "close"]
    assert recorder.calls[-1][1].stop_reason == StopReason.INTERRUPTED


def test_skipped_step_is_not_a_point() -> None:
    """A step returning None (AMP overflow) records nothing; the LR is retried."""
    step = FakeStep(skip_at={2, 3})
    result = run_range_test(step, small_test(), progress=False)
    schedule = exponential(start_lr=1e-4, end_lr=1.0, num_iter=5)
    assert (len(result), step.runs, result.lrs) == (5, 7, tuple(schedule(i) for i in range(5)))


def test_too_many_skipped_steps_stop_as_non_finite() -> None:
    """MAX_SKIPPED_STEPS skipped steps in a row end the run with "non_finite"."""
    step = FakeStep(skip_at=set(range(2, 2 + MAX_SKIPPED_STEPS)))
    result = run_range_test(step, small_test(), progress=False)
    assert (len(result), result.stop_reason) == (1, StopReason.NON_FINITE)


@pytest.mark.parametrize("observed", [False, True], ids=["no-observer", "observer"])
def test_skips_with_a_point_between_do_not_add_up(
    observed: bool, request: pytest.FixtureRequest
) -> None:
    """The count of skipped steps starts again after each recorded point: two runs of one skip
    fewer than MAX_SKIPPED_STEPS, with a point between them, do not stop the test (with and
    without a per-step observer, whose sessions record through different loops)."""
    first = set(range(2, 1 + MAX_SKIPPED_STEPS))
    second = {run + MAX_SKIPPED_STEPS for run in first}
    step = FakeStep(skip_at=first | second)
    recorder = request.getfixturevalue("recorder") if observed else None
    result = run_range_test(step, small_test(), progress=False)
    assert (len(result), result.stop_reason) == (5, StopReason.BUDGET)
    assert result.options["skipped_steps"] == 2 * (MAX_SKIPPED_STEPS - 1)
    if recorder is not None:
        assert recorder.names().count("step_recorded") == 5


def test_data_running_out_stops_as_data_exhausted() -> None:
    """StopIteration from the step ends the run with "data_exhausted" and restores the state."""
    step = FakeStep(exhaust_at=3)
    result = run_range_test(step, small_test(), progress=False)
    assert (len(result), result.stop_reason) == (2, StopReason.DATA_EXHAUSTED)
    assert step.events == ["snapshot", "restore", "close"]


def test_an_observer_that_declines_a_search_is_never_called_for_it(recorder: Recorder) -> None:
    class Declines(Recorder):
        @hookimpl
        def lrfinder_observes(self, search: SearchInfo) -> bool:
            return search.description != "quiet"

    declines = Declines()
    get_plugin_manager().register(declines, name="test.declines")
    run_range_test(FakeStep(), small_test(), progress=False, description="quiet")
    assert declines.calls == []
    assert recorder.names() == ["started"] + ["step_recorded"] * 5 + ["finished"]
    run_range_test(FakeStep(), small_test(), progress=False, description="loud")
    assert declines.names() == ["started"] + ["step_recorded"] * 5 + ["finished"]


def test_without_a_progress_bar_no_plugin_observes_the_steps() -> None:
    from lrfinder_plugins.spi import RangeTestSession

    quiet = RangeTestSession(small_test(), progress=False)
    assert not quiet.observers.wants_steps  # the hot path calls nothing per step
    assert RangeTestSession(small_test(), progress=True).observers.wants_steps


def test_an_observer_whose_observes_hook_raises_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Recorder):
        @hookimpl
        def lrfinder_observes(self, search: SearchInfo) -> bool:
            raise RuntimeError("no opinion")

    broken = Broken()
    get_plugin_manager().register(broken, name="test.broken-observes")
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        result = run_range_test(FakeStep(), small_test(), progress=False)
    assert len(result) == 5 and broken.calls == []
    assert "test.broken-observes" in caplog.text and "lrfinder_observes" in caplog.text


def test_the_progress_bar_starts_no_monitor_thread() -> None:
    """A batch-size search with its bar, in a fresh process: no tqdm monitor thread (an 8 MiB
    stack and a malloc arena the training would not pay), and tqdm's setting is left as it was."""
    child = r"""
import threading
from tqdm import tqdm
from tqdm.auto import tqdm as auto
from lrfinder_plugins import BatchSizeSearch, BatchSizeSession, TrialReport
session = BatchSizeSession(BatchSizeSearch(mode="power"), progress=True)
session.start()
while not session.finished:
    size = session.next_size()
    session.end_trial(size, TrialReport(fitted=size <= 16))
session.finish()
names = [type(t).__name__ for t in threading.enumerate()]
assert "TMonitor" not in names and tqdm.monitor is None, names
assert tqdm.monitor_interval == auto.monitor_interval == 10 and "monitor_interval" not in vars(auto)
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "adapters")])},
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

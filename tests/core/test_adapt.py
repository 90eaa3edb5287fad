"""The framework-agnostic entry points: adapters plug in through make_step / make_probe / is_oom."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from lrfinder_plugins import (
    BatchProbe,
    BatchTrial,
    NothingFitsError,
    SearchInfo,
    StopReason,
    TrainingStep,
    TrialReport,
    batch_size_search,
    get_plugin_manager,
    hookimpl,
    range_test,
)
from lrfinder_plugins._batch_driver import is_oom


# -- a toy "framework": its model, its training step and its batch probe ------------------------
@dataclass
class ToyModel:
    """A framework's model: its "weight" moves with every step; its memory fits ``capacity``."""

    weight: float = 1.0
    lrs: list[float] = field(default_factory=lambda: [0.1, 0.01])
    capacity: int = 100


class ToyStep:
    """A TrainingStep over a ToyModel: the loss falls with the LR until it blows up."""

    def __init__(self, model: ToyModel, *, blow_up_at: float = 0.1) -> None:
        self.model, self.blow_up_at = model, blow_up_at
        self.group_ratios = tuple(lr / max(model.lrs) for lr in model.lrs)
        self.lr = 0.0

    def snapshot(self) -> float:
        return self.model.weight

    def restore(self, snapshot: float) -> None:
        self.model.weight = snapshot

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def run(self) -> float:
        self.model.weight += 1.0
        return 1.0 / (1.0 + self.lr) if self.lr < self.blow_up_at else 100.0


class ToyOutOfMemory(Exception):
    """The toy framework's out-of-memory error: only a plugin knows what it means."""


class ToyProbe:
    """A BatchProbe over a ToyModel: sizes above its capacity raise ToyOutOfMemory."""

    def __init__(self, model: ToyModel, *, error: type[Exception] = ToyOutOfMemory) -> None:
        self.model, self.error = model, error
        self.events: list[str] = []

    def snapshot(self) -> float:
        self.events.append("snapshot")
        return self.model.weight

    def restore(self, snapshot: float) -> None:
        self.events.append("restore")
        self.model.weight = snapshot

    def try_batch_size(self, size: int, steps: int) -> TrialReport | None:
        self.events.append(f"try {size}")
        self.model.weight += size
        if size > self.model.capacity:
            raise self.error(f"cannot allocate {size} samples")
        return TrialReport(peak_bytes=size * 1000)


class ToyAdapter:
    """The toy framework's adapter plugin, as a third party would write it."""

    def __init__(self) -> None:
        self.options: list[Mapping[str, Any]] = []

    @hookimpl
    def lrfinder_make_step(self, target: Any, options: Mapping[str, Any]) -> ToyStep | None:
        if not isinstance(target, ToyModel):
            return None
        self.options.append(options)
        return ToyStep(target, **options)

    @hookimpl
    def lrfinder_make_probe(self, target: Any, options: Mapping[str, Any]) -> ToyProbe | None:
        if not isinstance(target, ToyModel):
            return None
        return ToyProbe(target, **options)

    @hookimpl
    def lrfinder_is_oom(self, error: BaseException) -> bool | None:
        return True if isinstance(error, ToyOutOfMemory) else None


@pytest.fixture
def adapter() -> ToyAdapter:
    plugin = ToyAdapter()
    get_plugin_manager().register(plugin, name="test.toy")
    return plugin


# -- range_test -----------------------------------------------------------------------------------
def test_range_test_runs_the_step_the_adapter_built(adapter: ToyAdapter) -> None:
    """range_test(target) asks make_step for a step and runs the test with it; state restored."""
    model = ToyModel()
    result = range_test(model, start_lr=1e-3, end_lr=1.0, num_iter=20, progress=False)
    assert result.stop_reason == StopReason.DIVERGED and 2 <= len(result) < 20
    assert model.weight == 1.0


def test_range_test_passes_options_to_the_adapter(adapter: ToyAdapter) -> None:
    """Keyword arguments range_test does not know are the adapter's options."""
    result = range_test(ToyModel(), blow_up_at=1e3, num_iter=10, progress=False)
    assert adapter.options == [{"blow_up_at": 1e3}] and result.stop_reason == StopReason.BUDGET


def test_range_test_records_the_steps_group_ratios(adapter: ToyAdapter) -> None:
    """A step's group_ratios attribute gives every param group's LR in the result."""
    result = range_test(
        ToyModel(lrs=[0.2, 0.05]), num_iter=5, diverge_threshold=None, progress=False
    )
    assert result.group_ratios == (1.0, 0.25)


def test_adapter_options_error_reaches_the_user(adapter: ToyAdapter) -> None:
    """An adapter rejecting its options raises before anything ran."""
    model = ToyModel()
    with pytest.raises(TypeError, match="no_such_option"):
        range_test(model, no_such_option=1)
    assert model.weight == 1.0


def test_unknown_target_names_its_type_and_the_adapters(adapter: ToyAdapter) -> None:
    """No adapter takes the target: a TypeError naming the type, the adapters and the guide."""
    with pytest.raises(TypeError) as caught:
        range_test(3.5)
    message = str(caught.value)
    assert "builtins.float" in message and "'test.toy'" in message
    assert "docs/plugins.md" in message


def test_first_non_none_answer_wins() -> None:
    """Of two adapters for the same target, the last registered is asked first; None passes on."""
    asked: list[str] = []

    class Declines:
        @hookimpl
        def lrfinder_make_step(self, target: Any) -> None:
            asked.append("declines")

    class Specific:
        @hookimpl
        def lrfinder_make_step(self, target: Any) -> ToyStep:
            asked.append("specific")
            return ToyStep(target, blow_up_at=1e3)

    get_plugin_manager().register(ToyAdapter(), name="test.toy")
    get_plugin_manager().register(Specific(), name="test.specific")
    get_plugin_manager().register(Declines(), name="test.declines")
    result = range_test(ToyModel(), num_iter=5, progress=False)
    assert asked == ["declines", "specific"] and result.stop_reason == StopReason.BUDGET


def test_a_training_step_is_its_own_adapter() -> None:
    """A TrainingStep passed as the target runs as it is (the lrfinder.protocols plugin)."""
    step = ToyStep(ToyModel(), blow_up_at=1e3)
    assert isinstance(step, TrainingStep)
    assert len(range_test(step, num_iter=7, progress=False)) == 7


def test_a_training_step_takes_no_options() -> None:
    """Options given with a ready-made TrainingStep are an error, not silently ignored."""
    with pytest.raises(TypeError, match=r"takes no options.*'device'"):
        range_test(ToyStep(ToyModel()), device="cpu")


# -- batch_size_search -----------------------------------------------------------------------------
def test_batch_size_search_runs_the_probe_the_adapter_built(adapter: ToyAdapter) -> None:
    """batch_size_search(target) finds the limit through make_probe, and a tested size."""
    model = ToyModel(capacity=100)
    result = batch_size_search(model, mode="binsearch", margin=0.0, progress=False)
    assert result.batch_size == 100 and model.weight == 1.0
    tested = {t.size for t in result.trials if t.fitted}
    assert result.batch_size in tested


def test_batch_probe_is_restored_after_every_trial(adapter: ToyAdapter) -> None:
    """The probe's state is saved once and restored after each trial, fitted or not."""
    probe = ToyProbe(ToyModel(capacity=10))
    result = batch_size_search(probe, mode="power", progress=False)
    tries = [e for e in probe.events if e.startswith("try")]
    assert probe.events[0] == "snapshot" and probe.events.count("snapshot") == 1
    assert probe.events[1:] == [e for t in tries for e in (t, "restore")]
    assert result.batch_size == 8


def test_out_of_memory_is_recorded_with_its_first_line(adapter: ToyAdapter) -> None:
    """A trial the is_oom hook calls out of memory is a failed trial with the error's first line."""
    result = batch_size_search(ToyModel(capacity=5), mode="power", progress=False)
    failed = [t for t in result.trials if not t.fitted]
    assert failed and failed[0].error == "ToyOutOfMemory: cannot allocate 8 samples"


def test_other_errors_propagate_after_the_restore(adapter: ToyAdapter) -> None:
    """An error no classifier calls out of memory is re-raised, the state restored."""
    model = ToyModel(capacity=5)
    with pytest.raises(ZeroDivisionError):
        batch_size_search(ToyProbe(model, error=ZeroDivisionError), mode="power", progress=False)
    assert model.weight == 1.0


def test_nothing_fits_raises_with_the_trials(adapter: ToyAdapter) -> None:
    """Even a batch of one out of memory: NothingFitsError carrying the result."""
    with pytest.raises(NothingFitsError) as caught:
        batch_size_search(ToyModel(capacity=0), init_val=1, progress=False)
    assert [t.fitted for t in caught.value.result.trials] == [False]


def test_batch_observers_see_every_trial(adapter: ToyAdapter) -> None:
    """search_started, one trial_recorded per trial, search_finished with the result."""
    calls: list[tuple[str, Any]] = []

    class Observer:
        @hookimpl
        def lrfinder_search_started(self, search: SearchInfo) -> None:
            calls.append(("started", search.kind))

        @hookimpl
        def lrfinder_trial_recorded(self, trial: BatchTrial) -> None:
            calls.append(("trial", trial.size))

        @hookimpl
        def lrfinder_search_finished(self, result: Any) -> None:
            calls.append(("finished", result.batch_size))

    get_plugin_manager().register(Observer(), name="test.observer")
    result = batch_size_search(ToyModel(capacity=10), mode="power", progress=False)
    assert calls[0] == ("started", "batch_size") and calls[-1] == ("finished", 8)
    assert [c for c in calls if c[0] == "trial"] == [("trial", t.size) for t in result.trials]


def test_probe_protocol_is_runtime_checkable() -> None:
    """The toy probe is a BatchProbe; a plain object is not."""
    assert isinstance(ToyProbe(ToyModel()), BatchProbe) and not isinstance(object(), BatchProbe)


# -- lrfinder_is_oom ---------------------------------------------------------------------------------
def test_is_oom_asks_the_plugins_first(adapter: ToyAdapter) -> None:
    """A plugin classifies its framework's error; without an answer only MemoryError counts."""
    assert is_oom(ToyOutOfMemory("x")) and is_oom(MemoryError())
    assert not is_oom(ValueError("shapes do not match"))


def test_is_oom_false_stops_the_lookup() -> None:
    """A plugin answering False wins over a later classifier that would say True."""

    class Never:
        @hookimpl
        def lrfinder_is_oom(self, error: BaseException) -> bool:
            return False

    get_plugin_manager().register(Never(), name="test.never")
    assert not is_oom(MemoryError())


def test_keyboard_interrupt_is_never_out_of_memory(adapter: ToyAdapter) -> None:
    """Ctrl-C is not a size that does not fit, whatever the plugins say."""
    assert not is_oom(KeyboardInterrupt())


def test_failing_observer_does_not_cost_the_batch_search(
    adapter: ToyAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer raising in trial_recorded is logged by name; the result is still returned."""

    class Broken:
        @hookimpl
        def lrfinder_trial_recorded(self, trial: BatchTrial) -> None:
            raise RuntimeError("tracker down")

    get_plugin_manager().register(Broken(), name="test.broken")
    model = ToyModel(capacity=10)
    with caplog.at_level(logging.ERROR, logger="lrfinder_plugins"):
        result = batch_size_search(model, mode="power", progress=False)
    assert result.batch_size == 8 and model.weight == 1.0
    assert "'test.broken'" in caplog.text

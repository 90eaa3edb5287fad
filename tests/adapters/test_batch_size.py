"""find_batch_size and tune on real models: out-of-memory probes, exact restore, budgets, hooks."""

from __future__ import annotations

import gc
import json
import math
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters._memory import (
    TensorMeter,
    cuda_capacity,
    expandable_segments,
    requested_bytes,
)
from lrfinder_adapters._oom import builtin_is_oom, is_oom
from lrfinder_adapters._trials import RemainderSkip
from lrfinder_adapters.batch_size import TuneResult, find_batch_size, tune
from lrfinder_plugins import (
    BatchSizeSearch,
    BatchStopReason,
    NothingFitsError,
    ResultFileError,
    SearchInfo,
    get_plugin_manager,
    hookimpl,
)
from tests.adapters.conftest import assert_state_bitwise_equal, capture_state, make_mlp, train_steps

FEATURES = 4


class OutOfMemoryAbove:
    """A loss that raises a real out-of-memory error when the batch is larger than ``limit``.

    It raises after the forward pass ran (its activations are alive), from inside the loss, as
    a device would; it keeps weak references to those activations so a test can check they
    were freed.
    """

    def __init__(self, limit: int, error: Callable[[int], Exception] | None = None) -> None:
        self.limit = limit
        self.error = error or (
            lambda n: torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} MiB")
        )
        self.outputs: list[weakref.ref[torch.Tensor]] = []
        self.sizes: list[int] = []

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.sizes.append(outputs.shape[0])
        if outputs.shape[0] > self.limit:
            self.outputs.append(weakref.ref(outputs))
            raise self.error(outputs.shape[0])
        return nn.functional.mse_loss(outputs, targets)


def dataset(samples: int = 1000) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, FEATURES, generator=gen)
    return torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))


@pytest.fixture
def model() -> nn.Module:
    return make_mlp(features=FEATURES)


@pytest.fixture
def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3)


# -- each mode, each kind of out-of-memory error -----------------------------------------------
@pytest.mark.parametrize(
    ("mode", "expected"), [("power", 32), ("binsearch", 57), ("guided", range(57, 61))]
)
def test_each_mode_finds_the_size_below_the_threshold(
    model: nn.Module, adam: torch.optim.Optimizer, mode: str, expected: int | range
) -> None:
    """Against a probe that fails above 60: power 32, binsearch 57 (= 0.95 x 60), guided >= 57."""
    loss = OutOfMemoryAbove(60)
    result = find_batch_size(model, adam, loss, dataset=dataset(200), mode=mode, progress=False)
    assert result.batch_size in (expected if isinstance(expected, range) else [expected])
    assert result.batch_size in {t.size for t in result.trials if t.fitted}
    assert result.trials[0].size == 2 and result.stop_reason is BatchStopReason.LIMIT_FOUND


ERRORS: dict[str, Callable[[int], Exception]] = {
    "torch.OutOfMemoryError": lambda n: torch.OutOfMemoryError("CUDA out of memory."),
    "MemoryError": lambda n: MemoryError(),
    "cpu-allocator": lambda n: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        f"memory: you tried to allocate {n * 4096} bytes. Error code 12 (Cannot allocate memory)"
    ),
    "hip": lambda n: RuntimeError("HIP out of memory. Tried to allocate 2.00 GiB"),
    "mps": lambda n: RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)"),
    "xpu": lambda n: RuntimeError("XPU out of memory. Tried to allocate 1.00 GiB"),
    "cublas": lambda n: RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    ),
}


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_every_backends_out_of_memory_error_ends_a_trial(
    model: nn.Module, adam: torch.optim.Optimizer, kind: str
) -> None:
    """Each backend's out-of-memory error is a trial that did not fit, not a crash."""
    loss = OutOfMemoryAbove(20, ERRORS[kind])
    result = find_batch_size(model, adam, loss, dataset=dataset(), mode="power")
    assert result.batch_size == 16 and result.oom_trials == 1
    assert all(t.error for t in result.trials if not t.fitted)


def test_the_failed_steps_tensors_are_freed(model: nn.Module, adam: torch.optim.Optimizer) -> None:
    """Out of the except block: the traceback does not keep the failed step's tensors alive."""
    loss = OutOfMemoryAbove(20)
    find_batch_size(model, adam, loss, dataset=dataset(), mode="power", progress=False)
    assert loss.outputs and all(ref() is None for ref in loss.outputs)


# -- exact restore ---------------------------------------------------------------------------
def _trained(model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    data = dataset(64)
    train_steps(
        model, optimizer, [(data.tensors[0][:8], data.tensors[1][:8])] * 3, scheduler=scheduler
    )
    return optimizer, scheduler


def test_the_state_is_bitwise_restored_after_the_search(model: nn.Module) -> None:
    """Parameters, BatchNorm buffers, gradients, AdamW state, the scheduler and RNG, bitwise."""
    optimizer, scheduler = _trained(model)
    before = capture_state(model, optimizer, schedulers=[scheduler])
    find_batch_size(
        model,
        optimizer,
        OutOfMemoryAbove(12),
        dataset=dataset(100),
        schedulers=[scheduler],
        loader_options={"shuffle": True},
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_every_trial_starts_from_the_saved_state(model: nn.Module) -> None:
    """Each trial sees the same weights and an empty Adam state, so its first step allocates it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen: list[tuple[float, int]] = []
    data = dataset()

    def step_fn(size: int) -> None:
        seen.append(
            (float(sum(p.detach().sum() for p in model.parameters())), len(optimizer.state))
        )
        if size > 30:
            raise MemoryError
        x, y = data.tensors[0][:size], data.tensors[1][:size]
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()

    result = find_batch_size(model, optimizer, step_fn=step_fn, mode="binsearch", steps_per_trial=2)
    starts = [weights for weights, state in seen if state == 0]  # the first step of each trial
    assert len(starts) == len(result.trials)
    assert len(set(starts)) == 1 and len(optimizer.state) == 0


def test_a_non_oom_error_is_reraised_unchanged_after_restore(model: nn.Module) -> None:
    """Any other exception propagates as the very same object, with the state restored."""
    optimizer, scheduler = _trained(model)
    before = capture_state(model, optimizer, schedulers=[scheduler])
    boom = ValueError("shapes do not match")

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape[0] > 16:
            raise boom
        return nn.functional.mse_loss(outputs, targets)

    with pytest.raises(ValueError) as raised:
        find_batch_size(model, optimizer, loss_fn, dataset=dataset(), schedulers=[scheduler])
    assert raised.value is boom
    assert_state_bitwise_equal(before, capture_state(model, optimizer, schedulers=[scheduler]))


def test_nothing_fits_raises_with_the_trials() -> None:
    """When even a batch of 1 runs out of memory, the error says so and carries the result."""
    model = wide_model()  # no BatchNorm: it refuses a batch of one for its own reasons
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NothingFitsError, match="even a batch of 1") as raised:
        find_batch_size(model, optimizer, OutOfMemoryAbove(0), dataset=dataset(), init_val=4)
    assert [t.size for t in raised.value.result.trials] == [4, 2, 1]


# -- data sources, budgets, targets ------------------------------------------------------------
def test_make_loader_gets_each_trial_size(model: nn.Module, adam: torch.optim.Optimizer) -> None:
    """make_loader(batch_size) is called once per trial with the proposed size."""
    asked: list[int] = []
    data = dataset()

    def make_loader(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        asked.append(size)
        return [(data.tensors[0][:size], data.tensors[1][:size])]

    result = find_batch_size(
        model, adam, OutOfMemoryAbove(20), make_loader=make_loader, mode="binsearch"
    )
    assert asked == [t.size for t in result.trials]


def test_the_dataset_length_bounds_the_search(
    model: nn.Module, adam: torch.optim.Optimizer
) -> None:
    """With nothing running out of memory, the answer is the dataset length, tested."""
    result = find_batch_size(
        model, adam, nn.functional.mse_loss, dataset=dataset(300), mode="power"
    )
    assert result.batch_size == 300 and result.stop_reason is BatchStopReason.UPPER_BOUND


def test_target_batch_returns_accumulation_steps(
    model: nn.Module, adam: torch.optim.Optimizer
) -> None:
    """A target of 128 with 40 fitting: 32 per step x 4 accumulation steps, 32 tested."""
    result = find_batch_size(
        model, adam, OutOfMemoryAbove(40), dataset=dataset(200), mode="binsearch", target_batch=128
    )
    assert (result.batch_size, result.accumulation_steps) == (32, 4)


def wide_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 512), nn.ReLU(), nn.Linear(512, 1))


@pytest.mark.parametrize("mode", ["binsearch", "guided"])
def test_an_epochs_short_last_batch_is_not_what_a_trial_measures(mode: str) -> None:
    """make_loader's loader keeps each epoch's short last batch (the DataLoader default): the
    step on it is skipped, so the answer is the one a loader that drops it gives (about 400
    samples fit: 1000 samples make two full batches and a short one)."""
    data = dataset(1000)
    answers = []
    for drop_last in (True, False):
        model = make_mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        result = find_batch_size(
            model,
            optimizer,
            nn.functional.mse_loss,
            make_loader=lambda n, d=drop_last: torch.utils.data.DataLoader(
                data, batch_size=n, drop_last=d
            ),
            memory_budget=80_000,
            mode=mode,
            max_val=1000,
            progress=False,
        )
        assert all(t.peak_bytes <= 80_000 for t in result.trials if t.fitted)
        answers.append(result.batch_size)
    assert answers[0] == answers[1]


def test_an_iterable_dataset_without_a_length_says_to_pass_max_val() -> None:
    """An IterableDataset gives the search no bound: a size above its samples gets an error
    that says so and what to pass, not 'needs at least batch_size samples'."""
    data = dataset(100)

    class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter(data)

    model = make_mlp()
    with pytest.raises(ValueError, match=r"IterableDataset without a __len__ .* pass max_val="):
        find_batch_size(
            model,
            torch.optim.SGD(model.parameters(), lr=0.01),
            nn.functional.mse_loss,
            dataset=Stream(),
            mode="power",
            progress=False,
        )


def test_a_short_batch_is_skipped_once_never_twice_in_a_row() -> None:
    """Batches shorter than the trial's first are skipped, but never two in a row."""
    skip = RemainderSkip()
    rows = [8, 8, 3, 8, 3, 2, 1, 8]
    assert [skip.skip((torch.zeros(n, 2), torch.zeros(n))) for n in rows] == [
        False, False, True, False, True, False, True, False
    ]  # fmt: skip


def test_a_cpu_memory_budget_is_respected() -> None:
    """With a budget, every trial that fitted peaked under it and the guided search needs few
    trials: the tensor meter's per-operation profile predicts the limit, and the size aimed at
    fits with the predicted peak."""
    model = wide_model()
    optimizer = torch.optim.Adam(model.parameters())
    budget = 8 * 2**20
    result = find_batch_size(
        model, optimizer, nn.functional.mse_loss, dataset=dataset(4000), memory_budget=budget
    )
    fitted = [t for t in result.trials if t.fitted]
    assert all(t.peak_bytes is not None and t.peak_bytes <= budget for t in fitted)
    assert result.stop_reason is BatchStopReason.PREDICTION_HELD
    assert len(result.trials) <= 5 and result.oom_trials <= 1
    assert all("memory_budget" in (t.error or "") for t in result.trials if not t.fitted)


def test_the_tensor_meter_counts_live_storage_once() -> None:
    """Views and in-place ops add nothing; a new tensor adds its bytes until it is freed."""
    meter = TensorMeter()
    base = torch.zeros(1000)
    meter.track([base])
    with meter:
        view = base[:10]
        view.add_(1)
        fresh = base * 2
        assert meter.live == 8000
        del fresh
        gc.collect()
    assert meter.live == 4000 and meter.peak == 8000


def test_requested_bytes_reads_cuda_and_cpu_messages() -> None:
    """The failed request's size is read from the usual messages (and None when absent)."""
    assert requested_bytes("CUDA out of memory. Tried to allocate 2.00 GiB") == 2 * 2**30
    assert requested_bytes("you tried to allocate 512 bytes. Error code 12") == 512
    assert requested_bytes("MemoryError") is None


# -- the is_oom hook and the built-in classifier -----------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 20.00 MiB",
        "CUDA error: out of memory",
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input.",
        "CUDNN_STATUS_ALLOC_FAILED",
        "HIP out of memory. Tried to allocate 1.00 GiB",
        "hipErrorOutOfMemory",
        "MPS backend out of memory (MPS allocated: 8.00 GB)",
        "XPU out of memory. Tried to allocate 512.00 MiB",
        "UR_RESULT_ERROR_OUT_OF_DEVICE_MEMORY",
        "DefaultCPUAllocator: not enough memory: you tried to allocate 4096 bytes.",
        "std::bad_alloc",
        "posix_memalign failed:Cannot allocate memory (12)",
        "could not create a primitive",
    ],
)
def test_builtin_classifier_knows_every_backends_message(message: str) -> None:
    """The built-in classifier recognises each backend's out-of-memory message."""
    assert builtin_is_oom(RuntimeError(message))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        RuntimeError("could not create a primitive descriptor for a convolution forward"),
        ValueError("CUDA out of memory"),
        KeyboardInterrupt(),
    ],
)
def test_builtin_classifier_rejects_other_errors(error: BaseException) -> None:
    """Shape errors, oneDNN's unsupported-configuration error and non-runtime errors are not OOM."""
    assert not is_oom(error)


def test_an_oom_wrapped_with_raise_from_is_still_an_oom() -> None:
    """User code that re-raises an out-of-memory error ``from`` it keeps it recognisable."""
    try:
        try:
            raise MemoryError
        except MemoryError as inner:
            raise KeyError("batch") from inner
    except KeyError as outer:
        assert builtin_is_oom(outer)


class OomPlugin:
    """Calls a custom error out of memory, and a MemoryError not."""

    @hookimpl
    def lrfinder_is_oom(self, error: BaseException) -> bool | None:
        if isinstance(error, MemoryError):
            return False
        return True if "quota exceeded" in str(error) else None


def test_the_is_oom_hook_is_asked_first(model: nn.Module, adam: torch.optim.Optimizer) -> None:
    """A plugin's True makes a custom error an OOM; its False makes a MemoryError propagate."""
    get_plugin_manager().register(OomPlugin(), name="test.oom")
    custom = OutOfMemoryAbove(30, lambda n: RuntimeError("device quota exceeded"))
    assert find_batch_size(model, adam, custom, dataset=dataset(), mode="power").batch_size == 16
    with pytest.raises(MemoryError):
        find_batch_size(
            model, adam, OutOfMemoryAbove(30, lambda n: MemoryError()), dataset=dataset()
        )


class TrialRecorder:
    """Records the observer calls of batch-size searches."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def lrfinder_search_started(self, search: SearchInfo) -> None:
        self.events.append(("started", search.kind))

    @hookimpl
    def lrfinder_trial_recorded(self, search: SearchInfo, trial: Any) -> None:
        self.events.append(("trial", trial.size))

    @hookimpl
    def lrfinder_search_finished(self, search: SearchInfo, result: Any) -> None:
        self.events.append(("finished", result.batch_size))


def test_observers_see_the_start_every_trial_and_the_end(
    model: nn.Module, adam: torch.optim.Optimizer
) -> None:
    """Plugins get search_started (kind batch_size), one trial_recorded per trial, and the end."""
    recorder = TrialRecorder()
    get_plugin_manager().register(recorder, name="test.recorder")
    result = find_batch_size(model, adam, OutOfMemoryAbove(10), dataset=dataset(), mode="power")
    assert recorder.events[0] == ("started", "batch_size")
    assert recorder.events[1:-1] == [("trial", t.size) for t in result.trials]
    assert recorder.events[-1] == ("finished", 8)


def test_the_progress_bar_counts_trials(
    model: nn.Module, adam: torch.optim.Optimizer, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=True draws a tqdm bar, one tick per trial."""
    find_batch_size(model, adam, OutOfMemoryAbove(10), dataset=dataset(), mode="power")
    assert "Batch-size search" in capsys.readouterr().err


# -- bad input, before anything runs ------------------------------------------------------------
def _never_called(size: int) -> None:
    raise AssertionError("a trial ran")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "exactly one of dataset=, make_loader="),
        ({"step_fn": _never_called, "make_loader": _never_called}, TypeError, "exactly one of"),
        ({"step_fn": 3}, TypeError, "step_fn must be callable"),
        ({"step_fn": _never_called, "mode": "fast"}, ValueError, "mode must be one of"),
        ({"step_fn": _never_called, "margin": -0.1}, ValueError, "margin must be in"),
        ({"step_fn": _never_called, "memory_budget": 0}, ValueError, "memory_budget must be >= 1"),
        ({"step_fn": _never_called, "accumulation_steps": 2}, TypeError, "unknown option"),
        ({"step_fn": _never_called, "max_trialz": 6}, TypeError, "did you mean max_trials="),
        ({"step_fn": _never_called, "loader_options": {}}, TypeError, "loader_options"),
        ({"dataset": dataset(10), "init_val": 32}, ValueError, "init_val=32 is larger than"),
        ({"step_fn": _never_called, "memory_budget": 1.5e6}, TypeError, "memory_budget=1500000"),
        (
            {"dataset": dataset(10), "loader_options": {"batch_size": 4}},
            TypeError,
            r"loader_options cannot set batch_size \(got 4\): the search sets it",
        ),
        ({"make_loader": lambda n: None}, TypeError, r"make_loader\(2\) must return the batches"),
        (
            {"make_loader": lambda n: iter([(torch.randn(n, 4), torch.randn(n, 1))])},
            TypeError,
            r"make_loader\(2\) returned a one-shot iterator",
        ),
    ],
    ids=lambda v: ",".join(sorted(v)) if isinstance(v, dict) else "",
)
def test_bad_arguments_raise_before_any_trial(
    model: nn.Module, adam: torch.optim.Optimizer, kwargs: dict[str, Any], error: type, match: str
) -> None:
    """Each bad argument is a TypeError/ValueError naming it; no trial runs."""
    with pytest.raises(error, match=match):
        find_batch_size(model, adam, nn.functional.mse_loss, **kwargs)


# -- tune --------------------------------------------------------------------------------------
def test_tune_runs_the_lr_test_at_the_found_batch_size(
    model: nn.Module, adam: torch.optim.Optimizer
) -> None:
    """tune(): batch size first, then the LR range test on batches of that size."""
    data = dataset()
    asked: list[int] = []

    def make_loader(size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        asked.append(size)
        x, y = data.tensors
        return [(x[i : i + size], y[i : i + size]) for i in range(0, 400 - size, size)]

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if outputs.shape[0] > 60:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return nn.functional.mse_loss(outputs, targets)

    found = tune(
        model,
        adam,
        loss_fn,
        make_loader=make_loader,
        batch_options={"mode": "binsearch"},
        lr_options={"num_iter": 30, "start_lr": 1e-4, "end_lr": 1.0},
        progress=False,
    )
    assert isinstance(found, TuneResult)
    assert found.batch_size == 57 and asked[-1] == 57
    assert len(found.lr) == 30 and math.isfinite(found.suggested_lr)
    assert set(found.to_dict()) == {"format", "version", "batch_size", "lr"}


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        pytest.param({"batch_options": {"max_size": 64}}, r"max_val= for max_size", id="max_size"),
        pytest.param({"lr_options": {"num_iters": 5}}, r"num_iter= for num_iters", id="num_iters"),
        pytest.param({"lr_options": {"smooth_f": 0.1}}, r"smooth_factor= for smooth_f", id="smooth_f"),
        pytest.param({"lr_options": {"start_lr": -1.0}}, r"start_lr .*got -1\.0", id="bad-start_lr"),
        pytest.param({"lr_options": {"mode": "cos"}}, r"mode must be one of", id="bad-mode"),
        pytest.param({"lr_options": {"accumulation_steps": 2}}, r"tune sets accumulation_steps", id="accumulation"),
        pytest.param({"lr_options": [("num_iter", 5)]}, r"lr_options must be a dict", id="not-a-dict"),
        pytest.param({"max_grad_norms": 1.0}, r"max_grad_norm= for max_grad_norms", id="shared-typo"),
    ],
)  # fmt: skip
def test_tune_checks_every_option_before_the_batch_size_search(
    model: nn.Module, adam: torch.optim.Optimizer, options: dict[str, Any], fragment: str
) -> None:
    """A typo (with the nearest valid name) or a bad LR option fails before any trial runs."""
    calls: list[None] = []

    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        return nn.functional.mse_loss(outputs, targets)

    with pytest.raises((TypeError, ValueError), match=fragment):
        tune(model, adam, loss_fn, dataset=dataset(), progress=False, **options)
    assert calls == []


@pytest.fixture
def tuned(model: nn.Module, adam: torch.optim.Optimizer) -> TuneResult:
    """tune() with a target batch of 128 on a model that runs out of memory above 40."""
    return tune(
        model,
        adam,
        OutOfMemoryAbove(40),
        dataset=dataset(),
        batch_options={"mode": "binsearch", "target_batch": 128},
        lr_options={"num_iter": 30, "start_lr": 1e-4, "end_lr": 1.0},
        progress=False,
    )


def test_tune_keeps_the_target_batch_through_accumulation(tuned: TuneResult) -> None:
    """With a target batch the LR test accumulates, so it sees the target's effective batch."""
    assert (tuned.batch_size, tuned.accumulation_steps) == (32, 4)
    assert len(tuned.lr) == 30


def test_tune_result_saves_and_loads_like_its_parts(tmp_path: Path, tuned: TuneResult) -> None:
    """TuneResult.save_json / load_json round-trip both parts; a broken file names itself."""
    loaded = TuneResult.load_json(tuned.save_json(tmp_path / "tune.json"))
    assert loaded == tuned and loaded.batch_size == tuned.batch_size
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**tuned.to_dict(), "lr": {"format": "lrfinder-range-test"}}))
    with pytest.raises(ResultFileError, match=r"broken\.json: .*in field 'lr'"):
        TuneResult.load_json(broken)


def test_tune_needs_batches(model: nn.Module, adam: torch.optim.Optimizer) -> None:
    """tune() without a dataset or make_loader says what it needs."""
    with pytest.raises(TypeError, match="tune needs dataset= or make_loader="):
        tune(model, adam, nn.functional.mse_loss)


# -- CUDA (skipped without a GPU) --------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_limit() -> Any:
    """Cap this process's CUDA allocator to what is in use now plus 256 MiB, then lift the cap."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory

    def cap(headroom: int = 256 * 2**20) -> None:
        allowed = torch.cuda.memory_reserved() + headroom
        torch.cuda.set_per_process_memory_fraction(allowed / total)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def cuda_problem() -> tuple[nn.Module, torch.optim.Optimizer, torch.utils.data.TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 8192), nn.ReLU(), nn.Linear(8192, 10)).cuda()
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(20000, 64)
    return model, optimizer, torch.utils.data.TensorDataset(x, torch.randint(0, 10, (20000,)))


@cuda
def test_cuda_real_out_of_memory_is_survived_and_the_answer_fits(cuda_limit: Any) -> None:
    """Under a real allocator cap the guided search survives torch.OutOfMemoryError, restores
    the state bitwise, and its answer trains when run again under the same cap."""
    model, optimizer, data = cuda_problem()
    before = capture_state(model, optimizer)
    cuda_gen = torch.cuda.get_rng_state()
    cuda_limit()
    result = find_batch_size(
        model, optimizer, nn.functional.cross_entropy, dataset=data, device="cuda", progress=False
    )
    assert result.stop_reason is BatchStopReason.LIMIT_FOUND
    # How many trials it takes depends on the allocator's fragmentation near the limit (seen on
    # an H100: 16 trials, 7 out of memory, for this model): only correctness is asserted here.
    assert result.oom_trials >= 1, result.summary()
    assert all("out of memory" in (t.error or "") for t in result.trials if not t.fitted)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert torch.equal(cuda_gen, torch.cuda.get_rng_state())
    assert result.batch_size is not None
    x, y = data.tensors[0][: result.batch_size].cuda(), data.tensors[1][: result.batch_size].cuda()
    for _ in range(3):  # the answer trains under the same cap
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@cuda
def test_cuda_peaks_are_the_allocators_and_a_budget_holds() -> None:
    """On CUDA the reported peaks are max_memory_allocated, and a budget caps them."""
    model, optimizer, data = cuda_problem()
    budget = torch.cuda.memory_allocated() + 128 * 2**20
    result = find_batch_size(
        model, optimizer, nn.functional.cross_entropy, dataset=data, memory_budget=budget
    )
    fitted = [t for t in result.trials if t.fitted]
    assert all(t.peak_bytes is not None and t.peak_bytes <= budget for t in fitted)
    assert max(t.peak_bytes or 0 for t in fitted) > 0.8 * budget
    assert result.oom_trials >= 1 and len(result.trials) <= 8, result.summary()


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        ({}, 100 + 1000 + 300 - 200),  # free memory plus the cached blocks, over the live bytes
        ({"fraction": 0.25}, 100 + 1000 - 200),  # the fraction caps what may be reserved
        ({"fraction": 1.0}, 100 + 1000 + 300 - 200),  # no cap at 1
        ({"fragmentation": 64}, 100 + 1000 + 300 - 200 - 64),  # room the allocator itself took
        # Without expandable segments the gap grows with the tensors: 1.25 bytes per tensor byte
        ({"fragmentation": 64, "fragmentation_share": 0.25}, 100 + (1000 + 300 - 200) / 1.25),
        # With them, segments grow in place: only the gap seen is kept off
        (
            {"fragmentation": 64, "fragmentation_share": 0.25, "expandable": True},
            100 + 1000 + 300 - 200 - 64,
        ),
    ],
    ids=[
        "cached-blocks-count",
        "fraction-caps",
        "fraction-one",
        "fragmentation-kept-off",
        "fragmentation-grows",
        "expandable-segments",
    ],
)
def test_the_cuda_capacity_counts_cached_blocks_within_the_fraction(
    reading: dict[str, float], expected: int
) -> None:
    """Reserved-but-unallocated blocks are room (the caching allocator reuses them first), the
    per-process fraction caps it, and fragmentation seen at a peak is kept off."""
    base = {"live": 100, "free": 1000, "total": 4000, "reserved": 300, "allocated": 200}
    assert cuda_capacity(**base, **reading) == int(expected)  # type: ignore[arg-type]


def test_a_negative_fragmentation_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"fragmentation_share=-0.1 must be >= 0"):
        cuda_capacity(live=0, free=1, total=2, reserved=0, allocated=0, fragmentation_share=-0.1)


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("expandable_segments:True", True),
        ("max_split_size_mb:128, expandable_segments:True", True),
        ("expandable_segments:False", False),
        ("", False),
        ("max_split_size_mb:64", False),
    ],
)
def test_expandable_segments_is_read_from_the_allocator_config(conf: str, expected: bool) -> None:
    assert expandable_segments(conf) is expected


@pytest.mark.parametrize("expandable", [False, True])
def test_guided_on_a_fragmenting_cuda_allocator_lands_below_the_limit(expandable: bool) -> None:
    """The CUDA policy, simulated on the CPU with the real search and the pure capacity
    function: a caching allocator that reserves 20% beyond its tensors at every peak (no
    expandable segments), or a fixed 8 MiB (expandable segments), under a per-process fraction
    of 2 GiB. The guided answer fits (its reserved peak stays within the fraction), at least 95%
    of (1 - margin) x the true limit, in 4 trials with none out of memory."""
    mib, state, per_sample = 2**20, 100 * 2**20, 2**20
    total, fraction, share = 8 * 2**30, 0.25, 0.2

    def reserved_at_peak(size: int) -> float:
        peak = state + per_sample * size
        return peak + 8 * mib if expandable else peak * (1 + share)

    limit = max(n for n in range(1, 8192) if reserved_at_peak(n) <= fraction * total)
    search = BatchSizeSearch(mode="guided", max_val=8192, margin=0.05)
    gap, gap_share = 0, 0.0
    while not search.finished:
        size = search.next_size()
        fitted = reserved_at_peak(size) <= fraction * total
        peak = state + per_sample * size
        if fitted:  # the meter's readings at the trial's peak
            gap = max(gap, int(reserved_at_peak(size) - peak))
            gap_share = max(gap_share, gap / peak)
        capacity = cuda_capacity(
            live=state,
            free=total - state,
            total=total,
            reserved=state,
            allocated=state,
            fraction=fraction,
            fragmentation=gap,
            fragmentation_share=gap_share,
            expandable=expandable,
        )
        search.record(
            size,
            fitted,
            peak if fitted else None,
            profile=[state, peak] if fitted else None,
            capacity_bytes=capacity,
        )
    result = search.result()
    assert result.batch_size is not None
    assert reserved_at_peak(result.batch_size) <= fraction * total
    assert result.batch_size >= 0.95 * (1 - 0.05) * limit, (result.summary(), limit)
    assert len(result.trials) == 4 and result.oom_trials == 0, result.summary()

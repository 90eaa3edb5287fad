"""The bad-input matrix: every public entry point x every argument x each kind of wrong value.

Each case is generated from three tables: what kinds of wrong value an argument can take
(:data:`KINDS`), which arguments each entry point takes and of which kind (:data:`ARGUMENTS`),
and how each entry point is called (:data:`CALLS`). Every case asserts the error type, that the
message names the argument, the value and a fix, that no step ran (the loss was never called) and
that the model, optimizer, scheduler and RNG are bitwise untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.batch_size import find_batch_size, tune
from lrfinder_adapters.pytorch import LearningRateFinder, find_lr
from lrfinder_plugins import RangeTest
from tests.adapters.conftest import (
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
    train_steps,
)

FIX_MARKERS = ("pass ", "e.g.", "call ", "use ", "give ", "build ", "swap ", "unfreeze", "one of [")
"""A message offers a fix when it says what to pass or do (or lists the accepted values)."""


@dataclass
class World:
    """What one case runs against: a trained model, its optimizer and scheduler, the data."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: list[Any]
    dataset: torch.utils.data.TensorDataset
    calls: list[None]

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.calls.append(None)
        return nn.functional.mse_loss(outputs, targets)


@pytest.fixture
def world() -> World:
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = make_batches(4)
    train_steps(model, optimizer, batches[:2])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)
    dataset = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    return World(model, optimizer, scheduler, batches, dataset, [])


# -- the kinds of wrong value ------------------------------------------------------------------
# A value is either a constant or a function of the world (for objects that need one).
Value = Any
Kind = dict[str, tuple[Value, type[Exception]]]
NAN, INF = math.nan, math.inf


def int_kinds(minimum: int) -> Kind:
    return {
        "type-float": (2.5, TypeError),
        "type-str": ("10", TypeError),
        "type-bool": (True, TypeError),
        "nan": (NAN, TypeError),
        "sign": (-3, ValueError),
        "range": (minimum - 1, ValueError),
    }


POSITIVE: Kind = {
    "type-str": ("1e-3", TypeError),
    "type-bool": (True, TypeError),
    "sign": (-1.0, ValueError),
    "zero": (0.0, ValueError),
    "nan": (NAN, ValueError),
    "inf": (INF, ValueError),
}
UNIT: Kind = {
    "type-str": ("0.1", TypeError),
    "type-bool": (True, TypeError),
    "sign": (-0.1, ValueError),
    "range": (1.0, ValueError),
    "nan": (NAN, ValueError),
}
ABOVE_ONE: Kind = {
    "type-str": ("5", TypeError),
    "sign": (-5.0, ValueError),
    "range": (1.0, ValueError),
    "nan": (NAN, ValueError),
    "inf": (INF, ValueError),
}
CHOICE: Kind = {
    "type": (3, TypeError),
    "unknown": ("cosine", ValueError),
    "empty": ("", ValueError),
}
BOOLEAN: Kind = {
    "type-str": ("yes", TypeError),
    "type-int": (1, TypeError),
    "none": (None, TypeError),
}
CALLABLE: Kind = {"type": ("mse", TypeError), "class": (nn.MSELoss, TypeError)}
LOADER: Kind = {"type": (42, TypeError), "empty": ([], ValueError), "none": (None, TypeError)}
VAL_LOADER: Kind = {
    "type": (42, TypeError),
    "empty": ([], ValueError),
    "iterator": (lambda w: iter(w.batches), TypeError),
}
MODEL: Kind = {
    "type": ("model", TypeError),
    "class": (nn.Linear, TypeError),
    "none": (None, TypeError),
    "frozen": (lambda w: make_mlp(seed=3).requires_grad_(False), ValueError),
}
OPTIMIZER: Kind = {
    "type": ("adam", TypeError),
    "class": (torch.optim.Adam, TypeError),
    "none": (None, TypeError),
    "closure-LBFGS": (lambda w: torch.optim.LBFGS(w.model.parameters()), TypeError),
    "foreign": (lambda w: torch.optim.SGD(make_mlp(seed=1).parameters(), lr=0.1), ValueError),
}
SCHEDULERS: Kind = {
    "single": (lambda w: w.scheduler, TypeError),
    "type": ("onecycle", TypeError),
    "item": ([0.1], TypeError),
    "foreign": (
        lambda w: [
            torch.optim.lr_scheduler.StepLR(
                torch.optim.SGD(make_mlp(seed=1).parameters(), lr=0.1), step_size=2
            )
        ],
        ValueError,
    ),
}
DEVICE: Kind = {"unknown": ("potato", ValueError), "type": (3.5, TypeError)}
if not torch.cuda.is_available():
    DEVICE["cuda-missing"] = ("cuda", ValueError)
SCALER: Kind = {"type": ("yes", TypeError), "wrong-object": (lambda w: w.optimizer, TypeError)}
DTYPE: Kind = {"type": ("bf16", TypeError)}
SNAPSHOT: Kind = {"type": (1, TypeError), "unknown": ("gpu", ValueError)}
OPTIONS_DICT: Kind = {"type": ("x", TypeError), "list": ([("num_iter", 5)], TypeError)}

# -- which arguments each entry point takes --------------------------------------------------
RANGE_ARGS: dict[str, Kind] = {
    "start_lr": POSITIVE,
    "end_lr": POSITIVE,
    "num_iter": int_kinds(2),
    "diverge_threshold": ABOVE_ONE,
    "mode": CHOICE,
}
FIND_LR_ARGS: dict[str, Kind] = {
    **RANGE_ARGS,
    "smooth_factor": UNIT,
    "val_batches": int_kinds(1),
    "train_loader": LOADER,
    "val_loader": VAL_LOADER,
}
STEP_OPTIONS: dict[str, Kind] = {
    "accumulation_steps": int_kinds(1),
    "max_grad_norm": POSITIVE,
    "amp": BOOLEAN,
    "amp_dtype": DTYPE,
    "scaler": SCALER,
    "keep_weights": BOOLEAN,
    "snapshot": SNAPSHOT,
    "val_batch_norm": CHOICE,
    "schedulers": SCHEDULERS,
    "compute_loss": CALLABLE,
    "fault_timeout": POSITIVE,
}
OWN: dict[str, Kind] = {
    "model": MODEL,
    "optimizer": OPTIMIZER,
    "loss_fn": CALLABLE,
    "device": DEVICE,
}
TRIAL_OPTIONS = {
    k: STEP_OPTIONS[k]
    for k in ("max_grad_norm", "amp", "scaler", "snapshot", "schedulers", "compute_loss")
}
BATCH_ARGS: dict[str, Kind] = {
    "mode": {"type": (3, TypeError), "unknown": ("doubling", ValueError)},
    "init_val": int_kinds(1),
    "max_trials": int_kinds(1),
    "steps_per_trial": int_kinds(1),
    "max_val": int_kinds(1),
    "margin": UNIT,
    "target_batch": int_kinds(1),
    "memory_budget": int_kinds(1),
    "fault_timeout": POSITIVE,
}
ARGUMENTS: dict[str, dict[str, Kind]] = {
    "RangeTest": {**RANGE_ARGS, "smoothing": UNIT},
    "LearningRateFinder": {
        **FIND_LR_ARGS,
        **STEP_OPTIONS,
        **OWN,
        "method": CHOICE,
    },
    "find_lr": {**FIND_LR_ARGS, **STEP_OPTIONS, **OWN},
    "find_batch_size": {**BATCH_ARGS, **TRIAL_OPTIONS, **OWN},
    "tune": {
        **{f"lr_options.{k}": v for k, v in FIND_LR_ARGS.items() if k != "train_loader"},
        **{f"batch_options.{k}": v for k, v in BATCH_ARGS.items()},
        **TRIAL_OPTIONS,
        **OWN,
        "lr_options": OPTIONS_DICT,
        "batch_options": OPTIONS_DICT,
    },
}


# -- how each entry point is called -------------------------------------------------------------
def _call_range_test(w: World, name: str, value: Any) -> None:
    RangeTest(**{name: value})


def _call_finder(w: World, name: str, value: Any) -> None:
    own = {"model": w.model, "optimizer": w.optimizer, "loss_fn": w.loss_fn, "device": None}
    options: dict[str, Any] = {"amp": True} if name == "amp_dtype" else {}
    run: dict[str, Any] = {"train_loader": w.batches, "num_iter": 10}
    if name in own:
        own[name] = value
    elif name in STEP_OPTIONS:
        options[name] = value
    elif name:
        run[name] = value
    finder = LearningRateFinder(
        own["model"], own["optimizer"], own["loss_fn"], own["device"], progress=False, **options
    )
    finder.find_lr(**run)


def _call_find_lr(w: World, name: str, value: Any) -> None:
    args = {"model": w.model, "optimizer": w.optimizer, "loss_fn": w.loss_fn}
    args["train_loader"] = w.batches
    kwargs: dict[str, Any] = {"num_iter": 10, "progress": False}
    if name == "amp_dtype":
        kwargs["amp"] = True
    if name:
        (args if name in args else kwargs)[name] = value
    find_lr(args["model"], args["optimizer"], args["loss_fn"], args["train_loader"], **kwargs)


def _call_find_batch_size(w: World, name: str, value: Any) -> None:
    args = {"model": w.model, "optimizer": w.optimizer, "loss_fn": w.loss_fn}
    kwargs: dict[str, Any] = {
        "dataset": w.dataset,
        "memory_budget": 2**30,
        "max_trials": 3,
        "progress": False,
    }
    if name:
        (args if name in args else kwargs)[name] = value
    find_batch_size(args["model"], args["optimizer"], args["loss_fn"], **kwargs)


def _call_tune(w: World, name: str, value: Any) -> None:
    args = {"model": w.model, "optimizer": w.optimizer, "loss_fn": w.loss_fn}
    kwargs: dict[str, Any] = {
        "dataset": w.dataset,
        "progress": False,
        "batch_options": {"memory_budget": 2**30, "max_trials": 3},
        "lr_options": {"num_iter": 10},
    }
    group, _, option = name.partition(".")
    if option:
        kwargs[group] = {**kwargs[group], option: value}
    elif name:
        (args if name in args else kwargs)[name] = value
    tune(args["model"], args["optimizer"], args["loss_fn"], **kwargs)


CALLS: dict[str, Callable[[World, str, Any], None]] = {
    "RangeTest": _call_range_test,
    "LearningRateFinder": _call_finder,
    "find_lr": _call_find_lr,
    "find_batch_size": _call_find_batch_size,
    "tune": _call_tune,
}

CASES = [
    pytest.param(entry, name, kind, value, error, id=f"{entry}-{name}-{kind}")
    for entry, arguments in ARGUMENTS.items()
    for name, kinds in arguments.items()
    for kind, (value, error) in kinds.items()
]


def names_the_value(message: str, value: Any) -> bool:
    """The message shows the value: its repr for plain values, else its class's name."""
    if isinstance(value, float) and math.isnan(value):
        return "nan" in message
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value) in message or (isinstance(value, (int, float)) and str(value) in message)
    if isinstance(value, type):
        return value.__name__ in message
    if isinstance(value, list):
        return "list" in message or any(type(v).__name__ in message for v in value) or not value
    return type(value).__name__ in message


def test_the_matrix_is_large() -> None:
    """Well over a hundred generated cases, over every entry point."""
    assert len(CASES) > 300 and {c.values[0] for c in CASES} == set(CALLS)


@pytest.mark.parametrize(("entry", "name", "kind", "value", "error"), CASES)
def test_bad_argument_is_refused_clearly_before_anything_runs(
    world: World, entry: str, name: str, kind: str, value: Any, error: type[Exception]
) -> None:
    """The error type; the message names the argument, the value and a fix; nothing touched."""
    if (
        callable(value)
        and not isinstance(value, type)
        and getattr(value, "__name__", "") == "<lambda>"
    ):
        value = value(world)
    before = capture_state(world.model, world.optimizer, schedulers=[world.scheduler])
    with pytest.raises(Exception) as info:
        CALLS[entry](world, name, value)
    message = str(info.value)
    assert type(info.value) is error or isinstance(info.value, error), (type(info.value), message)
    argument = name.rpartition(".")[2]
    assert argument in message, message
    assert names_the_value(message, value), message
    assert any(marker in message for marker in FIX_MARKERS), message
    assert world.calls == [], "a step ran before the argument was checked"
    after = capture_state(world.model, world.optimizer, schedulers=[world.scheduler])
    assert_state_bitwise_equal(before, after)


CONTEXTS = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("entry", ["LearningRateFinder", "find_lr", "find_batch_size", "tune"])
def test_search_under_disabled_autograd_is_refused(world: World, entry: str, context: str) -> None:
    """Under torch.no_grad() / inference_mode() every search refuses at once, naming the block."""
    before = capture_state(world.model, world.optimizer, schedulers=[world.scheduler])
    with CONTEXTS[context](), pytest.raises(RuntimeError, match=rf"{context}\(\).*outside"):
        CALLS[entry](world, "", None)  # every argument good
    assert world.calls == []
    assert_state_bitwise_equal(
        before, capture_state(world.model, world.optimizer, schedulers=[world.scheduler])
    )


# -- results loading: every loader x each kind of broken file -----------------------------------
def _saved_files(tmp_path: Any) -> dict[str, Any]:
    """One good file per loader, saved from small real results."""
    from lrfinder_adapters.batch_size import TuneResult
    from lrfinder_plugins import BatchSizeResult, BatchSizeSearch, RangeTestResult

    test = RangeTest(num_iter=4)
    for loss in (3.0, 2.0, 1.0, 2.0):
        test.next_lr()
        test.record(loss)
    lr = test.result()
    search = BatchSizeSearch(mode="power", init_val=2, max_val=4, max_trials=3)
    while not search.finished:
        size = search.next_size()
        search.record(size, size <= 2, None)
    batch = search.result()
    return {
        "RangeTestResult.load_json": (RangeTestResult.load_json, lr.save_json(tmp_path / "r.json")),
        "RangeTestResult.load_csv": (RangeTestResult.load_csv, lr.save_csv(tmp_path / "r.csv")),
        "BatchSizeResult.load_json": (
            BatchSizeResult.load_json,
            batch.save_json(tmp_path / "b.json"),
        ),
        "TuneResult.load_json": (
            TuneResult.load_json,
            TuneResult(batch, lr).save_json(tmp_path / "t.json"),
        ),
    }


def _first_field(text: str) -> str:
    import json

    data = json.loads(text)
    return next(k for k in data if k not in ("format", "version"))


FILE_KINDS: dict[str, tuple[Callable[[str], str | None], str]] = {
    "missing": (lambda text: None, r"no such result file"),
    "empty": (lambda text: "", r"the file is empty"),
    "truncated": (
        lambda text: text[: len(text) // 2],
        r"not valid JSON|not numeric|missing column",
    ),
    "corrupted": (lambda text: "\x00\x13garbage{{", r"not valid JSON|missing column"),
    "wrong-format": (lambda text: text.replace("lrfinder-", "other-", 1), r"not an? |format="),
    "missing-field": (
        lambda text: text.replace(f'"{_first_field(text)}"', '"renamed"', 1),
        r"missing (or mistyped )?field",
    ),
    "mistyped-field": (
        lambda text: text.replace(
            f'"{_first_field(text)}":', f'"{_first_field(text)}": true, "x":', 1
        ),
        r"must be|mistyped|missing",
    ),
}
LOADERS = [
    "RangeTestResult.load_json",
    "RangeTestResult.load_csv",
    "BatchSizeResult.load_json",
    "TuneResult.load_json",
]
FILE_CASES = [
    pytest.param(loader, kind, id=f"{loader}-{kind}")
    for loader in LOADERS
    for kind in FILE_KINDS
    # a CSV has no format or fields of its own to break (its settings file is JSON: covered)
    if not (
        loader.endswith("load_csv") and kind in ("wrong-format", "missing-field", "mistyped-field")
    )
]


@pytest.mark.parametrize(("loader", "kind"), FILE_CASES)
def test_broken_result_file_is_one_error_naming_the_file(
    tmp_path: Any, loader: str, kind: str
) -> None:
    """ResultFileError (a ValueError; FileNotFoundError too when missing) naming file and fault."""
    from lrfinder_plugins import ResultFileError, ResultFileNotFoundError

    load, path = _saved_files(tmp_path)[loader]
    breaks, fault = FILE_KINDS[kind]
    broken = breaks(path.read_text())
    if broken is None:
        path.unlink()
    else:
        path.write_text(broken)
    with pytest.raises(ResultFileError, match=fault) as info:
        load(path)
    assert str(info.value).startswith(str(path)), str(info.value)
    assert isinstance(info.value, ResultFileNotFoundError) == (kind == "missing")

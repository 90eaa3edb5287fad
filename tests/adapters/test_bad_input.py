"""Bad input: a ValueError/TypeError naming the argument and value, and the state left untouched."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_adapters.pytorch import LearningRateFinder, find_lr
from tests.adapters.conftest import (
    Batch,
    assert_state_bitwise_equal,
    capture_state,
    make_batches,
    make_mlp,
    train_steps,
)


@pytest.fixture
def setup() -> tuple[nn.Module, torch.optim.Optimizer, list[Batch], list[None]]:
    """A trained MLP with an Adam state, its batches, and a list the loss appends to per call."""
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = make_batches(4)
    train_steps(model, optimizer, batches[:2])
    return model, optimizer, batches, []


def counting_mse(calls: list[None]) -> Any:
    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        return nn.functional.mse_loss(outputs, targets)

    return loss_fn


# -- arguments: rejected before the first step ------------------------------------------------------
FIND_LR_CASES = [
    pytest.param({"start_lr": 1.0, "end_lr": 0.1}, ValueError, r"start_lr=1\.0 >= end_lr=0\.1", id="start>=end"),
    pytest.param({"start_lr": 0.1, "end_lr": 0.1}, ValueError, r"start_lr=0\.1 >= end_lr=0\.1", id="start==end"),
    pytest.param({"start_lr": 0.0}, ValueError, r"start_lr .*> 0, got 0\.0", id="start_lr-zero"),
    pytest.param({"start_lr": -1e-3}, ValueError, r"start_lr .*got -0\.001", id="start_lr-negative"),
    pytest.param({"start_lr": math.nan}, ValueError, r"start_lr .*got nan", id="start_lr-nan"),
    pytest.param({"end_lr": math.inf}, ValueError, r"end_lr .*got inf", id="end_lr-inf"),
    pytest.param({"end_lr": -10.0}, ValueError, r"end_lr .*got -10\.0", id="end_lr-negative"),
    pytest.param({"start_lr": "1e-7"}, TypeError, r"start_lr .*'1e-7'", id="start_lr-str"),
    pytest.param({"num_iter": 1}, ValueError, r"num_iter .*>= 2, got 1", id="num_iter-1"),
    pytest.param({"num_iter": 0}, ValueError, r"num_iter .*got 0", id="num_iter-0"),
    pytest.param({"num_iter": 10.0}, TypeError, r"num_iter .*int, got 10\.0", id="num_iter-float"),
    pytest.param({"smooth_factor": 1.0}, ValueError, r"smooth_factor .*\[0, 1\).*got 1\.0", id="smooth-1"),
    pytest.param({"smooth_factor": -0.1}, ValueError, r"smooth_factor .*got -0\.1", id="smooth-negative"),
    pytest.param({"smooth_factor": math.nan}, ValueError, r"smooth_factor .*got nan", id="smooth-nan"),
    pytest.param({"diverge_threshold": 1.0}, ValueError, r"diverge_threshold .*> 1, got 1\.0", id="diverge-1"),
    pytest.param({"diverge_threshold": 0.5}, ValueError, r"diverge_threshold .*got 0\.5", id="diverge-below-1"),
    pytest.param({"diverge_threshold": math.nan}, ValueError, r"diverge_threshold .*got nan", id="diverge-nan"),
    pytest.param({"mode": "cosine"}, ValueError, r"mode must be one of .*got 'cosine'", id="mode"),
    pytest.param({"method": "best"}, ValueError, r"method must be one of .*got 'best'", id="method"),
    pytest.param({"val_batches": 0}, ValueError, r"val_batches .*got 0", id="val_batches-0"),
    pytest.param({"train_loader": []}, ValueError, r"train_loader is empty", id="empty-list"),
    pytest.param({"train_loader": torch.utils.data.DataLoader([])}, ValueError, r"train_loader is empty", id="empty-DataLoader"),
    pytest.param({"train_loader": 42}, TypeError, r"train_loader .*iterable.*got 42 \(int\)", id="loader-int"),
    pytest.param({"val_loader": []}, ValueError, r"val_loader is empty", id="empty-val_loader"),
    pytest.param({"val_batches": 2}, ValueError, r"val_batches=2 without a val_loader", id="val_batches-alone"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "error", "message"), FIND_LR_CASES)
def test_bad_find_lr_argument_rejected_before_anything_is_touched(
    setup: Any, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad find_lr argument raises, naming it and its value, with no step run, state bitwise."""
    model, optimizer, batches, calls = setup
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, counting_mse(calls), progress=False)
    kwargs = {"train_loader": batches, "num_iter": 10, **kwargs}
    with pytest.raises(error, match=message):
        finder.find_lr(**kwargs)
    assert calls == [] and finder.result is None
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


OPTION_CASES = [
    pytest.param({"snapshot": "gpu"}, ValueError, r"snapshot must be one of .*got 'gpu'", id="snapshot"),
    pytest.param({"val_batch_norm": "train"}, ValueError, r"val_batch_norm must be one of .*got 'train'", id="val_batch_norm"),
    pytest.param({"device": "potato"}, ValueError, r"device .*got 'potato'", id="device"),
    pytest.param({"accumulation_steps": 0}, ValueError, r"accumulation_steps .*>= 1, got 0", id="accumulation-0"),
    pytest.param({"accumulation_steps": 1.5}, TypeError, r"accumulation_steps .*int, got 1\.5", id="accumulation-float"),
    pytest.param({"max_grad_norm": 0.0}, ValueError, r"max_grad_norm .*got 0\.0", id="clip-zero"),
    pytest.param({"max_grad_norm": -1.0}, ValueError, r"max_grad_norm .*got -1\.0", id="clip-negative"),
    pytest.param({"max_grad_norm": math.inf}, ValueError, r"max_grad_norm .*got inf", id="clip-inf"),
    pytest.param({"max_grad_norm": math.nan}, ValueError, r"max_grad_norm .*got nan", id="clip-nan"),
    pytest.param({"amp": "yes"}, TypeError, r"amp must be True or False, got 'yes'", id="amp-str"),
    pytest.param({"amp": 1}, TypeError, r"amp must be True or False, got 1", id="amp-int"),
    pytest.param({"amp": True, "amp_dtype": "bf16"}, TypeError, r"amp_dtype .*got 'bf16'", id="amp_dtype"),
    pytest.param({"amp": True, "amp_dtype": torch.float32}, ValueError, r"amp_dtype must be torch\.float16 or torch\.bfloat16", id="amp_dtype-float32"),
    pytest.param({"amp_dtype": torch.bfloat16}, ValueError, r"amp_dtype=torch\.bfloat16 without amp=True", id="amp_dtype-alone"),
    pytest.param({"scaler": "yes"}, TypeError, r"scaler .*GradScaler.*got 'yes' \(str\)", id="scaler"),
    pytest.param({"keep_weights": "no"}, TypeError, r"keep_weights .*got 'no'", id="keep_weights"),
    pytest.param({"schedulers": [0.1]}, TypeError, r"schedulers .*got 0\.1 \(float\)", id="schedulers"),
    pytest.param({"compute_loss": "mse"}, TypeError, r"compute_loss .*callable.*got 'mse' \(str\)", id="compute_loss"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "error", "message"), OPTION_CASES)
def test_bad_step_option_rejected_before_anything_is_touched(
    setup: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad TorchStep option raises, naming it and its value, with no step run, state bitwise."""
    model, optimizer, batches, calls = setup
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, counting_mse(calls), progress=False, **options)
    with pytest.raises(error, match=message):
        finder.find_lr(batches, num_iter=10)
    assert calls == [] and finder.result is None
    assert_state_bitwise_equal(before, capture_state(model, optimizer))


@pytest.mark.parametrize("progress", ["no", 0, None])
def test_progress_must_be_a_bool(setup: Any, progress: Any) -> None:
    """progress='no' is truthy: refused, not read as showing the bar."""
    model, optimizer, _, calls = setup
    with pytest.raises(TypeError, match=r"progress must be True or False"):
        LearningRateFinder(model, optimizer, counting_mse(calls), progress=progress)


def test_unknown_option_rejected(setup: Any) -> None:
    """An option LearningRateFinder does not know is a TypeError that names it."""
    model, optimizer, _, calls = setup
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['acumulation_steps'\]"):
        LearningRateFinder(model, optimizer, counting_mse(calls), acumulation_steps=2)


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        pytest.param({"num_iters": 10}, "num_iter= for num_iters", id="num_iters"),
        pytest.param({"num_it": 10}, "num_iter= for num_it", id="fastai-num_it"),
        pytest.param({"smooth_f": 0.1}, "smooth_factor= for smooth_f", id="torch-lr-finder-smooth_f"),
        pytest.param({"step_mode": "linear"}, "mode= for step_mode", id="torch-lr-finder-step_mode"),
        pytest.param({"accumulate_grad_batches": 2}, "accumulation_steps= for accumulate_grad_batches", id="lightning-name"),
    ],
)  # fmt: skip
def test_unknown_find_lr_option_names_the_nearest_one(
    setup: Any, options: dict[str, Any], hint: str
) -> None:
    """find_lr(typo=...) names the option meant, also for the names the peers use."""
    model, optimizer, batches, calls = setup
    with pytest.raises(TypeError, match=re.escape(hint)):
        find_lr(model, optimizer, counting_mse(calls), batches, progress=False, **options)
    assert calls == []


def test_loss_fn_that_is_not_callable_rejected(setup: Any) -> None:
    """A loss_fn that is not callable is a TypeError naming its type."""
    model, optimizer, batches, _ = setup
    finder = LearningRateFinder(model, optimizer, "mse", progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"loss_fn must be callable or None, got 'mse' \(str\)"):
        finder.find_lr(batches, num_iter=10)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        pytest.param(lambda m, o: ("model", o), TypeError, r"model must be a torch.nn.Module, got 'model' \(str\)", id="model-str"),
        pytest.param(lambda m, o: (m, "adam"), TypeError, r"optimizer must be a torch.optim.Optimizer, got 'adam' \(str\)", id="optimizer-str"),
        pytest.param(lambda m, o: (m.requires_grad_(False), o), ValueError, r"model \(Sequential\) has no trainable parameters", id="all-frozen"),
        pytest.param(lambda m, o: (m, torch.optim.SGD(make_mlp(seed=1).parameters(), lr=0.1)), ValueError, r"optimizer \(SGD\) does not hold any of model's trainable parameters", id="foreign-optimizer"),
    ],
)  # fmt: skip
def test_bad_model_or_optimizer_rejected(
    setup: Any, make: Any, error: type[Exception], message: str
) -> None:
    """A model with nothing to train, or an optimizer over other parameters, is refused up front."""
    model, optimizer, _, _ = setup
    bad_model, bad_optimizer = make(model, optimizer)
    with pytest.raises(error, match=message):
        LearningRateFinder(bad_model, bad_optimizer, nn.functional.mse_loss, progress=False)


# -- batch and loss shapes: found at the first step, everything restored ---------------------------
def _non_scalar(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, targets, reduction="none")


def _no_loss_key(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mse": nn.functional.mse_loss(outputs, targets), "aux": outputs.mean()}


def _float_loss(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return nn.functional.mse_loss(outputs, targets).item()


def _empty() -> Iterator[Batch]:
    yield from ()


SHAPE_CASES = [
    pytest.param(lambda b: [x for x, _ in b], None, TypeError, r"batches must be \(inputs, targets\) tuples/lists or dicts, got Tensor", id="bare-tensor"),
    pytest.param(lambda b: [(x, y, y) for x, y in b], None, TypeError, r"got 3 items", id="triple"),
    pytest.param(lambda b: [{"inputs": x, "answer": y} for x, y in b], None, TypeError, r"targets under one of .*got keys \['answer', 'inputs'\]", id="dict-without-targets"),
    pytest.param(lambda b: b, _non_scalar, ValueError, r"loss of shape \(8, 1\)", id="non-scalar-loss"),
    pytest.param(lambda b: b, _no_loss_key, TypeError, r"dict with keys \['aux', 'mse'\]", id="dict-loss-without-key"),
    pytest.param(lambda b: b, _float_loss, TypeError, r"got float", id="float-loss"),
    pytest.param(lambda b: b, "none", TypeError, r"loss_fn is None but batches are \(inputs, targets\)", id="no-loss_fn-for-tuples"),
    pytest.param(lambda b: _empty(), None, ValueError, r"train_loader yielded no batches", id="empty-generator"),
]  # fmt: skip


@pytest.mark.parametrize(("layout", "loss_fn", "error", "message"), SHAPE_CASES)
def test_unsupported_batch_or_loss_raises_and_restores_everything(
    setup: Any, layout: Any, loss_fn: Any, error: type[Exception], message: str
) -> None:
    """A batch or loss the step cannot read raises a clear error and the state is bitwise restored."""
    model, optimizer, batches, _ = setup
    loss_fn = None if loss_fn == "none" else (loss_fn or nn.functional.mse_loss)
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, loss_fn, progress=False)
    with pytest.raises(error, match=message):
        finder.find_lr(layout(batches), num_iter=10)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))

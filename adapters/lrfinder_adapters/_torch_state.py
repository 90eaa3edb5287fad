"""Exact snapshot and restore of training state: model, optimizer, schedulers, scaler, RNG.

Tensors are copied to CPU memory (never a second copy on the accelerator) or to a temporary
directory on disk that is always removed. Restoring copies values back into the live tensors in
place, so every reference the user holds (optimizer param lists, DDP buckets) stays valid.
"""

from __future__ import annotations

import copy
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_MISSING = object()


def to_cpu_copy(tree: Any) -> Any:
    """Deep copy of a nested dict/list/tuple with every tensor copied to CPU memory."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return type(tree)((k, to_cpu_copy(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu_copy(v) for v in tree)
    return copy.deepcopy(tree)


@dataclass
class RngState:
    """Python, NumPy (if imported), torch CPU and CUDA (if initialised) generator states."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> RngState:
        """Read every generator's state (changes nothing)."""
        np = sys.modules.get("numpy")
        return cls(
            python=random.getstate(),
            numpy=np.random.get_state() if np is not None else None,
            torch_cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        )

    def restore(self) -> None:
        """Put every generator back."""
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class TrainingState:
    """A snapshot of everything a training step changes; see :func:`capture`.

    ``weights`` holds parameters, gradients, buffers and optimizer state (absent when the user
    keeps the trained weights); ``lrs`` always holds the param groups' LRs.
    """

    weights: dict[str, Any] | None
    training_modes: list[bool]
    lrs: list[Any]
    schedulers: list[dict[str, Any]]
    scaler: dict[str, Any] | None
    rng: RngState
    directory: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove the on-disk copy, if any."""
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None


def _capture_weights(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    params = dict(model.named_parameters(remove_duplicate=True))
    return {
        "params": {name: to_cpu_copy(p) for name, p in params.items()},
        "grads": {
            name: None if p.grad is None else to_cpu_copy(p.grad) for name, p in params.items()
        },
        "buffers": {name: to_cpu_copy(b) for name, b in model.named_buffers(remove_duplicate=True)},
        "optimizer": to_cpu_copy(optimizer.state_dict()),
        "opt_called": getattr(optimizer, "_opt_called", _MISSING),
    }


def _capture_scaler(scaler: Any) -> dict[str, Any] | None:
    if scaler is None or not scaler.is_enabled():
        return None
    return {
        "state": copy.deepcopy(scaler.state_dict()),
        "lazy": scaler._scale is None,  # not yet initialised: put it back uninitialised
    }


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
    keep_weights: bool = False,
    where: str = "cpu",
) -> TrainingState:
    """Save the training state (changes nothing).

    Args:
        model: the model; parameters, gradients, buffers and train/eval modes are saved.
        optimizer: its state and param groups (LRs included) are saved.
        schedulers: LR schedulers (anything with ``state_dict``/``load_state_dict``).
        scaler: a ``torch.amp.GradScaler`` (or ``None``).
        keep_weights: save only what a search must put back when the user keeps the trained
            weights: LRs, schedulers, scaler and RNG.
        where: ``"cpu"`` (CPU memory) or ``"disk"`` (a temporary directory, removed on close).
    """
    directory = None
    weights: dict[str, Any] | None = None
    if not keep_weights:
        weights = _capture_weights(model, optimizer)
        if where == "disk":
            directory = tempfile.TemporaryDirectory(prefix="lrfinder-")
            torch.save(weights, Path(directory.name) / "weights.pt")
            weights = {"path": str(Path(directory.name) / "weights.pt")}
    return TrainingState(
        weights=weights,
        training_modes=[m.training for m in model.modules()],
        lrs=[copy.deepcopy(group["lr"]) for group in optimizer.param_groups],
        schedulers=[copy.deepcopy(s.state_dict()) for s in schedulers],
        scaler=_capture_scaler(scaler),
        rng=RngState.capture(),
        directory=directory,
    )


def _clone(tree: Any) -> Any:
    # load_state_dict may keep the tensors it is given; hand it copies so a snapshot survives
    # being restored many times (the batch-size search restores after every trial).
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return type(tree)((k, _clone(v)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return tree


@torch.no_grad()
def _restore_weights(
    weights: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    if "path" in weights:
        weights = torch.load(weights["path"], map_location="cpu", weights_only=False)
    for name, p in model.named_parameters(remove_duplicate=True):
        p.copy_(weights["params"][name])
        saved = weights["grads"][name]
        if saved is None:
            p.grad = None
        elif p.grad is not None and p.grad.shape == saved.shape:
            p.grad.copy_(saved)
        else:
            p.grad = saved.to(device=p.device, copy=True)
    for name, b in model.named_buffers(remove_duplicate=True):
        b.copy_(weights["buffers"][name])
    optimizer.load_state_dict(_clone(weights["optimizer"]))
    if weights["opt_called"] is _MISSING:
        optimizer.__dict__.pop("_opt_called", None)
    else:
        optimizer._opt_called = weights["opt_called"]  # type: ignore[attr-defined]


def restore(
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
) -> None:
    """Put back what :func:`capture` saved, bitwise (the snapshot stays usable)."""
    if state.weights is not None:
        _restore_weights(state.weights, model, optimizer)
    for group, lr in zip(optimizer.param_groups, state.lrs):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].copy_(lr)
        else:
            group["lr"] = copy.deepcopy(lr)
    for module, mode in zip(model.modules(), state.training_modes):
        module.training = mode
    for scheduler, saved in zip(schedulers, state.schedulers):
        scheduler.load_state_dict(copy.deepcopy(saved))
    if state.scaler is not None:
        scaler.load_state_dict(copy.deepcopy(state.scaler["state"]))
        if state.scaler["lazy"]:
            scaler._scale = None
            scaler._growth_tracker = None
    state.rng.restore()

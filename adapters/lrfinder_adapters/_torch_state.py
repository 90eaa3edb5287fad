"""Exact snapshot and restore of training state: model, optimizer, schedulers, scaler, RNG.

Tensors are copied to CPU memory (never a second copy on the accelerator) or to a temporary
directory on disk that is always removed. Restoring copies values back into the live tensors in
place, so every reference the user holds (optimizer param lists, DDP buckets) stays valid.
"""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_OPTIMIZER_ATTRS = ("_opt_called",)
"""Optimizer attributes outside its state_dict that a step changes (set by LR schedulers)."""


def save_tensor(tensor: torch.Tensor, pin: bool = True) -> torch.Tensor:
    """A CPU copy of ``tensor``: pinned and asynchronous for CUDA tensors, a clone for CPU ones.

    The device-to-host copy is queued on the current stream, so anything that later changes
    ``tensor`` on that stream runs after it: no synchronisation is needed, and a snapshot costs
    the step almost nothing. Read the copy on the CPU only after ``torch.cuda.synchronize()``.
    ``pin=False`` makes a plain (pageable, synchronous) copy: for a snapshot headed for disk,
    whose memory must go back to the system instead of staying in the pinned-memory cache.
    """
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.clone()
    if tensor.device.type == "cuda" and pin:
        copy_ = torch.empty_like(tensor, device="cpu", pin_memory=True)
        return copy_.copy_(tensor, non_blocking=True)
    return tensor.to("cpu", copy=True)


Saver = Callable[[torch.Tensor], Any]
"""Where a snapshot puts one tensor: :func:`save_tensor` (CPU memory) or a :class:`DiskFile`."""


def to_cpu_copy(tree: Any, save: Saver = save_tensor) -> Any:
    """Deep copy of nested dicts/lists/tuples with every tensor copied by ``save``.

    Container types are kept (``defaultdict`` with its factory, named tuples).
    """
    if isinstance(tree, torch.Tensor):
        return save(tree)
    if isinstance(tree, dict):
        out = copy.copy(tree)
        for key, value in tree.items():
            out[key] = to_cpu_copy(value, save)
        return out
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(to_cpu_copy(v, save) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu_copy(v, save) for v in tree)
    return copy.deepcopy(tree)


STAGING_BYTES = 64 * 2**20
"""The bounded host buffer a device tensor goes through on its way to or from the disk."""


def _bytes_of(tensor: torch.Tensor) -> Any:
    """The raw bytes of a contiguous CPU tensor, as a writable buffer (no copy)."""
    return tensor.detach().reshape(-1).view(torch.uint8).numpy()


@dataclass(frozen=True)
class OnDisk:
    """Where :class:`DiskFile` put one tensor's bytes, and how to read them back in place."""

    file: DiskFile
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str

    def fits(self, target: Any) -> bool:
        """Whether the bytes can be read straight into ``target`` (same shape and dtype,
        contiguous; any device)."""
        return (
            isinstance(target, torch.Tensor)
            and tuple(target.shape) == self.shape
            and target.dtype == self.dtype
            and target.is_contiguous()
        )

    def read_into(self, target: torch.Tensor) -> torch.Tensor:
        """Overwrite ``target`` (same shape and dtype, contiguous) with the saved bytes."""
        self.file.read(self.offset, self.nbytes, target)
        return target

    def materialise(self, device: torch.device) -> torch.Tensor:
        """A new tensor on ``device`` holding the saved value."""
        return self.read_into(torch.empty(self.shape, dtype=self.dtype, device=device))


class DiskFile:
    """One snapshot file: tensors appended by :meth:`write`, read back into place by :meth:`read`.

    CPU tensors go straight between their memory and the file (no copy in RAM); device tensors
    through one bounded pinned buffer (:data:`STAGING_BYTES`). So a disk snapshot holds no
    second copy of the state in memory at any point, saving or restoring.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = open(path, "w+b", buffering=0)  # noqa: SIM115 - closed by close()
        self._end = 0
        self._staging: torch.Tensor | None = None

    def close(self) -> None:
        """Close the file (the directory holding it is removed by its owner)."""
        self._file.close()
        self._staging = None

    def _stage(self, device: torch.device, nbytes: int) -> torch.Tensor:
        size = min(nbytes, STAGING_BYTES)
        if self._staging is None or self._staging.numel() < size:
            pin = device.type == "cuda"
            self._staging = torch.empty(size, dtype=torch.uint8, pin_memory=pin)
        return self._staging

    def write(self, tensor: torch.Tensor) -> OnDisk | torch.Tensor:
        """Append ``tensor``'s bytes; return where they are.

        A tensor that is not plain strided memory on the CPU or a GPU (a DTensor shard of FSDP,
        a quantised or sparse one, a meta tensor) is kept as an in-memory copy instead.
        """
        tensor = tensor.detach()
        if (
            type(tensor) is not torch.Tensor
            or tensor.layout != torch.strided
            or tensor.is_quantized
            or tensor.device.type not in ("cpu", "cuda")
        ):
            return save_tensor(tensor, pin=False)
        source = tensor if tensor.is_contiguous() else tensor.contiguous()
        nbytes = source.numel() * source.element_size()
        offset = self._end
        self._file.seek(offset)
        if source.device.type == "cpu":
            self._write_all(_bytes_of(source))
        else:
            flat = source.reshape(-1).view(torch.uint8)
            for start in range(0, nbytes, STAGING_BYTES):
                n = min(STAGING_BYTES, nbytes - start)
                stage = self._stage(source.device, nbytes)[:n]
                stage.copy_(flat[start : start + n])
                self._write_all(_bytes_of(stage))
        self._end = offset + nbytes
        return OnDisk(self, offset, nbytes, tuple(tensor.shape), tensor.dtype, str(tensor.device))

    def read(self, offset: int, nbytes: int, target: torch.Tensor) -> None:
        """Read ``nbytes`` at ``offset`` into ``target``'s memory (contiguous, any device)."""
        if not target.is_contiguous():
            raise ValueError("a disk snapshot reads into contiguous tensors only")
        self._file.seek(offset)
        if target.device.type == "cpu":
            self._read_all(_bytes_of(target))
            return
        flat = target.detach().reshape(-1).view(torch.uint8)
        for start in range(0, nbytes, STAGING_BYTES):
            n = min(STAGING_BYTES, nbytes - start)
            stage = self._stage(target.device, nbytes)[:n]
            self._read_all(_bytes_of(stage))
            flat[start : start + n].copy_(stage)  # synchronous: the buffer is reused next

    def _write_all(self, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        while view:
            written = self._file.write(view)
            view = view[written:]

    def _read_all(self, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        while view:
            got = self._file.readinto(view)
            if not got:
                raise EOFError(f"the disk snapshot {self.path} is shorter than expected")
            view = view[got:]


_ATOMS = frozenset({int, float, bool, str, type(None)})
"""Values a restore hands back as they are (an optimizer's settings, mostly)."""


def _no_grad() -> contextlib.AbstractContextManager[Any]:
    """``torch.no_grad()``, or nothing when gradients are already off (the restore turns them
    off once for all its tensors)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


def load_into(live: Any, saved: Any, device: torch.device | str | None = None) -> Any:
    """Put ``saved`` (from :func:`to_cpu_copy`) back, writing into ``live``'s tensor in place.

    When ``live`` is a tensor of the same shape, dtype and device (``device``, if given), it is
    overwritten (asynchronously from pinned memory, ordered on the current stream) and keeps its
    identity. Otherwise a fresh copy is made on ``device`` (default: ``live``'s device, or the
    CPU). Anything that is not a tensor is deep-copied. Returns the restored value.
    """
    kind = type(saved)
    if kind in _ATOMS:
        return saved  # immutable: nothing to copy
    if isinstance(saved, OnDisk):
        target = torch.device(device or saved.device)
        if saved.fits(live) and live.device == target:
            with _no_grad():
                return saved.read_into(live)
        return saved.materialise(target)
    if not isinstance(saved, torch.Tensor):
        return copy.deepcopy(saved)
    if isinstance(live, torch.Tensor):
        target = torch.device(device) if device is not None else live.device
        if live.shape == saved.shape and live.dtype == saved.dtype and live.device == target:
            with _no_grad():
                return live.copy_(saved, non_blocking=True)
    else:
        target = torch.device(device or "cpu")
    return saved.to(target, copy=True, non_blocking=True)


@dataclass
class RngState:
    """Python, NumPy (if imported), torch CPU and CUDA (if initialised) generator states, and
    those of the given ``torch.Generator`` objects (a data loader's)."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    generators: list[tuple[torch.Generator, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def capture(cls, generators: Sequence[torch.Generator] = ()) -> RngState:
        """Read every generator's state, and each of ``generators``' (changes nothing)."""
        np = sys.modules.get("numpy")
        return cls(
            python=random.getstate(),
            numpy=np.random.get_state() if np is not None else None,
            torch_cpu=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            generators=[(g, g.get_state()) for g in generators],
        )

    def restore(self) -> None:
        """Put every generator back."""
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        for generator, state in self.generators:
            generator.set_state(state)


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
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """What an adapter saves besides (e.g. the Accelerate adapter: the accelerator's counters)."""
    disk: DiskFile | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove the on-disk copy, if any."""
        if self.disk is not None:
            self.disk.close()
            self.disk = None
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None


def _param_order(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _capture_optimizer(optimizer: torch.optim.Optimizer, save: Saver) -> dict[str, Any]:
    # Read optimizer.state directly, keyed by position (as state_dict does), with each tensor's
    # device kept so a state the test created can be dropped and one it replaced put back.
    position = {id(p): i for i, p in enumerate(_param_order(optimizer))}
    return {
        "state": {
            position[id(p)]: {
                key: (
                    to_cpu_copy(value, save),
                    str(value.device) if isinstance(value, torch.Tensor) else None,
                )
                for key, value in entries.items()
            }
            for p, entries in optimizer.state.items()
            if id(p) in position
        },
        # Custom optimizers may keep global entries (not keyed by a parameter): keep them too.
        "other": {
            key: to_cpu_copy(value, save)
            for key, value in optimizer.state.items()
            if not isinstance(key, torch.Tensor)
        },
        "groups": [
            {key: to_cpu_copy(value, save) for key, value in group.items() if key != "params"}
            for group in optimizer.param_groups
        ],
        "attrs": {
            key: optimizer.__dict__[key] for key in _OPTIMIZER_ATTRS if key in optimizer.__dict__
        },
    }


def _buffer_slots(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, str]]:
    """Every registered buffer slot (module, local name, full name), ``None`` ones included."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name in list(module._buffers):
            key = id(module._buffers[name]) if module._buffers[name] is not None else None
            if key is not None and key in seen:
                continue  # a shared buffer: saved once, under its first name
            if key is not None:
                seen.add(key)
            yield module, name, f"{prefix}.{name}" if prefix else name


def _trained_params(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The model's parameters by name, and the optimizer's parameters outside the model
    (a learnable loss weight, a separate head) in optimizer order: both are trained."""
    named: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=True))
    inside = {id(p) for p in named.values()}
    seen: set[int] = set()
    extra = []
    for p in _param_order(optimizer):
        if id(p) not in inside and id(p) not in seen:
            seen.add(id(p))
            extra.append(p)
    return named, extra


def _save_param(p: torch.Tensor, save: Saver) -> tuple[Any, Any]:
    return save(p), None if p.grad is None else save(p.grad)


def _save_buffer(buffer: torch.Tensor | None, save: Saver) -> tuple[Any, str] | None:
    return None if buffer is None else (save(buffer), str(buffer.device))


def _capture_weights(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, save: Saver = save_tensor
) -> dict[str, Any]:
    named, extra = _trained_params(model, optimizer)
    return {
        "params": {name: _save_param(p, save) for name, p in named.items()},
        "extra_params": [_save_param(p, save) for p in extra],
        "buffers": {
            full: _save_buffer(module._buffers[name], save)
            for module, name, full in _buffer_slots(model)
        },
        "optimizer": _capture_optimizer(optimizer, save),
    }


def _capture_scaler(scaler: Any) -> dict[str, Any] | None:
    if scaler is None or not scaler.is_enabled():
        return None
    return {
        "state": copy.deepcopy(scaler.state_dict()),
        "lazy": scaler._scale is None,  # not yet initialised: put it back uninitialised
        # Per-iteration bookkeeping (unscale_ called, found inf): an error between unscale_ and
        # update() would leave it set, and the user's next unscale_ would refuse to run.
        "per_optimizer": copy.deepcopy(dict(scaler._per_optimizer_states)),
    }


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
    keep_weights: bool = False,
    where: str = "cpu",
    generators: Sequence[torch.Generator] = (),
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
        generators: ``torch.Generator`` objects to save besides the global ones (a data
            loader's, see :func:`lrfinder_adapters.pytorch.loader_generators`).
    """
    directory = None
    disk: DiskFile | None = None
    weights: dict[str, Any] | None = None
    if not keep_weights:
        if where == "disk":
            # Streamed: each tensor's bytes go from its memory to the file, no copy in RAM.
            directory = tempfile.TemporaryDirectory(prefix="lrfinder-")
            disk = DiskFile(Path(directory.name) / "weights.bin")
            try:
                weights = _capture_weights(model, optimizer, disk.write)
            except BaseException:
                disk.close()
                directory.cleanup()
                raise
        else:
            weights = _capture_weights(model, optimizer)
    return TrainingState(
        weights=weights,
        training_modes=[m.training for m in model.modules()],
        lrs=[copy.deepcopy(group["lr"]) for group in optimizer.param_groups],
        schedulers=[copy.deepcopy(s.state_dict()) for s in schedulers],
        scaler=_capture_scaler(scaler),
        rng=RngState.capture(generators),
        directory=directory,
        disk=disk,
    )


def _restore_optimizer(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    # In place, not load_state_dict: it keeps the user's param-group dicts and state tensors
    # (schedulers, wrappers and captured CUDA graphs hold on to them), copies asynchronously, and
    # never casts: each tensor goes back to its own dtype and device, bitwise.
    params = _param_order(optimizer)
    state = optimizer.state
    restored: dict[torch.Tensor, dict[str, Any]] = {}
    for position, entries in saved["state"].items():
        param = params[position]
        live = state.get(param, {})
        restored[param] = {}
        for key, (value, device) in entries.items():
            restored[param][key] = load_into(live.get(key), value, device)
    other = {key: load_into(state.get(key), value) for key, value in saved["other"].items()}
    state.clear()
    state.update(restored)
    state.update(other)
    for group, saved_group in zip(optimizer.param_groups, saved["groups"]):
        for key in set(group) - set(saved_group) - {"params"}:
            del group[key]
        for key, value in saved_group.items():
            group[key] = load_into(group.get(key), value)
    for key in _OPTIMIZER_ATTRS:
        optimizer.__dict__.pop(key, None)
    optimizer.__dict__.update(saved["attrs"])


@torch.no_grad()
def _restore_weights(
    weights: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    named, extra = _trained_params(model, optimizer)
    pairs = [(named[name], saved) for name, saved in weights["params"].items() if name in named]
    for p, (value, grad) in [*pairs, *zip(extra, weights["extra_params"])]:
        if isinstance(value, OnDisk) and value.fits(p):
            value.read_into(p)  # in place, no copy in memory
        else:
            source = value.materialise(p.device) if isinstance(value, OnDisk) else value
            p.copy_(source, non_blocking=True)
        p.grad = None if grad is None else load_into(p.grad, grad, p.device)
    saved_buffers = weights["buffers"]
    for module, name, full in list(_buffer_slots(model)):
        if full not in saved_buffers:
            del module._buffers[name]  # registered by the search (e.g. a lazily built cache)
        elif saved_buffers[full] is None:
            module._buffers[name] = None
        else:
            value, device = saved_buffers[full]
            module._buffers[name] = load_into(module._buffers[name], value, device)
    _restore_optimizer(weights["optimizer"], optimizer)


def restore(
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    schedulers: Sequence[Any] = (),
    scaler: Any = None,
) -> None:
    """Put back what :func:`capture` saved, bitwise (the snapshot stays usable).

    Every part is restored even if one fails (the first error is raised at the end).
    """
    errors: list[BaseException] = []
    for part in (
        lambda: state.weights is not None and _restore_weights(state.weights, model, optimizer),
        lambda: _restore_rest(state, model, optimizer, schedulers, scaler),
        state.rng.restore,
    ):
        try:
            part()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


def _restore_rest(
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedulers: Sequence[Any],
    scaler: Any,
) -> None:
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
        scaler._per_optimizer_states.clear()
        scaler._per_optimizer_states.update(copy.deepcopy(state.scaler["per_optimizer"]))

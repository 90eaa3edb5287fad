"""Peak memory of a batch-size trial, per phase, and the memory it could have used.

Two meters, one interface:

* :class:`CudaMeter` reads the CUDA caching allocator's own figures
  (``torch.cuda.max_memory_allocated``), reset at each phase boundary.
* :class:`TensorMeter` (CPU and every other device) counts the bytes of tensor storage alive at
  once: a ``TorchDispatchMode`` sees every tensor an operator returns, skips the outputs that
  alias an input (views, in-place ops), and a weak reference on each new storage subtracts it
  when it is freed. It measures what ``max_memory_allocated`` measures on CUDA (tensor
  storage), not allocator overhead, fragmentation or library scratch space (oneDNN, BLAS). With
  a ``memory_budget`` it raises ``torch.OutOfMemoryError`` the moment the live bytes pass it, so
  a trial over budget fails exactly like a real out-of-memory trial, only sooner.

Phases: the trial runner marks the optimizer step (through ``register_step_pre_hook`` /
``register_step_post_hook``), so each trial reports a ``forward_backward`` and an ``optimizer``
peak: at small batches the optimizer step (Adam's state, foreach temporaries) often holds the
peak, at large ones the activations do, and only the per-phase figures grow linearly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import sys
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

FORWARD_BACKWARD = "forward_backward"
OPTIMIZER = "optimizer"


def _leaves(tree: Any) -> Iterator[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _leaves(value)


def _storage(tensor: torch.Tensor) -> Any:
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None  # sparse, nested or fake tensors: no plain storage to count


def state_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Iterator[torch.Tensor]:
    """Every tensor the training state holds: parameters, gradients, buffers, optimizer state."""
    for p in model.parameters():
        yield p
        if p.grad is not None:
            yield p.grad
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from _leaves(state)


def _budget_error(live: int, budget: int, what: str) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"out of memory: {what} {live / 2**20:.1f} MiB is over memory_budget "
        f"{budget / 2**20:.1f} MiB (a simulated limit, not a real allocation failure)"
    )


class Meter:
    """What the trial runner needs from a meter; see the module docs."""

    budget: int | None
    phase_peaks: dict[str, int]

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that already exist (the training state, a batch made outside)."""

    def active(self) -> contextlib.AbstractContextManager[Any]:
        """Measure while the block runs (steps run inside it)."""
        return contextlib.nullcontext()

    def mark(self, phase: str) -> None:
        """Close the phase that just ended: keep its peak, start the next from the live bytes."""
        raise NotImplementedError

    def capacity(self) -> int | None:
        """The most the peak may reach, in the units of the peaks (``None``: unknown)."""
        raise NotImplementedError


class TensorMeter(TorchDispatchMode, Meter):
    """Live tensor-storage bytes, counted op by op (any device; see the module docs).

    Args:
        budget: raise ``torch.OutOfMemoryError`` when the live bytes pass it (``None``: never).
    """

    def __init__(self, budget: int | None = None) -> None:
        super().__init__()
        self.budget = budget
        self.live = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._refs: dict[int, Any] = {}

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor)

    def active(self) -> contextlib.AbstractContextManager[Any]:
        return self

    def _add(self, tensor: torch.Tensor) -> None:
        storage = _storage(tensor)
        if storage is None:
            return
        key = storage._cdata
        size = storage.nbytes()
        if key in self._refs or size == 0:
            return
        self._refs[key] = weakref.ref(storage, functools.partial(self._release, key, size))
        self.live += size
        self.peak = max(self.peak, self.live)
        if self.budget is not None and self.live > self.budget:
            raise _budget_error(self.live, self.budget, "live tensors")

    def _release(self, key: int, size: int, _ref: Any) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= size

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {s._cdata for t in _leaves((args, kwargs)) if (s := _storage(t)) is not None}
        for tensor in _leaves(out):
            storage = _storage(tensor)
            if storage is not None and storage._cdata not in inputs:
                self._add(tensor)
        return out

    def mark(self, phase: str) -> None:
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.peak)
        self.peak = self.live

    def capacity(self) -> int | None:
        if self.budget is not None:
            return self.budget
        headroom = cpu_headroom()
        return None if headroom is None else self.live + headroom


class CudaMeter(Meter):
    """The CUDA caching allocator's peak, per phase, on one device."""

    def __init__(self, device: torch.device, budget: int | None = None) -> None:
        self.device = device
        self.budget = budget
        self.phase_peaks = {}
        torch.cuda.reset_peak_memory_stats(device)

    def mark(self, phase: str) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), peak)
        torch.cuda.reset_peak_memory_stats(self.device)
        if self.budget is not None and peak > self.budget:
            raise _budget_error(peak, self.budget, "the peak of allocated memory")

    def capacity(self) -> int | None:
        if self.budget is not None:
            return self.budget
        free, _total = torch.cuda.mem_get_info(self.device)
        # What allocations may reach: the cached blocks the allocator reuses plus the free rest.
        return int(free + torch.cuda.memory_reserved(self.device))


def make_meter(device: torch.device, budget: int | None) -> Meter:
    """The meter for ``device``: the CUDA allocator's figures on CUDA, tensor counting elsewhere."""
    if device.type == "cuda":
        return CudaMeter(device, budget)
    return TensorMeter(budget)


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached accelerator memory back, so each trial starts clean."""
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if device.type == "mps" and mps is not None:
        mps.empty_cache()
    xpu = getattr(torch, "xpu", None)
    if device.type == "xpu" and xpu is not None and xpu.is_available():
        xpu.empty_cache()


def _read_kib(path: str, field: str) -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def cpu_headroom() -> int | None:
    """Bytes this process may still allocate on the CPU (Linux), or ``None`` elsewhere.

    The smallest of the memory the kernel reports available (``MemAvailable``), the address
    space left under ``RLIMIT_AS`` and the cgroup's limit less its usage. A rough figure: the
    C allocator keeps freed memory, and the address space also holds non-tensor data; the
    guided search verifies every prediction made from it.
    """
    if not sys.platform.startswith("linux"):
        return None
    candidates = []
    available = _read_kib("/proc/meminfo", "MemAvailable")
    if available is not None:
        candidates.append(available)
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    vm_size = _read_kib(f"/proc/{os.getpid()}/status", "VmSize")
    if soft != resource.RLIM_INFINITY and vm_size is not None:
        candidates.append(soft - vm_size)
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        candidates.append(cgroup)
    return max(0, min(candidates)) if candidates else None

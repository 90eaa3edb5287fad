"""What a batch-size trial costs in memory: per phase, per operation, and what was available.

:class:`TensorMeter` (every device) counts the bytes of tensor storage alive at once: a
``TorchDispatchMode`` sees every tensor an operator returns, skips outputs that alias an input
(views, in-place ops), and a weak reference on each new storage subtracts it when it is freed. It
records the live bytes after every operation of a step: the *profile* that the guided search
extrapolates moment by moment. It counts what ``torch.cuda.max_memory_allocated`` counts on CUDA
(tensor storage), not allocator overhead, fragmentation or library scratch space (oneDNN, BLAS,
cuBLAS workspaces): the guided search treats its predictions as predictions and verifies them.
With a ``memory_budget`` it raises ``torch.OutOfMemoryError`` the moment the live bytes pass it,
so a trial over budget fails exactly like a real out-of-memory trial, only sooner.

:class:`CudaMeter` adds the CUDA caching allocator's own peaks (``max_memory_allocated``), which
are what the results report on CUDA and what a budget is held to there.

Capacity (what the peak may reach): the budget when one is given; on CUDA the free device
memory plus the allocator's cached blocks (within ``set_per_process_memory_fraction``); on the
CPU (Linux) the smallest of ``MemAvailable``, the address space left under ``RLIMIT_AS`` and the
cgroup's limit. While glibc's mmap threshold moves (the allocator left alone), the address space
left counts what glibc holds free in its heap (``mallinfo2``) as room: freed tensors of up to
32 MiB stay there and are reused before new address space is taken, so a trial that fitted and
was freed does not shrink the reading. Pinned, every tensor above the threshold is mapped on its
own and unmapped when freed, so the address space left is the room itself (the heap's free
memory then serves small allocations only, and is not counted). It is read after each trial's
clean-up, which under ``RLIMIT_AS`` on glibc ends with ``malloc_trim(0)`` (:func:`trim_heap`):
the free top of the heap goes back to the kernel, so the reading depends less on where glibc
last trimmed (the benchmark's conv net at 0.5 GiB: the capacity before its first large trial
spread over 40 MiB between processes before this and the fixed trim threshold, 12.6 MiB
after; heap holes ``malloc_trim`` cannot give back make the rest). After an out-of-memory
error the live bytes at the failing operation plus the size it asked for (read from the
message) bound it from above.

Allocator pinning (:func:`pin_allocator`): on glibc under a finite ``RLIMIT_AS`` the address
space glibc takes depends on history: its first allocation failure in a thread adds an arena
(64 MiB of address space, kept), and its moving mmap threshold puts tensors of up to 32 MiB on
the heap once one that size was freed, and keeps them there, and with it its trim threshold
(up to 64 MiB left free at the top of the heap, given back or not by chance). The search sets
``M_ARENA_MAX=1``, a fixed ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (128 KiB each, glibc's
starting values) through ``mallopt`` and trims the heap once, so that what fits is a function
of the size alone; the process keeps those settings (glibc cannot go back to a moving
threshold), so the training that follows runs as the trials did. ``MALLOC_ARENA_MAX``,
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in the environment win.

Non-tensor memory (:class:`ResidentPeak`, the CPU on Linux): what a step takes that is no
tensor an operator returns (a kernel's own scratch, such as the columns of a convolution without
oneDNN; allocator rounding; Python objects) is not in the profile, but it counts against the
same limit. So every step's resident high-water mark is read (``VmHWM``, reset through
``/proc/self/clear_refs`` as the step starts): what it rose by beyond what the live tensors rose
by is the step's non-tensor peak, and the profile of the last completed step carries it (added
to every moment), so the guided search extrapolates and checks what the process really needs.
It is read in steady state (the trial's last step, after two at the same size), it is never
negative (small tensors reuse heap pages already resident and raise no high-water mark), and
it counts from 4 MiB and 1% of the step's tensor peak (``NON_TENSOR_FLOOR``, ``NON_TENSOR_SHARE``).

Phases: the trial runner marks the optimizer step (through ``register_step_pre_hook`` /
``register_step_post_hook``), so each trial reports a ``forward_backward`` and an ``optimizer``
peak: at small batches the optimizer step (Adam's state, foreach temporaries) often holds the
peak, at large ones the activations do.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
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

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 2**10
"""The fixed mmap threshold the search pins: glibc's starting value, so that every tensor
larger than it gets its own mapping, returned to the system when it is freed."""

NON_TENSOR_FLOOR = 4 * 2**20
NON_TENSOR_SHARE = 0.01
"""A step's non-tensor peak counts once it reaches 4 MiB and 1% of the step's tensor peak:
below that it is the interpreter's and the heap's own noise, not scratch that grows with the
batch: a heap page touched for the first time, or a new arena of Python's object allocator
(1 MiB each: seen as a +1.04 MiB step at the first size of an MLP search, 1 run in 4, which
broke the small sizes' line and cost a trial). At the small first sizes such a step would bend
the lines the guided search extrapolates; the margin covers it."""

log = logging.getLogger("lrfinder_plugins")


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


FRESH, ALIASED, MIXED, GROWS = 0, 1, 2, 3
"""What an operator's outputs are, by its schema (:func:`_returns`)."""
_RESIZING = frozenset({"aten::resize_", "aten::resize_as_"})


@functools.cache
def _returns(func: Any) -> int:
    """What the operator ``func``'s outputs are, by its schema: ``FRESH`` when no return is
    annotated as aliasing an input (every output storage is new; one already counted is skipped
    all the same); for PyTorch's own operators whose every return is: ``GROWS`` for ``resize_``,
    ``resize_as_`` and ``out=`` variants (an output storage may grow in place, or an empty one
    be filled: the growth is counted), ``ALIASED`` for the rest (views and in-place ops: no
    output storage is new or larger); else ``MIXED`` (no schema, both kinds, or another
    library's operator, whose annotation is not trusted to skip an output: the outputs are
    checked against the inputs' storages)."""
    schema: Any = getattr(func, "_schema", None)
    returns = getattr(schema, "returns", None)
    if returns is None:
        return MIXED
    aliased = [r.alias_info is not None for r in returns]
    if not any(aliased):
        return FRESH
    if not all(aliased) or getattr(func, "namespace", None) != "aten":
        return MIXED
    writes_out = any(
        a.kwarg_only and a.alias_info is not None and a.alias_info.is_write
        for a in schema.arguments
    )
    return GROWS if writes_out or schema.name in _RESIZING else ALIASED


def _budget_error(used: int, budget: int, what: str) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        f"out of memory: {what} {used / 2**20:.1f} MiB is over memory_budget "
        f"{budget / 2**20:.1f} MiB (a simulated limit, not a real allocation failure)"
    )


class TensorMeter(TorchDispatchMode):
    """Live tensor-storage bytes, counted op by op, on any device (see the module docs).

    Args:
        budget: raise ``torch.OutOfMemoryError`` when the live bytes pass it (``None``: never).
        resident: also read each step's non-tensor peak (:class:`ResidentPeak`; the CPU
            without a budget) and add it to the profile.

    Everything it reports is in tensor bytes (the profile: plus the last step's non-tensor
    peak, :attr:`non_tensor`): the peaks, the profile and the capacity.
    """

    def __init__(self, budget: int | None = None, *, resident: bool = False) -> None:
        super().__init__()
        self.budget = budget
        self.resident = ResidentPeak() if resident and ResidentPeak.available() else None
        self.non_tensor = 0
        """The non-tensor peak of the last completed step, in bytes (0 when not read)."""
        self._step_live = 0
        self.live = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._refs: dict[int, Any] = {}
        self._sizes: dict[int, int] = {}
        """Each counted storage's size, by key (grown by ``resize_`` and ``out=``)."""
        self._trace: list[int] = []
        self._completed: list[int] | None = None
        self._failed_at: int | None = None
        self.bare = False
        """Set while a step runs outside the dispatch mode: its phases are not marked, and an
        out-of-memory error in it says nothing about the live bytes (see
        :func:`lrfinder_adapters._trials.run_measured`)."""

    # -- counting ------------------------------------------------------------------------------
    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that already exist (the training state, a batch made outside)."""
        for tensor in tensors:
            self._add(tensor)

    def _add(self, tensor: torch.Tensor) -> None:
        storage = _storage(tensor)
        if storage is None:
            return
        key = storage._cdata
        size = storage.nbytes()
        if key in self._refs or size == 0:
            return
        self._refs[key] = weakref.ref(storage, functools.partial(self._release, key))
        self._sizes[key] = size
        self._grow(size)

    def _grow(self, size: int) -> None:
        self.live += size
        self.peak = max(self.peak, self.live)
        if self.budget is not None and self.live > self.budget:
            raise _budget_error(self.live, self.budget, "live tensors")

    def _release(self, key: int, _ref: Any) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= self._sizes.pop(key)

    def _count_growth(self, outputs: Any, before: dict[int, int]) -> None:
        """Count what a resizing or ``out=`` operator added to its output storages: the growth
        of a counted one, or the whole of one that was empty before it (one neither counted nor
        empty belongs to the state outside the meter, and is left out as a view of it is)."""
        for tensor in _leaves(outputs):
            storage = _storage(tensor)
            if storage is None:
                continue
            key, size = storage._cdata, storage.nbytes()
            known = self._sizes.get(key)
            if known is not None:
                if size > known:
                    self._sizes[key] = size
                    self._grow(size - known)
            elif before.get(key) == 0:
                self._add(tensor)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kind = _returns(func)
        if kind == GROWS:
            before = {
                s._cdata: s.nbytes()
                for t in _leaves((args, kwargs))
                if (s := _storage(t)) is not None
            }
        try:
            out = func(*args, **(kwargs or {}))
        except Exception:
            self._failed_at = self.live  # the operation's inputs are still alive here
            raise
        if kind == FRESH:  # the schema says no output aliases an input: no input set to build
            if isinstance(out, torch.Tensor):
                self._add(out)
            else:
                for tensor in _leaves(out):
                    self._add(tensor)
        elif kind == GROWS:
            self._count_growth(out, before)
        elif kind == MIXED:
            inputs = {s._cdata for t in _leaves((args, kwargs)) if (s := _storage(t)) is not None}
            for tensor in _leaves(out):
                storage = _storage(tensor)
                if storage is not None and storage._cdata not in inputs:
                    self._add(tensor)
        self._trace.append(self.live)
        return out

    # -- what the trial runner reads -----------------------------------------------------------
    def active(self) -> contextlib.AbstractContextManager[Any]:
        """Measure while the block runs (steps run inside it)."""
        return self

    @property
    def checks_ops(self) -> bool:
        """Whether only the dispatch mode can enforce this meter's budget (a budget counted in
        tensor bytes, op by op: every device but CUDA, whose budget is held to the allocator's
        own peaks at each phase boundary)."""
        return self.budget is not None

    def mark(self, phase: str) -> None:
        """Close the phase that just ended: keep its peak, start the next from the live bytes
        (nothing while a step runs bare: the live bytes are not counted then)."""
        if self.bare:
            return
        self.phase_peaks[phase] = max(self.phase_peaks.get(phase, 0), self.peak)
        self.peak = self.live

    def begin_step(self) -> None:
        """A training step starts (the profile covers the last step that completed)."""
        if self.bare:
            return
        if self._trace:
            if self.resident is not None:
                extra = self.resident.non_tensor(max(self._trace) - self._step_live)
                floor = max(NON_TENSOR_FLOOR, NON_TENSOR_SHARE * max(self._trace))
                self.non_tensor = extra if extra >= floor else 0
            self._completed, self._trace = self._trace, []
        self._step_live = self.live
        if self.resident is not None:
            self.resident.start()

    @property
    def profile(self) -> list[int] | None:
        """The live bytes after each operation of the last completed step, plus that step's
        non-tensor peak (:attr:`non_tensor`) at every moment."""
        if self._completed is None or not self.non_tensor:
            return self._completed
        return [value + self.non_tensor for value in self._completed]

    @property
    def reported_peaks(self) -> dict[str, int]:
        """Each phase's peak as the backend reports it (here: tensor bytes)."""
        return dict(self.phase_peaks)

    def capacity(self) -> int | None:
        """The most the live tensor bytes may reach (``None``: unknown)."""
        if self.budget is not None:
            return self.budget
        headroom = cpu_headroom()
        return None if headroom is None else self.live + headroom

    def capacity_after(self, error: BaseException) -> int | None:
        """What an out-of-memory ``error`` proves about the capacity: the live bytes when the
        failing operation ran plus the request that failed (``None`` when the message does not
        say how much it asked for)."""
        if self.budget is not None:
            return self.budget
        request = requested_bytes(str(error))
        if request is None or self.bare:
            return None  # a bare step's failure: the live bytes then are not known
        return (self.live if self._failed_at is None else self._failed_at) + request


class CudaMeter(TensorMeter):
    """Tensor counting plus the CUDA caching allocator's own peaks, on one device.

    The reported peaks are ``torch.cuda.max_memory_allocated``, reset at each phase boundary;
    the profile and the capacity stay in tensor bytes (see :func:`cuda_capacity`: the free
    device memory and the allocator's cached blocks added to the live tensors), so the guided
    search compares like with like. Near the limit the allocator reserves more than the tensors
    it holds (fragmentation): the gap seen at each phase's peak
    (``max_memory_reserved - max_memory_allocated``) is kept, as the largest gap and as a share
    of the trial's largest peak, and :func:`cuda_capacity` keeps it off the room, so the
    prediction leaves the room the allocator itself takes (growing with the batch, unless
    ``expandable_segments`` lets segments grow in place).
    """

    def __init__(self, device: torch.device, budget: int | None = None) -> None:
        super().__init__(None)
        # Some torch.cuda calls need an index: "cuda" means the current device.
        index = torch.cuda.current_device() if device.index is None else device.index
        self.device = torch.device("cuda", index)
        self.device_budget = budget
        self.device_peaks: dict[str, int] = {}
        self.fragmentation = 0
        self.fragmentation_share = 0.0
        self.expandable = expandable_segments()
        torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def checks_ops(self) -> bool:
        return False  # the budget is held to max_memory_allocated, read at phase boundaries

    def mark(self, phase: str) -> None:
        super().mark(phase)  # the tensor peaks: only in a metered step
        peak = int(torch.cuda.max_memory_allocated(self.device))
        reserved = int(torch.cuda.max_memory_reserved(self.device))
        self.fragmentation = max(self.fragmentation, reserved - peak)
        if peak > 0 and peak >= max(self.device_peaks.values(), default=0):
            # the share at the trial's largest peak: the small phases' block rounding says
            # little about the gap where the limit is
            self.fragmentation_share = max(0, reserved - peak) / peak
        self.device_peaks[phase] = max(self.device_peaks.get(phase, 0), peak)
        torch.cuda.reset_peak_memory_stats(self.device)
        if self.device_budget is not None and peak > self.device_budget:
            raise _budget_error(peak, self.device_budget, "the peak of allocated memory")

    @property
    def reported_peaks(self) -> dict[str, int]:
        return dict(self.device_peaks)

    def capacity(self) -> int | None:
        allocated = torch.cuda.memory_allocated(self.device)
        if self.device_budget is not None:
            return int(self.live + self.device_budget - allocated)
        free, total = torch.cuda.mem_get_info(self.device)
        share = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        return cuda_capacity(
            live=self.live,
            free=int(free),
            total=int(total),
            reserved=int(torch.cuda.memory_reserved(self.device)),
            allocated=int(allocated),
            fraction=None if share is None else float(share(self.device)),
            fragmentation=self.fragmentation,
            fragmentation_share=self.fragmentation_share,
            expandable=self.expandable,
        )

    def capacity_after(self, error: BaseException) -> int | None:
        if self.device_budget is not None:
            return self.capacity()
        return super().capacity_after(error)


def cuda_capacity(
    *,
    live: int,
    free: int,
    total: int,
    reserved: int,
    allocated: int,
    fraction: float | None = None,
    fragmentation: int = 0,
    fragmentation_share: float = 0.0,
    expandable: bool = False,
) -> int:
    """What the live tensor bytes may reach on a CUDA device, read between trials.

    New tensors may take the free device memory plus the caching allocator's cached blocks
    (``reserved - allocated``: freed, kept, reused before the device is asked), within the
    share ``torch.cuda.set_per_process_memory_fraction`` set (``fraction`` of ``total``, which
    caps what the allocator may reserve). Of that room, the allocator itself takes what it
    reserved beyond its tensors at a trial's peak (fragmentation), which tensors cannot use:

    - with ``expandable_segments`` (``PYTORCH_CUDA_ALLOC_CONF``), segments grow in place, so
      the gap does not grow with the batch: the largest gap seen (``fragmentation`` bytes) is
      kept off;
    - without, blocks are cut from segments sized per request, so the gap grows with what is
      allocated: the room is shared as ``1 + fragmentation_share`` bytes per tensor byte (the
      largest ``gap / peak`` seen), and at least the largest gap is kept off.

    Example:
        >>> cuda_capacity(live=100, free=1000, total=4000, reserved=300, allocated=200)
        1200
        >>> cuda_capacity(live=100, free=1000, total=4000, reserved=300, allocated=200,
        ...               fraction=0.25, fragmentation=50)
        850
        >>> cuda_capacity(live=100, free=1000, total=4000, reserved=300, allocated=200,
        ...               fragmentation=50, fragmentation_share=0.25)
        980
        >>> cuda_capacity(live=100, free=1000, total=4000, reserved=300, allocated=200,
        ...               fragmentation=50, fragmentation_share=0.25, expandable=True)
        1150
    """
    if fragmentation_share < 0 or fragmentation < 0:
        raise ValueError(
            f"fragmentation={fragmentation!r} and fragmentation_share={fragmentation_share!r} "
            "must be >= 0 (reserved minus allocated at a peak, in bytes and as a share of it)"
        )
    reachable = free + reserved
    if fraction is not None and fraction < 1.0:
        reachable = min(reachable, int(fraction * total))
    room = reachable - allocated
    if expandable:
        return int(live + room - fragmentation)
    return int(live + min(room - fragmentation, room / (1.0 + fragmentation_share)))


def expandable_segments(conf: str | None = None) -> bool:
    """Whether the CUDA caching allocator grows its segments in place: ``expandable_segments:True``
    in ``conf`` (default: ``PYTORCH_CUDA_ALLOC_CONF``, or ``PYTORCH_ALLOC_CONF`` that newer
    torch reads too).

    Example:
        >>> expandable_segments("max_split_size_mb:128,expandable_segments:True")
        True
        >>> expandable_segments("")
        False
    """
    if conf is None:
        conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    for option in (conf or "").split(","):
        key, _, value = option.partition(":")
        if key.strip() == "expandable_segments":
            return value.strip().lower() == "true"
    return False


def make_meter(device: torch.device, budget: int | None) -> TensorMeter:
    """The meter for ``device``: allocator figures too on CUDA, tensor counting everywhere,
    and on the CPU without a budget each step's non-tensor peak too (:class:`ResidentPeak`).

    Example:
        >>> make_meter(torch.device("cpu"), 2**20).resident is None  # a budget counts tensors
        True
    """
    if device.type == "cuda":
        return CudaMeter(device, budget)
    return TensorMeter(budget, resident=device.type == "cpu" and budget is None)


class ResidentPeak:
    """How far a step's resident memory rose beyond its tensors: its non-tensor peak (Linux).

    :meth:`start` resets the kernel's resident high-water mark (``VmHWM``, through
    ``/proc/self/clear_refs``) and reads the resident size; :meth:`non_tensor` is how far the
    high-water mark rose since, less what the live tensors rose by over the same step (never
    negative). Pages a tensor reuses (freed heap memory still resident) raise no mark, so the
    figure is a lower bound on what the step took beyond its tensors, exact for what it mapped
    afresh (glibc pinned: every tensor over 128 KiB, and every kernel scratch buffer as large).

    Example:
        >>> peak = ResidentPeak()
        >>> peak.start() if ResidentPeak.available() else None
        >>> peak.non_tensor(10**12)  # the tensors alone rose by more than the process did
        0
    """

    CLEAR_REFS = "/proc/self/clear_refs"

    def __init__(self) -> None:
        self._start: int | None = None

    @staticmethod
    @functools.cache
    def available() -> bool:
        """Whether the high-water mark can be reset here (Linux, a writable ``clear_refs``)."""
        if not sys.platform.startswith("linux"):
            return False
        try:
            Path(ResidentPeak.CLEAR_REFS).write_text("5")
        except OSError:
            return False
        return _read_kib("/proc/self/status", "VmHWM") is not None

    def start(self) -> None:
        """Reset the high-water mark to the resident size now, and remember that size."""
        try:
            Path(self.CLEAR_REFS).write_text("5")
        except OSError:
            self._start = None
            return
        self._start = _read_kib("/proc/self/status", "VmRSS")

    def non_tensor(self, tensor_growth: int) -> int:
        """Bytes the resident peak rose by since :meth:`start` beyond ``tensor_growth`` (what
        the live tensors rose by meanwhile, at their peak); 0 when unknown."""
        peak = _read_kib("/proc/self/status", "VmHWM")
        if self._start is None or peak is None:
            return 0
        return max(0, peak - self._start - max(0, tensor_growth))


_REQUEST = re.compile(r"tried to allocate ([0-9]+(?:\.[0-9]+)?) ?(bytes|[KMGT]i?B|B)\b", re.I)
_UNITS = {"b": 1, "bytes": 1, "kb": 2**10, "kib": 2**10, "mb": 2**20, "mib": 2**20, "gb": 2**30}
_UNITS |= {"gib": 2**30, "tb": 2**40, "tib": 2**40}


def requested_bytes(message: str) -> int | None:
    """The size of the allocation an out-of-memory message says failed, if it says.

    Example:
        >>> requested_bytes("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; ...)")
        20971520
        >>> requested_bytes("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4096 bytes.")
        4096
    """
    match = _REQUEST.search(message)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached accelerator memory back, so each trial starts clean."""
    import gc

    gc.collect()
    if device.type == "cpu":
        trim_heap()
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
    space left under ``RLIMIT_AS`` (plus what glibc holds free in its heap while its mmap
    threshold moves: it reuses that first) and the cgroup's limit less its usage. The address space also holds non-tensor data;
    the guided search checks every prediction made from it.
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
        held = 0 if threshold_fixed() else malloc_free_bytes() or 0
        candidates.append(soft - vm_size + held)
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        candidates.append(cgroup)
    return max(0, min(candidates)) if candidates else None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _glibc() -> Any:
    """The C library when it is glibc (``mallopt`` and ``mallinfo2`` exist), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (raises AttributeError off glibc)
    except (OSError, AttributeError):
        return None
    return libc


def malloc_free_bytes() -> int | None:
    """Bytes glibc's allocator holds free in its arenas (``mallinfo2().fordblks``), or ``None``
    off glibc or before glibc 2.33 (no ``mallinfo2``).

    Example:
        >>> malloc_free_bytes() is None or malloc_free_bytes() >= 0
        True
    """
    libc = _glibc()
    mallinfo2 = None if libc is None else getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def trim_heap() -> bool:
    """Under a finite ``RLIMIT_AS`` on glibc, hand the free top of the heap back to the kernel
    (``malloc_trim(0)``), so the address space left is read the same whatever ran before;
    return whether it ran.

    Example:
        >>> trim_heap() in (True, False)
        True
    """
    libc = _glibc() if address_space_limited() else None
    trim = None if libc is None else getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def address_space_limited() -> bool:
    """Whether this process runs under a finite ``RLIMIT_AS``."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


_PINNED: dict[str, int] = {}


def threshold_fixed() -> bool:
    """Whether glibc's mmap threshold is fixed: pinned here, or by ``MALLOC_MMAP_THRESHOLD_``."""
    return "M_MMAP_THRESHOLD" in _PINNED or "MALLOC_MMAP_THRESHOLD_" in os.environ


def pin_allocator(pin: bool | None = None) -> dict[str, int]:
    """Pin glibc's allocator for the search (see the module docs); return what was set.

    Args:
        pin: ``None`` (default): pin on glibc under a finite ``RLIMIT_AS``, where what fits
            depends on the allocator's history; ``True``: pin on glibc whatever the limit;
            ``False``: leave the allocator alone.

    Returns:
        The settings made, by ``mallopt`` name (empty when nothing was set). It logs them once.

    Example:
        >>> pin_allocator(False)
        {}
    """
    if pin is False or (pin is None and not address_space_limited()):
        return {}
    libc = _glibc()
    if libc is None:
        return {}
    wanted = {"M_ARENA_MAX": (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX")}
    wanted["M_MMAP_THRESHOLD"] = (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_")
    wanted["M_TRIM_THRESHOLD"] = (M_TRIM_THRESHOLD, MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_")
    made: dict[str, int] = {}
    for name, (param, value, variable) in wanted.items():
        if variable in os.environ:
            continue  # the user's own glibc tunable wins
        if _PINNED.get(name) == value or libc.mallopt(param, value) == 1:
            made[name] = value
    if made:
        trim_heap()  # what a moved trim threshold kept free at the top goes back now
    if made and made != _PINNED:
        _PINNED.update(made)
        log.info(
            "batch-size search: pinned glibc malloc (%s) so that what fits under RLIMIT_AS "
            "does not depend on the allocator's history; the process keeps it "
            "(pin_allocator=False leaves the allocator alone)",
            ", ".join(f"{k}={v}" for k, v in made.items()),
        )
    return made

"""The ``torch.distributed`` reduce point: one collective per step or trial, no rank left hanging.

:class:`TorchDistributedReducer` is the :class:`~lrfinder_plugins.spi.Reducer` of a search that
runs on several processes (``torchrun``, a DDP model, a loop that all-reduces gradients by hand):

- **one** ``all_reduce`` (a sum) of one small float64 tensor per range-test step: the loss times
  its samples, the samples, and one count per flag (non-finite, skipped, out of data, error),
  packed into two numbers while the world has fewer than 32 ranks (:func:`pack_step`).
  Every rank then records the same loss (the sample-weighted mean over ranks) and takes the same
  decision at the same step. No barrier, nothing else per step. :meth:`~TorchDistributedReducer.
  start_step` starts it asynchronously, so a search that decides one step late (``overlap``)
  waits for step k's sum only after step k+1 ran.
- **one** ``all_gather_object`` per batch-size trial, combined by the core's
  :func:`~lrfinder_plugins.spi.combine_reports` (fitted only if it fitted everywhere, the
  largest peak, the smallest capacity, the profile's largest value per operation).

Both run on a private gloo group (CPU tensors whatever the training backend, never interleaved
with the user's collectives), opened by the first search over a training group and kept for the
next ones; a fault closes it.

Faults: a rank whose step raises posts its error to the process group's key-value store (which
needs no peer), then joins the reduce with its error flag. When the others reach the reduce, they
read the message and raise :class:`~lrfinder_plugins.spi.RankFailedError` naming that rank, while
it raises its own error: all of them after restoring their state. When the others are stuck in a
collective of the step itself (DDP's gradient all-reduce waits for the rank that failed in its
forward pass), the shortened timeout of the training's process groups (``fault_timeout``, set for
the search and put back after) ends that wait within seconds instead of the group's 30-minute
default, and they follow the same path. A process group whose collective timed out cannot be used
again; the processes exit cleanly instead of hanging.
"""

from __future__ import annotations

import atexit
import datetime
import itertools
import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from lrfinder_adapters import require

require("torch", "torch")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from lrfinder_plugins.spi import (  # noqa: E402
    DeferredOutcome,
    PendingStep,
    RankError,
    RankFailedError,
    StepOutcome,
    TrialReport,
    combine_reports,
    first_line,
    reduce_when_waited,
    resolve_outcome,
)
from lrfinder_plugins.spi import validate as _validate  # noqa: E402

log = logging.getLogger("lrfinder_plugins")

DEFAULT_FAULT_TIMEOUT = 30.0
"""Seconds a rank waits inside a collective for a peer before it counts as failed."""

_searches = itertools.count()
"""Searches opened by this process: the same sequence on every rank of an SPMD program, so it
names one search's keys in the shared store."""

_control_groups: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
"""The gloo group each training group's searches reduce on, opened by the first search and kept
for the next ones (creating one costs milliseconds and tearing it down tens of them); dropped
when a fault may have broken it. Keyed weakly: it goes with the training group."""


def _close_control_groups() -> None:
    """Destroy the kept gloo groups before the interpreter shuts down (``atexit``).

    A gloo group that outlives the interpreter's teardown can abort the process as it exits
    ("terminate called without an active exception", SIGABRT: its worker threads are destroyed
    still joinable). Searches open these groups, so they close them, whatever the training does
    with its own groups.
    """
    if not (dist.is_available() and dist.is_initialized()):
        _control_groups.clear()  # the user's destroy_process_group() already took them
        return
    for control, _ in list(_control_groups.values()):
        try:
            dist.destroy_process_group(control)
        except Exception:  # already destroyed with its world, or broken by a fault
            log.debug("could not destroy a search's process group at exit", exc_info=True)
    _control_groups.clear()


atexit.register(_close_control_groups)

PACK_BITS = 5
"""Bits per flag count when a step's outcome travels as two numbers (worlds up to 31 ranks)."""
_PACK_FLAGS = 4
_PACK_SAMPLES = 2 ** (53 - PACK_BITS * _PACK_FLAGS)
"""Samples per step (over every rank) that the two-number form holds exactly: 2**33."""


def pack_step(outcome: StepOutcome, world_size: int) -> list[float]:
    """The numbers one all-reduce sums for a step: two when they can hold it exactly, else six.

    gloo's ring all-reduce splits its buffer into two segments per rank, so on two ranks a buffer
    of three numbers or more costs about twice one of two (measured: 1.75 vs 0.97 ms on 2 busy
    CPU cores). Two float64 hold it all: the loss times the samples, and one integer (exact up to
    2**53) with the samples below 2**33 and each flag's count of ranks in 5 bits above them,
    while the world has fewer than 32 ranks (the form depends on the world size alone, so every
    rank sends the same); otherwise :data:`STEP_FIELDS`'s six numbers travel.

    Raises:
        ValueError: the samples are not a whole number the two-number form can hold.
    """
    if world_size >= 2**PACK_BITS:
        return outcome.to_vector()
    samples = outcome.samples
    if samples != int(samples) or not 0 <= samples * world_size < _PACK_SAMPLES:
        # Every rank must send the same form, so a count the form cannot hold is an error.
        raise ValueError(
            f"a step's samples must be a whole number below {_PACK_SAMPLES // world_size} per "
            f"rank, got {samples!r}"
        )
    code = 0
    for flag in (outcome.errors, outcome.out_of_data, outcome.skipped, outcome.non_finite):
        code = (code << PACK_BITS) | flag
    return [outcome.loss_sum, float(code * _PACK_SAMPLES + int(outcome.samples))]


def unpack_step(values: Sequence[float], error: BaseException | None = None) -> StepOutcome:
    """The summed outcome from :func:`pack_step`'s numbers."""
    if len(values) != 2:
        return StepOutcome.from_vector(values, error)
    code, samples = divmod(int(values[1]), _PACK_SAMPLES)
    mask = 2**PACK_BITS - 1
    non_finite, skipped = code & mask, (code >> PACK_BITS) & mask
    out_of_data, errors = (code >> 2 * PACK_BITS) & mask, (code >> 3 * PACK_BITS) & mask
    return StepOutcome(
        float(values[0]), float(samples), non_finite, skipped, out_of_data, errors, error
    )


def per_rank_target(target_batch: int | None, world_size: int) -> int | None:
    """The per-rank share of a global ``target_batch`` (per-rank batch x ranks x accumulation).

    Raises:
        TypeError, ValueError: not a positive int, or not a multiple of ``world_size``.

    Example:
        >>> per_rank_target(1024, 4)
        256
    """
    if target_batch is None or world_size == 1:
        return target_batch
    target_batch = _validate.int_at_least("target_batch", target_batch, 1)
    if target_batch % world_size:
        raise ValueError(
            f"target_batch={target_batch} is the global batch of {world_size} ranks and must be a "
            f"multiple of it; pass e.g. target_batch={max(world_size, target_batch - target_batch % world_size)}"
        )
    return target_batch // world_size


def ddp_process_group(model: Any) -> Any:
    """The process group a ``DistributedDataParallel`` model reduces its gradients on, or None."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.process_group
    return None


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is sharded by FSDP (``fully_shard`` or ``FullyShardedDataParallel``):
    its gradients are then reduced by FSDP itself."""
    from torch.distributed import fsdp

    kinds = tuple(
        kind
        for kind in (
            getattr(fsdp, "FSDPModule", None),
            getattr(fsdp, "FullyShardedDataParallel", None),
        )
        if kind is not None
    )
    return isinstance(model, kinds) or any(isinstance(m, kinds) for m in model.modules())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


class TorchDistributedReducer:
    """The reduce point of a search over the ranks of a ``torch.distributed`` process group.

    Args:
        process_group: the ranks that search together (``None``: the default group).
        fault_timeout: seconds a rank may wait in a collective for a peer before that counts as
            a fault (> 0). The training's process groups (``watch``) use it as their timeout for
            the length of the search.
        watch: further process groups whose collectives run inside a step (a DDP model's).

    Raises:
        RuntimeError: no process group is initialised.
        ValueError: ``fault_timeout`` is not a positive number.

    Example:
        >>> reducer = TorchDistributedReducer()  # doctest: +SKIP
        >>> find_lr(model, optimizer, loss_fn, loader, reducer=reducer)  # doctest: +SKIP
    """

    def __init__(
        self,
        process_group: Any = None,
        *,
        fault_timeout: float = DEFAULT_FAULT_TIMEOUT,
        watch: Iterable[Any] = (),
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "no torch.distributed process group is initialised; call "
                "torch.distributed.init_process_group() first (torchrun sets up its environment)"
            )
        self.fault_timeout = _validate.positive_finite("fault_timeout", fault_timeout, "30.0")
        self.group = process_group if process_group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        groups = [self.group, *(g for g in watch if g is not None)]
        self._watch = list({id(g): g for g in groups}.values())
        self._control: Any = None
        self._faulted = False
        self._store: Any = None
        self._prefix = ""
        self._timeouts: list[tuple[Any, datetime.timedelta]] = []

    # -- lifetime ------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the search's gloo group and shorten the training groups' timeouts (collective)."""
        # Long enough for a peer that is itself waiting out ``fault_timeout`` in a DDP collective.
        control_timeout = datetime.timedelta(seconds=2 * self.fault_timeout + 30)
        cached = _control_groups.get(self.group)
        if cached is not None and cached[1] == control_timeout:
            self._control = cached[0]
        else:
            ranks = dist.get_process_group_ranks(self.group)
            self._control = dist.new_group(ranks=ranks, backend="gloo", timeout=control_timeout)
            _control_groups[self.group] = (self._control, control_timeout)
        self._faulted = False
        self._prefix = f"lrfinder/{next(_searches)}/"
        self._store = _default_store()
        self._timeouts = _shorten_timeouts(self._watch, self.fault_timeout)

    def close(self) -> None:
        """Put the training groups' timeouts back and close the search's group."""
        for backend, timeout in self._timeouts:
            try:
                backend.set_timeout(timeout)
            except Exception:  # a group broken by a fault: nothing to put back
                log.debug("could not restore a process group's timeout", exc_info=True)
        self._timeouts = []
        control, self._control = self._control, None
        if control is not None and self._faulted:
            # A fault may have left it mid-collective: the next search opens a fresh one.
            if _control_groups.get(self.group, (None,))[0] is control:
                del _control_groups[self.group]
            try:
                dist.destroy_process_group(control)
            except Exception:
                log.debug("could not destroy the search's process group", exc_info=True)

    # -- the reduce point ----------------------------------------------------------------------
    def reduce_step(self, outcome: StepOutcome) -> StepOutcome:
        """Sum every rank's outcome in one all-reduce (the error, if any, posted first)."""
        return self.start_step(outcome).wait()

    def start_step(self, outcome: StepOutcome | DeferredOutcome) -> PendingStep:
        """Start :meth:`reduce_step`'s all-reduce without waiting for it (``async_op``).

        An outcome whose numbers are still on a device (not ``ready``) is read and reduced
        when waited for instead, so the read does not stall the device's queue now.
        """
        if not isinstance(outcome, StepOutcome):
            if not outcome.ready:
                return reduce_when_waited(self, outcome)  # read and reduced when waited for
            outcome = resolve_outcome(outcome)
        if outcome.error is not None:
            self._post(outcome.error)
            if isinstance(outcome.error, KeyboardInterrupt):
                # Ctrl-C: out at once, joining no collective. The others may be inside one
                # this rank will never join (DDP's all-reduce of gradients, waiting for this
                # rank's backward): waiting for them at the reduce point would hold every rank
                # until the timeout. Once this process exits, their collective fails at once;
                # the store tells them why.
                return _Reduce(self, outcome, torch.zeros(1), None, outcome.error)
        try:
            packed = pack_step(outcome, self.world_size)
        except ValueError as error:  # this rank's record cannot travel: it fails, the others learn
            outcome = StepOutcome.failed(error)
            self._post(error)
            packed = pack_step(outcome, self.world_size)
        values = torch.tensor(packed, dtype=torch.float64)
        try:
            work = dist.all_reduce(values, group=self._control, async_op=True)
        except Exception as error:
            return _Reduce(self, outcome, values, None, error)
        return _Reduce(self, outcome, values, work, None)

    def reduce_trial(self, report: TrialReport) -> TrialReport:
        """Combine every rank's report of one trial (one all-gather)."""
        failed = report.exception is not None
        if failed:
            assert report.exception is not None
            self._post(report.exception)
        gathered: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(
                gathered, (replace(report, exception=None), failed), group=self._control
            )
        except Exception as error:
            if failed:
                return report
            self._post(error)
            return replace(report, exception=error)
        combined = combine_reports([r for r, _ in gathered])
        if any(f for _, f in gathered):
            # Every rank, not only the one that posted: each decides alone at close() whether to
            # drop the search's group, and the next search must then open a new one everywhere.
            self._faulted = True
            failure = self.failures()
            first = failure[0] if failure else RankError(-1, "a rank failed")
            exception = report.exception or RankFailedError(first.rank, first.message)
            return replace(combined, exception=exception)
        return combined

    def failures(self) -> list[RankError]:
        """The errors posted in this search, first first (read from the shared store)."""
        store = self._store
        if store is None:
            return []
        count = int(store.add(self._prefix + "errors", 0))
        posted = []
        for i in range(1, count + 1):
            rank, _, message = store.get(f"{self._prefix}error/{i}").decode().partition("\n")
            posted.append(RankError(int(rank), message))
        return posted

    def _post(self, error: BaseException) -> None:
        self._faulted = True
        message = first_line(error)
        if _timed_out(error):
            # Not this rank's fault: it waited for the others. Said here (a note) and to them.
            message = (
                f"timed out after fault_timeout={self.fault_timeout:g} s waiting for the other "
                f"ranks in a collective (a slow or stopped rank; raise fault_timeout if the ranks "
                f"legitimately drift apart): {message}"
            )
            if not any("fault_timeout" in note for note in getattr(error, "__notes__", ())):
                error.add_note(f"lrfinder: rank {self.rank} {message}")
        store = self._store
        if store is None:
            return
        try:
            n = store.add(self._prefix + "errors", 1)
            store.set(f"{self._prefix}error/{n}", f"{self.rank}\n{message}")
        except Exception:  # the store is gone too: the local error is all there is
            log.debug("could not post an error to the store", exc_info=True)


def _timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a collective's timeout (gloo's "Timed out waiting ...", NCCL's
    watchdog), not a failure of this rank's own work."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("timed out" in text or "timeout" in text)


class _Reduce:
    """One step's all-reduce in flight (:meth:`TorchDistributedReducer.start_step`)."""

    __slots__ = ("error", "outcome", "reducer", "values", "work")

    def __init__(
        self,
        reducer: TorchDistributedReducer,
        outcome: StepOutcome,
        values: torch.Tensor,
        work: Any,
        error: BaseException | None,
    ) -> None:
        self.reducer, self.outcome, self.values = reducer, outcome, values
        self.work, self.error = work, error

    def wait(self) -> StepOutcome:
        """The summed outcome, once every rank's numbers arrived."""
        outcome, error = self.outcome, self.error
        if error is None:
            try:
                self.work.wait()
            except Exception as raised:
                error = raised
        if error is not None:
            if outcome.error is not None:
                return outcome  # this rank failed anyway: raise its own error
            self.reducer._post(error)
            return StepOutcome.failed(error)
        reduced = unpack_step(self.values.tolist(), outcome.error)
        if reduced.errors:
            self.reducer._faulted = True
        return reduced


def _default_store() -> Any:
    # The key-value store the default group was initialised with (torchrun's, or the one of
    # init_method): reachable without any peer taking part. Private in torch, so optional.
    getter = getattr(dist.distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter is not None else None
    except Exception:
        log.debug("no default store: errors on other ranks are reported without their message")
        return None


def _shorten_timeouts(
    groups: Sequence[Any], seconds: float
) -> list[tuple[Any, datetime.timedelta]]:
    """Set each group's backends' timeout to ``seconds``; return what to put back."""
    saved = []
    timeout = datetime.timedelta(seconds=seconds)
    for group in groups:
        for device in ("cpu", "cuda"):
            try:
                backend = group._get_backend(torch.device(device))
                previous = backend.options._timeout
                if previous <= timeout:
                    continue
                backend.set_timeout(timeout)
            except Exception:  # no backend for that device, or one that cannot say
                continue
            saved.append((backend, previous))
    return saved


def all_reduce_gradients(parameters: Iterable[torch.Tensor], process_group: Any = None) -> None:
    """Average the gradients across ranks (for a model that is not wrapped in DDP).

    The gradients are flattened into one buffer per dtype and device, so each is one
    ``all_reduce``.
    """
    world = dist.get_world_size(process_group)
    buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=process_group)
        flat.div_(world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

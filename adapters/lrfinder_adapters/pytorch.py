"""The raw-PyTorch adapter: a training step over a model, optimizer, loss and data loader.

:class:`TorchStep` follows the engine's ``TrainingStep`` protocol (gradient accumulation,
gradient clipping, AMP with ``GradScaler``, an optional validation loader, several param groups).
:class:`LearningRateFinder` is the seed-compatible front end (``find_lr`` / ``plot``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_adapters import require

require("torch", "torch")

import torch  # noqa: E402
from torch.nn import SyncBatchNorm  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from lrfinder_adapters import _torch_state  # noqa: E402
from lrfinder_adapters._schedulers import check_schedulers, move_schedule  # noqa: E402
from lrfinder_plugins.spi import (  # noqa: E402
    DeferredOutcome,
    RangeTest,
    RangeTestResult,
    Reducer,
    StepOutcome,
    group_ratios,
    registered_suggesters,
    run_range_test,
)
from lrfinder_plugins.spi import validate as _validate  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lrfinder_plugins.suggest import Suggestion

log = logging.getLogger("lrfinder_plugins")

TARGET_KEYS = ("targets", "target", "labels", "label", "y")
"""Keys read as the targets of a dict batch, in this order."""
INPUT_KEYS = ("inputs", "input", "x")
"""Keys read as the model input of a dict batch; without one, the other keys go to ``model(**rest)``."""
LOSS_KEYS = ("total_loss", "loss")
"""Keys read as the loss of a dict returned by ``loss_fn`` (or the model), in this order."""

LossFn = Callable[[Any, Any], Any]
ComputeLoss = Callable[[torch.nn.Module, Any], Any]


def loss_tensor(output: Any, source: str = "loss_fn") -> torch.Tensor:
    """The scalar loss in ``output``: a tensor, a tuple's first item, or a dict's loss key.

    Raises:
        TypeError: ``output`` holds no loss tensor.
        ValueError: the loss is not a single number.
    """
    loss = output
    if type(output) is not torch.Tensor:  # a plain tensor, the common case, needs no unpacking
        if isinstance(output, Mapping):
            key = next((k for k in LOSS_KEYS if k in output), None)
            if key is None:
                raise TypeError(
                    f"{source} returned a dict with keys {sorted(output)}; it needs one of "
                    f"{list(LOSS_KEYS)}, or pass compute_loss=lambda model, batch: <scalar tensor>"
                )
            loss = output[key]
        elif isinstance(output, (tuple, list)) and output:
            loss = output[0]
        elif not isinstance(output, torch.Tensor) and hasattr(output, "loss"):
            loss = output.loss
        if not isinstance(loss, torch.Tensor):
            raise TypeError(
                f"{source} must return a loss tensor, a tuple whose first item is one, or a dict "
                f"with {' or '.join(repr(k) for k in LOSS_KEYS)}; got {type(output).__name__}"
            )
    if loss.numel() != 1:
        raise ValueError(
            f"{source} returned a loss of shape {tuple(loss.shape)}; it must be a single number: "
            "reduce it (e.g. loss.mean()) or use reduction='mean'"
        )
    return loss


def _to_device(obj: Any, device: torch.device | None) -> Any:
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


_NARROW_FLOATS = (torch.float16, torch.bfloat16)
_MODEL_STOPPED = "the model or loss function raised StopIteration"


def _widened(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` in float32 if it is a 16-bit float (AMP), else itself (no tensor op)."""
    return loss.float() if loss.dtype in _NARROW_FLOATS else loss


def _samples(batch: Any) -> int:
    """How many samples a batch holds: the first dimension of its first tensor (1 if none)."""
    kind = type(batch)
    if kind is tuple or kind is list:  # the common case first: (inputs, targets)
        first = batch[0] if batch else None
        if type(first) is torch.Tensor and first.dim():
            return int(first.shape[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            if isinstance(item, torch.Tensor) and item.dim():
                return int(item.shape[0])
            if isinstance(item, (list, tuple, Mapping)):
                return _samples(item)
    return 1


def make_reducer(
    model: torch.nn.Module,
    distributed: bool | None,
    process_group: Any,
    all_reduce_grads: bool,
    fault_timeout: float,
) -> Reducer:
    """The reduce point a search of ``model`` uses: one process's own (``LocalReducer``) when
    ``distributed`` is off, no process group is initialised or the group has one rank, else a
    :class:`~lrfinder_adapters.distributed.TorchDistributedReducer` on ``process_group`` that
    watches the DDP wrapper's group (it warns when the model is neither wrapped in DDP nor
    sharded and ``all_reduce_grads`` is off: each rank would train its own copy).

    Raises:
        TypeError, ValueError: a bad ``distributed``, ``all_reduce_grads`` or ``fault_timeout``,
            or ``distributed=True``, ``process_group`` or ``all_reduce_grads`` without an
            initialised process group.
    """
    from lrfinder_plugins.spi import LocalReducer

    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}")
    _validate.boolean("all_reduce_grads", all_reduce_grads)
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if distributed and not initialised:
        raise ValueError(
            "distributed=True but no torch.distributed process group is initialised; call "
            "torch.distributed.init_process_group() first (or run under torchrun)"
        )
    if (process_group is not None or all_reduce_grads) and not initialised:
        raise ValueError(
            "process_group= and all_reduce_grads=True need an initialised torch.distributed "
            "process group; call torch.distributed.init_process_group() first"
        )
    if distributed is False or not initialised or dist.get_world_size(process_group) == 1:
        _validate.positive_finite("fault_timeout", fault_timeout, "30.0")
        return LocalReducer()
    from lrfinder_adapters.distributed import (
        TorchDistributedReducer,
        ddp_process_group,
        is_sharded,
    )

    ddp_group = ddp_process_group(model)
    if ddp_group is None and not all_reduce_grads and not is_sharded(model):
        log.warning(
            "the model is not wrapped in DistributedDataParallel and all_reduce_grads is "
            "False: each rank trains its own copy; wrap it in DDP, or pass "
            "all_reduce_grads=True if your loop averages the gradients by hand"
        )
    return TorchDistributedReducer(process_group, fault_timeout=fault_timeout, watch=[ddp_group])


def _check_loader(name: str, loader: Any) -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of batches (e.g. a DataLoader), got {loader!r} "
            f"({type(loader).__name__}); pass e.g. {name}=DataLoader(dataset, batch_size=32)"
        )
    try:
        size = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return
    if size == 0:
        raise ValueError(
            f"{name} is empty ({name}={loader!r} has no batches); give it at least one batch"
        )


def check_model_and_optimizer(model: Any, optimizer: Any) -> None:
    """Raise a clear error unless ``optimizer`` trains some of ``model``'s trainable parameters.

    A closure optimizer (``LBFGS``: its ``step`` needs a ``closure`` that re-evaluates the loss)
    is refused by name: a range test takes one loss per step at one LR.
    """
    if isinstance(model, type) and issubclass(model, torch.nn.Module):
        raise TypeError(
            f"model is the class {model.__name__}, not an instance; pass model={model.__name__}(...)"
        )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module, got {model!r} ({type(model).__name__}); pass the "
            "model to search (e.g. model=MyModel().to(device))"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        if isinstance(optimizer, type):
            raise TypeError(
                f"optimizer is the class {optimizer.__name__}, not an instance; pass "
                f"optimizer={optimizer.__name__}(model.parameters(), lr=...)"
            )
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {optimizer!r} "
            f"({type(optimizer).__name__}); pass e.g. torch.optim.AdamW(model.parameters())"
        )
    if _needs_closure(optimizer):
        raise TypeError(
            f"optimizer is {type(optimizer).__name__}, whose step() needs a closure that "
            "re-evaluates the loss several times per step; the range test and the batch-size "
            "search take one loss per step, so they cannot drive it: run them with a first-order "
            "optimizer over the same parameters (e.g. torch.optim.SGD(model.parameters()))"
        )
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable:
        raise ValueError(
            f"model ({type(model).__name__}) has no trainable parameters (every requires_grad "
            "is False); unfreeze some (p.requires_grad_(True)) before running a search"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not trainable & held:
        raise ValueError(
            f"optimizer ({type(optimizer).__name__}) does not hold any of model's trainable "
            "parameters; build it from model.parameters() (e.g. "
            "torch.optim.AdamW(model.parameters()))"
        )


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` requires a ``closure`` argument (LBFGS does)."""
    if isinstance(optimizer, torch.optim.LBFGS):
        return True
    if "step" in getattr(optimizer, "__dict__", {}):  # a step set on the instance itself
        return _signature_needs_closure(optimizer.step)
    # The signature of a class's step, read once per class (inspect costs ~25 us a call).
    kind: Any = type(optimizer)
    return _class_step_needs_closure(kind)


@functools.lru_cache(maxsize=256)
def _class_step_needs_closure(kind: Any) -> bool:
    return _signature_needs_closure(kind.step)


def _signature_needs_closure(step: Any) -> bool:
    try:
        parameters = inspect.signature(step).parameters
    except (TypeError, ValueError):
        return False
    closure = parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def check_loss_fn(name: str, loss_fn: Any) -> None:
    """Raise unless ``loss_fn`` is ``None`` or a callable (a loss *class* is refused by name)."""
    if isinstance(loss_fn, type):
        raise TypeError(
            f"{name} is the class {loss_fn.__name__}, not an instance; pass "
            f"{name}={loss_fn.__name__}() (with parentheses)"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"{name} must be callable or None, got {loss_fn!r} ({type(loss_fn).__name__}); "
            f"pass e.g. {name}=torch.nn.MSELoss()"
        )


def check_grad_enabled(entry: str) -> None:
    """Raise if autograd is off here (``torch.no_grad()``, ``torch.inference_mode()``)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{entry} was called under torch.inference_mode(), where nothing can be trained; "
            "call it outside the `with torch.inference_mode():` block"
        )
    if not torch.is_grad_enabled():
        raise RuntimeError(
            f"{entry} was called with gradients disabled (torch.no_grad() or "
            "torch.set_grad_enabled(False)), where nothing can be trained; call it outside the "
            "`with torch.no_grad():` block"
        )


def check_device(device: Any) -> torch.device | None:
    """``device`` as a ``torch.device`` (``None`` stays ``None``), or a clear error.

    Raises:
        TypeError: ``device`` is not a str, int or ``torch.device``.
        ValueError: ``device`` names no torch device, or one this machine does not have.
    """
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise TypeError(
            f"device must be a str, int or torch.device, got {device!r} "
            f"({type(device).__name__}); pass e.g. device='cpu' or device='cuda:0'"
        )
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must name a torch device (e.g. 'cpu', 'cuda:0'), got {device!r}"
        ) from error
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(
                f"device={device!r} but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); pass device='cpu', or device=None to "
                "leave the batches where they are"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"device={device!r} but this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1}); pass one of those"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device={device!r} but MPS is not available on this machine; pass device='cpu'"
        )
    return parsed


def loader_generators(*loaders: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws its shuffling from, each once.

    A ``DataLoader(..., shuffle=True, generator=g)`` (PyTorch's reproducibility recipe) draws
    from ``g`` through its sampler; its own ``generator`` seeds the workers. Both advance when
    the loader is iterated.
    """
    found: list[torch.Generator] = []
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        for owner in (loader, sampler, getattr(batch_sampler, "sampler", None), batch_sampler):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
    return found


def unstarted_persistent_loaders(*loaders: Any) -> list[Any]:
    """The ``DataLoader(persistent_workers=True)`` among ``loaders`` whose workers have not
    started yet (no iterator).

    Iterating one starts workers that outlive the iteration: its next epoch reuses them, and
    their iterator drew its base seed from the loader's generator. A search that started them
    hands them back with :func:`drop_iterators`, so the user's next epoch starts them as it
    would have (same base seed, same shuffle order) instead of reusing the search's.
    """
    return [
        loader
        for loader in loaders
        if isinstance(loader, torch.utils.data.DataLoader)
        and getattr(loader, "persistent_workers", False)
        and getattr(loader, "_iterator", False) is None
    ]


def drop_iterators(loaders: Iterable[Any]) -> None:
    """Shut down the persistent workers an iteration of each loader started, and forget them."""
    for loader in loaders:
        iterator, loader._iterator = loader._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _first_device(model: torch.nn.Module) -> torch.device | None:
    parameter = next(model.parameters(), None)
    return None if parameter is None else parameter.device


def _has_collectives(model: torch.nn.Module) -> bool:
    """Whether a step of ``model`` runs collectives of its own (DDP's or FSDP's)."""
    from lrfinder_adapters.distributed import ddp_process_group, is_sharded

    return ddp_process_group(model) is not None or is_sharded(model)


class _LateLoss:
    """A step's loss not read yet: ``resolve()`` reads it after the next step is queued.

    On CUDA the loss is copied to pinned host memory without blocking, behind an event, right
    after its step is queued; reading waits for that event only (not for the steps queued
    since). Elsewhere it is already computed. The value is the one an immediate ``.item()``
    gives, bit for bit.
    """

    __slots__ = ("event", "last", "samples", "steps", "value")

    def __init__(
        self, total: torch.Tensor, steps: int, samples: int, last: bool, host: torch.Tensor | None
    ) -> None:
        self.steps, self.samples, self.last = steps, samples, last
        self.event: Any = None
        if host is not None:  # on CUDA: copy behind an event, read when the event is reached
            host.copy_(total, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
            total = host
        self.value = total

    @property
    def ready(self) -> bool:
        """Whether the loss is on the host already (not a GPU's queue)."""
        return self.event is None

    def resolve(self) -> StepOutcome:
        """The step's outcome, its loss read now."""
        if self.event is not None:
            self.event.synchronize()
        value = self.value.item()
        if self.steps != 1:
            value = value / self.steps
        return StepOutcome.of_loss(value, self.samples, last=self.last)


class TorchStep:
    """One optimizer step over a plain PyTorch model: the engine's ``TrainingStep``.

    Args:
        model: the model (already on its device).
        optimizer: an optimizer over the model's parameters; every param group is swept with one
            shared multiplier that keeps their LR ratios.
        loss_fn: ``loss_fn(outputs, targets)``, returning a tensor, a tuple whose first item is
            the loss, or a dict with ``"total_loss"`` or ``"loss"``. ``None``: the model returns
            the loss itself (``model(**batch)`` for dict batches, as HuggingFace models do).
        train_loader: batches as ``(inputs, targets)`` tuples/lists or dicts (targets under
            ``"targets"``, ``"target"``, ``"labels"``, ``"label"`` or ``"y"``; the input under
            ``"inputs"``, ``"input"`` or ``"x"``, else the other keys go to ``model(**rest)``).
            Cycled when shorter than the test.
        device: where batches are moved (``None``: left where they are).
        accumulation_steps: micro-batches per optimizer step; their mean loss is the point.
        max_grad_norm: clip the total norm of the optimizer's gradients to this (``None``: no
            clipping).
        amp: run the forward pass under ``torch.autocast`` (``float16`` on CUDA, ``bfloat16``
            elsewhere, or ``amp_dtype``).
        amp_dtype: the autocast dtype when ``amp`` is true.
        scaler: a ``torch.amp.GradScaler``; a step it skips for overflow is not a point.
        val_loader: if given, each point's loss is the mean loss over ``val_batches`` of its
            batches (evaluated after the step, in eval mode), as torch-lr-finder's ``val_loader``.
        val_batches: how many validation batches per point (``None``: all).
        val_batch_norm: how BatchNorm layers in train mode normalise the validation batches:
            ``"batch"`` (the default) with each batch's own statistics, their running
            statistics left exactly as they were; ``"running"`` with the running statistics
            (plain eval mode, torch-lr-finder's ``val_loader``). A frozen BatchNorm (in eval
            mode while the model trains) and ``SyncBatchNorm`` (whose batch statistics are a
            collective) always use their running statistics, as does every layer on a
            validation batch of one sample (a loader's short last batch); dropout and the rest
            stay in eval mode either way. Why: during a sweep the running statistics average ~10 steps of
            older, smaller LRs' weights, so at high LRs they no longer match the weights. On
            ``benchmarks/suggestion_quality``'s two BatchNorm CNNs the eval-mode curve blows up
            early and the suggestion lands 3-24x below the training curve's (mean regret 0.144
            and 0.705, against 0.013 and 0.074 with batch statistics).
        schedulers: LR schedulers attached to ``optimizer``; they are not stepped during the
            test and are restored after it.
        keep_weights: keep the weights (and optimizer state) the test trained; LRs, schedulers,
            scaler and RNG are still restored.
        snapshot: where the saved state lives: ``"cpu"`` memory or ``"disk"`` (a temp dir).
        compute_loss: ``compute_loss(model, batch) -> loss`` for any other batch layout (replaces
            the batch/loss conventions above; ``loss_fn`` is then ignored).
        distributed: search on every rank of a ``torch.distributed`` process group, each step's
            loss reduced across ranks (``None``: whenever a group of more than one process is
            initialised).
        process_group: the ranks that search together (``None``: the default group).
        all_reduce_grads: average the gradients across ranks before each optimizer step, for a
            model that is not wrapped in ``DistributedDataParallel`` and a loop that all-reduces
            by hand.
        fault_timeout: seconds a rank waits in a collective for a peer before counting it as
            failed (a step that raised on one rank then ends the search on every rank within
            about this time).
        reducer: the reduce point (a :class:`~lrfinder_plugins.Reducer`), to replace the one
            ``distributed`` builds (e.g. an Accelerate or Lightning strategy's).
        lookahead: fetch each step's batches at the end of the step before, so every rank knows
            before the next step whether data is left (``None``: when distributed).
        overlap: decide each step one step late: step k's reduce (and, on a GPU, the read of its
            loss) travels while step k+1 runs, and the step run past the stop is undone by the
            restore. The points, stop and state are the same as without it. ``None``: on when
            distributed or on CUDA, unless ``keep_weights`` or a ``scaler`` (a step it skips
            would shift the next one's LR) rule it out.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None,
        train_loader: Iterable[Any],
        *,
        device: str | torch.device | None = None,
        accumulation_steps: int = 1,
        max_grad_norm: float | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | None = None,
        scaler: Any = None,
        val_loader: Iterable[Any] | None = None,
        val_batches: int | None = None,
        val_batch_norm: str = "batch",
        schedulers: Sequence[Any] = (),
        keep_weights: bool = False,
        snapshot: str = "cpu",
        compute_loss: ComputeLoss | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
        all_reduce_grads: bool = False,
        fault_timeout: float = 30.0,
        reducer: Reducer | None = None,
        lookahead: bool | None = None,
        overlap: bool | None = None,
    ) -> None:
        check_model_and_optimizer(model, optimizer)
        check_grad_enabled("the LR range test")
        check_loss_fn("loss_fn", loss_fn)
        check_loss_fn("compute_loss", compute_loss)
        _check_loader("train_loader", train_loader)
        if val_loader is not None:
            _check_loader("val_loader", val_loader)
            if isinstance(val_loader, Iterator):
                raise TypeError(
                    f"val_loader is a one-shot iterator ({type(val_loader).__name__}), but it "
                    "is read again at every point; pass a DataLoader or a list of batches "
                    "(e.g. list(val_loader))"
                )
        if val_batches is not None:
            _validate.int_at_least("val_batches", val_batches, 1)
            if val_loader is None:
                raise ValueError(
                    f"val_batches={val_batches!r} without a val_loader: it counts validation "
                    "batches per point; pass val_loader=... too, or leave val_batches out"
                )
        self.accumulation_steps = _validate.int_at_least(
            "accumulation_steps", accumulation_steps, 1
        )
        if max_grad_norm is not None:
            _validate.positive_finite("max_grad_norm", max_grad_norm, "1.0")
        _validate.one_of("snapshot", snapshot, ("cpu", "disk"))
        _validate.one_of("val_batch_norm", val_batch_norm, ("batch", "running"))
        _validate.boolean("keep_weights", keep_weights)
        _validate.boolean("amp", amp)
        if amp_dtype is not None:
            if not isinstance(amp_dtype, torch.dtype):
                raise TypeError(
                    f"amp_dtype must be a torch.dtype or None, got {amp_dtype!r}; pass e.g. "
                    "amp_dtype=torch.bfloat16"
                )
            if amp_dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(
                    f"amp_dtype must be torch.float16 or torch.bfloat16 (autocast runs in one of "
                    f"them), got {amp_dtype}; for full precision leave amp off"
                )
            if not amp:
                raise ValueError(
                    f"amp_dtype={amp_dtype} without amp=True: it is the autocast dtype; pass "
                    "amp=True too, or leave amp_dtype out"
                )
        schedulers = check_schedulers(schedulers, optimizer)
        if scaler is not None and not isinstance(
            scaler, (torch.amp.GradScaler, torch.cuda.amp.GradScaler)
        ):
            raise TypeError(
                f"scaler must be a torch.amp.GradScaler or None, got {scaler!r} "
                f"({type(scaler).__name__}); "
                "pass e.g. scaler=torch.amp.GradScaler() or leave it out"
            )
        self.device = check_device(device)
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.train_loader, self.val_loader, self.val_batches = train_loader, val_loader, val_batches
        self.val_batch_norm = val_batch_norm
        self._unstarted: list[Any] = []  # persistent-worker loaders the search starts
        self.max_grad_norm, self.scaler, self.compute_loss = max_grad_norm, scaler, compute_loss
        self.schedulers, self.keep_weights, self.snapshot_to = (
            schedulers,
            keep_weights,
            snapshot,
        )
        self.ratios = group_ratios([float(g["lr"]) for g in optimizer.param_groups])
        self._tensor_lr = [isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups]
        self._autocast = self._autocast_factory(amp, amp_dtype)
        self.reducer = (
            reducer
            if reducer is not None
            else make_reducer(model, distributed, process_group, all_reduce_grads, fault_timeout)
        )
        self.process_group = process_group
        self.all_reduce_grads = all_reduce_grads
        self.lookahead = (self.reducer.world_size > 1) if lookahead is None else bool(lookahead)
        self.overlap = self._check_overlap(overlap)
        self._collectives = self.reducer.world_size > 1 and (
            all_reduce_grads or _has_collectives(model)
        )
        self.can_continue = True
        """False after a step that raised before its gradients were synchronised across ranks
        (the others may be stuck in that collective): the rank must not run another step."""
        self._no_sync = getattr(model, "no_sync", None) if accumulation_steps > 1 else None
        self._batches: Iterator[Any] | None = None
        self._ahead: list[Any] | None = None
        self._last_batches: list[Any] | None = None
        self._drained = False
        self._pinned: list[torch.Tensor] = []
        self._last_scale = 0.0
        self._held: torch.Tensor | None = None
        """The last micro-batch's loss, kept until the next one's backward ran, as a hand-written
        loop's ``loss`` variable is: its graph (no saved tensors once backward ran) keeps the
        parameters' gradient accumulators alive, so the next forward reuses them instead of
        building new ones (about 14,000 instructions per step on a 3-layer MLP, measured with
        callgrind). Set after backward, so a step that fails keeps nothing of its own graph."""
        # The optimizer's parameters only: those are the ones a scaler unscales before clipping.
        self._clip_params = [p for group in optimizer.param_groups for p in group["params"]]
        self._plain = self._is_plain()
        """One micro-batch, no scaler, clipping, validation, AMP, look-ahead or late decision, one
        process and the seams as defined here: each step runs as a hand-written loop's would;
        every step after the first returns its loss as a float (the session records a float with
        nothing more to reduce), the first a full outcome, with its samples."""

    def _is_plain(self) -> bool:
        seams = ("run", "micro_step", "forward", "backward", "optimizer_step", "_fetch", "_loss")
        return (
            self.accumulation_steps == 1
            and self.scaler is None
            and self.val_loader is None
            and self.max_grad_norm is None
            and not self.all_reduce_grads
            and not self.lookahead
            and not self.overlap
            and self.reducer.world_size == 1
            and self._autocast is contextlib.nullcontext
            and all(getattr(type(self), name) is getattr(TorchStep, name) for name in seams)
        )

    def _host_buffer(self, loss: torch.Tensor) -> torch.Tensor | None:
        """A pinned host buffer for a CUDA loss (two in turn: step k's is read before step k+2
        writes it); ``None`` for a loss already on the host."""
        if loss.device.type != "cuda":
            return None
        ring = self._pinned
        if len(ring) < 2 or ring[0].dtype != loss.dtype:
            ring[:] = [torch.empty((), dtype=loss.dtype, pin_memory=True) for _ in range(2)]
        ring.reverse()
        return ring[0]

    def _check_overlap(self, overlap: bool | None) -> bool:
        if overlap is not None:
            _validate.boolean("overlap", overlap)
        ruled_out = (
            "keep_weights=True (the step run past the stop would stay in the weights)"
            if self.keep_weights
            else "a scaler (a step it skips would shift the next step's LR)"
            if self.scaler is not None
            else None
        )
        if overlap and ruled_out is not None:
            raise ValueError(
                f"overlap=True cannot be combined with {ruled_out}; leave overlap=None (or "
                "False) to decide each step at its end"
            )
        if overlap is None:
            device = self.device or _first_device(self.model)
            overlap = ruled_out is None and (
                self.reducer.world_size > 1 or (device is not None and device.type == "cuda")
            )
        return overlap

    @property
    def group_ratios(self) -> tuple[float, ...]:
        """Each param group's LR as a fraction of the swept LR (read by ``range_test``)."""
        return self.ratios

    # -- protocol ------------------------------------------------------------------------------
    def snapshot(self) -> _torch_state.TrainingState:
        """Save the model, optimizer, schedulers, scaler and RNG (CPU memory or disk).

        A model left in eval mode is switched to train mode after the snapshot (the test trains
        it; the restore puts the modes back). One already in train mode is left as it is, so
        submodules the user froze in eval (e.g. BatchNorm) stay frozen.
        """
        state = _torch_state.capture(
            self.model,
            self.optimizer,
            schedulers=self.schedulers,
            scaler=self.scaler,
            keep_weights=self.keep_weights,
            where=self.snapshot_to,
            generators=loader_generators(self.train_loader, self.val_loader),
        )
        self._unstarted = unstarted_persistent_loaders(self.train_loader, self.val_loader)
        if not self.model.training:
            log.info("the model was in eval mode: the range test runs it in train mode")
            self.model.train()
        return state

    def restore(self, snapshot: _torch_state.TrainingState) -> None:
        """Put back everything :meth:`snapshot` saved, bitwise."""
        self._batches = None  # drop the loader iterator (and its workers)
        self._ahead = self._last_batches = self._held = None
        self._drained = False
        drop_iterators(self._unstarted)  # persistent workers the search started
        self._unstarted = []
        _torch_state.restore(
            snapshot, self.model, self.optimizer, schedulers=self.schedulers, scaler=self.scaler
        )

    def set_lr(self, lr: float) -> None:
        """Set every param group's LR to ``lr`` times its ratio."""
        for group, ratio, is_tensor in zip(
            self.optimizer.param_groups, self.ratios, self._tensor_lr
        ):
            if is_tensor:
                group["lr"].fill_(lr * ratio)
            else:
                group["lr"] = lr * ratio

    def run(self) -> StepOutcome | DeferredOutcome | float | None:
        """One optimizer step: its mean loss and samples, or ``None`` if the scaler skipped it.

        The parts are seams a subclass may replace (the Accelerate adapter does):
        :meth:`micro_step` (:meth:`forward` and :meth:`backward` of one micro-batch),
        :meth:`sync_gradients`, :meth:`clip_gradients` and :meth:`optimizer_step`.
        With ``overlap`` the loss comes back unread (a :class:`DeferredOutcome`), and a rank
        whose data ran out re-runs its last batches (a step that is never recorded) so that the
        collectives of the step the other ranks already started still match.
        """
        if self._plain:
            # The plain case: fetch, zero_grad, forward, backward, step and read the loss, as a
            # hand-written loop does (the same calls, in that order).
            cycle = self._batches
            if first := cycle is None:
                cycle = self._batches = self._cycle(self.train_loader, "train_loader")
            batch = next(cycle)  # StopIteration: the data ran out (run_step says so)
            if self.device is not None:
                batch = _to_device(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            try:
                loss = self._loss(batch)
            except StopIteration as error:
                raise RuntimeError(_MODEL_STOPPED) from error
            loss.backward()
            self._held = loss  # (see _held)
            self.optimizer.step()
            if first:  # the first step also says how many samples a step holds
                return StepOutcome.of_loss(loss.item(), _samples(batch))
            return loss.item()
        self.can_continue = not self._collectives  # until this step's collectives are done
        if self._batches is None:
            self._batches = self._cycle(self.train_loader, "train_loader")
            self._last_scale = self.scaler.get_scale() if self.scaler is not None else 0.0
        optimizer, scaler, steps = self.optimizer, self.scaler, self.accumulation_steps
        shadow = False
        if self._ahead is not None:
            batches = self._ahead
        elif self._drained and self._last_batches is not None:
            batches, shadow = self._last_batches, True  # overlap: keep step with the others
        else:
            batches = self._fetch()
        self._ahead = None
        # Kept only for a shadow step: deciding late, with the data checked a step ahead.
        self._last_batches = batches if self.overlap and self.lookahead else None
        optimizer.zero_grad(set_to_none=True)
        total: torch.Tensor | None = None
        samples = 0
        for i, raw in enumerate(batches):
            batch = _to_device(raw, self.device)
            samples += _samples(batch)
            if self._no_sync is not None and i < steps - 1:
                with self._no_sync():  # DDP: synchronise the gradients once, on the last one
                    loss = self.micro_step(batch)
            else:
                loss = self.micro_step(batch)
            self._held = loss  # (see _held)
            if steps == 1:
                total = loss  # read as it is (no tensor op a bare loop would not run)
            else:
                # Sum in float32 at least: bfloat16/float16 losses (AMP) would round the sum.
                detached = _widened(loss.detach())
                total = detached if total is None else total + detached
        if self.all_reduce_grads:
            self.sync_gradients()
        # Past the step's collectives: another step keeps the ranks in step.
        self.can_continue = True
        if self.max_grad_norm is not None:
            self.clip_gradients()
        self.optimizer_step()
        assert total is not None
        last = False
        if self.lookahead and not shadow:
            try:
                self._ahead = self._fetch()
            except StopIteration:
                last = self._drained = True
        if shadow:
            return StepOutcome.exhausted()
        if self.overlap and self.val_loader is None:
            late = _widened(total.detach())
            return _LateLoss(late, steps, samples, last, self._host_buffer(late))
        value = total.item() if steps == 1 else total.item() / steps
        if scaler is not None:
            # GradScaler lowers its scale exactly when it skipped the step for inf/NaN grads.
            scale = scaler.get_scale()
            skipped, self._last_scale = scale < self._last_scale, scale
            if skipped and math.isfinite(value):
                return StepOutcome(skipped=1, out_of_data=int(last))
        if self.val_loader is not None and math.isfinite(value):
            value = self._validate()
        return StepOutcome.of_loss(value, samples, last=last)

    def micro_step(self, batch: Any) -> torch.Tensor:
        """Forward and backward of one micro-batch (already on the device); returns its loss."""
        loss = self.forward(batch)
        self.backward(loss)
        return loss

    def forward(self, batch: Any) -> torch.Tensor:
        """The loss of one micro-batch, under autocast when ``amp`` is on."""
        try:
            if self._autocast is contextlib.nullcontext:
                return self._loss(batch)  # no AMP: no context to enter per micro-batch
            with self._autocast():
                return self._loss(batch)
        except StopIteration as error:
            # Only the data running out may end the test quietly (as PEP 479 does for
            # generators): a StopIteration from the user's model or loss is a bug to show.
            raise RuntimeError(_MODEL_STOPPED) from error

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch's loss: divided over the window, scaled under AMP."""
        steps = self.accumulation_steps
        scaled = loss if steps == 1 else loss / steps
        (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()

    def sync_gradients(self) -> None:
        """Average the gradients across ranks (``all_reduce_grads=True``: a model without DDP)."""
        from lrfinder_adapters.distributed import all_reduce_gradients

        all_reduce_gradients(self._clip_params, self.process_group)

    def clip_gradients(self) -> None:
        """Clip the total gradient norm to ``max_grad_norm`` (unscaled first under AMP)."""
        assert self.max_grad_norm is not None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self._clip_params, self.max_grad_norm)

    def optimizer_step(self) -> None:
        """Step the optimizer (through the scaler under AMP)."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def _fetch(self) -> list[Any]:
        assert self._batches is not None
        batches, steps = self._batches, self.accumulation_steps
        return [next(batches)] if steps == 1 else [next(batches) for _ in range(steps)]

    # -- helpers -------------------------------------------------------------------------------
    def _autocast_factory(
        self, amp: bool, dtype: torch.dtype | None
    ) -> Callable[[], contextlib.AbstractContextManager[Any]]:
        if not amp:
            return contextlib.nullcontext
        device_type = (self.device or next(self.model.parameters()).device).type
        dtype = dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        return functools.partial(torch.autocast, device_type=device_type, dtype=dtype)

    def _cycle(self, loader: Iterable[Any], name: str) -> Iterator[Any]:
        first_pass = True
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                if first_pass:
                    raise ValueError(f"{name} yielded no batches; give it at least one batch")
                return  # a one-shot iterator ran out: the driver stops as data_exhausted
            first_pass = False

    def _loss(self, batch: Any) -> torch.Tensor:
        if self.compute_loss is not None:
            return loss_tensor(self.compute_loss(self.model, batch), "compute_loss")
        model, loss_fn = self.model, self.loss_fn
        if isinstance(batch, (tuple, list)):
            if len(batch) != 2:
                raise TypeError(
                    f"a tuple/list batch must be (inputs, targets), got {len(batch)} items; pass "
                    "compute_loss=lambda model, batch: ... for other layouts"
                )
            inputs, targets = batch
        elif isinstance(batch, Mapping):
            if loss_fn is None:
                return loss_tensor(model(**batch), "model")
            key = next((k for k in TARGET_KEYS if k in batch), None)
            if key is None:
                raise TypeError(
                    f"a dict batch needs its targets under one of {list(TARGET_KEYS)}, got keys "
                    f"{sorted(batch)}; pass compute_loss=lambda model, batch: ... for other layouts"
                )
            targets = batch[key]
            input_key = next((k for k in INPUT_KEYS if k in batch), None)
            inputs = batch[input_key] if input_key else {k: v for k, v in batch.items() if k != key}
        else:
            raise TypeError(
                f"batches must be (inputs, targets) tuples/lists or dicts, got "
                f"{type(batch).__name__}; pass compute_loss=lambda model, batch: ... for others"
            )
        plain = type(inputs) is torch.Tensor or not isinstance(inputs, Mapping)
        outputs = model(inputs) if plain else model(**inputs)
        if loss_fn is None:
            raise TypeError("loss_fn is None but batches are (inputs, targets): pass a loss_fn")
        return loss_tensor(loss_fn(outputs, targets))

    @torch.no_grad()
    def _validate(self) -> float:
        assert self.val_loader is not None
        modules = list(self.model.modules())
        modes = [m.training for m in modules]
        self.model.eval()
        # A BatchNorm layer that trains normalises each validation batch with its own
        # statistics (train mode, its running statistics put back); a frozen one (eval mode)
        # keeps its running statistics, which the sweep does not move.
        norms = (
            [
                m
                for m, training in zip(modules, modes)
                if training and isinstance(m, _BatchNorm) and not isinstance(m, SyncBatchNorm)
            ]
            if self.val_batch_norm == "batch"
            else []
        )
        kept = [(buffer, buffer.clone()) for norm in norms for buffer in _running_stats(norm)]
        total: torch.Tensor | float = 0.0
        count = 0
        try:
            for batch in itertools.islice(self.val_loader, self.val_batches):
                # A batch of one sample has no batch statistics: its running ones, then
                # (as they were: each batch on its own statistics moves them, put back after).
                batch_stats = _samples(batch) > 1
                for norm in norms:
                    norm.training = batch_stats
                with self._autocast():
                    total = total + self._loss(_to_device(batch, self.device)).detach().float()
                if batch_stats:
                    _put_back(kept)
                count += 1
        finally:
            _put_back(kept)
            for module, mode in zip(modules, modes):
                module.training = mode
        if count == 0:
            raise ValueError("val_loader yielded no batches; give it at least one batch")
        return float(total) / count


def _put_back(saved: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy each saved value back into its buffer, in place."""
    for buffer, value in saved:
        buffer.copy_(value)


def _running_stats(norm: _BatchNorm) -> list[torch.Tensor]:
    """The buffers a BatchNorm layer updates in train mode (none without running statistics)."""
    buffers = (norm.running_mean, norm.running_var, norm.num_batches_tracked)
    return [b for b in buffers if b is not None]


class LearningRateFinder:
    """The LR range test for a plain PyTorch model, with the seed guide's API.

    Args:
        model: the model, already on ``device``.
        optimizer: its optimizer; several param groups keep their LR ratios.
        loss_fn: ``loss_fn(outputs, targets)`` (see :class:`TorchStep`), or ``None`` when the
            model returns its loss.
        device: where batches are moved (``None``: left where they are).
        progress: show a tqdm progress bar.
        **step_options: any other :class:`TorchStep` option (``accumulation_steps``,
            ``max_grad_norm``, ``amp``, ``scaler``, ``schedulers``, ``keep_weights``,
            ``snapshot``, ``compute_loss``).

    Example:
        >>> finder = LearningRateFinder(model, optimizer, loss_fn, device)  # doctest: +SKIP
        >>> lrs, losses, suggested_lr = finder.find_lr(train_loader, num_iter=100)  # doctest: +SKIP
        >>> finder.plot(output_path=Path("lr_finder_plot.png"))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None = None,
        device: str | torch.device | None = None,
        *,
        progress: bool = True,
        **step_options: Any,
    ) -> None:
        check_model_and_optimizer(model, optimizer)
        _validate.known_options("LearningRateFinder", step_options, _STEP_OPTIONS)
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.progress = _validate.boolean("progress", progress)
        self.step_options = step_options
        self.result: RangeTestResult | None = None
        """The last test's result (also after an interrupted test: its points so far)."""
        self._rank = 0

    def find_lr(
        self,
        train_loader: Iterable[Any],
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_iter: int = 100,
        smooth_factor: float = 0.05,
        diverge_threshold: float = 5.0,
        *,
        mode: str = "exponential",
        val_loader: Iterable[Any] | None = None,
        val_batches: int | None = None,
        method: str | None = None,
    ) -> tuple[list[float], list[float], float]:
        """Run the LR range test; the model, optimizer and RNG are restored afterwards.

        Args:
            train_loader: the training batches (cycled if shorter than ``num_iter``).
            start_lr: the first LR.
            end_lr: the last LR.
            num_iter: the most optimizer steps (points).
            smooth_factor: the moving average's weight on the past, in ``[0, 1)``: each smoothed
                loss is ``smooth_factor * previous + (1 - smooth_factor) * loss`` (bias
                corrected from the first point). 0 = no smoothing; higher = more smoothing.
            diverge_threshold: stop when the smoothed loss exceeds this times the best one.
            mode: ``"exponential"`` or ``"linear"`` LR spacing (or a plugin's schedule).
            val_loader: evaluate each point on these batches instead of the training loss.
            val_batches: how many validation batches per point (``None``: all).
            method: the suggestion method (``None``: the default, see ``lrfinder_plugins.suggest``).

        Returns:
            ``(lrs, losses, suggested_lr)``: the LR of each point, its smoothed loss, and the
            suggested LR (NaN, with a ``NoSuggestionWarning``, when the curve allows none).
            ``self.result`` holds everything (raw losses, param groups, stop reason).
        """
        arguments = dict(locals())  # every argument above, by name: prepare() checks them all
        del arguments["self"], arguments["train_loader"]
        self.run(train_loader, **arguments)
        assert self.result is not None
        suggestion = self.result.suggestion(method)
        lrs = self.result.lrs or (math.nan,)  # no point at all (data ran out before the first)
        log.info(
            "LR range test: %d points from %.2e to %.2e, stopped: %s, suggested LR %.2e",
            len(self.result),
            lrs[0],
            lrs[-1],
            self.result.stop_reason,
            suggestion.lr,
        )
        return list(self.result.lrs), list(self.result.smoothed_losses), suggestion.lr

    def run(self, train_loader: Iterable[Any], **arguments: Any) -> RangeTestResult:
        """Run the range test with :meth:`find_lr`'s ``arguments``; return the result (also in
        ``self.result``, which holds the points so far when the test raised) without computing a
        suggestion (``find_lr`` does, to return it)."""
        step, test = self.prepare(train_loader, **arguments)
        self._rank = step.reducer.rank
        try:
            self.result = run_range_test(step, test, progress=self.progress)
        except BaseException:
            self.result = test.result()
            raise
        return self.result

    def prepare(self, train_loader: Iterable[Any], **arguments: Any) -> tuple[TorchStep, RangeTest]:
        """Check every argument of :meth:`find_lr` and build its step and test; run nothing.

        ``arguments`` are :meth:`find_lr`'s keyword arguments (its defaults fill the rest).
        ``tune()`` calls it before its batch-size search, so a bad LR option fails at once.

        Raises:
            TypeError, ValueError: a bad argument (named, with its value and a fix).
        """
        _validate.known_options("find_lr", arguments, FIND_LR_DEFAULTS)
        a = {**FIND_LR_DEFAULTS, **arguments}
        start_lr, end_lr, num_iter = a["start_lr"], a["end_lr"], a["num_iter"]
        smooth_factor, diverge_threshold, mode = (
            a["smooth_factor"],
            a["diverge_threshold"],
            a["mode"],
        )
        val_loader, val_batches, method = a["val_loader"], a["val_batches"], a["method"]
        # The engine calls it ``smoothing``; the error must name the argument the user passed.
        _validate.in_unit_interval("smooth_factor", smooth_factor)
        # Checked now, not after the whole test has run: the method, and the registry itself
        # (a name two plugins register fails every lookup, the suggestion's at the end too).
        methods = tuple(registered_suggesters())
        if method is not None:
            _validate.one_of("method", method, methods)
        step = TorchStep(
            self.model,
            self.optimizer,
            self.loss_fn,
            train_loader,
            device=self.device,
            val_loader=val_loader,
            val_batches=val_batches,
            **self.step_options,
        )
        test = RangeTest(
            start_lr=start_lr,
            end_lr=end_lr,
            num_iter=num_iter,
            mode=mode,
            smoothing=smooth_factor,
            diverge_threshold=diverge_threshold,
            group_ratios=step.ratios,
        )
        return step, test

    def _require_result(self) -> RangeTestResult:
        if self.result is None:
            raise RuntimeError("no range test has run yet; call find_lr(train_loader) first")
        return self.result

    def suggestion(self, method: str | None = None, **options: Any) -> Suggestion:
        """The last test's suggestion by ``method`` (``None``: the default method)."""
        return self._require_result().suggestion(method, **options)

    def plot(
        self,
        output_path: str | Path | None = None,
        skip_start: int = 10,
        skip_end: int = 5,
        **options: Any,
    ) -> Figure:
        """Plot the last test: loss against LR (log x-axis), the suggestion in red.

        Args:
            output_path: save the figure as PNG there (parent directories are created); in a
                distributed test only rank 0 writes it (every rank holds the same result).
            skip_start: points left out at the start (noisy).
            skip_end: points left out at the end (divergence).
            **options: see :func:`lrfinder_plugins.plot.plot_range_test`.
        """
        if self._rank != 0:
            output_path = None
        return self._require_result().plot(
            output_path, skip_start=skip_start, skip_end=skip_end, **options
        )

    def apply_suggestion(
        self, suggestion: Suggestion | None = None, *, force: bool = False
    ) -> tuple[float, float]:
        """Set the optimizer's LRs, and move the attached schedulers with them, to a suggestion.

        Every param group gets its share (ratios kept). The schedulers passed as
        ``schedulers=[...]`` are moved consistently, keeping their shape: each LR they hold is
        multiplied by one factor per param group, so their next steps continue from the new LR.
        The factor makes the schedule's defining LR the suggestion's: for ``OneCycleLR`` and
        ``CyclicLR`` the peak (``max_lr``) becomes the suggestion's ``upper`` end (as
        :meth:`~lrfinder_plugins.Suggestion.one_cycle` does, or its ``lr`` when it has no range);
        for every other kind (``StepLR``, ``CosineAnnealing*``, ``LinearLR``, ``ConstantLR``,
        ``LambdaLR``, ``SequentialLR``, ``ChainedScheduler``, ``ReduceLROnPlateau``, ...) the base
        LR becomes the suggestion's ``lr``.

        Args:
            suggestion: the suggestion to apply (``None``: the last test's default one).
            force: apply a suggestion whose ``confidence`` is 0 (a flat, noisy or
                from-the-start diverging curve) anyway.

        Returns:
            ``(old, new)``: the largest group's LR before and after, as in the guide's
            ``Updated optimizer LR: 1.00e-03 → 3.16e-03``.

        Raises:
            ValueError: the suggestion has no LR, or has confidence 0 and ``force`` is not set,
                or the optimizer carries a scheduler's keys (``initial_lr``) but no scheduler was
                passed; the optimizer is left unchanged.
            TypeError: a scheduler is not one of torch's kinds (its use of the LR is unknown).
        """
        from lrfinder_plugins.suggest import LowConfidenceWarning, Suggestion

        _validate.boolean("force", force)
        if suggestion is None:
            with warnings.catch_warnings():  # refused below, with the reason, unless forced
                warnings.simplefilter("ignore", LowConfidenceWarning)
                suggestion = self.suggestion()
        elif not isinstance(suggestion, Suggestion):
            raise TypeError(
                f"suggestion must be a Suggestion (e.g. finder.suggestion('valley')) or None, got "
                f"{type(suggestion).__name__}"
            )
        if not suggestion.ok:
            raise ValueError(
                f"the suggestion has no LR ({suggestion.reason}); pick one from the plot"
            )
        if suggestion.confidence == 0 and not force:
            raise ValueError(
                f"the {suggestion.method!r} suggestion {suggestion.lr:.2e} has confidence 0: "
                f"{suggestion.reason}; the optimizer was left unchanged. Rerun the test as the "
                "reason says, or pass force=True to apply it anyway"
            )
        if suggestion.confidence == 0:
            log.warning(
                "applying a suggestion with confidence 0 (force=True): %s", suggestion.reason
            )
        schedulers = tuple(self.step_options.get("schedulers", ()))
        groups = self.optimizer.param_groups
        if len(suggestion.group_lrs) != len(groups):
            raise ValueError(
                f"the suggestion has {len(suggestion.group_lrs)} param group LR(s), the optimizer "
                f"{len(groups)} param groups; apply a suggestion from a test of this optimizer"
            )
        if not schedulers and any("initial_lr" in g for g in groups):
            raise ValueError(
                "the optimizer has an LR scheduler attached (its param groups carry "
                "'initial_lr'), but none was passed, so it cannot be moved with the LR; pass "
                "schedulers=[scheduler] to LearningRateFinder (or find_lr), or build the "
                "scheduler after apply_suggestion()"
            )
        old = max(float(g["lr"]) for g in groups)
        if schedulers:
            move_schedule(self.optimizer, schedulers, suggestion)
        else:
            for group, lr in zip(groups, suggestion.group_lrs):
                group["lr"] = lr
        new = max(float(g["lr"]) for g in groups)
        log.info("Updated optimizer LR: %.2e → %.2e", old, new)
        return old, new


FIND_LR_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(LearningRateFinder.find_lr).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
"""find_lr's arguments besides the loader, with their defaults (derived: they cannot drift)."""

_STEP_OPTIONS = frozenset(inspect.signature(TorchStep).parameters) - {
    # given to find_lr or LearningRateFinder by name, not as a pass-through option
    "model",
    "optimizer",
    "loss_fn",
    "train_loader",
    "device",
    "val_loader",
    "val_batches",
}
"""The TorchStep options LearningRateFinder passes through (derived, so they cannot drift)."""
STEP_OPTIONS = _STEP_OPTIONS
"""The public name of :data:`_STEP_OPTIONS`, for the other front ends (``tune``)."""


def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None,
    train_loader: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smooth_factor: float = 0.05,
    diverge_threshold: float = 5.0,
    mode: str = "exponential",
    device: str | torch.device | None = None,
    val_loader: Iterable[Any] | None = None,
    val_batches: int | None = None,
    progress: bool = True,
    **step_options: Any,
) -> RangeTestResult:
    """Run the LR range test and return the whole result (see :class:`LearningRateFinder`).

    Example:
        >>> result = find_lr(model, optimizer, loss_fn, train_loader)  # doctest: +SKIP
        >>> result.suggestion().lr  # doctest: +SKIP
    """
    # Named with every option find_lr takes, so a typo of a range-test argument (num_iters) is
    # pointed at it too, not only at the step options.
    _validate.known_options("find_lr", step_options, _STEP_OPTIONS | set(FIND_LR_DEFAULTS))
    finder = LearningRateFinder(
        model, optimizer, loss_fn, device, progress=progress, **step_options
    )
    # No suggestion computed here: the result computes one when asked (and caches its analysis).
    return finder.run(
        train_loader,
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        smooth_factor=smooth_factor,
        diverge_threshold=diverge_threshold,
        mode=mode,
        val_loader=val_loader,
        val_batches=val_batches,
    )

"""HuggingFace Accelerate: the range test and the batch-size search in an Accelerate loop.

After ``model, optimizer, loader = accelerator.prepare(...)``:

- :func:`find_lr` runs the range test through the accelerator: each point is one optimizer
  step of ``accelerator.gradient_accumulation_steps`` micro-batches, each under
  ``accelerator.accumulate(model)`` with ``accelerator.backward(loss)``, clipped with
  ``accelerator.clip_grad_norm_`` and stepped by the prepared optimizer, under the configured
  mixed precision. It is :class:`AcceleratorStep`, a :class:`~lrfinder_adapters.pytorch.TorchStep`
  whose seams go through the accelerator; the session's one reduce point makes every process
  record the mean loss and take the same decisions.
- :func:`find_batch_size` searches the largest batch that fits on every process (the trials run
  the unwrapped model under the accelerator's autocast: no collective inside a trial), and can
  keep a global batch by setting ``accelerator.gradient_accumulation_steps``.
- :func:`find_executable_batch_size` is accelerate's decorator, searching with our engine.

The model, optimizer, schedulers, grad scaler, RNG, the accelerator's step counter and gradient
state, and the prepared dataloaders' own counters come back exactly.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from lrfinder_adapters import require

require("accelerate", "accelerate")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils.memory import clear_device_cache  # noqa: E402

from lrfinder_adapters import _torch_state  # noqa: E402
from lrfinder_adapters._trials import check_pin_allocator, pin_once, run_measured  # noqa: E402
from lrfinder_adapters.batch_size import (  # noqa: E402
    check_noise_options,
    noise_scale_at_answer,
    with_optimizer_name,
)
from lrfinder_adapters.distributed import (  # noqa: E402
    DEFAULT_FAULT_TIMEOUT,
    TorchDistributedReducer,
    ddp_process_group,
    per_rank_target,
)
from lrfinder_adapters.probe import TorchProbe  # noqa: E402
from lrfinder_adapters.pytorch import STEP_OPTIONS, LossFn, TorchStep  # noqa: E402
from lrfinder_plugins.noise_scale import GNS_PRECISION  # noqa: E402
from lrfinder_plugins.spi import (  # noqa: E402
    BatchSizeResult,
    BatchSizeSearch,
    LocalReducer,
    NothingFitsError,
    RangeTest,
    RangeTestResult,
    Reducer,
    TrialReport,
    run_batch_size_search,
    run_range_test,
    search_with_probe,
)
from lrfinder_plugins.spi import validate as _validate  # noqa: E402

log = logging.getLogger("lrfinder_plugins")

R = TypeVar("R")


def _check_accelerator(accelerator: Any) -> Accelerator:
    if not isinstance(accelerator, Accelerator):
        raise TypeError(
            f"accelerator must be an accelerate.Accelerator, got {type(accelerator).__name__}; "
            "pass the Accelerator that prepared the model"
        )
    if str(accelerator.distributed_type).endswith(("DEEPSPEED", "MEGATRON_LM")):
        raise ValueError(
            f"distributed_type={accelerator.distributed_type}: its engine owns the optimizer "
            "step and partitions the optimizer state, which this search cannot save and put "
            "back exactly; run the search with the same model under plain DDP or FSDP "
            "(accelerate config without DeepSpeed), then train with DeepSpeed"
        )
    return accelerator


def accelerator_reducer(
    accelerator: Accelerator, model: Any = None, fault_timeout: float = DEFAULT_FAULT_TIMEOUT
) -> Reducer:
    """The reduce point for the accelerator's processes (the identity on one process).

    Accelerate runs its CPU and GPU processes on ``torch.distributed``, so the reduce point is
    :class:`~lrfinder_adapters.distributed.TorchDistributedReducer`, watching the DDP model's
    process group. Raises a ValueError for a multi-process backend without ``torch.distributed``
    (XLA/TPU): not supported.
    """
    if accelerator.num_processes == 1:
        return LocalReducer()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{accelerator.num_processes} processes of distributed type "
            f"{accelerator.distributed_type} without torch.distributed: only torch.distributed "
            "backends (multi-CPU, multi-GPU, FSDP) are supported"
        )
    return TorchDistributedReducer(fault_timeout=fault_timeout, watch=[ddp_process_group(model)])


class _AcceleratorState:
    """What a search changes in the accelerator itself, besides the model and optimizer."""

    def __init__(self, accelerator: Accelerator, loaders: Sequence[Any]) -> None:
        self.step = accelerator.step
        gradient_state = accelerator.gradient_state
        # GradientState shares one dict among its instances (a Borg): copy it, keep the lists'
        # identity out of it.
        self.gradient = {
            k: list(v) if isinstance(v, list) else v for k, v in vars(gradient_state).items()
        }
        self.loaders = [
            (loader, {k: getattr(loader, k) for k in _LOADER_COUNTERS if hasattr(loader, k)})
            for loader in loaders
        ]
        optimizers = accelerator._optimizers
        self.optimizers = [
            (o, {k: getattr(o, k) for k in _OPTIMIZER_FLAGS if hasattr(o, k)}) for o in optimizers
        ]

    def restore(self, accelerator: Accelerator) -> None:
        accelerator.step = self.step
        shared = vars(accelerator.gradient_state)
        shared.clear()
        shared.update({k: list(v) if isinstance(v, list) else v for k, v in self.gradient.items()})
        for obj, saved in [*self.loaders, *self.optimizers]:
            for key, value in saved.items():
                setattr(obj, key, value)


_LOADER_COUNTERS = ("iteration", "end_of_dataloader", "remainder")
"""A prepared dataloader's counters that iterating it changes (the epoch seed, the end flag)."""
_OPTIMIZER_FLAGS = ("_is_overflow", "_accelerate_step_called")
"""A prepared optimizer's per-step flags (``step_was_skipped``)."""


class AcceleratorStep(TorchStep):
    """One optimizer step through an ``Accelerator``: the range test's ``TrainingStep``.

    Args:
        accelerator: the accelerator that prepared ``model``, ``optimizer`` and the loaders.
        model: the prepared model.
        optimizer: the prepared optimizer (its inner torch optimizer is what is swept and
            restored; the prepared one steps, through the grad scaler under fp16).
        train_loader: the (prepared) training batches, already on the device.
        loss_fn: ``loss_fn(outputs, targets)`` (``None``: the model returns its loss, or pass
            ``compute_loss``).
        schedulers: prepared (or plain) LR schedulers: not stepped, restored afterwards.
        max_grad_norm: clip with ``accelerator.clip_grad_norm_`` (``None``: no clipping).
        fault_timeout: see :class:`~lrfinder_adapters.distributed.TorchDistributedReducer`.
        **options: other :class:`~lrfinder_adapters.pytorch.TorchStep` options
            (``compute_loss``, ``val_loader``, ``val_batches``, ``keep_weights``, ``snapshot``).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        optimizer: Any,
        train_loader: Iterable[Any],
        loss_fn: LossFn | None = None,
        *,
        schedulers: Sequence[Any] = (),
        max_grad_norm: float | None = None,
        fault_timeout: float = DEFAULT_FAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        self.accelerator = _check_accelerator(accelerator)
        self.prepared_optimizer = optimizer
        super().__init__(
            model,
            getattr(optimizer, "optimizer", optimizer),
            loss_fn,
            train_loader,
            accumulation_steps=accelerator.gradient_accumulation_steps,
            max_grad_norm=max_grad_norm,
            scaler=accelerator.scaler,
            schedulers=_inner_schedulers(schedulers),
            reducer=accelerator_reducer(accelerator, model, fault_timeout),
            **options,
        )
        self._no_sync = None  # accelerator.accumulate decides when the gradients synchronise
        self._micro = 0
        self._loaders = [
            loader for loader in (train_loader, options.get("val_loader")) if loader is not None
        ]

    def snapshot(self) -> _torch_state.TrainingState:
        """Save the model, optimizer, schedulers, scaler, RNG and the accelerator's counters."""
        saved = _AcceleratorState(self.accelerator, self._loaders)
        state = super().snapshot()
        state.extra["accelerator"] = saved
        self.accelerator.step, self._micro = 0, 0  # each point is one whole window
        return state

    def restore(self, snapshot: _torch_state.TrainingState) -> None:
        """Put everything back, the accelerator's counters and gradient state included."""
        try:
            super().restore(snapshot)
        finally:
            snapshot.extra["accelerator"].restore(self.accelerator)

    def micro_step(self, batch: Any) -> torch.Tensor:
        """One micro-batch under ``accelerator.accumulate(model)``.

        The last micro-batch of each point always synchronises (the accelerator's counter is
        set so), also when the end of a prepared dataloader made it synchronise earlier.
        """
        accelerator, steps = self.accelerator, self.accumulation_steps
        self._micro = (self._micro + 1) % steps
        if self._micro == 0:
            accelerator.step = steps - 1  # accumulate() counts this one as the window's last
        with accelerator.accumulate(self.model):
            loss = self.forward(batch)
            self.backward(loss)
        return loss

    def backward(self, loss: torch.Tensor) -> None:
        """``accelerator.backward(loss)``: divided over the window, scaled under fp16."""
        self.accelerator.backward(loss)

    def clip_gradients(self) -> None:
        """``accelerator.clip_grad_norm_`` (it unscales fp16 gradients first)."""
        assert self.max_grad_norm is not None
        self.accelerator.clip_grad_norm_(self._clip_params, self.max_grad_norm)

    def optimizer_step(self) -> None:
        """The prepared optimizer's step (grad scaler step and update under fp16)."""
        self.prepared_optimizer.step()


def find_lr(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    train_loader: Iterable[Any],
    loss_fn: LossFn | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    smooth_factor: float = 0.05,
    diverge_threshold: float | None = 5.0,
    mode: str = "exponential",
    progress: bool = True,
    **step_options: Any,
) -> RangeTestResult:
    """Run the LR range test in an Accelerate loop; everything is restored afterwards.

    Every process runs it; each point's loss is the mean over processes, every process stops at
    the same step and returns the same result; only the main process shows progress and calls
    the observers.

    Args:
        accelerator: the accelerator that prepared the rest.
        model, optimizer, train_loader: as returned by ``accelerator.prepare``.
        loss_fn: ``loss_fn(outputs, targets)``, or ``None`` (the model returns its loss, or
            ``compute_loss=`` computes it).
        start_lr, end_lr, num_iter, smooth_factor, diverge_threshold, mode: as
            :func:`lrfinder_adapters.pytorch.find_lr`.
        progress: show a progress bar (main process).
        **step_options: :class:`AcceleratorStep` options (``schedulers``, ``max_grad_norm``,
            ``compute_loss``, ``val_loader``, ``keep_weights``, ``snapshot``, ``fault_timeout``).

    Example:
        >>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # doctest: +SKIP
        >>> result = find_lr(accelerator, model, optimizer, loader, loss_fn)  # doctest: +SKIP
        >>> result.suggestion().lr  # doctest: +SKIP
    """
    # Every option find_lr takes, named: a misspelt or a peer's name (num_iters, smooth_f) is
    # pointed at the right one before anything runs.
    _validate.known_options("find_lr", step_options, _FIND_LR_OPTIONS)
    _validate.boolean("progress", progress)
    step = AcceleratorStep(accelerator, model, optimizer, train_loader, loss_fn, **step_options)
    test = RangeTest(
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        mode=mode,
        smoothing=smooth_factor,
        diverge_threshold=diverge_threshold,
        group_ratios=step.group_ratios,
    )
    return run_range_test(step, test, progress=progress and accelerator.is_main_process)


_FIND_LR_OPTIONS = (
    STEP_OPTIONS - {"accumulation_steps", "scaler", "reducer", "distributed", "process_group"}
    | {"val_loader", "val_batches"}
    | frozenset(inspect.signature(find_lr).parameters) - {"step_options"}
)
"""Every keyword :func:`find_lr` takes (its own, and the step options the accelerator does not
set itself: it sets the accumulation, the scaler and the process group)."""


def _inner_schedulers(schedulers: Any) -> Any:
    """The torch schedulers inside prepared ones; anything but a list or tuple (a single
    scheduler) as it is, for TorchStep's check to name the fix (``schedulers=[scheduler]``)."""
    if not isinstance(schedulers, (list, tuple)):
        return schedulers
    return [getattr(s, "scheduler", s) for s in schedulers]


def _amp_options(accelerator: Accelerator) -> dict[str, Any]:
    precision = str(accelerator.mixed_precision)
    if precision in ("fp16", "bf16"):
        return {"amp": True, "amp_dtype": torch.float16 if precision == "fp16" else torch.bfloat16}
    return {}


def find_batch_size(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: Any,
    loss_fn: LossFn | None = None,
    *,
    dataset: Any = None,
    make_loader: Callable[[int], Iterable[Any]] | None = None,
    step_fn: Callable[[int], Any] | None = None,
    mode: str = "guided",
    init_val: int = 2,
    max_trials: int = 25,
    steps_per_trial: int = 3,
    max_val: int | None = 8192,
    margin: float = 0.05,
    target_batch: int | None = None,
    set_accumulation: bool = True,
    memory_budget: int | None = None,
    fault_timeout: float = DEFAULT_FAULT_TIMEOUT,
    progress: bool = True,
    pin_allocator: bool | None = None,
    noise_scale: bool = False,
    gns_precision: float = GNS_PRECISION,
    gns_max_steps: int = 50,
    **step_options: Any,
) -> BatchSizeResult:
    """The largest per-process batch that fits on every process, in an Accelerate program.

    Each trial runs ``steps_per_trial`` optimizer steps of the unwrapped model under the
    accelerator's mixed precision (no collective inside a trial); every process agrees on each
    trial (it fits only if it fitted everywhere), so all end on the same size. The state is
    restored after every trial.

    Args:
        accelerator: the accelerator that prepared the model and optimizer.
        model, optimizer: as returned by ``accelerator.prepare``.
        loss_fn, dataset, make_loader, step_fn, mode, init_val, max_trials, steps_per_trial,
            max_val, margin, memory_budget, pin_allocator: as
            :func:`lrfinder_adapters.batch_size.find_batch_size` (the same trials: the same
            memory meter, and glibc's allocator pinned before the first trial under a finite
            ``RLIMIT_AS``, logged; ``pin_allocator=False`` leaves it alone).
        target_batch: a global batch to keep (per-process batch x processes x accumulation).
        set_accumulation: with ``target_batch``, set ``accelerator.gradient_accumulation_steps``
            to the result's accumulation steps.
        fault_timeout: see :class:`~lrfinder_adapters.distributed.TorchDistributedReducer`.
        progress: show a progress bar (main process).
        noise_scale, gns_precision, gns_max_steps: measure the gradient noise scale at the
            answer (``result.noise_scale``, read by ``result.recommendation``), as
            :func:`lrfinder_adapters.batch_size.find_batch_size` does: the same measuring
            steps through the same trial runner (two micro-batches per step on one process;
            under several processes one per rank, through the prepared model), the state
            restored after.
        **step_options: ``TorchStep`` options for the trials (``max_grad_norm``,
            ``compute_loss``, ``schedulers``, ``snapshot``).

    Example:
        >>> found = find_batch_size(accelerator, model, optimizer, loss_fn, dataset=train_set)  # doctest: +SKIP
    """
    _check_accelerator(accelerator)
    check_noise_options(noise_scale, gns_precision, gns_max_steps, step_fn=step_fn)
    target_batch = per_rank_target(target_batch, accelerator.num_processes)
    schedulers = _inner_schedulers(step_options.pop("schedulers", ()))
    inner = getattr(optimizer, "optimizer", optimizer)  # AcceleratedOptimizer wraps it
    trial_options = {
        **_amp_options(accelerator),
        **step_options,
        "scaler": accelerator.scaler,
        "schedulers": schedulers,
    }
    probe = TorchProbe(
        model,
        inner,
        loss_fn,
        dataset=dataset,
        make_loader=make_loader,
        step_fn=step_fn,
        device=accelerator.device,
        memory_budget=memory_budget,
        distributed=False,
        pin_allocator=pin_allocator,
        **trial_options,
    )
    probe.reducer = accelerator_reducer(accelerator, model, fault_timeout)
    result = search_with_probe(
        probe,
        progress=progress and accelerator.is_main_process,
        mode=mode,
        init_val=init_val,
        max_trials=max_trials,
        steps_per_trial=steps_per_trial,
        max_val=max_val,
        margin=margin,
        target_batch=target_batch,
    )
    result = with_optimizer_name(result, inner)
    if noise_scale:
        result = noise_scale_at_answer(
            probe,
            result,
            model,
            inner,
            loss_fn,
            dataset=dataset,
            make_loader=make_loader,
            loader_options=None,
            device=accelerator.device,
            precision=gns_precision,
            max_steps=gns_max_steps,
            step_options=trial_options,
        )
    if target_batch is not None and set_accumulation:
        accelerator.gradient_accumulation_steps = result.accumulation_steps
        log.info("gradient_accumulation_steps set to %d", result.accumulation_steps)
    return result


class _CallProbe:
    """A batch probe whose trial is one call of the user's function at the proposed size.

    The call runs through the same trial runner as :func:`find_batch_size`'s
    (:func:`lrfinder_adapters._trials.run_measured`): glibc's allocator is pinned before the
    first call (``pin_allocator``), an out-of-memory error ends the trial as an outcome, and
    with ``measure`` the call runs under the device's memory meter
    (:func:`lrfinder_adapters._memory.make_meter`), its phases marked by the step hooks of the
    accelerator's optimizer: the per-phase peaks and the capacity are what the guided search
    predicts from. (Not the per-operation profile: a call loads its own batches, and a loader
    runs more operations at a larger size, so the moments do not line up between sizes.)
    Unmeasured (the other modes, or no accelerator whose optimizer marks the phases), a call
    costs what it costs alone.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        accelerator: Accelerator | None,
        reducer: Reducer,
        *,
        measure: bool = False,
        pin_allocator: bool | None = None,
    ) -> None:
        self.function, self.args, self.kwargs = function, args, dict(kwargs)
        self.accelerator, self.reducer = accelerator, reducer
        self.pin_allocator = pin_allocator
        # Taken now: accelerator.free_memory() (after a failed call) forgets its optimizers.
        prepared = [] if accelerator is None else list(accelerator._optimizers)
        self.optimizer = getattr(prepared[0], "optimizer", prepared[0]) if prepared else None
        self.measure = measure and self.optimizer is not None
        self.device = _call_device(accelerator)
        self.values: dict[int, Any] = {}
        self._returned = True

    def snapshot(self) -> _torch_state.RngState:
        """The RNG: every trial (and the answer's call) starts from the same random state."""
        return _torch_state.RngState.capture()

    def restore(self, rng: _torch_state.RngState) -> None:
        """Put the RNG back; after a call that raised, free what it left first (outside any
        ``except`` block, so its traceback no longer pins its tensors)."""
        if not self._returned:
            if self.accelerator is not None:
                self.accelerator.free_memory()
            clear_device_cache(garbage_collection=True)
        rng.restore()

    def try_batch_size(self, size: int, steps: int, *, measure: bool = True) -> TrialReport:
        """Call the function at ``size``; its out-of-memory error ends the trial. Unmeasured
        where the search reads no peak of it (``measure=False``)."""
        self.pin_allocator = pin_once(self.pin_allocator)
        if not (self.measure and measure):
            return self._call_unmeasured(size, steps)
        self._returned = False

        def calls(_meter: Any) -> Any:
            def call() -> None:
                self.values[size] = self.function(size, *self.args, **self.kwargs)

            while True:
                yield call

        outcome = run_measured(self.device, None, calls, 1, optimizer=self.optimizer)
        self._returned = outcome.fitted
        return TrialReport(
            fitted=outcome.fitted,
            steps=steps if outcome.fitted else 0,
            peak_bytes=dict(outcome.phase_peaks) or None,
            capacity_bytes=outcome.capacity,
            seconds=outcome.seconds,
            error=outcome.error,
        )

    def _call_unmeasured(self, size: int, steps: int) -> TrialReport:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        self._returned = False
        self.values[size] = self.function(size, *self.args, **self.kwargs)
        self._returned = True
        return TrialReport(
            fitted=True, steps=steps, peak_bytes=torch.cuda.max_memory_allocated() if cuda else None
        )


def _call_device(accelerator: Accelerator | None) -> torch.device:
    """Where the decorated function's tensors live: the accelerator's device, else the current
    CUDA device once CUDA is in use, else the CPU."""
    if accelerator is not None:
        return torch.device(accelerator.device)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def find_executable_batch_size(
    function: Callable[..., R] | None = None,
    *,
    starting_batch_size: int = 128,
    reduce_batch_size_fn: Callable[[], int] | None = None,
    mode: str | None = None,
    accelerator: Accelerator | None = None,
    max_trials: int | None = None,
    max_val: int | None = 8192,
    margin: float = 0.05,
    fault_timeout: float = DEFAULT_FAULT_TIMEOUT,
    progress: bool = False,
    pin_allocator: bool | None = None,
) -> Any:
    """accelerate's decorator, searching with lrfinder's engine; every process agrees.

    The decorated function takes the batch size as its first argument and is called without
    it, as with accelerate's. Each call is one trial: it fits if it returns, it does not if it
    raises an out-of-memory error (any backend's, classified by the ``lrfinder_is_oom``
    hook); any other error propagates. The decorated call returns the function's return value
    at the size the search ends on (a size whose call returned).

    Args:
        function: the function to wrap (the decorator also works as a factory).
        starting_batch_size: the first size tried.
        reduce_batch_size_fn: accelerate's option, kept: the next size after an out-of-memory
            one (no arguments; implies ``mode="shrink"``).
        mode: ``"shrink"`` (accelerate's policy: 90% after each failure, the first size that
            runs), or our searches ``"guided"``, ``"binsearch"``, ``"power"``, which also grow
            and stop close below the limit: the function then runs several times, so give it
            a few steps' worth of work. Default: ``"shrink"`` with ``reduce_batch_size_fn``,
            else ``"guided"``.
        accelerator: its ``free_memory()`` runs after every trial (outside the ``except``
            block, so the failed call's tensors are gone), and its processes agree on each
            trial.
        max_trials: the most calls (``None``: unlimited when shrinking, as accelerate's, else
            25).
        max_val, margin: as :class:`~lrfinder_plugins.BatchSizeSearch` (the search modes).
        fault_timeout: see :class:`~lrfinder_adapters.distributed.TorchDistributedReducer`.
        progress: show a progress bar (main process).
        pin_allocator: as :func:`find_batch_size`: ``None`` pins glibc's allocator before the
            first call under a finite ``RLIMIT_AS`` (logged), ``False`` leaves it alone. In
            ``"guided"`` mode with an ``accelerator`` that prepared an optimizer, each call
            also runs under the memory meter the search predicts from (a dispatch mode: each
            operation costs a little more); otherwise the function runs unmeasured and the
            search doubles and bisects.

    Raises:
        RuntimeError: even a batch of one ran out of memory ("No executable batch size found,
            reached zero.", as accelerate says).
        TypeError: the batch size was passed by the caller too.

    Example:
        >>> @find_executable_batch_size(starting_batch_size=128, accelerator=accelerator)  # doctest: +SKIP
        ... def train(batch_size, model, optimizer):
        ...     ...
        >>> train(model, optimizer)  # doctest: +SKIP
    """
    if function is None:
        return functools.partial(
            find_executable_batch_size,
            starting_batch_size=starting_batch_size,
            reduce_batch_size_fn=reduce_batch_size_fn,
            mode=mode,
            accelerator=accelerator,
            max_trials=max_trials,
            max_val=max_val,
            margin=margin,
            fault_timeout=fault_timeout,
            progress=progress,
            pin_allocator=pin_allocator,
        )
    if accelerator is not None:
        _check_accelerator(accelerator)
    check_pin_allocator(pin_allocator)
    if reduce_batch_size_fn is not None and not callable(reduce_batch_size_fn):
        raise TypeError("reduce_batch_size_fn must be callable (no arguments -> the next size)")
    chosen = mode or ("shrink" if reduce_batch_size_fn is not None else "guided")
    shrink = None if reduce_batch_size_fn is None else (lambda size: reduce_batch_size_fn())
    if starting_batch_size == 0:
        starting_batch_size = -1  # accelerate's message below, before any call
    parameters = list(inspect.signature(function).parameters)

    @functools.wraps(function)
    def decorated(*args: Any, **kwargs: Any) -> R:
        if len(parameters) < len(args) + 1:
            given = ", ".join(f"{n}={v!r}" for n, v in zip(parameters[1:], args[1:]))
            raise TypeError(
                f"Batch size was passed into `{function.__name__}` as the first argument when "
                f"called. Remove this as the decorator already does so: "
                f"`{function.__name__}({given})`"
            )
        if starting_batch_size < 1:
            raise RuntimeError("No executable batch size found, reached zero.")
        search = BatchSizeSearch(
            mode=chosen,
            init_val=starting_batch_size,
            max_trials=max_trials or (10**9 if chosen == "shrink" else 25),
            steps_per_trial=1,
            max_val=None if max_val is None else max(max_val, starting_batch_size),
            margin=margin,
            shrink=shrink,
        )
        reducer = (
            accelerator_reducer(accelerator, None, fault_timeout)
            if accelerator is not None
            else LocalReducer()
        )
        probe = _CallProbe(
            function,
            args,
            kwargs,
            accelerator,
            reducer,
            measure=chosen == "guided",
            pin_allocator=pin_allocator,
        )
        main = accelerator is None or accelerator.is_main_process
        try:
            found = run_batch_size_search(probe, search, progress=progress and main)
        except NothingFitsError as error:
            raise RuntimeError("No executable batch size found, reached zero.") from error
        assert found.batch_size is not None
        return probe.values[found.batch_size]  # type: ignore[no-any-return]

    return decorated

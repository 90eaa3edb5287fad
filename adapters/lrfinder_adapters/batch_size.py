"""The batch-size finder for a plain PyTorch model, and ``tune()``: batch size first, then LR.

:func:`find_batch_size` drives a :class:`~lrfinder_plugins.BatchSizeSearch` with real training
steps, through the engine's batch-size driver and the raw-PyTorch probe
(:class:`~lrfinder_adapters.probe.TorchProbe`, whose trials are
:class:`lrfinder_adapters._trials.Trials`); the driver restores the model, optimizer,
schedulers, scaler and RNG exactly after every trial.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lrfinder_adapters import require

require("torch", "torch")

import torch  # noqa: E402

from lrfinder_adapters._trials import STEP_OPTIONS as TRIAL_STEP_OPTIONS  # noqa: E402
from lrfinder_adapters._trials import StepFn, cycle  # noqa: E402
from lrfinder_adapters.distributed import per_rank_target, unwrap  # noqa: E402
from lrfinder_adapters.gradient_noise import NoiseScaleMonitor, measure_during  # noqa: E402
from lrfinder_adapters.probe import TorchProbe  # noqa: E402
from lrfinder_adapters.pytorch import (  # noqa: E402
    FIND_LR_DEFAULTS,
    STEP_OPTIONS,
    LearningRateFinder,
    LossFn,
    TorchStep,
    find_lr,
)
from lrfinder_plugins.noise_scale import (  # noqa: E402
    GNS_PRECISION,
    KNEE_TOLERANCE,
    check_precision,
)
from lrfinder_plugins.spi import (  # noqa: E402
    BatchSizeResult,
    JsonFile,
    RangeTestResult,
    deferred_sigint,
    search_with_probe,
)
from lrfinder_plugins.spi import validate as _validate  # noqa: E402

log = logging.getLogger("lrfinder_plugins")


_LOADER_OPTIONS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)
"""The ``DataLoader`` settings a resized copy keeps (those this torch's DataLoader has)."""


def resize_dataloader(loader: Any, batch_size: int) -> torch.utils.data.DataLoader[Any]:
    """A copy of ``loader`` that yields batches of ``batch_size``, all else the same.

    The copy shares the dataset, the sampler (so shuffling draws as the original would), the
    collate function, workers, pinning, ``drop_last`` and the generator. For a loader passed
    straight to ``Trainer.fit`` (Lightning's own batch-size finder refuses these) and for an
    iterable-style dataset (batched by the loader).

    Raises:
        TypeError: not a plain ``torch.utils.data.DataLoader`` (a subclass may take other
            arguments: build it at the new size yourself).
        ValueError: the loader does not batch (``batch_size=None``) or a custom
            ``batch_sampler`` decides the batches, so there is no batch size to change.

    Example:
        >>> bigger = resize_dataloader(DataLoader(dataset, batch_size=32, shuffle=True), 256)  # doctest: +SKIP
    """
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset

    from lrfinder_plugins.spi import validate

    batch_size = validate.int_at_least("batch_size", batch_size, 1)
    if type(loader) is not DataLoader:
        raise TypeError(
            f"the batch-size search can resize a torch.utils.data.DataLoader only, got "
            f"{type(loader).__name__}; build the loader in train_dataloader() from a batch_size "
            "attribute (or pass a plain DataLoader)"
        )
    if loader.batch_size is None and type(loader.batch_sampler) is not BatchSampler:
        what = (
            "batch_size=None (the dataset yields whole batches)"
            if loader.batch_sampler is None
            else f"a custom batch_sampler ({type(loader.batch_sampler).__name__})"
        )
        raise ValueError(
            f"this DataLoader has {what}, so it has no batch size to change; give it a "
            "batch_size (and a sampler) instead, or build it in train_dataloader() from a "
            "batch_size attribute"
        )
    options = {name: getattr(loader, name) for name in _LOADER_OPTIONS if hasattr(loader, name)}
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    sampler, drop_last = loader.sampler, loader.drop_last
    batch_sampler = loader.batch_sampler
    if loader.batch_size is None and isinstance(batch_sampler, BatchSampler):
        sampler, drop_last = batch_sampler.sampler, batch_sampler.drop_last  # passed explicitly
    iterable = isinstance(loader.dataset, IterableDataset)
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        sampler=None if iterable else sampler,
        drop_last=drop_last,
        **options,
    )


def find_batch_size(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None = None,
    *,
    dataset: Any = None,
    make_loader: Callable[[int], Iterable[Any]] | None = None,
    step_fn: StepFn | None = None,
    mode: str = "guided",
    init_val: int = 2,
    max_trials: int = 25,
    steps_per_trial: int = 3,
    max_val: int | None = 8192,
    margin: float = 0.05,
    target_batch: int | None = None,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    loader_options: Mapping[str, Any] | None = None,
    distributed: bool | None = None,
    process_group: Any = None,
    all_reduce_grads: bool = False,
    fault_timeout: float = 30.0,
    pin_allocator: bool | None = None,
    knee_tolerance: float = KNEE_TOLERANCE,
    noise_scale: bool = False,
    gns_precision: float = GNS_PRECISION,
    gns_max_steps: int = 50,
    **step_options: Any,
) -> BatchSizeResult:
    """Find the largest batch size that trains without running out of memory.

    Each trial runs ``steps_per_trial`` real optimizer steps at one size (so the optimizer's
    state is allocated, as on Adam's first step) and measures the peak memory; an
    out-of-memory error ends the trial, the memory is freed and the search goes on. The model,
    optimizer, schedulers, scaler and RNG are restored bitwise after every trial and at the
    end; any other exception is re-raised unchanged after the restore.

    Args:
        model: the model, already on its device.
        optimizer: its optimizer (its state is allocated and measured in every trial).
        loss_fn: ``loss_fn(outputs, targets)`` for ``dataset=``/``make_loader=`` batches (see
            :class:`~lrfinder_adapters.pytorch.TorchStep`); unused with ``step_fn=``.
        dataset: a map-style dataset: each trial loads ``DataLoader(dataset, batch_size=size,
            shuffle=False, drop_last=True, **loader_options)``; its length bounds the search.
        make_loader: ``make_loader(batch_size)`` returning batches, for any other data pipeline.
        step_fn: ``step_fn(batch_size)`` running one whole training step (forward, backward,
            ``optimizer.step()``) at that size, for any other loop.
        mode: ``"guided"`` (default), ``"binsearch"`` or ``"power"``.
        init_val: the first size tried.
        max_trials: the most trials, fitted or not.
        steps_per_trial: optimizer steps per trial (>= 1; a size fits only if all ran).
        max_val: the largest size tried (``None``: no limit but the dataset length).
        margin: the share of the limit kept free (the answer is at most ``1 - margin`` times
            the largest size not known to fail).
        target_batch: a global batch to keep: the result's ``accumulation_steps`` times its
            ``batch_size`` equals it exactly.
        device: where batches are moved (``None``: the model's device).
        memory_budget: bytes the training may use at its peak (model, optimizer state and
            activations included): a trial over it counts as out of memory. On CPU this is how
            to search without exhausting the machine; on CUDA it keeps part of the card free.
        progress: show a tqdm progress bar (one tick per trial).
        loader_options: extra ``DataLoader`` arguments for ``dataset=`` (``collate_fn``,
            ``num_workers``, ...).
        distributed: search on every rank of a ``torch.distributed`` process group (``None``:
            whenever one of more than one process is initialised). Each rank runs each trial
            at ``batch_size`` per rank; it fits only if it fitted on every rank, and every rank
            ends on the same answer. ``target_batch`` is then the global batch (per-rank batch
            x ranks x accumulation steps).
        process_group: the ranks that search together (``None``: the default group).
        all_reduce_grads: the model is not wrapped in DDP and the loop averages gradients by
            hand (accepted so that :func:`tune` can pass it on; trials do not synchronise).
        fault_timeout: seconds a rank waits for a peer before counting it as failed.
        pin_allocator: ``None`` (default): on glibc under a finite ``RLIMIT_AS``, pin the C
            allocator before the first trial (``mallopt``: one arena, a fixed mmap threshold),
            so that what fits depends on the size alone; it is logged and lasts for the process.
            ``True``: pin on glibc whatever the limit; ``False``: leave the allocator alone.
        knee_tolerance: the share of the best throughput the result's ``knee`` may lose.
        noise_scale: after the search, measure the gradient noise scale at the answer
            (``result.noise_scale``, used by ``result.recommendation``): training steps at
            ``batch_size`` of two accumulated micro-batches on one process (one per rank under
            DDP), until the interval's relative half-width is ``gns_precision`` or
            ``gns_max_steps`` steps ran; the state is restored after, as for the trials.
        gns_precision: the relative half-width of the interval at which the measurement stops.
        gns_max_steps: the most optimizer steps the measurement runs (>= 3).
        **step_options: ``TorchStep`` options: ``max_grad_norm``, ``amp``, ``amp_dtype``,
            ``scaler``, ``schedulers``, ``snapshot``, ``compute_loss``.

    Returns:
        The result: ``batch_size`` (a size that ran for all ``steps_per_trial`` steps),
        ``accumulation_steps``, every trial and the stop reason; the throughput of every trial,
        the ``knee``, the ``noise_scale`` (with ``noise_scale=True``) and the
        ``recommendation``.

    Raises:
        TypeError, ValueError: bad arguments (before anything runs).
        NothingFitsError: even a batch of one ran out of memory (``error.result`` has the
            trials).

    Example:
        >>> result = find_batch_size(model, optimizer, loss_fn, dataset=train_set)  # doctest: +SKIP
        >>> loader = DataLoader(train_set, batch_size=result.batch_size)  # doctest: +SKIP
    """
    # Every option named (a typo gets the nearest of all of them, not of the step options only).
    _validate.known_options("find_batch_size", step_options, _FIND_BATCH_SIZE_OPTIONS)
    probe = TorchProbe(  # validates, and runs nothing yet
        model,
        optimizer,
        loss_fn,
        dataset=dataset,
        make_loader=make_loader,
        step_fn=step_fn,
        device=device,
        memory_budget=memory_budget,
        loader_options=loader_options,
        distributed=distributed,
        process_group=process_group,
        all_reduce_grads=all_reduce_grads,
        fault_timeout=fault_timeout,
        pin_allocator=pin_allocator,
        **step_options,
    )
    check_noise_options(noise_scale, gns_precision, gns_max_steps, step_fn=step_fn)
    result = search_with_probe(
        probe,
        progress=progress,
        mode=mode,
        init_val=init_val,
        max_trials=max_trials,
        steps_per_trial=steps_per_trial,
        max_val=max_val,
        margin=margin,
        target_batch=per_rank_target(target_batch, probe.reducer.world_size),
        knee_tolerance=knee_tolerance,
    )
    result = with_optimizer_name(result, optimizer)
    if not noise_scale:
        return result
    return noise_scale_at_answer(
        probe,
        result,
        model,
        optimizer,
        loss_fn,
        dataset=dataset,
        make_loader=make_loader,
        loader_options=loader_options,
        device=device,
        precision=gns_precision,
        max_steps=gns_max_steps,
        step_options=step_options,
    )


_FIND_BATCH_SIZE_OPTIONS = TRIAL_STEP_OPTIONS | (
    frozenset(inspect.signature(find_batch_size).parameters) - {"step_options"}
)
"""Every keyword :func:`find_batch_size` takes (its own and the trials' step options)."""


def with_optimizer_name(result: BatchSizeResult, optimizer: Any) -> BatchSizeResult:
    """``result`` with its optimizer's class name in ``options["optimizer"]``, which the
    recommendation reads for the LR rule when the batch changes (linear for SGD, square root
    for Adam-style: :func:`lrfinder_plugins.noise_scale.lr_rule_for`); every adapter's search
    records it."""
    return dataclasses.replace(
        result, options={**result.options, "optimizer": type(optimizer).__name__}
    )


def check_noise_options(
    noise_scale: Any, gns_precision: Any, gns_max_steps: Any, *, step_fn: Any = None
) -> None:
    """Validate the ``noise_scale=``, ``gns_precision=``, ``gns_max_steps=`` options of a
    batch-size search (every adapter's: the same rules), before anything runs.

    Raises:
        TypeError, ValueError: naming the option, its value and the fix.
    """
    _validate.boolean("noise_scale", noise_scale)
    if noise_scale:
        check_precision("gns_precision", gns_precision)
        _validate.int_at_least("gns_max_steps", gns_max_steps, 3)
        if step_fn is not None:
            raise TypeError(
                "noise_scale=True needs dataset= or make_loader=: a step_fn runs whole steps, "
                "so the micro-batches' gradients cannot be read; measure in your loop with "
                "lrfinder_adapters.gradient_noise.NoiseScaleMonitor instead"
            )


def noise_scale_at_answer(
    probe: TorchProbe,
    result: BatchSizeResult,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None,
    *,
    dataset: Any,
    make_loader: Callable[[int], Iterable[Any]] | None,
    loader_options: Mapping[str, Any] | None,
    device: str | torch.device | None,
    precision: float,
    max_steps: int,
    step_options: Mapping[str, Any],
) -> BatchSizeResult:
    """``result`` with the gradient noise scale measured at its answer (``noise_scale``, and
    the ``noise_scale_precision`` option): training steps through the probe's trial runner with
    a :class:`~lrfinder_adapters.gradient_noise.NoiseScaleMonitor` attached, the state restored
    after (the raw PyTorch and Accelerate searches share it). Unchanged when nothing fitted."""
    if result.batch_size is None:
        return result
    loader = (
        make_loader(result.batch_size)
        if make_loader is not None
        else _shuffled_loader(dataset, result.batch_size, loader_options)
    )
    measured = _measure_noise_scale(
        probe,
        model,
        optimizer,
        loss_fn,
        loader,
        result.batch_size,
        device=device,
        precision=precision,
        max_steps=max_steps,
        step_options=step_options,
    )
    options = {**result.options, "noise_scale_precision": precision}
    return dataclasses.replace(result, options=options, noise_scale=measured)


def _shuffled_loader(dataset: Any, size: int, loader_options: Mapping[str, Any] | None) -> Any:
    from torch.utils.data import DataLoader

    options = {"shuffle": True, "drop_last": True, **(loader_options or {})}
    return DataLoader(dataset, batch_size=size, **options)


def _measure_noise_scale(
    probe: TorchProbe,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None,
    loader: Iterable[Any],
    size: int,
    *,
    device: str | torch.device | None,
    precision: float,
    max_steps: int,
    step_options: Mapping[str, Any],
) -> Any:
    """Training steps at ``size`` with the monitor attached; the state is restored after.

    On one process each step accumulates two micro-batches of ``size`` (small: one, big: the
    window); under DDP each rank runs one micro-batch through the DDP model (small: a rank's,
    big: the all-reduced one).
    """
    from lrfinder_adapters._trials import device_of

    distributed = probe.reducer.world_size > 1
    accumulation = 1 if distributed else 2
    runner = model if distributed else unwrap(model)
    step = TorchStep(
        runner,
        optimizer,
        loss_fn,
        cycle(loader),
        device=device_of(model, device),
        distributed=False,
        lookahead=False,
        overlap=False,  # each step ends before the next: the monitor closes its window in it
        accumulation_steps=accumulation,
        **{k: v for k, v in step_options.items() if k not in ("snapshot", "overlap")},
    )
    snapshot = probe.snapshot()
    monitor = NoiseScaleMonitor(
        runner,
        optimizer,
        micro_batch_size=size,
        accumulation_steps=accumulation,
        scaler=step_options.get("scaler"),
    )
    try:
        estimate = measure_during(monitor, step.run, precision=precision, max_steps=max_steps)
    finally:
        monitor.close()
        with deferred_sigint():
            probe.restore(snapshot)
        close = getattr(snapshot, "close", None)
        if close is not None:
            close()
    if estimate is not None:
        log.info("noise scale at batch size %d: %s", size, estimate.describe())
    return estimate


TUNE_FORMAT = "lrfinder-tune"
TUNE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TuneResult(JsonFile):
    """What :func:`tune` found: the batch size first, then the LR range test at that size.

    Saves and loads like its parts: ``save_json`` / ``load_json`` (one file holding both).

    Attributes:
        batch: the batch-size search's result.
        lr: the LR range test's result, run at ``batch.batch_size`` with
            ``batch.accumulation_steps``.
    """

    batch: BatchSizeResult
    lr: RangeTestResult

    @property
    def batch_size(self) -> int:
        """The batch size to train with."""
        assert self.batch.batch_size is not None
        return self.batch.batch_size

    @property
    def accumulation_steps(self) -> int:
        """Gradient-accumulation steps (1 without a ``target_batch``)."""
        return self.batch.accumulation_steps

    @property
    def suggested_lr(self) -> float:
        """The LR suggested by the default method (NaN when the curve allows none)."""
        return self.lr.suggestion().lr

    def to_dict(self) -> dict[str, Any]:
        """Both results as one JSON-ready dict (each part as its own ``to_dict``)."""
        return {
            "format": TUNE_FORMAT,
            "version": TUNE_FORMAT_VERSION,
            "batch_size": self.batch.to_dict(),
            "lr": self.lr.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneResult:
        """Rebuild a result from :meth:`to_dict` output.

        Raises:
            ValueError: not a tune result of this version, or a part is invalid (named).
        """
        if data.get("format") != TUNE_FORMAT:
            raise ValueError(f"not a tune() result: format={data.get('format')!r}")
        if data.get("version") != TUNE_FORMAT_VERSION:
            raise ValueError(f"unsupported tune() result version {data.get('version')!r}")
        parts = []
        for key, kind in (("batch_size", BatchSizeResult), ("lr", RangeTestResult)):
            part = data.get(key)
            if not isinstance(part, dict):
                raise ValueError(f"missing or mistyped field {key!r} (a {kind.__name__} object)")
            try:
                parts.append(kind.from_dict(part))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"in field {key!r}: {error}") from error
        batch, lr = parts
        assert isinstance(batch, BatchSizeResult) and isinstance(lr, RangeTestResult)
        return cls(batch=batch, lr=lr)


FIND_LR_ARGUMENTS = frozenset(FIND_LR_DEFAULTS) - {"method"}  # find_lr (the function) has none
"""The range-test arguments ``lr_options`` may hold besides the step options."""

_TUNE_OWN = frozenset(
    {"model", "optimizer", "loss_fn", "dataset", "make_loader", "step_fn", "device", "progress"}
    | {"loader_options", "step_options"}
)
BATCH_OPTIONS = (
    frozenset(inspect.signature(find_batch_size).parameters) - _TUNE_OWN
) | TRIAL_STEP_OPTIONS
"""What ``tune(batch_options=...)`` accepts: :func:`find_batch_size`'s own options and the
step options a trial uses."""
LR_OPTIONS = FIND_LR_ARGUMENTS | (STEP_OPTIONS - {"accumulation_steps"})
"""What ``tune(lr_options=...)`` accepts (``accumulation_steps`` comes from the batch search)."""


def _options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"{name} must be a dict of options or None, got {options!r} "
            f"({type(options).__name__}); pass e.g. {name}={{'num_iter': 100}}"
        )
    return dict(options)


def tune(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn | None = None,
    *,
    dataset: Any = None,
    make_loader: Callable[[int], Iterable[Any]] | None = None,
    batch_options: Mapping[str, Any] | None = None,
    lr_options: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    loader_options: Mapping[str, Any] | None = None,
    **step_options: Any,
) -> TuneResult:
    """Find the batch size, then run the LR range test at that batch size.

    The order matters: the best LR depends on the batch size, so an LR found at one batch size
    is off at another. The LR test runs at the found ``batch_size`` with its
    ``accumulation_steps`` (so at the ``target_batch`` when one is given). The model, optimizer
    and RNG are restored after both; apply the results yourself.

    Args:
        model: the model, already on its device.
        optimizer: its optimizer.
        loss_fn: ``loss_fn(outputs, targets)`` (see :func:`find_batch_size`).
        dataset: a map-style dataset; the LR test loads it shuffled at the found size.
        make_loader: ``make_loader(batch_size)`` returning batches, used by both tuners.
        batch_options: :func:`find_batch_size` keyword arguments (``mode``, ``init_val``,
            ``max_trials``, ``steps_per_trial``, ``max_val``, ``margin``, ``target_batch``,
            ``memory_budget``).
        lr_options: :func:`~lrfinder_adapters.pytorch.find_lr` keyword arguments
            (``start_lr``, ``end_lr``, ``num_iter``, ``smooth_factor``, ``diverge_threshold``,
            ``mode``, ``val_loader``, ``val_batches``).
        device: where batches are moved (``None``: the model's device).
        progress: show tqdm progress bars.
        loader_options: extra ``DataLoader`` arguments for ``dataset=``.
        **step_options: ``TorchStep`` options shared by both (``amp``, ``max_grad_norm``, ...).

    Returns:
        Both results; ``result.batch_size``, ``result.accumulation_steps`` and
        ``result.suggested_lr`` are the numbers to train with.

    Example:
        >>> found = tune(model, optimizer, loss_fn, dataset=train_set)  # doctest: +SKIP
        >>> found.batch_size, found.suggested_lr  # doctest: +SKIP
        (192, 0.0031)
    """
    if dataset is None and make_loader is None:
        raise TypeError(
            "tune needs dataset= or make_loader= (the LR test needs batches; step_fn= is for "
            "find_batch_size alone)"
        )
    batch_options = _options("batch_options", batch_options)
    lr_options = _options("lr_options", lr_options)
    for name in ("dataset", "make_loader", "step_fn", "device", "progress", "loader_options"):
        if name in batch_options or name in lr_options:
            raise TypeError(f"pass {name}= to tune() itself, not in batch_options/lr_options")
    if "accumulation_steps" in lr_options or "accumulation_steps" in step_options:
        raise TypeError(
            "tune sets accumulation_steps itself (from the batch-size search); pass "
            "batch_options={'target_batch': N} to keep a global batch of N"
        )
    _validate.known_options("tune's batch_options", batch_options, BATCH_OPTIONS)
    _validate.known_options("tune's lr_options", lr_options, LR_OPTIONS)
    _validate.known_options("tune", step_options, BATCH_OPTIONS & LR_OPTIONS)
    # Every LR option is checked now: a typo must not cost a whole batch-size search first.
    lr_step = {k: v for k, v in lr_options.items() if k not in FIND_LR_ARGUMENTS}
    LearningRateFinder(
        model, optimizer, loss_fn, device, progress=False, **lr_step, **step_options
    ).prepare([()], **{k: v for k, v in lr_options.items() if k in FIND_LR_ARGUMENTS})
    batch = find_batch_size(
        model,
        optimizer,
        loss_fn,
        dataset=dataset,
        make_loader=make_loader,
        device=device,
        progress=progress,
        loader_options=loader_options,
        **batch_options,
        **step_options,
    )
    assert batch.batch_size is not None
    if make_loader is not None:
        loader = make_loader(batch.batch_size)
    else:
        from torch.utils.data import DataLoader

        options = {"shuffle": True, "drop_last": True, **(loader_options or {})}
        loader = DataLoader(dataset, batch_size=batch.batch_size, **options)
    lr = find_lr(
        model,
        optimizer,
        loss_fn,
        loader,
        device=device,
        progress=progress,
        accumulation_steps=batch.accumulation_steps,
        **lr_options,
        **step_options,
    )
    return TuneResult(batch=batch, lr=lr)

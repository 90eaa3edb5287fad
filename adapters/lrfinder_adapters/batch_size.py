"""The batch-size finder for a plain PyTorch model, and ``tune()``: batch size first, then LR.

:func:`find_batch_size` drives a :class:`~lrfinder_plugins.BatchSizeSearch` with real training
steps, through the engine's batch-size driver and the raw-PyTorch probe
(:class:`~lrfinder_adapters.probe.TorchProbe`): each trial (:class:`_Trials`) runs
``steps_per_trial`` optimizer steps at the proposed size, measures the memory of every operation
(see :mod:`lrfinder_adapters._memory`) and turns an out-of-memory error into an outcome; the
driver restores the model, optimizer, schedulers, scaler and RNG exactly after every trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lrfinder_adapters import require

require("torch", "torch")

import torch  # noqa: E402

from lrfinder_adapters import _memory, _oom  # noqa: E402
from lrfinder_adapters.pytorch import LossFn, TorchStep, find_lr  # noqa: E402
from lrfinder_plugins.spi import (  # noqa: E402
    BatchSizeResult,
    RangeTestResult,
    search_with_probe,
)

log = logging.getLogger("lrfinder_plugins")

STEP_OPTIONS = frozenset(
    {"max_grad_norm", "amp", "amp_dtype", "scaler", "schedulers", "snapshot", "compute_loss"}
)
"""The :class:`~lrfinder_adapters.pytorch.TorchStep` options a batch-size trial accepts."""

StepFn = Callable[[int], Any]


@dataclass
class _Outcome:
    fitted: bool
    steps: int
    phase_peaks: dict[str, int]
    capacity: int | None
    seconds: float
    error: str | None
    profile: list[int] | None


class _Feed:
    """An endless iterable that yields the batch the trial runner fetched outside the meter."""

    def __init__(self) -> None:
        self.batch: Any = None

    def __iter__(self) -> Iterator[Any]:
        while True:
            batch, self.batch = self.batch, None
            yield batch


class _Trials:
    """Runs one trial at a given size: ``steps`` optimizer steps, measured, state untouched after."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None,
        *,
        dataset: Any,
        make_loader: Callable[[int], Iterable[Any]] | None,
        step_fn: StepFn | None,
        device: torch.device,
        memory_budget: int | None,
        loader_options: Mapping[str, Any],
        step_options: Mapping[str, Any],
    ) -> None:
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.dataset, self.make_loader, self.step_fn = dataset, make_loader, step_fn
        self.device, self.memory_budget = device, memory_budget
        self.loader_options, self.step_options = dict(loader_options), dict(step_options)

    def _loader(self, size: int) -> Iterable[Any]:
        if self.make_loader is not None:
            return self.make_loader(size)
        from torch.utils.data import DataLoader

        options = {"shuffle": False, "drop_last": True, **self.loader_options}
        return DataLoader(self.dataset, batch_size=size, **options)

    def _steps(
        self, size: int, meter: _memory.TensorMeter
    ) -> Generator[Callable[[], Any], None, None]:
        """One callable per step; each fetches its batch outside the meter, then runs."""
        if self.step_fn is not None:
            step_fn = self.step_fn
            while True:
                yield lambda: step_fn(size)
        loader = self._loader(size)
        feed = _Feed()
        step = TorchStep(
            self.model, self.optimizer, self.loss_fn, feed, device=self.device, **self.step_options
        )
        batches = _cycle(loader)
        while True:
            feed.batch = next(batches)
            meter.track(_memory._leaves(feed.batch))
            yield step.run

    def check(self) -> None:
        """Validate the step options (before anything runs) by building one step."""
        if self.step_fn is None:
            TorchStep(
                self.model,
                self.optimizer,
                self.loss_fn,
                _Feed(),
                device=self.device,
                **self.step_options,
            )

    def run(self, size: int, steps: int) -> _Outcome:
        """Run a trial; an out-of-memory error is an outcome, any other error propagates.

        Memory is freed after the trial (the previous trial's clean-up serves this one).
        """
        meter = _memory.make_meter(self.device, self.memory_budget)
        meter.track(_memory.state_tensors(self.model, self.optimizer))
        hooks = [
            self.optimizer.register_step_pre_hook(lambda *_: meter.mark(_memory.FORWARD_BACKWARD)),
            self.optimizer.register_step_post_hook(lambda *_: meter.mark(_memory.OPTIMIZER)),
        ]
        done, error, capacity = 0, None, None
        runs = self._steps(size, meter)
        start = time.perf_counter()
        try:
            for _ in range(steps):
                run = next(runs)
                meter.begin_step()
                with meter.active():
                    run()
                done += 1
            meter.mark(_memory.FORWARD_BACKWARD)
            meter.begin_step()
        except Exception as exc:
            if not _oom.is_oom(exc):
                raise
            error = _first_line(exc)
            capacity = meter.capacity_after(exc)
        finally:
            for hook in hooks:
                hook.remove()
            runs.close()  # drops the step, the loader iterator and the last batch
        # Out of the except block: the traceback (and the failed step's tensors it pins) is gone.
        seconds = time.perf_counter() - start
        _memory.free_memory(self.device)
        # Read after the clean-up (what the next trial will find); a failure's own bound, when
        # tighter, wins.
        reading = meter.capacity()
        if reading is not None:
            capacity = reading if capacity is None else min(capacity, reading)
        return _Outcome(
            fitted=error is None,
            steps=done,
            phase_peaks=meter.reported_peaks,
            capacity=capacity,
            seconds=seconds,
            error=error,
            profile=meter.profile if error is None else None,
        )


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError(
                "the loader yielded no batches at this batch size; with dataset=, the dataset "
                "needs at least batch_size samples (drop_last=True)"
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must name a torch device (e.g. 'cpu', 'cuda:0'), got {device!r}"
        ) from error


def _check_sources(dataset: Any, make_loader: Any, step_fn: Any) -> None:
    given = [
        name
        for name, v in (("dataset", dataset), ("make_loader", make_loader), ("step_fn", step_fn))
        if v is not None
    ]
    if len(given) != 1:
        raise TypeError(
            "find_batch_size needs exactly one of dataset=, make_loader= (a function of the "
            f"batch size returning batches) or step_fn= (a function of the batch size running "
            f"one training step); got {given or 'none'}"
        )
    for name, value in (("make_loader", make_loader), ("step_fn", step_fn)):
        if value is not None and not callable(value):
            raise TypeError(
                f"{name} must be callable (batch_size -> ...), got {type(value).__name__}"
            )


def _upper_bound(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None  # an iterable-style dataset: no bound


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
        **step_options: ``TorchStep`` options: ``max_grad_norm``, ``amp``, ``amp_dtype``,
            ``scaler``, ``schedulers``, ``snapshot``, ``compute_loss``.

    Returns:
        The result: ``batch_size`` (a size that ran for all ``steps_per_trial`` steps),
        ``accumulation_steps``, every trial and the stop reason.

    Raises:
        TypeError, ValueError: bad arguments (before anything runs).
        NothingFitsError: even a batch of one ran out of memory (``error.result`` has the
            trials).

    Example:
        >>> result = find_batch_size(model, optimizer, loss_fn, dataset=train_set)  # doctest: +SKIP
        >>> loader = DataLoader(train_set, batch_size=result.batch_size)  # doctest: +SKIP
    """
    from lrfinder_adapters.probe import TorchProbe

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
        **step_options,
    )
    return search_with_probe(
        probe,
        progress=progress,
        mode=mode,
        init_val=init_val,
        max_trials=max_trials,
        steps_per_trial=steps_per_trial,
        max_val=max_val,
        margin=margin,
        target_batch=target_batch,
    )


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found: the batch size first, then the LR range test at that size.

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
        """Both results as one JSON-ready dict."""
        return {"batch_size": self.batch.to_dict(), "lr": self.lr.to_dict()}


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
    batch_options = dict(batch_options or {})
    lr_options = dict(lr_options or {})
    for name in ("dataset", "make_loader", "step_fn", "device", "progress"):
        if name in batch_options or name in lr_options:
            raise TypeError(f"pass {name}= to tune() itself, not in batch_options/lr_options")
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

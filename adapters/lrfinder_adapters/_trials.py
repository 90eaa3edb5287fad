"""One batch-size trial on a plain PyTorch model: real optimizer steps, measured, state untouched.

:class:`Trials` runs ``steps_per_trial`` optimizer steps at a proposed size through a
:class:`~lrfinder_adapters.pytorch.TorchStep`, measures the memory of every operation of its
last step where that is read or a budget needs it (see :func:`run_measured` and
:mod:`lrfinder_adapters._memory`) and turns an out-of-memory error into an outcome. A
``DistributedDataParallel`` model is run through its inner module, so a trial makes no
collective call: a size that runs out of memory on one rank only cannot leave the others waiting
in a gradient all-reduce (the trials' outcomes are agreed once per trial, by the search).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lrfinder_adapters import _memory, _oom
from lrfinder_adapters.distributed import unwrap
from lrfinder_adapters.pytorch import LossFn, TorchStep, _samples, check_device
from lrfinder_plugins.spi import first_line

STEP_OPTIONS = frozenset(
    {"max_grad_norm", "amp", "amp_dtype", "scaler", "schedulers", "snapshot", "compute_loss"}
)
"""The :class:`~lrfinder_adapters.pytorch.TorchStep` options a batch-size trial accepts."""

StepFn = Callable[[int], Any]


@dataclass
class TrialOutcome:
    fitted: bool
    steps: int
    phase_peaks: dict[str, int]
    capacity: int | None
    seconds: float
    error: str | None
    profile: list[int] | None
    timed_steps: int | None = None  # the bare steps before a metered one, and their seconds
    timed_seconds: float | None = None


class Feed:
    """An endless iterable that yields the batch the trial runner fetched outside the meter."""

    def __init__(self) -> None:
        self.batch: Any = None

    def __iter__(self) -> Iterator[Any]:
        while True:
            batch, self.batch = self.batch, None
            yield batch


class Trials:
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
        pin_allocator: bool | None = None,
    ) -> None:
        # The inner module of a DDP wrapper: same parameters, no collective per step.
        self.model, self.optimizer, self.loss_fn = unwrap(model), optimizer, loss_fn
        self.dataset, self.make_loader, self.step_fn = dataset, make_loader, step_fn
        self.device, self.memory_budget = device, memory_budget
        self.loader_options, self.step_options = dict(loader_options), dict(step_options)
        self.pin_allocator: bool | None = pin_allocator  # applied before the first trial

    def _loader(self, size: int) -> Iterable[Any]:
        if self.make_loader is not None:
            loader = self.make_loader(size)
            if not isinstance(loader, Iterable):
                raise TypeError(
                    f"make_loader({size}) must return the batches at that size (a DataLoader "
                    f"or another iterable), got {loader!r} ({type(loader).__name__})"
                )
            if isinstance(loader, Iterator):
                raise TypeError(
                    f"make_loader({size}) returned a one-shot iterator "
                    f"({type(loader).__name__}), but a trial reads its batches again when they "
                    "run out; return a DataLoader or a list of batches"
                )
            return loader
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
        feed = Feed()
        step = TorchStep(
            self.model,
            self.optimizer,
            self.loss_fn,
            feed,
            device=self.device,
            distributed=False,
            lookahead=False,
            **{**self.step_options, "overlap": False},  # a trial decides nothing per step
        )
        batches = cycle(loader)
        remainder = RemainderSkip()
        while True:
            feed.batch = next(batches)
            if remainder.skip(feed.batch):
                continue  # an epoch's short last batch: not a step at this size
            meter.track(_memory._leaves(feed.batch))
            yield step.run

    def check(self) -> None:
        """Validate the step options (before anything runs) by building one step."""
        if self.step_fn is None:
            TorchStep(
                self.model,
                self.optimizer,
                self.loss_fn,
                Feed(),
                device=self.device,
                distributed=False,
                **{**self.step_options, "overlap": False},
            )

    def run(self, size: int, steps: int, *, measure: bool = True) -> TrialOutcome:
        """Run a trial; an out-of-memory error is an outcome, any other error propagates.
        ``measure=False``: nothing is read of it but the fit (see :func:`run_measured`).

        Memory is freed after the trial (the previous trial's clean-up serves this one). The
        first trial pins glibc's allocator first (see :func:`_memory.pin_allocator`).
        """
        self.pin_allocator = pin_once(self.pin_allocator)
        return run_measured(
            self.device,
            self.memory_budget,
            lambda meter: self._steps(size, meter),
            steps,
            optimizer=self.optimizer,
            state=lambda: _memory.state_tensors(self.model, self.optimizer),
            measure=measure,
        )


def check_pin_allocator(pin_allocator: Any) -> bool | None:
    """Validate the ``pin_allocator=`` option of every batch-size search (the same policy for
    raw PyTorch, Accelerate and the decorator): ``None``, ``True`` or ``False``."""
    if pin_allocator is not None and not isinstance(pin_allocator, bool):
        raise TypeError(
            f"pin_allocator must be None, True or False, got {pin_allocator!r} "
            f"({type(pin_allocator).__name__}); e.g. pin_allocator=False to leave the C "
            "allocator alone"
        )
    return pin_allocator


def pin_once(pin_allocator: bool | None) -> bool:
    """Apply the ``pin_allocator=`` policy before a search's first trial
    (:func:`_memory.pin_allocator`: it logs what it set); return ``False``, the policy for
    every later trial (``mallopt`` settings last for the process)."""
    if pin_allocator is not False:
        _memory.pin_allocator(pin_allocator)
    return False


def run_measured(
    device: torch.device,
    memory_budget: int | None,
    make_steps: Callable[[_memory.TensorMeter], Generator[Callable[[], Any], None, None]],
    steps: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    state: Callable[[], Iterable[torch.Tensor]] = tuple,
    measure: bool = True,
) -> TrialOutcome:
    """Run ``steps`` callables from ``make_steps(meter)``, the last under the device's meter
    (:func:`_memory.make_meter`) where it is needed: an out-of-memory error is an outcome, any
    other error propagates; memory is freed after it and the capacity read then.

    The meter (a dispatch mode: a cost on every operation) runs on one step at most, the last:
    the steps of a trial repeat the same operations at the same size, and the state a first
    step creates (the optimizer's) exists throughout every later one, so the last step is in
    steady state and its profile, peaks and non-tensor peak are the trial's (the profile always
    was the last step's). The training state is counted again just before it (``state()``:
    what the bare steps created). It runs there when ``measure`` (the search reads the trial:
    :attr:`~lrfinder_plugins.BatchSizeSearch.reads_profile`) or when only it can enforce the
    budget (``memory_budget`` off CUDA, counted in tensor bytes op by op: a size over it fails
    in that step). Otherwise the trial runs bare, at the cost of the user's own steps. On CUDA
    the allocator's peaks (``max_memory_allocated``, read at the phase boundaries) are kept in
    every step, metered or not; on the CPU a bare trial reports no peak. An out-of-memory error
    in a bare step bounds no capacity (the live bytes then are unknown): the reading after the
    clean-up does.

    Args:
        device: where the trial runs (picks the meter).
        memory_budget: the meter's budget (``None``: the real limit).
        make_steps: one callable per step (each may fetch its batch, tracked on the meter,
            before it is returned); closed after the trial.
        steps: how many to run.
        optimizer: marks the ``forward_backward`` and ``optimizer`` phases through its step
            hooks (``None``: one phase).
        state: the tensors alive before the trial (the training state), counted first.
        measure: whether the search reads the trial's memory (``False``: bare, as above).
    """
    meter = _memory.make_meter(device, memory_budget)
    meter.track(state())
    metered = range(steps - 1 if measure or meter.checks_ops else steps, steps)
    hooks = []
    if optimizer is not None:
        hooks = [
            optimizer.register_step_pre_hook(lambda *_: meter.mark(_memory.FORWARD_BACKWARD)),
            optimizer.register_step_post_hook(lambda *_: meter.mark(_memory.OPTIMIZER)),
        ]
    done, error, capacity = 0, None, None
    timed: float | None = None
    runs = make_steps(meter)
    start = time.perf_counter()
    try:
        for index in range(steps):
            run = next(runs)
            if index in metered:
                if index > 0 and timed is None:
                    timed = time.perf_counter() - start  # the bare steps: the user's own cost
                if meter.bare:
                    meter.bare = False
                    meter.track(state())  # what the bare steps left: the optimizer state
                    meter.peak = meter.live
                meter.begin_step()
                with meter.active():
                    run()
            else:
                meter.bare = True
                run()
            done += 1
        meter.mark(_memory.FORWARD_BACKWARD)
        meter.begin_step()
    except Exception as exc:
        if not _oom.is_oom(exc):
            raise
        error = first_line(exc)
        capacity = meter.capacity_after(exc)
    finally:
        for hook in hooks:
            hook.remove()
        runs.close()  # drops the step, the loader iterator and the last batch
    # Out of the except block: the traceback (and the failed step's tensors it pins) is gone.
    seconds = time.perf_counter() - start
    _memory.free_memory(device)
    # Read after the clean-up (what the next trial will find); a failure's own bound, when
    # tighter, wins.
    reading = meter.capacity()
    if reading is not None:
        capacity = reading if capacity is None else min(capacity, reading)
    return TrialOutcome(
        fitted=error is None,
        steps=done,
        phase_peaks=meter.reported_peaks,
        capacity=capacity,
        seconds=seconds,
        error=error,
        profile=meter.profile if error is None else None,
        timed_steps=None if timed is None else metered.start,
        timed_seconds=timed,
    )


class RemainderSkip:
    """Tells the steps of a trial that run on an epoch's short last batch, to leave uncounted.

    A loader that does not drop its last batch ends each epoch with fewer samples than the
    trial's size; a trial that measured, timed or counted that step would read the memory of a
    smaller batch (a size far over the budget then "fits"). A batch with fewer samples than the
    trial's first is such a remainder, skipped, but never two in a row, so that a trial ends
    even on a loader whose batches keep shrinking. (A dataset smaller than one batch gives
    batches of one size: none is skipped.)
    """

    def __init__(self) -> None:
        self.first: int | None = None
        self.skipped = False

    def skip(self, batch: Any) -> bool:
        """Whether the step on ``batch`` is a remainder to leave uncounted."""
        rows = _samples(batch)  # the samples a step counts
        if self.first is None:
            self.first = rows
        self.skipped = rows < self.first and not self.skipped
        return self.skipped


def cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            size = getattr(loader, "batch_size", None)
            dataset = getattr(loader, "dataset", None)
            if (
                isinstance(dataset, torch.utils.data.IterableDataset)
                and upper_bound(dataset) is None
            ):
                raise ValueError(
                    f"the dataset yielded fewer than batch_size={size} samples: an "
                    "IterableDataset without a __len__ does not bound the search; pass max_val= "
                    "(at most its sample count), give it a __len__, or pass make_loader="
                )
            raise ValueError(
                f"the loader yielded no batches at batch size {size}; with dataset=, the dataset "
                "needs at least batch_size samples (drop_last=True)"
            )


def device_of(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is None:
        first = next(model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")
    parsed = check_device(device)
    assert parsed is not None
    return parsed


def check_sources(dataset: Any, make_loader: Any, step_fn: Any) -> None:
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


def upper_bound(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None  # an iterable-style dataset: no bound

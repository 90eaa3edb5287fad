"""Run an ignite trainer ``Engine`` as lrfinder-plugins' ``TrainingStep`` and ``BatchProbe``.

:class:`EngineStep` drives the trainer itself: each ``run()`` resumes the trainer's run for
exactly one iteration (ignite's ``interrupt()``/resume), so the trainer's own process function
and event handlers run as in training. Our ``ITERATION_STARTED`` handler, attached after the
user's, sets the swept LR (an ignite LR scheduler attached to the trainer cannot override it),
and our ``ITERATION_COMPLETED`` handler reads the loss from ``engine.state.output``.

:class:`EngineProbe` runs ``steps`` iterations of the trainer at each batch size; an
out-of-memory error raised by the trainer is classified by lrfinder-plugins' ``lrfinder_is_oom``
hook.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from lrfinder_adapters.state import TrainingState, capture, restore
from lrfinder_plugins.spi import TrialReport, group_ratios

LossOf = Callable[[Any], float]
FOREVER = 10**9
"""``max_epochs`` of the range test's run: it ends when the test does, not before."""


def output_loss(output: Any) -> float:
    """The loss in a process function's output: a number or tensor, a tuple's first item, or a
    dict's ``"loss"`` (``create_supervised_trainer`` returns ``loss.item()``)."""
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise TypeError(
                f"the trainer's output is a dict with keys {sorted(output)}; pass "
                "output_transform=lambda output: <the loss as a float>"
            )
        output = output["loss"]
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        return float(output.detach().item())
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return float(output)
    raise TypeError(
        f"cannot read a loss from the trainer's output ({type(output).__name__}); pass "
        "output_transform=lambda output: <the loss as a float>"
    )


def _check(trainer: Any, optimizer: Any, model: Any) -> None:
    if not isinstance(trainer, Engine):
        raise TypeError(f"trainer must be an ignite Engine, got {type(trainer).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer= must be the torch optimizer the trainer steps, got "
            f"{type(optimizer).__name__}"
        )
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model= must be a torch.nn.Module or None, got {type(model).__name__}")


class _SavedState:
    """What a trainer's iterations change: the training state and the engine's state.

    The training state is lrfinder-plugins' exact snapshot (:mod:`lrfinder_adapters.state`):
    parameters, gradients, buffers and train/eval modes, the optimizer's state and param groups,
    every RNG; copied to CPU memory and restored bitwise, in place (the trainer's process
    function holds the same model and optimizer objects). Without a model, the parameters the
    optimizer trains are saved with it. The engine's state (``trainer.state``: iteration,
    epoch, output, ...) is ignite's own, saved here.
    """

    def __init__(self, trainer: Engine, optimizer: torch.optim.Optimizer, model: Any) -> None:
        # No model: an empty one, so the optimizer's parameters are saved as ones it trains
        # outside the model.
        self.model: torch.nn.Module = torch.nn.Module() if model is None else model
        self.training: TrainingState = capture(self.model, optimizer)
        self.engine = {
            key: copy.copy(value) if isinstance(value, (dict, list)) else value
            for key, value in vars(trainer.state).items()
        }

    def restore(self, trainer: Engine, optimizer: torch.optim.Optimizer) -> None:
        """Put the training state back bitwise, then the engine's state."""
        try:
            restore(self.training, self.model, optimizer)
        finally:
            state = vars(trainer.state)
            state.clear()
            state.update(self.engine)

    def close(self) -> None:
        """Release the snapshot (the drivers call it once the search is over)."""
        self.training.close()


class EngineStep:
    """One iteration of an ignite trainer, as the engine's ``TrainingStep``.

    Args:
        trainer: the ``Engine`` whose process function runs one optimizer step.
        optimizer: the optimizer it steps (the swept LR is set on it; groups keep their ratios).
        data: the training batches, re-iterable (a ``DataLoader``, a list): epochs repeat.
        model: saved and restored with the optimizer (``None``: the optimizer, the parameters
            it trains, the RNG and the engine state are restored; no buffers or train/eval
            modes).
        output_transform: ``engine.state.output`` → the loss as a float (default
            :func:`output_loss`).

    Example:
        >>> from lrfinder_plugins import range_test  # doctest: +SKIP
        >>> result = range_test(trainer, optimizer=opt, model=model, data=loader)  # doctest: +SKIP
    """

    def __init__(
        self,
        trainer: Engine,
        *,
        optimizer: torch.optim.Optimizer,
        data: Iterable[Any],
        model: torch.nn.Module | None = None,
        output_transform: LossOf = output_loss,
    ) -> None:
        _check(trainer, optimizer, model)
        if not isinstance(data, Iterable):
            raise TypeError(f"data= must be an iterable of batches, got {type(data).__name__}")
        if not callable(output_transform):
            raise TypeError("output_transform= must be callable (output -> float)")
        self.trainer, self.optimizer, self.model, self.data = trainer, optimizer, model, data
        self.output_transform = output_transform
        self.group_ratios = group_ratios([float(group["lr"]) for group in optimizer.param_groups])
        self._lr: float | None = None
        self._loss: float | None = None
        self._handles: list[Any] = []
        self._running = False

    # -- TrainingStep --------------------------------------------------------------------------
    def snapshot(self) -> _SavedState:
        """Save the weights, optimizer, RNG (CPU copies) and engine state."""
        return _SavedState(self.trainer, self.optimizer, self.model)

    def restore(self, snapshot: _SavedState) -> None:
        """End the test's run of the trainer, then put everything back (bitwise, in place)."""
        try:
            self._end_run()
        finally:
            snapshot.restore(self.trainer, self.optimizer)

    def set_lr(self, lr: float) -> None:
        """Use ``lr`` for the next iteration (set by our ``ITERATION_STARTED`` handler)."""
        self._lr = lr

    def run(self) -> float:
        """Run one iteration of the trainer and return its loss."""
        self._loss = None
        if not self._running:
            self._handles = [
                self.trainer.add_event_handler(Events.ITERATION_STARTED, self._apply_lr),
                self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record),
            ]
            state = self.trainer.state
            state.max_epochs = state.max_iters = None  # ignite's documented "start afresh"
            self._running = True
            self.trainer.run(self.data, max_epochs=FOREVER)
        else:
            self.trainer.run()  # resume the interrupted run for one more iteration
        if self._loss is None:  # the run ended without an iteration: the data ran out
            self._running = False
            raise StopIteration
        return self._loss

    # -- handlers ------------------------------------------------------------------------------
    def _apply_lr(self, engine: Engine) -> None:
        if self._lr is not None:
            for group, ratio in zip(self.optimizer.param_groups, self.group_ratios):
                group["lr"] = self._lr * ratio

    def _record(self, engine: Engine) -> None:
        self._loss = self.output_transform(engine.state.output)
        engine.interrupt()

    def _end_run(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._running:
            self._running = False
            # Resuming a run that was told to terminate ends it at once (no COMPLETED event, so
            # end-of-training handlers do not fire); a run an exception ended is cleared instead.
            self.trainer.terminate(skip_completed=True)
            self.trainer.run(self.data)


class EngineProbe:
    """Runs batch-size trials with an ignite trainer, as the engine's ``BatchProbe``.

    Args:
        trainer: the ``Engine`` whose process function runs one optimizer step.
        optimizer: the optimizer it steps.
        make_loader: ``make_loader(batch_size)`` returning the batches of a trial.
        model: saved and restored with the optimizer after every trial (``None``: as for
            :class:`EngineStep`).

    Example:
        >>> from lrfinder_plugins import batch_size_search  # doctest: +SKIP
        >>> found = batch_size_search(trainer, optimizer=opt, model=model, make_loader=loader_of)  # doctest: +SKIP
    """

    def __init__(
        self,
        trainer: Engine,
        *,
        optimizer: torch.optim.Optimizer,
        make_loader: Callable[[int], Iterable[Any]],
        model: torch.nn.Module | None = None,
    ) -> None:
        _check(trainer, optimizer, model)
        if not callable(make_loader):
            raise TypeError("make_loader= must be callable (batch_size -> batches)")
        self.trainer, self.optimizer, self.model = trainer, optimizer, model
        self.make_loader = make_loader

    def snapshot(self) -> _SavedState:
        """Save the weights, optimizer, RNG (CPU copies) and engine state."""
        return _SavedState(self.trainer, self.optimizer, self.model)

    def restore(self, snapshot: _SavedState) -> None:
        """Put everything back and free what a failed trial left."""
        snapshot.restore(self.trainer, self.optimizer)
        gc.collect()
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def try_batch_size(self, size: int, steps: int) -> TrialReport:
        """Run ``steps`` iterations at ``size``; an out-of-memory error propagates."""
        cuda = torch.cuda.is_initialized()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        state = self.trainer.state
        state.max_epochs = state.max_iters = None
        self.trainer.run(self.make_loader(size), max_epochs=1, epoch_length=steps)
        done = self.trainer.state.iteration
        return TrialReport(
            fitted=done == steps,
            steps=done,
            peak_bytes=torch.cuda.max_memory_allocated() if cuda else None,
        )

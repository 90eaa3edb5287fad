"""The raw-PyTorch batch probe: the engine's ``BatchProbe`` over a model and its optimizer.

``lrfinder_plugins.batch_size_search(model, optimizer=..., ...)`` gets one from the
``lrfinder.torch`` plugin. Each trial runs real optimizer steps through the same measured trial
runner as :func:`~lrfinder_adapters.batch_size.find_batch_size`
(:class:`lrfinder_adapters._trials.Trials`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lrfinder_adapters import require

require("torch", "torch")

import torch  # noqa: E402

from lrfinder_adapters import _torch_state  # noqa: E402
from lrfinder_adapters._schedulers import check_schedulers  # noqa: E402
from lrfinder_adapters._trials import (  # noqa: E402
    STEP_OPTIONS,
    StepFn,
    Trials,
    check_pin_allocator,
    check_sources,
    device_of,
    upper_bound,
)
from lrfinder_adapters.pytorch import (  # noqa: E402
    LossFn,
    check_grad_enabled,
    check_loss_fn,
    check_model_and_optimizer,
    make_reducer,
)
from lrfinder_plugins.spi import TrialReport  # noqa: E402
from lrfinder_plugins.spi import validate as _validate  # noqa: E402


class TorchProbe:
    """Runs batch-size trials on a plain PyTorch model (the engine's ``BatchProbe``).

    Args: as :func:`~lrfinder_adapters.batch_size.find_batch_size` (``model``, ``optimizer``,
    ``loss_fn``, one of ``dataset``/``make_loader``/``step_fn``, ``device``, ``memory_budget``,
    ``loader_options``, ``pin_allocator``, the distributed options and the ``TorchStep``
    options). Under
    ``torch.distributed`` every rank runs each trial (a DDP model through its inner module, so
    no collective runs inside a trial) and the ranks agree on its outcome once per trial.

    Example:
        >>> from lrfinder_plugins import batch_size_search  # doctest: +SKIP
        >>> batch_size_search(TorchProbe(model, optimizer, loss_fn, dataset=data))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn | None = None,
        *,
        dataset: Any = None,
        make_loader: Callable[[int], Iterable[Any]] | None = None,
        step_fn: StepFn | None = None,
        device: str | torch.device | None = None,
        memory_budget: int | None = None,
        loader_options: Mapping[str, Any] | None = None,
        distributed: bool | None = None,
        process_group: Any = None,
        all_reduce_grads: bool = False,
        fault_timeout: float = 30.0,
        pin_allocator: bool | None = None,
        **step_options: Any,
    ) -> None:
        check_model_and_optimizer(model, optimizer)
        check_pin_allocator(pin_allocator)
        check_sources(dataset, make_loader, step_fn)
        _validate.known_options("the batch-size search", step_options, STEP_OPTIONS)
        if memory_budget is not None:
            _validate.int_at_least("memory_budget", memory_budget, 1)
        if loader_options is not None and dataset is None:
            raise TypeError(
                "loader_options only applies to dataset=; build the loader in make_loader"
            )
        if loader_options is not None and "batch_size" in loader_options:
            raise TypeError(
                f"loader_options cannot set batch_size (got {loader_options['batch_size']!r}): "
                "the search sets it; leave it out (init_val= is the first size tried)"
            )
        check_loss_fn("loss_fn", loss_fn)
        check_grad_enabled("the batch-size search")
        self.model, self.optimizer = model, optimizer
        self.schedulers = check_schedulers(step_options.get("schedulers", ()), optimizer)
        self.scaler = step_options.get("scaler")
        self.snapshot_to = step_options.get("snapshot", "cpu")
        _validate.one_of("snapshot", self.snapshot_to, ("cpu", "disk"))
        self.upper_bound = None if dataset is None else upper_bound(dataset)
        self._trials = Trials(
            model,
            optimizer,
            loss_fn,
            dataset=dataset,
            make_loader=make_loader,
            step_fn=step_fn,
            device=device_of(model, device),
            memory_budget=memory_budget,
            loader_options=loader_options or {},
            step_options=step_options,
            pin_allocator=pin_allocator,
        )
        self._trials.check()
        # Every rank runs the same trial; one all-gather per trial makes them agree on it.
        self.reducer = make_reducer(
            model, distributed, process_group, all_reduce_grads, fault_timeout
        )

    def snapshot(self) -> _torch_state.TrainingState:
        """Save the model, optimizer, schedulers, scaler and RNG."""
        return _torch_state.capture(
            self.model,
            self.optimizer,
            schedulers=self.schedulers,
            scaler=self.scaler,
            where=self.snapshot_to,
        )

    def restore(self, snapshot: _torch_state.TrainingState) -> None:
        """Put back everything :meth:`snapshot` saved, bitwise."""
        _torch_state.restore(
            snapshot, self.model, self.optimizer, schedulers=self.schedulers, scaler=self.scaler
        )

    def try_batch_size(self, size: int, steps: int, *, measure: bool = True) -> TrialReport:
        """Run ``steps`` optimizer steps at ``size``, measured unless ``measure=False`` (the
        search reads nothing but the fit: see :func:`lrfinder_adapters._trials.run_measured`);
        an OOM is a report, not an error."""
        outcome = self._trials.run(size, steps, measure=measure)
        return TrialReport(
            fitted=outcome.fitted,
            steps=outcome.steps,
            peak_bytes=dict(outcome.phase_peaks) or None,
            profile=None if outcome.profile is None else tuple(outcome.profile),
            capacity_bytes=outcome.capacity,
            seconds=outcome.seconds,
            error=outcome.error,
            timed_steps=outcome.timed_steps,
            timed_seconds=outcome.timed_seconds,
        )

"""PyTorch Lightning: the LR range test as Lightning's ``LearningRateFinder`` callback and ``Tuner``.

One import line switches a Lightning user over::

    from lrfinder_adapters.lightning import LearningRateFinder, Tuner

    lr_finder = Tuner(trainer).lr_find(model, datamodule=dm)  # as lightning.pytorch.tuner
    lr_finder.suggestion()                                     # a float, or None
    fig = lr_finder.plot(suggest=True)
    lr_finder.result.suggestions()                             # ours: every method, confidence

    trainer = Trainer(callbacks=[LearningRateFinder(num_training_steps=100)])  # at fit start

How the sweep runs: at ``on_fit_start`` the callback saves the training state (model
parameters and buffers, every optimizer's state and param groups, the LR schedulers, the grad
scaler, the random generators, and the trainer's loop progress, ``global_step`` and epoch), then
runs Lightning's own fit loop for the sweep. The Trainer owns every step, so gradient
accumulation (one point per optimizer step: the mean loss of the window), gradient clipping and
the precision plugin behave as in ``fit()``. From the loop's hooks the callback pushes into a
:class:`~lrfinder_plugins.spi.RangeTestSession`: it sets the session's LR on every param group
of every optimizer (group ratios kept) before each optimizer step's first batch and hands in the
step's loss after its last one; the session decides when to stop (budget, divergence,
non-finite loss), and its observers get the curve.

During the sweep the user's ``max_epochs``, ``max_steps``, ``min_epochs``/``min_steps`` and
``limit_train_batches`` do not cut it (the data cycles, epoch after epoch), validation is off,
the LR schedulers are not stepped, the loggers and the other callbacks are detached. Afterwards
everything is put back in memory (no checkpoint file), so ``fit()`` continues from exactly the
original state.

Under a multi-process strategy (``strategy="ddp"``) the session reduces each point's loss across
ranks through :class:`~lrfinder_adapters.distributed.TorchDistributedReducer` (the mean over
ranks; Lightning's own uses rank 0's), so every rank stops at the same step and holds the same
result.
"""

from __future__ import annotations

from lrfinder_adapters import require

require("lightning", "lightning")

import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any, NamedTuple  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loops.loop import _Loop  # noqa: E402
from lightning.pytorch.utilities.exceptions import _TunerExitException  # noqa: E402

from lrfinder_adapters import _memory  # noqa: E402
from lrfinder_adapters import state as _state  # noqa: E402
from lrfinder_adapters._schedulers import KNOWN_KINDS, flatten, rescale  # noqa: E402
from lrfinder_adapters.gradient_noise import NoiseScaleMonitor  # noqa: E402
from lrfinder_plugins.noise_scale import GNS_PRECISION  # noqa: E402
from lrfinder_plugins.plot import check_output_path  # noqa: E402
from lrfinder_plugins.spi import (  # noqa: E402
    BatchSizeResult,
    BatchSizeSearch,
    BatchSizeSession,
    NoiseScaleEstimator,
    NothingFitsError,
    RangeTest,
    RangeTestResult,
    RangeTestSession,
    Reducer,
    StepOutcome,
    StopReason,
    TrialReport,
    first_line,
    group_ratios,
    is_oom,
    registered_suggesters,
)
from lrfinder_plugins.spi import validate as _validate  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lrfinder_plugins import Suggestion

__all__ = [
    "BatchSizeFinder",
    "LRFinderResult",
    "LearningRateFinder",
    "NoiseScaleCallback",
    "TuneResult",
    "Tuner",
    "find_batch_size_attr",
    "find_lr_attr",
    "tune",
]

log = logging.getLogger("lrfinder_plugins")

_LR_ATTRS = ("lr", "learning_rate")
"""The names Lightning looks for, on the module first, then in its ``hparams``."""


def _hparams(model: Any) -> Any:
    return getattr(model, "hparams", None) if hasattr(type(model), "hparams") else None


def _has(container: Any, name: str) -> bool:
    if container is None:
        return False
    if isinstance(container, Mapping):
        return name in container
    return hasattr(container, name)


def _check_attr_name(attr_name: Any) -> str:
    if not isinstance(attr_name, str):
        raise TypeError(
            f"attr_name must be a str (the LR attribute's name; '' finds lr or "
            f"learning_rate), got {attr_name!r}; e.g. attr_name='learning_rate'"
        )
    return attr_name


def find_lr_attr(model: Any, attr_name: str = "") -> tuple[Any, str]:
    """Where the LR lives: ``(container, name)`` for the first of ``model.lr``,
    ``model.learning_rate``, ``model.hparams.lr``, ``model.hparams.learning_rate``
    (or only ``attr_name``, on the module or in its ``hparams``, when given).

    Raises:
        AttributeError: no such attribute, naming what was looked for and the fix.
    """
    names = (_check_attr_name(attr_name),) if attr_name else _LR_ATTRS
    hparams = _hparams(model)
    for container in (model, hparams):
        for name in names:
            if _has(container, name):
                return container, name
    looked = ", ".join([f"model.{n}" for n in names] + [f"model.hparams.{n}" for n in names])
    raise AttributeError(
        f"update_attr=True but {type(model).__name__} has none of {looked}: nowhere to write "
        "the found LR; add one (e.g. `self.lr = 1e-3` in __init__ and use it in "
        "configure_optimizers), name yours with attr_name=..., or pass update_attr=False"
    )


def get_lr_attr(container: Any, name: str) -> Any:
    """The value at ``(container, name)`` (from :func:`find_lr_attr`)."""
    return container[name] if isinstance(container, Mapping) else getattr(container, name)


def _set_lr_attr(container: Any, name: str, value: float) -> None:
    if isinstance(container, Mapping):
        container[name] = value  # type: ignore[index]
    else:
        setattr(container, name, value)


class LRFinderResult:
    """The result of a sweep, with the surface of Lightning's ``_LRFinder`` and ours.

    Lightning's: :attr:`results` (``{"lr": [...], "loss": [...]}``, the loss smoothed as the
    suggestion sees it), :meth:`suggestion` (a float or ``None``), :meth:`plot`. Ours:
    :attr:`result` (the :class:`~lrfinder_plugins.RangeTestResult`), :meth:`suggestions`,
    :attr:`confidence`, :meth:`one_cycle`, :meth:`save_json`.

    Args:
        result: the range test's result.
        method: the suggestion method :meth:`suggestion` uses (``None``: the default).
    """

    def __init__(self, result: RangeTestResult, method: str | None = None) -> None:
        self.result = result
        self.method = method
        self.results: dict[str, list[float]] = {
            "lr": list(result.lrs),
            "loss": list(result.smoothed_losses),
        }

    def __repr__(self) -> str:
        return f"LRFinderResult({len(self.result)} points, stopped: {self.result.stop_reason})"

    def _suggestion(self, **options: Any) -> Suggestion:
        return self.result.suggestion(self.method, **options)

    def suggestion(
        self, skip_begin: int | None = None, skip_end: int | None = None
    ) -> float | None:
        """The suggested LR as a float, or ``None`` when the curve gives none.

        ``skip_begin``/``skip_end`` are passed to the method when given (``method="lightning"``
        takes them, as Lightning's own ``suggestion`` does).
        """
        options = {
            k: v for k, v in (("skip_begin", skip_begin), ("skip_end", skip_end)) if v is not None
        }
        found = self._suggestion(**options)
        return float(found.lr) if found.ok else None

    def suggestions(self) -> dict[str, Suggestion]:
        """Every registered method's suggestion, by name (see ``RangeTestResult.suggestions``)."""
        return self.result.suggestions()

    @property
    def confidence(self) -> float:
        """How clearly the curve shows a usable descent, 0 to 1 (NaN: not assessed)."""
        return self._suggestion().confidence

    def one_cycle(self, total_steps: int | None = None, **overrides: Any) -> dict[str, Any]:
        """``OneCycleLR`` keyword arguments derived from the curve (see ``Suggestion.one_cycle``)."""
        return self._suggestion().one_cycle(total_steps, **overrides)

    def save_json(self, path: str | Path) -> Path:
        """Save the curve and settings as JSON (load with ``RangeTestResult.load_json``)."""
        return self.result.save_json(path)

    def plot(self, suggest: bool = False, show: bool = False, ax: Axes | None = None) -> Figure:
        """Plot loss against LR, as Lightning's ``plot``; ``suggest=True`` marks the suggestion.

        Returns the matplotlib Figure; ``show=True`` also shows it.
        """
        marks: bool | str = (self.method or True) if suggest else False
        fig = self.result.plot(suggest=marks, ax=ax)
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig


def _check_strategy(trainer: Any) -> None:
    """Refuse, before anything runs, a strategy whose engine owns state we cannot put back."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    if isinstance(trainer.strategy, DeepSpeedStrategy):
        raise ValueError(
            f"strategy={type(trainer.strategy).__name__}: DeepSpeed's engine owns the optimizer "
            "step, the loss scale and the ZeRO-partitioned optimizer state, which the search "
            "cannot save and put back exactly; tune the same model under strategy='ddp' (or "
            "'fsdp'), then train with DeepSpeed at the found values"
        )


def _milestones(milestones: Sequence[int]) -> frozenset[int]:
    """The epochs of a ``milestones=`` option, checked: positive ints (epoch 0 is fit start)."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
        raise TypeError(
            f"milestones must be a sequence of epochs, got {milestones!r}; e.g. milestones=(5, 10)"
        )
    epochs = list(milestones)
    for epoch in epochs:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(
                f"milestones must hold epochs >= 1 (the search already runs at fit start), got "
                f"{epoch!r} in {milestones!r}; e.g. milestones=(5, 10)"
            )
    return frozenset(epochs)


def _callbacks(trainer: pl.Trainer) -> list[Callback]:
    # Trainer.callbacks is set up by its callback connector, out of the type checker's sight.
    return list(getattr(trainer, "callbacks"))  # noqa: B009


def _set_callbacks(trainer: pl.Trainer, callbacks: list[Callback]) -> None:
    setattr(trainer, "callbacks", callbacks)  # noqa: B010


_LOOP_FLAGS = (
    "_restarting",
    "_loaded_from_state_dict",
    "_resuming_from_checkpoint",
    "_restart_stage",
)
"""What a loop's ``load_state_dict`` changes beyond its progress (the loop thinks it resumes)."""


def _loops(loop: Any) -> Iterator[Any]:
    """``loop`` and every loop inside it, as Lightning's loops find their children."""
    yield loop
    for value in vars(loop).values():
        if isinstance(value, _Loop):
            yield from _loops(value)


def _flags(loop: Any) -> dict[str, Any]:
    return {name: loop.__dict__[name] for name in _LOOP_FLAGS if name in loop.__dict__}


class _TrainData:
    """The fit loop's train data as a search found it, put aside while the search builds its own.

    At fit start there is none yet (the real fit builds it afterwards). Mid-fit (a search from
    ``on_train_epoch_start``) the running epoch's dataloaders, their iterator (with the batch
    Lightning prefetched) and the limits derived from them are kept untouched, so the epoch goes
    on exactly as it would have without the search.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        loop = trainer.fit_loop
        self.loop = loop
        self.combined_loader = loop._combined_loader
        self.data_fetcher = loop._data_fetcher
        self.val_loader = loop.epoch_loop.val_loop._combined_loader
        self.max_batches = loop.max_batches
        self.reload_epoch = loop._last_train_dl_reload_epoch
        self.val_check_batch = trainer.val_check_batch
        loop._combined_loader = None
        loop._data_fetcher = None

    @property
    def mid_fit(self) -> bool:
        """True when the fit loop was already iterating its data (a search between epochs)."""
        return self.combined_loader is not None

    def put_back(self, trainer: pl.Trainer) -> None:
        """Drop what the search built; the fit loop's own data is back as it was."""
        loop = self.loop
        if loop._data_fetcher is not None and loop._data_fetcher is not self.data_fetcher:
            loop._data_fetcher.teardown()
        loop._combined_loader = self.combined_loader
        loop._data_fetcher = self.data_fetcher
        loop.epoch_loop.val_loop._combined_loader = self.val_loader
        loop.max_batches = self.max_batches
        loop._last_train_dl_reload_epoch = self.reload_epoch
        trainer.val_check_batch = self.val_check_batch

    def rebuild(self, trainer: pl.Trainer) -> None:
        """After a new batch size: the fit's dataloaders are built again at it (mid-fit: now, so
        the running epoch iterates them; at fit start: by the fit itself)."""
        from lightning.fabric.utilities.data import _set_sampler_epoch

        loop = self.loop
        if loop._data_fetcher is not None:
            loop._data_fetcher.teardown()
        loop._combined_loader = None
        loop._data_fetcher = None
        loop.epoch_loop.val_loop._combined_loader = None
        if self.mid_fit:
            loop.setup_data()
            if loop._combined_loader is not None:
                for loader in loop._combined_loader.flattened:
                    _set_sampler_epoch(loader, loop.epoch_progress.current.processed)


class _Saved:
    """Everything the sweep changes, in memory, and what it detaches from the trainer."""

    def __init__(self, trainer: pl.Trainer, model: pl.LightningModule) -> None:
        optimizers = list(trainer.optimizers)
        self.model = model
        self.optimizers = optimizers
        self.schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        self.scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.states: list[Any] = []
        for i, optimizer in enumerate(optimizers):
            first = i == 0
            self.states.append(
                _state.capture(
                    model,
                    optimizer,
                    schedulers=self.schedulers if first else (),
                    scaler=self.scaler if first else None,
                )
            )
        if not optimizers:
            self.rng = _state.RngState.capture()
        loop = trainer.fit_loop
        self.loop_state = copy.deepcopy(loop.state_dict())
        self.loop_flags = [(each, _flags(each)) for each in _loops(loop)]
        self.attrs: dict[str, Any] = {
            "max_epochs": loop.max_epochs,
            "min_epochs": loop.min_epochs,
        }
        self.epoch_attrs: dict[str, Any] = {
            "max_steps": loop.epoch_loop.max_steps,
            "min_steps": loop.epoch_loop.min_steps,
        }
        self.trainer_attrs: dict[str, Any] = {
            "limit_val_batches": trainer.limit_val_batches,
            "should_stop": trainer.should_stop,
        }
        self.callbacks = _callbacks(trainer)
        self.loggers = trainer.loggers
        self.scheduler_configs = trainer.strategy.lr_scheduler_configs
        connector = trainer._logger_connector
        self.metrics = {
            name: copy.copy(getattr(connector, name))
            for name in ("_callback_metrics", "_logged_metrics", "_progress_bar_metrics")
            if hasattr(connector, name)
        }
        self.data = _TrainData(trainer)  # last: the search builds its own data from here on

    def restore(self, trainer: pl.Trainer) -> None:
        """Put everything back (every part, even if one fails; the first error is raised)."""
        errors: list[BaseException] = []

        def attempt(part: Any) -> None:
            try:
                part()
            except Exception as error:
                errors.append(error)

        for i, (optimizer, saved) in enumerate(zip(self.optimizers, self.states)):
            first = i == 0
            attempt(
                lambda o=optimizer, s=saved, f=first: _state.restore(
                    s,
                    self.model,
                    o,
                    schedulers=self.schedulers if f else (),
                    scaler=self.scaler if f else None,
                )
            )
        if not self.states:  # (each optimizer's restore puts the generators back otherwise)
            attempt(self.rng.restore)
        attempt(lambda: self._restore_trainer(trainer))
        for saved in self.states:
            saved.close()
        if errors:
            raise errors[0]

    def _restore_trainer(self, trainer: pl.Trainer) -> None:
        _set_callbacks(trainer, self.callbacks)
        trainer.loggers = self.loggers
        trainer.strategy.lr_scheduler_configs = self.scheduler_configs
        loop = trainer.fit_loop
        for key, value in self.attrs.items():
            setattr(loop, key, value)
        for key, value in self.epoch_attrs.items():
            setattr(loop.epoch_loop, key, value)
        for key, value in self.trainer_attrs.items():
            setattr(trainer, key, value)
        loop.load_state_dict(copy.deepcopy(self.loop_state))
        # Loading a state dict marks every loop as restarting from a checkpoint: they are not.
        for each, flags in self.loop_flags:
            each.__dict__.update(flags)
        # The fit's own data as before: none at fit start (the fit builds it, as if no search
        # had run), the running epoch's untouched mid-fit.
        self.data.put_back(trainer)
        connector = trainer._logger_connector
        for name, value in self.metrics.items():
            setattr(connector, name, value)


class _SweepCallback(Callback):
    """The only callback attached during the sweep: pushes each optimizer step into the session."""

    def __init__(self, session: RangeTestSession, ratios: list[tuple[float, ...]]) -> None:
        self.session = session
        self.ratios = ratios
        self.window: list[float] = []
        self.window_open = False
        self.step_at_start = 0
        self.batches = 0

    def _set_lr(self, trainer: pl.Trainer, lr: float) -> None:
        for optimizer, ratios in zip(trainer.optimizers, self.ratios):
            for group, ratio in zip(optimizer.param_groups, ratios):
                value = lr * ratio
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(value)
                else:
                    group["lr"] = value

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Set the session's LR before the first batch of an optimizer step's window."""
        if self.session.finished:
            trainer.should_stop = True
            return
        if not self.window_open:
            self._set_lr(trainer, self.session.next_lr())
            self.step_at_start = trainer.global_step
            self.window_open = True
            self.window = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Collect the batch's loss; after an optimizer step, hand the window's mean in."""
        if not self.window_open:
            return
        self.batches += 1
        loss = _loss_of(outputs)
        if loss is not None:
            # Automatic optimisation divides the loss by accumulate_grad_batches: undo it.
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self.window.append(loss * scale)
        if trainer.global_step == self.step_at_start:
            return  # no optimizer step yet: the window goes on
        self.window_open = False
        if self.window:
            self.session.end_step(math.fsum(self.window) / len(self.window))
        else:
            self.session.end_step(None)  # a step with no loss to read: not a point
        if self.session.finished:
            trainer.should_stop = True


def _log_once(trainer: pl.Trainer, found: LRFinderResult) -> None:
    """Give the trainer's loggers the sweep once, after it (none of its steps): the suggestion
    and its confidence as metrics at the current step, the curve as ``lr_finder-epoch<E>.json``
    in a logger's ``log_dir``, and the plot as a figure where the logger takes one
    (TensorBoard). Rank 0 only."""
    if not trainer.loggers or not trainer.is_global_zero:
        return
    epoch = trainer.current_epoch
    with warnings.catch_warnings():  # a low confidence is logged as the metric, not warned
        warnings.simplefilter("ignore")
        suggestion = found._suggestion()
    metrics: dict[str, float] = {
        "lr_finder/points": float(len(found.result)),
        "lr_finder/confidence": float(suggestion.confidence),
    }
    if suggestion.ok:
        metrics["lr_finder/suggested_lr"] = float(suggestion.lr)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        log_dir = getattr(logger, "log_dir", None)
        if isinstance(log_dir, (str, Path)):
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            found.result.save_json(Path(log_dir) / f"lr_finder-epoch{epoch}.json")
        add_figure = getattr(getattr(logger, "experiment", None), "add_figure", None)
        if callable(add_figure):
            try:
                figure = found.plot(suggest=True)
            except ImportError:  # matplotlib is an extra: the metrics and the JSON still went
                continue
            add_figure("lr_finder", figure, global_step=trainer.global_step, close=True)
        logger.save()


def _detach(trainer: pl.Trainer, callback: Callback) -> None:
    """Set the trainer up for a sweep or a trial only: ``callback`` is all that runs, nothing
    cuts it short (the callback stops the loop)."""
    loop = trainer.fit_loop
    _set_callbacks(trainer, [callback])
    trainer.loggers = []
    trainer.strategy.lr_scheduler_configs = []
    trainer.limit_val_batches = 0  # no validation inside the sweep
    trainer.should_stop = False
    loop.max_epochs = -1  # the data cycles, epoch after epoch, until the callback stops it
    loop.min_epochs = None
    loop.epoch_loop.min_steps = None
    # No step limit: a point is one optimizer step of the automatic loop, but manual
    # optimisation counts every optimizer's step in global_step; the callback stops the loop.
    loop.epoch_loop.max_steps = -1
    loop.restarting = False


def _reducer(trainer: pl.Trainer, fault_timeout: float = 30.0) -> Reducer | None:
    """The reduce point of a multi-process strategy (DDP): every rank records the mean loss and
    stops at the same step; ``None`` (one process) otherwise."""
    if trainer.world_size <= 1:
        return None
    from lrfinder_adapters.distributed import TorchDistributedReducer, ddp_process_group

    return TorchDistributedReducer(
        fault_timeout=fault_timeout, watch=[ddp_process_group(trainer.strategy.model)]
    )


def _loss_of(outputs: Any) -> float | None:
    if isinstance(outputs, torch.Tensor):
        return float(outputs.detach().float().item())
    if isinstance(outputs, Mapping) and outputs.get("loss") is not None:
        value = outputs["loss"]
        return float(value.detach().float().item() if isinstance(value, torch.Tensor) else value)
    return None


def _ratios(trainer: pl.Trainer) -> tuple[list[tuple[float, ...]], tuple[float, ...]]:
    """Each optimizer's group ratios against the largest LR of all, and all of them flat."""
    lrs = [[float(g["lr"]) for g in optimizer.param_groups] for optimizer in trainer.optimizers]
    flat = group_ratios([lr for group in lrs for lr in group])
    out: list[tuple[float, ...]] = []
    i = 0
    for group in lrs:
        out.append(tuple(flat[i : i + len(group)]))
        i += len(group)
    return out, flat


class _SearchCallback(Callback):
    """What both finders do around their search: run it at fit start (skipped under
    ``fast_dev_run``, as Lightning does), end the fit there under the Tuner, and run it again at
    the start of each epoch in ``milestones``."""

    _LABEL = "search"
    milestones: frozenset[int] = frozenset()
    _early_exit = False

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run the search, restore everything; with the Tuner, end the fit here.

        Under ``fast_dev_run`` the search is skipped with a warning and the result stays
        ``None``.
        """
        if getattr(trainer, "fast_dev_run", False):  # set by a connector, untyped
            warnings.warn(
                f"skipping the {self._LABEL}: fast_dev_run is on (it runs a handful of batches "
                "only)",
                UserWarning,
                stacklevel=2,
            )
        else:
            self._search(trainer, pl_module)
        if self._early_exit:
            raise _TunerExitException()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Search again at the start of each epoch in :attr:`milestones` (not under the Tuner)."""
        if trainer.current_epoch in self.milestones and not self._early_exit:
            self._search(trainer, pl_module)


class LearningRateFinder(_SearchCallback):
    """Lightning's ``LearningRateFinder`` callback, running our range test at fit start.

    Args:
        min_lr: the first LR of the sweep.
        max_lr: the last LR.
        num_training_steps: the points to record (one per optimizer step).
        mode: ``"exponential"`` or ``"linear"`` (or a registered schedule name).
        early_stop_threshold: stop when the smoothed loss exceeds this many times the best
            (``None``: never stop early).
        update_attr: write the suggestion to the model's LR attribute (the first of
            ``lr``, ``learning_rate``, ``hparams.lr``, ``hparams.learning_rate``) and to the
            running optimizers' param groups (ratios kept).
        attr_name: the attribute to write instead (on the module or in its ``hparams``).
        method: our suggestion method (``None``: the default); see
            ``lrfinder_plugins.suggest``.
        plot_path: save the plot there (PNG) after the sweep.
        smoothing: the loss smoothing of the range test (see ``RangeTest``).
        progress: show a progress bar (``None``: when the trainer shows one).
        fault_timeout: under DDP, seconds a rank waits in a collective for a peer before that
            counts as a fault (a step that raised on one rank then ends the sweep on every rank:
            the failing rank raises its error, the others ``RankFailedError`` naming it).
        log_to_loggers: after the sweep, give the trainer's loggers the suggestion and its
            confidence (metrics ``lr_finder/suggested_lr``, ``lr_finder/confidence``,
            ``lr_finder/points``), the curve (``lr_finder-epoch<E>.json`` in a logger's
            ``log_dir``) and the plot (as a figure, TensorBoard), once; the sweep's own steps
            never reach them.
        milestones: epochs at whose start the sweep runs again, mid-fit (Lightning's
            fine-tuning pattern, which also works as in its docs: a subclass that calls
            :meth:`lr_find` from ``on_train_epoch_start``). Each sweep starts from the weights
            of that moment, records its points, and the epoch then goes on from exactly the
            state before the sweep (same weights, same batches), at the found LR.

    After the sweep, :attr:`optimal_lr` holds an :class:`LRFinderResult` (the latest) and
    :attr:`history` every sweep's, by the epoch it ran at.
    """

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        *,
        method: str | None = None,
        plot_path: str | Path | None = None,
        smoothing: float = 0.05,
        progress: bool | None = None,
        fault_timeout: float = 30.0,
        log_to_loggers: bool = True,
        milestones: Sequence[int] = (),
    ) -> None:
        self.milestones = _milestones(milestones)
        # Lightning's names in the errors (the engine would name them start_lr, end_lr, ...).
        min_lr = _validate.positive_finite("min_lr", min_lr, "1e-8")
        max_lr = _validate.positive_finite("max_lr", max_lr, "1.0")
        if max_lr <= min_lr:
            raise ValueError(
                f"max_lr={max_lr!r} must be above min_lr={min_lr!r}; e.g. min_lr=1e-8, max_lr=1.0"
            )
        _validate.int_at_least("num_training_steps", num_training_steps, 2)
        if early_stop_threshold is not None:
            _validate.greater_than_one("early_stop_threshold", early_stop_threshold)
        _validate.boolean("log_to_loggers", log_to_loggers)
        _validate.boolean("update_attr", update_attr)
        _check_attr_name(attr_name)
        methods = tuple(registered_suggesters())  # a name two plugins register fails now
        if method is not None:
            _validate.one_of("method", method, methods)
        if progress is not None:
            _validate.boolean("progress", progress)
        _validate.positive_finite("fault_timeout", fault_timeout, "30.0")
        plot_path = check_output_path(plot_path, "plot_path")
        self.log_to_loggers = log_to_loggers
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.method = method
        self.plot_path = plot_path
        self.smoothing = smoothing
        self.progress = progress
        self.fault_timeout = fault_timeout
        self._early_exit = False
        self.optimal_lr: LRFinderResult | None = None
        self.history: dict[int, LRFinderResult] = {}
        # Checked now, before any trainer exists: a bad setting raises before anything runs.
        self._make_test((1.0,))

    def _make_test(self, ratios: tuple[float, ...]) -> RangeTest:
        return RangeTest(
            start_lr=self._min_lr,
            end_lr=self._max_lr,
            num_iter=self._num_training_steps,
            mode=self._mode,
            smoothing=self.smoothing,
            diverge_threshold=self._early_stop_threshold,
            group_ratios=ratios,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check, before anything runs, the strategy and that the found LR has somewhere to go."""
        if stage == "fit":
            _check_strategy(trainer)
            if self._update_attr:
                find_lr_attr(pl_module, self._attr_name)

    _LABEL = "LR finder"

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        return self.lr_find(trainer, pl_module)

    def lr_find(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LRFinderResult:
        """Run the sweep in ``trainer``'s fit loop now; the state is restored afterwards.

        At fit start or mid-fit (e.g. from ``on_train_epoch_start``): the running epoch's data
        is left as it was, and the sweep iterates a dataloader of its own.
        """
        if not trainer.optimizers:
            raise RuntimeError(
                "the trainer has no optimizer at fit start: configure_optimizers must return one"
            )
        target = find_lr_attr(pl_module, self._attr_name) if self._update_attr else None
        per_optimizer, flat = _ratios(trainer)
        progress = (
            trainer.progress_bar_callback is not None if self.progress is None else self.progress
        )
        session = RangeTestSession(
            self._make_test(flat), reducer=_reducer(trainer, self.fault_timeout), progress=progress
        )
        saved = _Saved(trainer, pl_module)  # after the session: a plugin failing moved nothing
        sweep = _SweepCallback(session, per_optimizer)
        try:
            self._detach(trainer, sweep)
            session.start()
            loop = trainer.fit_loop
            try:
                loop.run()
            except (Exception, KeyboardInterrupt) as error:
                # Through the reduce point, as the pull driver does: every rank learns of it and
                # raises (this one its own error, the others RankFailedError naming this rank).
                session.end_step(StepOutcome.failed(error))
                raise
            if not session.finished:
                session.stop(StopReason.DATA_EXHAUSTED)
        finally:
            result = session.finish()
            saved.restore(trainer)
        found = LRFinderResult(result, self.method)
        self.optimal_lr = found
        self.history[trainer.current_epoch] = found
        log.info(
            "LR finder: %d points over %d batches, stopped: %s",
            len(result),
            sweep.batches,
            result.stop_reason,
        )
        if self.plot_path is not None and trainer.is_global_zero:
            import matplotlib.pyplot as plt

            plt.close(result.plot(self.plot_path, suggest=self.method or True))
        if target is not None:
            self._apply(trainer, target, found, per_optimizer)
        if self.log_to_loggers:
            _log_once(trainer, found)
        return found

    def _detach(self, trainer: pl.Trainer, sweep: _SweepCallback) -> None:
        _detach(trainer, sweep)

    def _apply(
        self,
        trainer: pl.Trainer,
        target: tuple[Any, str],
        found: LRFinderResult,
        per_optimizer: list[tuple[float, ...]],
    ) -> None:
        lr = found.suggestion()
        if lr is None:
            log.warning("LR finder: no suggestion (%s); the LR is unchanged", found)
            return
        container, name = target
        old = get_lr_attr(container, name)
        _set_lr_attr(container, name, lr)
        # The running fit's optimizers and schedulers were built from the old LR. An optimizer
        # with a schedule: every LR it and its schedulers hold is multiplied by new / old, which
        # is what configure_optimizers gives at the new LR for a schedule built from the
        # attribute (OneCycleLR(max_lr=10 * self.lr): max_lr moves too), keeping its shape, its
        # position and the optimizer's state (a milestone's search runs mid-fit). Without a
        # schedule of torch's kinds, or an old LR to divide by: each group gets its share.
        factor = lr / old if isinstance(old, (int, float)) and math.isfinite(old) and old > 0 else 0
        for optimizer, ratios in zip(trainer.optimizers, per_optimizer):
            schedulers = [
                c.scheduler
                for c in trainer.lr_scheduler_configs
                if c.scheduler.optimizer is optimizer
            ]
            known = all(type(k) in KNOWN_KINDS for k in flatten(schedulers))
            if schedulers and known and factor > 0:
                rescale(optimizer, schedulers, [factor] * len(optimizer.param_groups))
                continue
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
                if "initial_lr" in group:
                    group["initial_lr"] = lr * ratio
            for scheduler in schedulers:
                if hasattr(scheduler, "base_lrs"):
                    scheduler.base_lrs = [
                        g.get("initial_lr", g["lr"]) for g in optimizer.param_groups
                    ]
        log.info("LR finder: learning rate set to %.3g (%s.%s)", lr, type(container).__name__, name)


_BATCH_OPTIONS = frozenset(
    {"margin", "memory_budget", "max_val", "progress", "target_batch", "pin_allocator"}
    | {"noise_scale", "gns_precision", "gns_max_steps"}
)
_LR_OPTIONS = frozenset(
    {"suggest_method", "plot_path", "smoothing", "progress", "fault_timeout", "log_to_loggers"}
)
"""Our keyword options of :meth:`Tuner.lr_find` (beyond Lightning's parameters)."""
"""Our keyword options of :class:`BatchSizeFinder` (beyond Lightning's parameters)."""


def find_batch_size_attr(
    model: Any, datamodule: Any = None, batch_arg_name: str = "batch_size"
) -> list[tuple[Any, str]]:
    """Every place the batch size lives, as Lightning looks: ``model.<batch_arg_name>``,
    ``model.hparams``, ``datamodule.<batch_arg_name>``, ``datamodule.hparams`` (all of those
    that exist get the found size).

    Raises:
        AttributeError: none exists, naming what was looked for and the fix.
    """
    found: list[tuple[Any, str]] = []
    for owner in (model, datamodule):
        if owner is None:
            continue
        for container in (owner, _hparams(owner)):
            if _has(container, batch_arg_name):
                found.append((container, batch_arg_name))
    if not found:
        looked = [f"model.{batch_arg_name}", f"model.hparams.{batch_arg_name}"]
        if datamodule is not None:
            looked += [f"datamodule.{batch_arg_name}", f"datamodule.hparams.{batch_arg_name}"]
        raise AttributeError(
            f"the batch-size search has nowhere to set the batch size: none of "
            f"{', '.join(looked)} exists; add one (e.g. `self.batch_size = 32` in __init__ and "
            "use it in train_dataloader) or name yours with batch_arg_name=..."
        )
    return found


class _FitLoader:
    """The batch size of a train dataloader passed straight to ``fit()``: setting it swaps the
    fit's loader for a copy at that size (:func:`~lrfinder_adapters.batch_size.resize_dataloader`).
    """

    def __init__(self, source: Any) -> None:
        from lrfinder_adapters.batch_size import resize_dataloader

        self.source = source
        self.original = source.instance
        self._resize = resize_dataloader
        self.loader = self.original
        resize_dataloader(self.original, 1)  # a loader it cannot resize fails now, before any trial

    @property
    def batch_size(self) -> int:
        """The batch size of the loader the fit iterates now."""
        size = self.loader.batch_size
        return int(size if size is not None else self.loader.batch_sampler.batch_size)

    @batch_size.setter
    def batch_size(self, size: int) -> None:
        original = self.original.batch_size or self.original.batch_sampler.batch_size
        self.loader = self.original if size == original else self._resize(self.original, size)
        self.source.instance = self.loader


def _set_batch_size(targets: list[tuple[Any, str]], size: int) -> None:
    for container, name in targets:
        _set_lr_attr(container, name, size)


class _TrialCallback(Callback):
    """The only callback attached during a trial: counts optimizer steps, stops after ``steps``."""

    def __init__(
        self,
        steps: int,
        meter: _memory.TensorMeter,
        *,
        meter_last: bool = False,
        state: Callable[[], Iterable[torch.Tensor]] = tuple,
    ) -> None:
        self.steps = steps
        self.meter = meter
        self.meter_last = meter_last
        self.state = state
        self.metering = False
        self.done = 0
        self.window_open = False
        self.step_at_start = 0
        self.started: float | None = None
        self.timed_steps: int | None = None  # the bare steps before a metered one
        self.timed_seconds: float | None = None
        from lrfinder_adapters._trials import RemainderSkip

        self.remainder = RemainderSkip()
        self.window_skipped = False  # the open window is an epoch's short last batch
        self.skipped_seconds = 0.0  # their time: not the steps' at this size (throughput)
        self._window_start = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start a step's profile before the first batch of an optimizer step's window; the
        last step (``meter_last``) runs under the meter, the state counted again first."""
        if self.done >= self.steps:
            trainer.should_stop = True
            return
        if self.started is None:
            self.started = time.perf_counter()
        if not self.window_open:
            # An epoch's short last batch (a loader that keeps it) is not a step at this size:
            # it runs, uncounted and unmetered (see _trials.RemainderSkip).
            self.window_skipped = self.remainder.skip(batch)
            self._window_start = time.perf_counter()
            if (
                self.meter_last
                and not self.metering
                and not self.window_skipped
                and self.done == self.steps - 1
            ):
                if self.done > 0:  # the bare steps' time: the user's own cost (throughput)
                    self.timed_steps = self.done
                    self.timed_seconds = time.perf_counter() - self.started - self.skipped_seconds
                self.meter.bare = False
                self.meter.track(self.state())  # what the bare steps left: optimizer state
                self.meter.peak = self.meter.live
                self.meter.__enter__()
                self.metering = True
            self.meter.begin_step()
            self.step_at_start = trainer.global_step
            self.window_open = True
        if self.metering:
            self.meter.track(_memory._leaves(batch))  # loaded before the meter was entered

    def leave(self) -> None:
        """Take the meter off the dispatch stack (after the loop, or when it raised)."""
        if self.metering:
            self.metering = False
            self.meter.__exit__(None, None, None)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count an optimizer step once the window's last batch stepped; stop after the last."""
        if not self.window_open or trainer.global_step == self.step_at_start:
            return  # no optimizer step yet: the window goes on
        self.window_open = False
        if self.window_skipped:
            self.skipped_seconds += time.perf_counter() - self._window_start
            return
        self.done += 1
        if self.done >= self.steps:
            trainer.should_stop = True


class _NoiseTrial(_TrialCallback):
    """The measuring steps at the answer: optimizer steps until the monitor's estimate is
    ``precision`` precise or ``steps`` ran (the raw PyTorch search's rule:
    :func:`lrfinder_adapters.gradient_noise.measure_during`)."""

    def __init__(self, monitor: NoiseScaleMonitor, precision: float, steps: int) -> None:
        meter = _memory.TensorMeter()
        meter.bare = True  # no memory measured: the estimate is what this run is for
        super().__init__(steps, meter)
        self.monitor, self.precision = monitor, precision

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the step; stop once the estimate is precise enough."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.monitor.estimator.precise_enough(self.precision):
            trainer.should_stop = True


class BatchSizeFinder(_SearchCallback):
    """Lightning's ``BatchSizeFinder`` callback, running our batch-size search at fit start.

    Each trial sets the proposed size where Lightning looks (every one of ``model.<name>``,
    ``model.hparams``, ``datamodule.<name>``, ``datamodule.hparams`` that exists), rebuilds the
    train dataloader and runs ``steps_per_trial`` optimizer steps through Lightning's own fit
    loop (no validation, no loggers, not cut by the trainer's limits), measured as the torch
    probe measures (:mod:`lrfinder_adapters._memory`). An out-of-memory error (classified by
    :func:`lrfinder_plugins.spi.is_oom`), or live tensor memory over ``memory_budget``, means the
    size does not fit. After every trial the full state is put back (weights, optimizers,
    schedulers, RNG, loop progress). Under DDP every rank runs each trial on the inner module
    (no collective inside a trial) and the ranks agree on its outcome once per trial: the size
    fits only if it fits on every rank.

    Args:
        mode: ``"power"`` (Lightning's default: double until out of memory), ``"binsearch"``
            (then bisect) or ``"guided"`` (ours: extrapolates the measured memory).
        steps_per_trial: optimizer steps per trial.
        init_val: the first size tried.
        max_trials: the most trials.
        batch_arg_name: the attribute that holds the batch size.
        margin: the share of the limit kept free (see ``BatchSizeSearch``).
        memory_budget: bytes of live tensor memory a trial may use; over it counts as out of
            memory (``None``: the device's real limit).
        max_val: the largest size tried (``None``: no limit).
        progress: show a progress bar (``None``: when the trainer shows one).
        pin_allocator: ``None``: on glibc under a finite ``RLIMIT_AS``, pin the C allocator
            for the search (one arena, a fixed mmap threshold: what fits then depends on the
            size only; logged, kept for the process), as ``find_batch_size`` does; ``True``:
            pin whatever the limit; ``False``: leave it alone.
        target_batch: a global batch to keep (per-rank batch x ranks x accumulation): the
            found size is then the largest per-rank batch that fits and divides it, and
            ``trainer.accumulate_grad_batches`` is set to make up the rest.
        milestones: epochs at whose start the search runs again, mid-fit (as a subclass calling
            :meth:`scale_batch_size` from ``on_train_epoch_start`` does); the epoch then
            iterates dataloaders rebuilt at the found size, from the state before the search.
        noise_scale, gns_precision, gns_max_steps: after the search, measure the gradient noise
            scale at the answer (``result.noise_scale``, read by ``result.recommendation``), as
            ``lrfinder_adapters.batch_size.find_batch_size(noise_scale=True)`` does: optimizer
            steps through this finder's trial runner (the fit loop) with a
            :class:`~lrfinder_adapters.gradient_noise.NoiseScaleMonitor` attached, until the
            interval's relative half-width is ``gns_precision`` or ``gns_max_steps`` steps ran;
            the state is restored after. One process: two micro-batches per step
            (``accumulate_grad_batches=2``); under DDP one batch per rank, through DDP's own
            all-reduce (each rank's gradient is a small batch, the reduced one the big batch).

    Raises:
        NothingFitsError: even the smallest size ran out of memory.

    After the search, :attr:`optimal_batch_size` holds the size (an int) and :attr:`result` the
    :class:`~lrfinder_plugins.BatchSizeResult`; the size is set in the attribute(s), and the
    fit's dataloaders are rebuilt at it.
    """

    SUPPORTED_MODES = ("power", "binsearch", "guided")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        *,
        margin: float = 0.05,
        memory_budget: int | None = None,
        max_val: int | None = 8192,
        progress: bool | None = None,
        milestones: Sequence[int] = (),
        target_batch: int | None = None,
        pin_allocator: bool | None = None,
        noise_scale: bool = False,
        gns_precision: float = GNS_PRECISION,
        gns_max_steps: int = 50,
    ) -> None:
        from lrfinder_adapters._trials import check_pin_allocator
        from lrfinder_adapters.batch_size import check_noise_options

        check_noise_options(noise_scale, gns_precision, gns_max_steps)
        self.noise_scale = noise_scale
        self.gns_precision, self.gns_max_steps = float(gns_precision), gns_max_steps
        self.pin_allocator = check_pin_allocator(pin_allocator)
        self.milestones = _milestones(milestones)
        self.target_batch = (
            None
            if target_batch is None
            else _validate.int_at_least("target_batch", target_batch, 1)
        )
        self._mode = _validate.one_of("mode", mode, self.SUPPORTED_MODES)
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        if not isinstance(batch_arg_name, str):
            raise TypeError(
                f"batch_arg_name must be a str (the batch size attribute's name), got "
                f"{batch_arg_name!r}; e.g. batch_arg_name='batch_size'"
            )
        if progress is not None:
            _validate.boolean("progress", progress)
        self._batch_arg_name = batch_arg_name
        self.margin = margin
        self.memory_budget = (
            None
            if memory_budget is None
            else _validate.int_at_least("memory_budget", memory_budget, 1)
        )
        self.max_val = max_val
        self.progress = progress
        self._early_exit = False
        self.optimal_batch_size: int | None = None
        self.result: BatchSizeResult | None = None
        self._fit_loader: _FitLoader | None = None
        # Checked now, before any trainer exists: a bad setting raises before anything runs.
        self._make_search(None)

    def _make_search(self, upper_bound: int | None, world_size: int = 1) -> BatchSizeSearch:
        from lrfinder_adapters.distributed import per_rank_target

        return BatchSizeSearch(
            target_batch=per_rank_target(self.target_batch, world_size),
            mode=self._mode,
            init_val=self._init_val,
            max_trials=self._max_trials,
            steps_per_trial=self._steps_per_trial,
            max_val=self.max_val,
            margin=self.margin,
            upper_bound=upper_bound,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check, before anything runs, the strategy and that the batch size has somewhere to go."""
        if stage == "fit":
            _check_strategy(trainer)
            self._targets(trainer, pl_module)

    def _targets(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[Any, str]]:
        source = trainer.fit_loop._data_source
        if not source.is_module():
            # A dataloader passed straight to fit(): the trials and the fit use resized copies.
            if self._fit_loader is None or self._fit_loader.source is not source:
                self._fit_loader = _FitLoader(source)
            return [(self._fit_loader, "batch_size")]
        datamodule = getattr(trainer, "datamodule", None)  # set by a connector, untyped
        return find_batch_size_attr(pl_module, datamodule, self._batch_arg_name)

    @property
    def train_dataloader(self) -> Any:
        """With a dataloader passed straight to ``fit()``: the copy of it at the found size
        (the fit goes on with it; after the Tuner, pass it to your ``fit``); else ``None``."""
        return None if self._fit_loader is None else self._fit_loader.loader

    _LABEL = "batch-size finder"

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        return self.scale_batch_size(trainer, pl_module)

    def scale_batch_size(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """Run the search in ``trainer``'s fit loop now; the state is restored after each trial.

        At fit start or mid-fit (e.g. from ``on_train_epoch_start``: the running epoch then
        iterates dataloaders rebuilt at the found size)."""
        from lrfinder_adapters.batch_size import with_optimizer_name

        targets = self._targets(trainer, pl_module)
        container, name = targets[0]
        original = container[name] if isinstance(container, Mapping) else getattr(container, name)
        progress = (
            trainer.progress_bar_callback is not None if self.progress is None else self.progress
        )
        _memory.pin_allocator(self.pin_allocator)  # before the first trial (see _memory)
        outer = _TrainData(trainer)  # the trials build their own data; the fit's is kept
        try:
            session = BatchSizeSession(
                self._make_search(self._dataset_length(trainer), trainer.world_size),
                reducer=_reducer(trainer),
                progress=progress,
            )
            done = False
            try:
                session.start()
                while not session.finished:
                    size = session.next_size()
                    report = self._trial(
                        trainer, pl_module, targets, size, measure=session.reads_profile
                    )
                    session.end_trial(size, report)
                done = True
            finally:
                result = session.finish()
                if not done:
                    _set_batch_size(targets, original)
            if trainer.optimizers:
                result = with_optimizer_name(result, trainer.optimizers[0])
            if self.noise_scale and result.batch_size is not None:
                try:
                    measured = self._measure_noise_scale(
                        trainer, pl_module, targets, result.batch_size
                    )
                except BaseException:
                    _set_batch_size(targets, original)
                    raise
                options = {**result.options, "noise_scale_precision": self.gns_precision}
                result = dataclasses.replace(result, options=options, noise_scale=measured)
        finally:
            outer.put_back(trainer)
        self.result = result
        if result.batch_size is None:
            _set_batch_size(targets, original)
            last = result.trials[-1].error if result.trials else "no trials"
            raise NothingFitsError(
                f"even a batch of {min(t.size for t in result.trials)} ran out of memory "
                f"({last}); use a smaller model, mixed precision or a larger memory_budget",
                result,
            )
        self.optimal_batch_size = result.batch_size
        _set_batch_size(targets, result.batch_size)
        if self.target_batch is not None:
            # The global batch kept: per-rank batch x ranks x accumulation == target_batch.
            trainer.accumulate_grad_batches = result.accumulation_steps
            log.info(
                "batch-size finder: accumulate_grad_batches set to %d (global batch %d)",
                result.accumulation_steps,
                result.batch_size * result.accumulation_steps * trainer.world_size,
            )
        outer.rebuild(trainer)  # the fit's dataloaders, at the found size
        log.info("batch-size finder: batch size set to %d (%s)", result.batch_size, name)
        return result.batch_size

    @staticmethod
    def _dataset_length(trainer: pl.Trainer) -> int | None:
        """The train dataset's length (no size above it is tried); ``None`` when unknown."""
        loop = trainer.fit_loop
        rng = _state.RngState.capture()  # setting the data up draws a sampler seed: not kept
        data = _TrainData(trainer)
        try:
            loop.setup_data()
            combined = loop._combined_loader
            return None if combined is None else int(combined._dataset_length())
        except (NotImplementedError, TypeError):
            return None  # iterable-style data: no bound
        finally:
            data.put_back(trainer)
            rng.restore()

    def _trial(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        targets: list[tuple[Any, str]],
        size: int,
        *,
        measure: bool = True,
    ) -> TrialReport:
        """One trial at ``size`` in the fit loop; an out-of-memory error is a report.

        Its last optimizer step runs under the memory meter where the search reads the trial's
        memory (``measure``) or a budget only the meter can enforce (``memory_budget`` off
        CUDA); the steps before it, and every step otherwise, run bare, at the cost of the
        loop's own steps (on CUDA the allocator's peaks are read in every step), as the torch
        probe's (:func:`lrfinder_adapters._trials.run_measured`)."""
        _set_batch_size(targets, size)
        saved = _Saved(trainer, pl_module)
        meter = _memory.make_meter(pl_module.device, self.memory_budget)
        meter.bare = True  # until the last step (see _TrialCallback, run_measured)

        def state() -> Iterator[torch.Tensor]:
            for optimizer in trainer.optimizers:
                yield from _memory.state_tensors(pl_module, optimizer)

        trial = _TrialCallback(
            self._steps_per_trial, meter, meter_last=measure or meter.checks_ops, state=state
        )
        hooks: list[Any] = []
        error: str | None = None
        exception: Exception | None = None
        capacity: int | None = None
        loop = trainer.fit_loop
        start = time.perf_counter()
        try:
            _detach(trainer, trial)
            for optimizer in trainer.optimizers:
                hooks.append(
                    optimizer.register_step_pre_hook(
                        lambda *_: meter.mark(_memory.FORWARD_BACKWARD)
                    )
                )
                hooks.append(
                    optimizer.register_step_post_hook(lambda *_: meter.mark(_memory.OPTIMIZER))
                )
                meter.track(_memory.state_tensors(pl_module, optimizer))
            loop.setup_data()  # the train dataloader, at this size
            with _local_steps(trainer, pl_module):
                try:
                    loop.run()
                finally:
                    trial.leave()
            meter.mark(_memory.FORWARD_BACKWARD)
            meter.begin_step()
        except Exception as exc:
            if is_oom(exc):
                error = first_line(exc)
                capacity = meter.capacity_after(exc)
            else:
                exception = exc
        finally:
            for hook in hooks:
                hook.remove()
            saved.restore(trainer)
        seconds = time.perf_counter() - start - trial.skipped_seconds
        _memory.free_memory(pl_module.device)
        if exception is None and error is None and trial.done < self._steps_per_trial:
            exception = ValueError(
                f"the train dataloader yielded no batches at batch size {size}; it needs at "
                "least one batch per trial (drop_last=True drops a dataset smaller than a batch)"
            )
        if exception is not None:
            return TrialReport(fitted=False, steps=trial.done, exception=exception)
        reading = meter.capacity()
        if reading is not None:
            capacity = reading if capacity is None else min(capacity, reading)
        return TrialReport(
            fitted=error is None,
            steps=trial.done,
            peak_bytes=meter.reported_peaks or None,
            profile=None if error is not None or meter.profile is None else tuple(meter.profile),
            capacity_bytes=capacity,
            seconds=seconds,
            error=error,
            timed_steps=trial.timed_steps,
            timed_seconds=trial.timed_seconds,
        )

    def _measure_noise_scale(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        targets: list[tuple[Any, str]],
        size: int,
    ) -> Any:
        """The measuring steps at ``size`` through the fit loop, the monitor attached;
        everything put back after, as after a trial.

        One process: two micro-batches per optimizer step (small: one, big: the window). Under
        DDP: one batch per rank and step, through DDP's own all-reduce (small: each rank's
        gradient, big: the reduced one, read by the monitor's communication hook, as
        :class:`NoiseScaleCallback` does), so every rank computes the same estimate and stops
        at the same step.
        """
        _set_batch_size(targets, size)
        saved = _Saved(trainer, pl_module)
        accumulate = trainer.accumulate_grad_batches
        ddp = trainer.strategy.model if trainer.world_size > 1 else None
        window = 2 if ddp is None else 1
        monitor = NoiseScaleMonitor(
            pl_module if ddp is None else ddp,
            trainer.optimizers[0],
            micro_batch_size=size,
            accumulation_steps=window,
            scaler=getattr(trainer.precision_plugin, "scaler", None),
        )
        measuring = _NoiseTrial(monitor, self.gns_precision, self.gns_max_steps)
        try:
            _detach(trainer, measuring)
            trainer.accumulate_grad_batches = window
            trainer.fit_loop.setup_data()
            with _local_steps(trainer, pl_module) if ddp is None else contextlib.nullcontext():
                trainer.fit_loop.run()
        finally:
            monitor.close()
            trainer.accumulate_grad_batches = accumulate
            saved.restore(trainer)
            _memory.free_memory(pl_module.device)
        estimate = monitor.estimate
        if estimate is not None:
            log.info("noise scale at batch size %d: %s", size, estimate.describe())
        return estimate


@contextlib.contextmanager
def _local_steps(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """Under DDP, a trial makes no collective call: the steps run on the inner module (no
    gradient all-reduce, as the torch probe does) and the epoch loop skips its per-batch SIGTERM
    broadcast, so a size that runs out of memory on one rank only cannot leave the others
    waiting; the ranks agree once per trial instead (the session's reduce point)."""
    strategy = trainer.strategy
    wrapped = strategy.model
    if not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        yield
        return
    epoch_loop = trainer.fit_loop.epoch_loop
    strategy.model = pl_module
    epoch_loop._broadcast_sigterm_tensor = lambda: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del epoch_loop._broadcast_sigterm_tensor  # the class's method again
        strategy.model = wrapped


class Tuner:
    """Lightning's ``Tuner``, with our LR finder: ``Tuner(trainer).lr_find(model, ...)``.

    Args:
        trainer: the trainer to tune with (left reusable for the real fit).
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        self.train_dataloader: Any = None
        """After :meth:`scale_batch_size` with ``train_dataloaders=``: that loader at the found
        size (Lightning's Tuner refuses such loaders), to pass to ``fit``."""

    def _fit_once(
        self,
        callback: LearningRateFinder | BatchSizeFinder,
        model: pl.LightningModule,
        train_dataloaders: Any,
        val_dataloaders: Any,
        datamodule: pl.LightningDataModule | None,
    ) -> None:
        """``trainer.fit`` with ``callback`` first, ended by it once it searched (as Lightning's
        Tuner does); the trainer's callbacks are as before afterwards."""
        callback._early_exit = True
        trainer = self._trainer
        _set_callbacks(trainer, [callback, *_callbacks(trainer)])
        try:
            trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        finally:
            _set_callbacks(trainer, [cb for cb in _callbacks(trainer) if cb is not callback])

    def lr_find(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
        **ours: Any,
    ) -> LRFinderResult | None:
        """Run the LR range test in ``trainer.fit``'s loop and return its result.

        Returns ``None`` under ``fast_dev_run`` (the sweep is skipped with a warning, as
        Lightning does).

        Takes Lightning's arguments; ``**ours`` are :class:`LearningRateFinder`'s keyword
        options (``method`` there is named ``suggest_method`` here, since Lightning's
        ``method`` is the trainer stage; also ``plot_path``, ``smoothing``, ``progress``).
        The model, optimizer state, RNG and the trainer's counters are as before; with
        ``update_attr=True`` the suggestion is written to the model's LR attribute.
        """
        if method != "fit":
            raise ValueError(
                f"method={method!r}: the LR finder runs in fit only; pass method='fit'"
            )
        if dataloaders is not None:
            raise ValueError(
                "dataloaders= is for validate/test/predict; pass train_dataloaders= for the "
                "LR finder"
            )
        if train_dataloaders is not None and datamodule is not None:
            raise ValueError("pass either train_dataloaders= or datamodule=, not both")
        _validate.known_options("lr_find", ours, _LR_OPTIONS)
        callback = _lr_finder_options(
            {
                "min_lr": min_lr,
                "max_lr": max_lr,
                "num_training": num_training,
                "mode": mode,
                "early_stop_threshold": early_stop_threshold,
                "update_attr": update_attr,
                "attr_name": attr_name,
                **ours,
            }
        )
        if update_attr:
            find_lr_attr(model, attr_name)  # before anything runs
        self._fit_once(callback, model, train_dataloaders, val_dataloaders, datamodule)
        return callback.optimal_lr

    def scale_batch_size(
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        **ours: Any,
    ) -> int | None:
        """Find the largest batch size that fits, in ``trainer.fit``'s loop; return it (an int).

        Returns ``None`` under ``fast_dev_run`` (the search is skipped with a warning).

        Takes Lightning's arguments; ``**ours`` are :class:`BatchSizeFinder`'s keyword options
        (``margin``, ``memory_budget``, ``max_val``, ``progress``, ``target_batch``). The found
        size is set in the
        batch-size attribute(s); with ``train_dataloaders=`` (a plain ``DataLoader``), the trials
        run on resized copies of it and :attr:`train_dataloader` holds the copy at the found
        size. The model, optimizer state, RNG and the trainer's counters are as before.

        Raises:
            AttributeError: no batch-size attribute (before anything runs).
            TypeError, ValueError: a ``train_dataloaders`` it cannot resize (before anything runs).
            NothingFitsError: even the smallest size ran out of memory.
        """
        if method != "fit":
            raise ValueError(
                f"method={method!r}: the batch-size search runs in fit only; pass method='fit'"
            )
        if dataloaders is not None:
            raise ValueError(
                "dataloaders= is for validate/test/predict; pass train_dataloaders= for the "
                "batch-size search"
            )
        if train_dataloaders is not None and datamodule is not None:
            raise ValueError("pass either train_dataloaders= or datamodule=, not both")
        _validate.known_options("scale_batch_size", ours, _BATCH_OPTIONS)
        # Before anything runs: somewhere to put the size, or a loader that can be resized.
        if train_dataloaders is None:
            find_batch_size_attr(model, datamodule, batch_arg_name)
        else:
            from lrfinder_adapters.batch_size import resize_dataloader

            resize_dataloader(train_dataloaders, 1)
        callback = BatchSizeFinder(
            mode=mode,
            steps_per_trial=steps_per_trial,
            init_val=init_val,
            max_trials=max_trials,
            batch_arg_name=batch_arg_name,
            **ours,
        )
        self._fit_once(callback, model, train_dataloaders, val_dataloaders, datamodule)
        self.train_dataloader = callback.train_dataloader
        return callback.optimal_batch_size


class _TuneFields(NamedTuple):
    batch_size: int | None
    lr_finder: LRFinderResult | None


class TuneResult(_TuneFields):
    """What :func:`tune` found: the batch size first, then the LR finder's result at it
    (``size, lr_finder = tune(...)``); with ``train_dataloaders=``, :attr:`train_dataloader` is
    that loader at the found size (to pass to ``fit``)."""

    train_dataloader: Any = None


_TUNE_BATCH = frozenset(
    {"steps_per_trial", "init_val", "max_trials", "batch_arg_name"} | _BATCH_OPTIONS - {"progress"}
)
_TUNE_LR = frozenset(
    {"min_lr", "max_lr", "num_training", "early_stop_threshold", "update_attr", "attr_name"}
    | _LR_OPTIONS - {"progress"}
)


_TUNE_BOTH = frozenset({"batch_size_mode", "lr_mode", "progress"})


def _lr_finder_options(rate: Mapping[str, Any]) -> LearningRateFinder:
    """The :class:`LearningRateFinder` :meth:`Tuner.lr_find` would build from ``rate`` (its
    settings checked): Lightning's names mapped to the callback's."""
    if "num_training" in rate:
        _validate.int_at_least("num_training", rate["num_training"], 2)
    if rate.get("suggest_method") is not None:  # named as the caller spelled it
        _validate.one_of("suggest_method", rate["suggest_method"], tuple(registered_suggesters()))
    names = {"num_training": "num_training_steps", "suggest_method": "method"}
    return LearningRateFinder(**{names.get(k, k): v for k, v in rate.items()})


def check_tune(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    lr: bool = True,
    batch_size: bool = True,
    *,
    train_dataloaders: Any = None,
    **options: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every check :func:`tune` makes before anything runs, with its arguments: the option
    names, the settings of each search it would run and where their results go; returns the
    batch-size and the LR options.

    Raises:
        lrfinder_plugins.spi.validate.UnknownOptionError: an option neither search takes.
        TypeError, ValueError: a bad setting (named, with its value and a fix).
        AttributeError: nowhere to put a found value (no batch size or LR attribute).
    """
    _validate.known_options("tune", options, _TUNE_BATCH | _TUNE_LR | _TUNE_BOTH)
    batch = {k: v for k, v in options.items() if k in _TUNE_BATCH}
    rate = {k: v for k, v in options.items() if k in _TUNE_LR}
    if "batch_size_mode" in options:
        batch["mode"] = options["batch_size_mode"]
    if "lr_mode" in options:
        rate["mode"] = options["lr_mode"]
    if "progress" in options:
        batch["progress"] = rate["progress"] = options["progress"]
    # Every check before anything runs: a bad LR option or a missing attribute fails before
    # the first batch-size trial, not after the search.
    if lr:
        _lr_finder_options(rate)
    if batch_size:
        BatchSizeFinder(**batch)
    if batch_size and train_dataloaders is None:
        find_batch_size_attr(model, datamodule, batch.get("batch_arg_name", "batch_size"))
    if lr and rate.get("update_attr", True):
        find_lr_attr(model, rate.get("attr_name", ""))
    return batch, rate


def tune(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    lr: bool = True,
    batch_size: bool = True,
    *,
    train_dataloaders: Any = None,
    **options: Any,
) -> TuneResult:
    """Find the batch size first, then the LR at that batch size; return both.

    ``options`` go to :meth:`Tuner.scale_batch_size` (``steps_per_trial``, ``init_val``,
    ``max_trials``, ``batch_arg_name``, ``margin``, ``memory_budget``, ``max_val``; its mode as
    ``batch_size_mode``) and to :meth:`Tuner.lr_find` (``min_lr``, ``max_lr``,
    ``num_training``, ``early_stop_threshold``, ``update_attr``, ``attr_name``,
    ``suggest_method``, ``plot_path``, ``smoothing``; its mode as ``lr_mode``); ``progress``
    to both. Both searches restore the training state, so ``trainer.fit`` afterwards starts
    from the original state with the found values. ``train_dataloaders``: a plain
    ``DataLoader`` to tune on instead of the model's or datamodule's ``train_dataloader()``;
    the LR sweep then runs on its copy at the found batch size, returned as
    :attr:`TuneResult.train_dataloader`.

    Example:
        >>> found = tune(trainer, model, memory_budget=2**30)  # doctest: +SKIP
        >>> found.batch_size, found.lr_finder.suggestion()  # doctest: +SKIP
    """
    batch, rate = check_tune(
        model, datamodule, lr, batch_size, train_dataloaders=train_dataloaders, **options
    )
    tuner = Tuner(trainer)
    loader = train_dataloaders
    found_size = None
    if batch_size:
        found_size = tuner.scale_batch_size(
            model, train_dataloaders=loader, datamodule=datamodule, **batch
        )
        if loader is not None and tuner.train_dataloader is not None:
            loader = tuner.train_dataloader
    found_lr = (
        tuner.lr_find(model, train_dataloaders=loader, datamodule=datamodule, **rate)
        if lr
        else None
    )
    found = TuneResult(found_size, found_lr)
    found.train_dataloader = loader
    return found


class NoiseScaleCallback(Callback):
    """Logs the simple gradient noise scale ``B_simple`` as training goes on (no extra forward
    or backward: it reads the gradients the Trainer computes).

    On one process it needs ``Trainer(accumulate_grad_batches=k)`` with ``k >= 2`` (the
    micro-batches are the small batches, the window the big one); under ``strategy="ddp"`` the
    ranks are (a DDP communication hook on the strategy's model, registered once; a strategy
    given its own ``ddp_comm_hook`` is refused, saying why). It logs ``noise_scale/b_simple``,
    ``noise_scale/low`` and ``noise_scale/high`` every ``log_every_n_steps`` optimizer steps
    (with ``self.log``, so any logger gets them) and keeps ``history`` (step, estimate). The
    noise scale grows as the loss falls: when it passes the batch you train with, a larger
    batch starts to pay.

    Args:
        log_every_n_steps: how often to log (optimizer steps).
        window: average over the last ``window`` steps only (``None``: every step since the
            fit started); a window follows the noise scale as it grows.
        confidence: the interval's coverage.

    Example:
        >>> trainer = pl.Trainer(accumulate_grad_batches=4, callbacks=[NoiseScaleCallback()])  # doctest: +SKIP
    """

    def __init__(
        self, *, log_every_n_steps: int = 10, window: int | None = None, confidence: float = 0.95
    ) -> None:
        self.log_every_n_steps = _validate.int_at_least("log_every_n_steps", log_every_n_steps, 1)
        self.window = None if window is None else _validate.int_at_least("window", window, 3)
        self.confidence = confidence
        NoiseScaleEstimator(confidence=confidence)  # checks it before any fit
        self.monitor: NoiseScaleMonitor | None = None
        self.history: list[tuple[int, Any]] = []
        self._seen = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Attach the monitor to the strategy's model and the first optimizer."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.monitor = NoiseScaleMonitor(
            trainer.strategy.model if trainer.strategy.model is not None else pl_module,
            trainer.optimizers[0],
            accumulation_steps=trainer.accumulate_grad_batches,
            scaler=scaler,
            confidence=self.confidence,
            window=self.window,
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Read this micro-batch's size."""
        from lrfinder_adapters.pytorch import _samples

        if self.monitor is not None:
            self.monitor.micro_batch_size = _samples(batch)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Log the estimate after every ``log_every_n_steps``-th optimizer step."""
        monitor = self.monitor
        if monitor is None or not monitor.history or monitor.history[-1][0] == self._seen:
            return
        step, estimate = monitor.history[-1]
        self._seen = step
        self.history.append((step, estimate))
        if len(self.history) % self.log_every_n_steps == 1 or self.log_every_n_steps == 1:
            if math.isfinite(estimate.b_simple):
                pl_module.log("noise_scale/b_simple", estimate.b_simple)
                pl_module.log("noise_scale/low", estimate.low)
            if math.isfinite(estimate.high):
                pl_module.log("noise_scale/high", estimate.high)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Detach the hooks."""
        if self.monitor is not None:
            self.monitor.close()

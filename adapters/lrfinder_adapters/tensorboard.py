"""A TensorBoard observer: every point of a range test, its suggestion, every batch-size trial.

Two ways to turn it on (``pip install 'lrfinder-plugins[tensorboard]'``):

- set ``LRFINDER_TENSORBOARD=runs/lrfinder`` (a log directory): the ``lrfinder.tensorboard``
  plugin, registered through the entry-point group like any other, then logs every search
  to a new run under that directory; unset, it does nothing;
- or register an observer yourself, to pick the directory or reuse your training's writer::

      from lrfinder_plugins import get_plugin_manager
      from lrfinder_adapters.tensorboard import TensorBoardObserver

      get_plugin_manager().register(TensorBoardObserver("runs/lrfinder"), name="my.tensorboard")

Scalars (x-axis: the point index; ``<prefix>`` is ``lr_finder`` or ``batch_size``):
``lr_finder/lr``, ``lr_finder/loss``, ``lr_finder/smoothed_loss`` per point,
``lr_finder/suggested_lr`` and a ``lr_finder/summary`` text at the end (with a plot of the
curve when matplotlib is installed); ``batch_size/size``, ``batch_size/fitted``,
``batch_size/peak_mib`` per trial and ``batch_size/found`` at the end.

This module imports neither torch nor tensorboard until a search is logged.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from lrfinder_plugins.spi import BatchTrial, Point, SearchInfo

log = logging.getLogger("lrfinder_plugins")

ENV = "LRFINDER_TENSORBOARD"
"""The environment variable naming the log directory of the ``lrfinder.tensorboard`` plugin."""

INSTALL_HINT = "pip install 'lrfinder-plugins[tensorboard]'"


def summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError naming the install fix."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it, and says so late)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            f"TensorBoard logging needs torch and tensorboard ({error}); run: {INSTALL_HINT}"
        ) from error
    return SummaryWriter


@dataclass
class _Run:
    writer: Any
    owned: bool  # opened here: closed at the end (a writer the user gave is only flushed)
    trials: int = 0


class TensorBoardObserver:
    """Logs each search to TensorBoard: lr, loss and smoothed loss per point, the suggestion.

    Args:
        log_dir: the directory each search writes a new run under
            (``<log_dir>/<kind>-<date>-<time>-<search id>``). ``None`` (and no ``writer``): read
            ``LRFINDER_TENSORBOARD`` when each search starts; do nothing when it is unset.
        writer: a ``SummaryWriter`` to log into instead (e.g. the training's own); it is flushed,
            not closed.
        method: the suggestion method logged at the end (``None``: the default method).

    Raises:
        ImportError: tensorboard is not installed (the message names the ``pip install``).

    Example:
        >>> get_plugin_manager().register(TensorBoardObserver("runs/lr"))  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        writer: Any = None,
        method: str | None = None,
    ) -> None:
        if log_dir is not None and writer is not None:
            raise TypeError("pass log_dir= or writer=, not both")
        if log_dir is not None:
            summary_writer_class()  # fail now, with the fix, not at the first search
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.writer = writer
        self.method = method
        self._runs: dict[int, _Run] = {}

    def _root(self) -> Path | None:
        if self.log_dir is not None:
            return self.log_dir
        from_env = os.environ.get(ENV, "").strip()
        return Path(from_env) if from_env else None

    @hookimpl
    def lrfinder_observes(self, search: SearchInfo) -> bool:
        """Only with somewhere to write (a writer, ``log_dir=`` or the environment variable):
        otherwise the search pays nothing for this plugin."""
        return self.writer is not None or self._root() is not None

    @hookimpl
    def lrfinder_search_started(self, search: SearchInfo) -> None:
        """Open a run for the search (or reuse the given writer)."""
        if self.writer is not None:
            self._runs[search.search_id] = _Run(self.writer, owned=False)
            return
        root = self._root()
        if root is None:
            return
        run = root / f"{search.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{search.search_id}"
        writer = summary_writer_class()(log_dir=str(run))
        self._runs[search.search_id] = _Run(writer, owned=True)
        log.info("TensorBoard: logging the %s to %s", search.description, run)

    @hookimpl
    def lrfinder_step_recorded(self, search: SearchInfo, point: Point) -> None:
        """Log the point's LR, loss and smoothed loss."""
        run = self._runs.get(search.search_id)
        if run is None:
            return
        run.writer.add_scalar("lr_finder/lr", point.lr, point.index)
        run.writer.add_scalar("lr_finder/loss", point.loss, point.index)
        run.writer.add_scalar("lr_finder/smoothed_loss", point.smoothed_loss, point.index)

    @hookimpl
    def lrfinder_trial_recorded(self, search: SearchInfo, trial: BatchTrial) -> None:
        """Log the trial's size, whether it fitted and its peak memory."""
        run = self._runs.get(search.search_id)
        if run is None:
            return
        step, run.trials = run.trials, run.trials + 1
        run.writer.add_scalar("batch_size/size", trial.size, step)
        run.writer.add_scalar("batch_size/fitted", int(trial.fitted), step)
        if trial.peak_bytes is not None:
            run.writer.add_scalar("batch_size/peak_mib", trial.peak_bytes / 2**20, step)

    @hookimpl
    def lrfinder_search_finished(self, search: SearchInfo, result: Any) -> None:
        """Log the suggestion (range test) or the size found (batch size), then close the run."""
        run = self._runs.pop(search.search_id, None)
        if run is None:
            return
        writer = run.writer
        try:
            if search.kind == "lr_range_test":
                self._log_suggestion(writer, result)
            elif getattr(result, "batch_size", None) is not None:
                writer.add_scalar("batch_size/found", result.batch_size, 0)
                writer.add_text("batch_size/summary", result.summary(), 0)
        finally:
            if run.owned:
                writer.close()
            else:
                writer.flush()

    def _log_suggestion(self, writer: Any, result: Any) -> None:
        from lrfinder_plugins.suggest import NoSuggestionWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoSuggestionWarning)
            suggestion = result.suggestion(self.method)
        if suggestion.ok:
            writer.add_scalar("lr_finder/suggested_lr", suggestion.lr, suggestion.index)
            text = f"{suggestion.method}: suggested LR {suggestion.lr:.3e}"
        else:
            text = f"{suggestion.method}: no suggestion ({suggestion.reason})"
        writer.add_text(
            "lr_finder/summary",
            f"{text}; {len(result)} points, stopped: {result.stop_reason}",
            0,
        )
        if len(result) >= 2:
            self._log_plot(writer, result)

    @staticmethod
    def _log_plot(writer: Any, result: Any) -> None:
        try:
            figure = result.plot(suggest=True)
        except ImportError:
            return  # no matplotlib: the scalars say it all
        writer.add_figure("lr_finder/plot", figure, 0, close=True)


ENVIRONMENT = TensorBoardObserver()
"""The ``lrfinder.tensorboard`` entry-point plugin: logs where ``LRFINDER_TENSORBOARD`` says."""

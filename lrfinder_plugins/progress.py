"""The tqdm progress bar, shipped as an ordinary observer plugin (``lrfinder.progress``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrfinder_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from lrfinder_plugins._batch_search import BatchTrial
    from lrfinder_plugins._observers import Point, SearchInfo
    from lrfinder_plugins._results import RangeTestResult


class TqdmProgress:
    """Shows one tqdm bar per search that asked for progress; postfix shows the LR and loss.

    Block it with ``LRFINDER_DISABLE_PLUGINS=lrfinder.progress``, or pass ``progress=False``.
    """

    def __init__(self) -> None:
        self._bars: dict[int, Any] = {}

    @hookimpl
    def lrfinder_observes(self, search: SearchInfo) -> bool:
        """Only the searches that asked for progress (the others pay nothing per step)."""
        return search.progress

    @hookimpl
    def lrfinder_search_started(self, search: SearchInfo) -> None:
        """Open a bar for the search."""
        if not search.progress:
            return
        from tqdm.auto import tqdm

        # No monitor thread: its stack and its malloc arena (about 72 MiB of address space)
        # would leave a search under RLIMIT_AS less room than the training it sizes. The bar
        # only needs it for mininterval tuning; the setting is put back at once.
        own = vars(tqdm).get("monitor_interval")  # None: inherited from tqdm's base class
        tqdm.monitor_interval = 0
        try:
            self._bars[search.search_id] = tqdm(
                total=search.total, desc=search.description, unit="step", leave=False
            )
        finally:
            if own is None:
                del tqdm.monitor_interval
            else:
                tqdm.monitor_interval = own

    @hookimpl
    def lrfinder_step_recorded(self, search: SearchInfo, point: Point) -> None:
        """Advance the bar by one point."""
        bar = self._bars.get(search.search_id)
        if bar is not None:
            bar.update(1)
            if point.index % 10 == 0:
                bar.set_postfix(lr=f"{point.lr:.2e}", loss=f"{point.smoothed_loss:.4g}")

    @hookimpl
    def lrfinder_search_finished(self, search: SearchInfo, result: RangeTestResult) -> None:
        """Close the bar."""
        bar = self._bars.pop(search.search_id, None)
        if bar is not None:
            bar.close()

    @hookimpl
    def lrfinder_trial_recorded(self, search: SearchInfo, trial: BatchTrial) -> None:
        """Advance the bar by one batch-size trial; the postfix shows its size and outcome."""
        bar = self._bars.get(search.search_id)
        if bar is not None:
            bar.unit = "trial"
            bar.update(1)
            bar.set_postfix(size=trial.size, fits="yes" if trial.fitted else "OOM")

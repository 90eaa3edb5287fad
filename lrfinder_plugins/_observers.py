"""Observer dispatch: each plugin is called on its own, so one failing observer costs nothing."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lrfinder_plugins._manager import get_plugin_manager

if TYPE_CHECKING:
    from collections.abc import Callable

    from lrfinder_plugins._batch_search import BatchSizeResult, BatchTrial
    from lrfinder_plugins._results import RangeTestResult

log = logging.getLogger("lrfinder_plugins")

_search_ids = itertools.count(1)


@dataclass(frozen=True)
class SearchInfo:
    """What an observer is told about a search when it starts.

    Attributes:
        kind: ``"lr_range_test"`` (more kinds come with the batch-size search).
        total: the most points the search will record.
        progress: whether the user asked for a progress bar.
        description: a short human label ("LR range test").
        search_id: unique within the process; the same for every hook call of one search.
        options: the search's validated settings (start_lr, end_lr, mode, ...).
        rank: this process's rank (0 on a single process; observers run on rank 0 only).
        world_size: how many processes run the search together.
    """

    kind: str
    total: int
    progress: bool = True
    description: str = "LR range test"
    search_id: int = field(default_factory=lambda: next(_search_ids))
    options: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class Point:
    """One recorded point of an LR range test: the LR used for one optimizer step and its loss."""

    index: int
    lr: float
    loss: float
    smoothed_loss: float


class Observers:
    """Calls the observer hooks of every plugin for one search, isolating each plugin's errors.

    A plugin that raises is logged with its name and dropped for the rest of this search.
    ``enabled=False`` calls nobody (the other ranks of a distributed search; the plugins are
    still loaded, so a plugin that cannot load fails on every rank alike).
    """

    def __init__(self, search: SearchInfo, *, enabled: bool = True) -> None:
        self.search = search
        hook = get_plugin_manager().hook
        self._failed: set[str] = set()
        absent = self._not_observing(hook) if enabled else set()
        self._impls: dict[str, list[Any]] = {
            name: [i for i in getattr(hook, name).get_hookimpls() if i.plugin_name not in absent]
            if enabled
            else []
            for name in (
                "lrfinder_search_started",
                "lrfinder_step_recorded",
                "lrfinder_search_finished",
                "lrfinder_trial_recorded",
            )
        }

    def _not_observing(self, hook: Any) -> set[str]:
        """The plugins whose ``lrfinder_observes`` says no (or raised) for this search."""
        out: set[str] = set()
        for impl in hook.lrfinder_observes.get_hookimpls():
            try:
                if impl.function(**{name: self.search for name in impl.argnames}) is False:
                    out.add(impl.plugin_name)
            except Exception:
                out.add(impl.plugin_name)
                log.exception(
                    "plugin %r failed in lrfinder_observes; it is left out of this search",
                    impl.plugin_name,
                )
        return out

    @property
    def wants_steps(self) -> bool:
        """True when some plugin observes individual steps (the driver skips work otherwise)."""
        return bool(self._impls["lrfinder_step_recorded"])

    def _call(self, hook_name: str, **kwargs: Any) -> None:
        for impl in self._impls[hook_name]:
            if impl.plugin_name in self._failed:
                continue
            function: Callable[..., Any] = impl.function
            try:
                function(**{name: kwargs[name] for name in impl.argnames})
            except Exception:
                self._failed.add(impl.plugin_name)
                log.exception(
                    "plugin %r failed in %s; it is skipped for the rest of this search",
                    impl.plugin_name,
                    hook_name,
                )

    def started(self) -> None:
        """Tell every observer the search started."""
        self._call("lrfinder_search_started", search=self.search)

    def step_recorded(self, point: Point) -> None:
        """Tell every observer a point was recorded."""
        self._call("lrfinder_step_recorded", search=self.search, point=point)

    def finished(self, result: RangeTestResult) -> None:
        """Tell every observer the search ended (always called once per started search)."""
        if self._impls["lrfinder_search_finished"]:
            self._call("lrfinder_search_finished", search=self.search, result=_own_copy(result))

    def trial_recorded(self, trial: BatchTrial) -> None:
        """Tell every observer a batch-size trial was recorded."""
        self._call("lrfinder_trial_recorded", search=self.search, trial=trial)

    def batch_finished(self, result: BatchSizeResult) -> None:
        """Tell every observer a batch-size search ended (always once per started search)."""
        if self._impls["lrfinder_search_finished"]:
            self._call("lrfinder_search_finished", search=self.search, result=_own_copy(result))


def _own_copy(result: Any) -> Any:
    """``result`` with its own copy of the ``options`` dict (the only part of a frozen result
    that can change), so an observer that edits it cannot change what the caller gets."""
    return dataclasses.replace(result, options=copy.deepcopy(result.options))

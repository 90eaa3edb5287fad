"""An example lrfinder-plugins plugin: one suggestion method and one observer.

- ``result.suggestion(method="halfway")``: the first LR at which the smoothed loss has made
  ``fraction`` (default half) of its whole descent, a cautious pick on the way down the curve.
- A logbook: with ``LRFINDER_LOGBOOK=<directory>`` set, every LR range test is written there as
  ``lr_range_test-<id>.csv`` (one row per point, as it is recorded) plus a ``.json`` summary at
  the end, and every batch-size search as ``batch_size-<id>.json``.

The module is the plugin (entry point ``logbook = "lrfinder_logbook"``); its hooks keep no
state between calls: each writes to a file named after the search.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrfinder_plugins import NoSuggestionWarning, hookimpl
from lrfinder_plugins.suggest import make_suggestion, no_suggestion

__version__ = "0.1.0"

ENV = "LRFINDER_LOGBOOK"
FIELDS = ("index", "lr", "loss", "smoothed_loss")


# -- the suggestion method --------------------------------------------------------------------------
def halfway(result: Any, *, fraction: float = 0.5) -> Any:
    """The first LR where the smoothed loss has fallen ``fraction`` of the way to its minimum.

    Example:
        >>> result.suggestion(method="halfway", fraction=0.3)  # doctest: +SKIP
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}; e.g. fraction=0.5")
    losses = [loss for loss in result.smoothed_losses if math.isfinite(loss)]
    if len(losses) < 3:
        return no_suggestion(result, "halfway", f"{len(losses)} finite points; need 3")
    start, lowest = losses[0], min(losses)
    if lowest >= start:
        return no_suggestion(result, "halfway", "the loss never falls below its first value")
    goal = start - fraction * (start - lowest)
    index = next(i for i, loss in enumerate(result.smoothed_losses) if loss <= goal)
    return make_suggestion(result, "halfway", result.lrs[index])


@hookimpl
def lrfinder_register_suggesters() -> Mapping[str, Any]:
    """Register ``method="halfway"``."""
    return {"halfway": halfway}


# -- the observer ------------------------------------------------------------------------------------
def _directory() -> Path | None:
    raw = os.environ.get(ENV, "").strip()
    return Path(raw) if raw else None


def _path(directory: Path, search: Any, suffix: str) -> Path:
    return directory / f"{search.kind}-{search.search_id}{suffix}"


@hookimpl
def lrfinder_search_started(search: Any) -> None:
    """Start the search's CSV file (range tests) with its header."""
    directory = _directory()
    if directory is None or search.kind != "lr_range_test":
        return
    directory.mkdir(parents=True, exist_ok=True)
    with _path(directory, search, ".csv").open("w", newline="") as file:
        csv.writer(file).writerow(FIELDS)


@hookimpl
def lrfinder_step_recorded(search: Any, point: Any) -> None:
    """Append the point to the CSV file, as it is recorded (a crash keeps what was logged)."""
    directory = _directory()
    if directory is None:
        return
    with _path(directory, search, ".csv").open("a", newline="") as file:
        csv.writer(file).writerow([getattr(point, name) for name in FIELDS])


@hookimpl
def lrfinder_search_finished(search: Any, result: Any) -> None:
    """Write the JSON summary: settings, stop reason and, for a range test, the suggestions."""
    directory = _directory()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "kind": search.kind,
        "search_id": search.search_id,
        "options": search.options,
        "stop_reason": str(result.stop_reason),
    }
    if search.kind == "lr_range_test":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoSuggestionWarning)
            suggestions = result.suggestions()
        summary["points"] = len(result)
        summary["suggestions"] = {
            name: s.lr if s.ok else None for name, s in sorted(suggestions.items())
        }
    else:
        summary["result"] = result.to_dict()
    path = _path(directory, search, ".json")
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")

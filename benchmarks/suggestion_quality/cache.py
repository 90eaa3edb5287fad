"""JSON caches: the constant-LR grid (committed) and every other training run (re-runs are cheap)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.suggestion_quality.tasks import Task
from benchmarks.suggestion_quality.training import Outcome

HERE = Path(__file__).parent
GRID_PATH = HERE / "grid_cache.json"
RUNS_PATH = HERE / "runs_cache.json"

GRID_POINTS = 31
GRID_LRS: tuple[float, ...] = tuple(
    10.0 ** (-5 + 6 * i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)
)
"""31 LRs, log-spaced from 1e-5 to 10 (5 per decade)."""


def _encode(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


class JsonCache:
    """A flat ``key -> JSON value`` store, written back every ``flush_every`` seconds and on flush.

    ``load=False`` starts empty (everything is recomputed) and overwrites the file on flush.
    """

    def __init__(self, path: Path, *, load: bool = True, flush_every: float = 30.0) -> None:
        self.path, self.flush_every = path, flush_every
        self.data: dict[str, Any] = {}
        if load and path.exists():
            self.data = json.loads(path.read_text())
        self._dirty, self._last = False, time.monotonic()

    def get_or_compute(self, key: str, compute: Callable[[], Any]) -> Any:
        """The cached value under ``key``, or ``compute()`` stored there."""
        if key in self.data:
            return self.data[key]
        value = compute()
        self.data[key] = value
        self._dirty = True
        if time.monotonic() - self._last > self.flush_every:
            self.flush()
        return value

    def flush(self) -> None:
        """Write the cache to disk (sorted keys, so diffs stay small)."""
        if self._dirty:
            self.path.write_text(json.dumps(self.data, indent=0, sort_keys=True) + "\n")
        self._dirty, self._last = False, time.monotonic()


def outcome_key(task: Task, lr: float, seed: int) -> str:
    """The cache key of one constant-LR training run."""
    return f"{task.key}|lr={lr!r}|seed={seed}"


def cached_outcome(cache: JsonCache, key: str, compute: Callable[[], Outcome]) -> Outcome:
    """An :class:`Outcome` through ``cache`` (stored as ``[val_loss, not finite]``)."""

    def run() -> list[Any]:
        out = compute()
        return [_encode(out.val_loss), not math.isfinite(out.val_loss)]

    loss, _ = cache.get_or_compute(key, run)
    return Outcome(float(loss))

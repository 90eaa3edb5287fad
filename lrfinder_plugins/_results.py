"""Frozen, serialisable results of an LR range test (JSON and CSV, save and load)."""

from __future__ import annotations

import csv
import enum
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_plugins._json_file import JsonFile, write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lrfinder_plugins.suggest import Suggestion


class StopReason(str, enum.Enum):
    """Why a search ended."""

    BUDGET = "budget"
    """Every planned point was recorded."""
    DIVERGED = "diverged"
    """The smoothed loss passed ``diverge_threshold`` times the best smoothed loss."""
    NON_FINITE = "non_finite"
    """A loss (or, with AMP, every step's gradients for too long) was NaN or infinite."""
    DATA_EXHAUSTED = "data_exhausted"
    """The data ran out before the budget (a one-shot iterator, or a loader that became empty)."""
    INTERRUPTED = "interrupted"
    """An exception or Ctrl-C ended the search; the state was restored and the error re-raised."""

    def __str__(self) -> str:
        return self.value


FORMAT = "lrfinder-range-test"
FORMAT_VERSION = 1


def _encode(value: float) -> float | str:
    # JSON has no NaN/Infinity; write them as strings so files stay standard JSON.
    return value if math.isfinite(value) else str(value)


def _decode(value: float | str) -> float:
    return float(value)


@dataclass(frozen=True)
class RangeTestResult(JsonFile):
    """Everything an LR range test recorded.

    Attributes:
        lrs: the swept (reference group's) LR of each point: the LR its optimizer step used.
        losses: the raw loss of each point (the mean over a gradient-accumulation window, or the
            validation loss when a validation loader was given).
        smoothed_losses: the bias-corrected moving average of ``losses`` (see ``RangeTest``).
        stop_reason: why the test ended.
        options: the test's settings (start_lr, end_lr, num_iter, mode, smoothing,
            diverge_threshold, group_ratios).
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed_losses: tuple[float, ...]
    stop_reason: StopReason | None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not len(self.lrs) == len(self.losses) == len(self.smoothed_losses):
            raise ValueError(
                "lrs, losses and smoothed_losses must have one entry per point, got lengths "
                f"{len(self.lrs)}, {len(self.losses)}, {len(self.smoothed_losses)}"
            )

    def __len__(self) -> int:
        return len(self.lrs)

    @property
    def world_size(self) -> int:
        """How many processes ran the test together (1 on a single process)."""
        return int(self.options.get("world_size", 1))

    @property
    def global_batch(self) -> int | None:
        """Samples per optimizer step over every rank (per-rank batch x ranks x accumulation),
        when the step reported its samples."""
        value = self.options.get("global_batch")
        return None if value is None else int(value)

    @property
    def group_ratios(self) -> tuple[float, ...]:
        """Each param group's LR as a fraction of the swept LR."""
        return tuple(self.options.get("group_ratios", (1.0,)))

    @property
    def group_lrs(self) -> tuple[tuple[float, ...], ...]:
        """Every param group's LR at each point (computed exactly as the step set them)."""
        ratios = self.group_ratios
        return tuple(tuple(lr * r for r in ratios) for lr in self.lrs)

    def suggestion(self, method: str | None = None, **options: Any) -> Suggestion:
        """Suggest an LR with a registered method (``None``: the default, ``margin``).

        The suggestion carries what the curve shows: a ``confidence`` and ``reason``, a usable
        ``lower``/``upper`` LR range and ``one_cycle()`` (``OneCycleLR`` keyword arguments). A
        curve with no usable descent warns with ``LowConfidenceWarning``.

        Example:
            >>> result.suggestion().lr  # doctest: +SKIP
            0.0031
        """
        from lrfinder_plugins.suggest import suggest

        return suggest(self, method, **options)

    def suggestions(self) -> dict[str, Suggestion]:
        """Every registered method's suggestion, by method name, collected without warnings.

        Each carries its method name, LR, nearest point's index, and the curve's confidence,
        reason and usable range (see :meth:`suggestion`).
        """
        from lrfinder_plugins.suggest import suggest_all

        return suggest_all(self)

    def plot(self, output_path: str | Path | None = None, **options: Any) -> Figure:
        """Plot the curve (see :func:`lrfinder_plugins.plot.plot_range_test`)."""
        from lrfinder_plugins.plot import plot_range_test

        return plot_range_test(self, output_path=output_path, **options)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats as strings: "nan", "inf", "-inf")."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "stop_reason": None if self.stop_reason is None else self.stop_reason.value,
            "options": self.options,
            "lrs": list(self.lrs),
            "losses": [_encode(x) for x in self.losses],
            "smoothed_losses": [_encode(x) for x in self.smoothed_losses],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RangeTestResult:
        """Rebuild a result from :meth:`to_dict` output."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not an LR range test result: format={data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported result version {data.get('version')!r}")
        reason = data.get("stop_reason")
        return cls(
            lrs=tuple(float(x) for x in data["lrs"]),
            losses=tuple(_decode(x) for x in data["losses"]),
            smoothed_losses=tuple(_decode(x) for x in data["smoothed_losses"]),
            stop_reason=None if reason is None else StopReason(reason),
            options=dict(data.get("options", {})),
        )

    def to_csv(self) -> str:
        """The points as CSV: one row per point, one LR column per param group.

        The first line is a ``#`` comment holding the stop reason and options as JSON, so
        :meth:`load_csv` restores the whole result (``pandas.read_csv(path, comment="#")``
        reads the table).
        """
        buffer = io.StringIO()
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "stop_reason": self.to_dict()["stop_reason"],
            "options": self.options,
        }
        buffer.write("# " + json.dumps(meta, allow_nan=False) + "\n")
        writer = csv.writer(buffer, lineterminator="\n")
        groups = len(self.group_ratios)
        writer.writerow(
            ["step", "lr", *[f"lr_group_{g}" for g in range(groups)], "loss", "smoothed_loss"]
        )
        for i, (lr, group, loss, smooth) in enumerate(
            zip(self.lrs, self.group_lrs, self.losses, self.smoothed_losses)
        ):
            writer.writerow([i, repr(lr), *map(repr, group), repr(loss), repr(smooth)])
        return buffer.getvalue()

    def save_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_csv` to ``path``; return the path."""
        return write_atomic(path, self.to_csv())

    @classmethod
    def load_csv(cls, path: str | Path) -> RangeTestResult:
        """Read a result written by :meth:`save_csv`."""
        text = Path(path).read_text()
        first, _, body = text.partition("\n")
        if not first.startswith("# "):
            raise ValueError(f"{path}: missing the '# {{...}}' metadata line that save_csv writes")
        meta = json.loads(first[2:])
        rows = list(csv.DictReader(io.StringIO(body)))
        return cls.from_dict(
            {
                **meta,
                "lrs": [float(r["lr"]) for r in rows],
                "losses": [float(r["loss"]) for r in rows],
                "smoothed_losses": [float(r["smoothed_loss"]) for r in rows],
            }
        )

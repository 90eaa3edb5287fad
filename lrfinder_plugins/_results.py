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

from lrfinder_plugins._json_file import (
    JsonFile,
    ResultFileError,
    field_of,
    parse_json,
    read_result_text,
    write_atomic,
)

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


_NON_FINITE = ("nan", "inf", "-inf")


def _decode(value: float | str) -> float:
    return float(value)


def _floats(data: dict[str, Any], name: str, *, lr: bool = False) -> tuple[float, ...]:
    """A list field of numbers (losses may be "nan"/"inf"/"-inf"; LRs must be finite and > 0)."""
    values = field_of(data, name, (list,), "a list of numbers")
    for i, x in enumerate(values):
        number = isinstance(x, (int, float)) and not isinstance(x, bool)
        if lr and not (number and math.isfinite(x) and x > 0):
            raise ValueError(f"{name}[{i}] must be a finite number > 0, got {x!r}")
        if not lr and not (number or x in _NON_FINITE):
            raise ValueError(
                f"{name}[{i}] must be a number or one of {list(_NON_FINITE)}, got {x!r}"
            )
    return tuple(_decode(x) for x in values)


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

    def __eq__(self, other: object) -> bool:
        # NaN != NaN, so the generated __eq__ would call a result unequal to its own JSON round
        # trip whenever a loss is NaN: compare the serialised form, where NaN is "nan".
        if not isinstance(other, RangeTestResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # options is a dict: results are not hashable

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
        """Rebuild a result from :meth:`to_dict` output.

        Raises:
            ValueError: not a result of this format and version, or a field is missing or of
                the wrong type (the message names it).
        """
        if data.get("format") != FORMAT:
            raise ValueError(f"not an LR range test result: format={data.get('format')!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported result version {data.get('version')!r}")
        if "stop_reason" not in data:
            raise ValueError("missing field 'stop_reason' (null or a stop reason)")
        reason = data["stop_reason"]
        if reason is not None and reason not in {r.value for r in StopReason}:
            raise ValueError(
                f"field 'stop_reason' must be null or one of {[r.value for r in StopReason]}, "
                f"got {reason!r}"
            )
        options = data.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"field 'options' must be an object, got {type(options).__name__}")
        return cls(
            lrs=_floats(data, "lrs", lr=True),
            losses=_floats(data, "losses"),
            smoothed_losses=_floats(data, "smoothed_losses"),
            stop_reason=None if reason is None else StopReason(reason),
            options=dict(options),
        )

    def to_csv(self) -> str:
        """The points as CSV: a header, then one row per point, one LR column per param group.

        Standard CSV with its header on the first line, so ``csv.DictReader`` and
        ``pandas.read_csv`` read it as it is; the stop reason and settings are not in it
        (:meth:`save_csv` writes them to a sidecar JSON file).
        """
        buffer = io.StringIO()
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

    def _csv_meta(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in self.to_dict().items()
            if k in ("format", "version", "stop_reason", "options")
        }

    def save_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_csv` to ``path`` and the settings beside it; return the CSV's path.

        The stop reason and options go to the sidecar ``<path>.meta.json`` (see
        :func:`csv_meta_path`), so the CSV itself is a plain table that ``csv.DictReader`` and
        ``pandas.read_csv`` read with their defaults; :meth:`load_csv` reads both back.
        """
        path = Path(path)
        write_atomic(
            csv_meta_path(path), json.dumps(self._csv_meta(), indent=2, allow_nan=False) + "\n"
        )
        return write_atomic(path, self.to_csv())

    @classmethod
    def load_csv(cls, path: str | Path) -> RangeTestResult:
        """Read a result written by :meth:`save_csv` (its sidecar ``<path>.meta.json`` too).

        A CSV from an earlier version, whose first line is ``# {settings as JSON}``, loads too.

        Raises:
            ResultFileNotFoundError: there is no such CSV file.
            ResultFileError: the CSV or its settings are missing, empty, truncated, corrupted,
                or lack a column (the message names the file and what is wrong).
        """
        text = read_result_text(path)
        sidecar = csv_meta_path(path)
        if text.startswith("# "):  # written before the settings moved to the sidecar
            first, _, text = text.partition("\n")
            meta = parse_json(path, first[2:])
        elif sidecar.exists():
            meta = parse_json(sidecar, read_result_text(sidecar))
        else:
            raise ResultFileError(
                f"{path}: its settings file {sidecar.name} (the metadata save_csv writes beside "
                "it) is missing; copy it along with the CSV, or load the JSON file instead"
            )
        reader = csv.DictReader(io.StringIO(text))
        missing = {"lr", "loss", "smoothed_loss"} - set(reader.fieldnames or ())
        if missing:
            raise ResultFileError(
                f"{path}: not a save_csv table: missing column(s) {sorted(missing)} "
                f"(header: {reader.fieldnames})"
            )
        try:
            rows = [(float(r["lr"]), float(r["loss"]), float(r["smoothed_loss"])) for r in reader]
        except (TypeError, ValueError) as error:
            raise ResultFileError(
                f"{path}: row {reader.line_num - 1} is not numeric (truncated or corrupted?): "
                f"{error}"
            ) from None
        return cls.from_file_data(
            path,
            {
                **meta,
                "lrs": [lr for lr, _, _ in rows],
                "losses": [_encode(loss) for _, loss, _ in rows],
                "smoothed_losses": [_encode(smooth) for _, _, smooth in rows],
            },
        )


def csv_meta_path(path: str | Path) -> Path:
    """Where :meth:`RangeTestResult.save_csv` puts a CSV's settings: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")

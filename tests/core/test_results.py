"""RangeTestResult: JSON and CSV round-trips, standard files, plots, and small accessors."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lrfinder_plugins import (
    NoSuggestionWarning,
    RangeTest,
    RangeTestResult,
    ResultFileError,
    ResultFileNotFoundError,
    StopReason,
)

from .curves import recorded, result_from_losses, sigmoid_curve

plt = pytest.importorskip("matplotlib.pyplot")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def assert_same_result(loaded: RangeTestResult, original: RangeTestResult) -> None:
    """Equal point for point, NaN included (repr() of a float round-trips exactly)."""
    assert repr(loaded.lrs) == repr(original.lrs)
    assert repr(loaded.losses) == repr(original.losses)
    assert repr(loaded.smoothed_losses) == repr(original.smoothed_losses)
    assert loaded.stop_reason is original.stop_reason
    assert loaded.options == original.options


def run(losses: list[float], **options: Any) -> RangeTestResult:
    return recorded(RangeTest(**{"num_iter": len(losses), **options}), losses).result()


RESULTS = {
    "budget": run([3.0, 2.0, 1.5, 1.2, 1.1]),
    "nan-stop": run([3.0, 2.0, math.nan], num_iter=10),
    "inf-stop": run([3.0, math.inf], num_iter=10),
    "minus-inf-stop": run([3.0, -math.inf], num_iter=10),
    "three-groups": run([3.0, 2.0, 1.0], group_ratios=(0.01, 0.1, 1.0)),
    "still-running": run([3.0, 2.0], num_iter=10, mode="linear"),
    "no-points": RangeTest(num_iter=4).result(),
}
results = pytest.mark.parametrize("result", list(RESULTS.values()), ids=list(RESULTS))


@results
def test_json_round_trip(tmp_path: Path, result: RangeTestResult) -> None:
    """load_json(save_json(result)) gives the same points, stop reason and options."""
    assert_same_result(RangeTestResult.load_json(result.save_json(tmp_path / "r.json")), result)


@results
def test_csv_round_trip(tmp_path: Path, result: RangeTestResult) -> None:
    """load_csv(save_csv(result)) gives the same points, stop reason and options."""
    assert_same_result(RangeTestResult.load_csv(result.save_csv(tmp_path / "r.csv")), result)


@results
def test_json_file_is_standard_json(tmp_path: Path, result: RangeTestResult) -> None:
    """No NaN/Infinity literals: a strict JSON parser reads the file."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(result.save_json(tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert data["format"] == "lrfinder-range-test"


def test_stop_reason_is_stored_as_its_value(tmp_path: Path) -> None:
    """The file says "non_finite", not an enum repr."""
    data = json.loads(RESULTS["nan-stop"].save_json(tmp_path / "r.json").read_text())
    assert (data["stop_reason"], data["losses"][-1]) == ("non_finite", "nan")


def test_save_creates_parent_directories(tmp_path: Path) -> None:
    """save_json and save_csv create missing directories."""
    result = RESULTS["budget"]
    paths = [result.save_json(tmp_path / "a" / "r.json"), result.save_csv(tmp_path / "b" / "r.csv")]
    assert all(path.is_file() for path in paths)


def test_csv_has_one_lr_column_per_group() -> None:
    """The CSV table has step, lr, one lr_group_<g> per param group, loss and smoothed_loss."""
    header = RESULTS["three-groups"].to_csv().splitlines()[0]
    assert header == "step,lr,lr_group_0,lr_group_1,lr_group_2,loss,smoothed_loss"


def test_csv_group_columns_hold_each_groups_lr() -> None:
    """Each row's group columns are the group LRs used at that point."""
    result = RESULTS["three-groups"]
    first_row = result.to_csv().splitlines()[1].split(",")
    assert [float(x) for x in first_row[2:5]] == list(result.group_lrs[0])


@pytest.mark.parametrize(
    "data",
    [
        {"format": "something-else", "version": 1},
        {"version": 1},
        {"format": "lrfinder-range-test", "version": 99},
    ],
    ids=["wrong-format", "no-format", "future-version"],
)
def test_loading_an_unknown_format_raises(tmp_path: Path, data: dict[str, Any]) -> None:
    """A JSON file that is not a result this version writes raises ValueError."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**data, "lrs": [], "losses": [], "smoothed_losses": []}))
    with pytest.raises(ValueError, match=r"format|version"):
        RangeTestResult.load_json(path)


def test_csv_without_its_settings_file_raises(tmp_path: Path) -> None:
    """A CSV without the sidecar save_csv writes raises ResultFileError naming both files."""
    path = tmp_path / "r.csv"
    path.write_text("step,lr,loss,smoothed_loss\n0,0.1,1.0,1.0\n")
    with pytest.raises(ResultFileError, match=r"r\.csv: its settings file r\.csv\.meta\.json"):
        RangeTestResult.load_csv(path)


@results
def test_csv_reads_with_a_header_in_dictreader(tmp_path: Path, result: RangeTestResult) -> None:
    """csv.DictReader reads save_csv's file with its defaults; the settings are beside it."""
    path = result.save_csv(tmp_path / "r.csv")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(r["lr"]) for r in rows] == list(result.lrs)
    assert json.loads((tmp_path / "r.csv.meta.json").read_text())["options"] == result.options


def test_csv_reads_with_a_header_in_pandas(tmp_path: Path) -> None:
    """pandas.read_csv reads save_csv's file with its defaults."""
    pandas = pytest.importorskip("pandas")
    result = RESULTS["three-groups"]
    frame = pandas.read_csv(result.save_csv(tmp_path / "r.csv"))
    assert list(frame.columns)[:2] == ["step", "lr"] and len(frame) == len(result)


def test_csv_from_an_earlier_version_still_loads(tmp_path: Path) -> None:
    """A CSV whose first line is the '# {settings}' comment (the old layout) loads."""
    result = RESULTS["nan-stop"]
    meta = {k: result.to_dict()[k] for k in ("format", "version", "stop_reason", "options")}
    path = tmp_path / "old.csv"
    path.write_text("# " + json.dumps(meta) + "\n" + result.to_csv())
    assert RangeTestResult.load_csv(path) == result


@results
def test_result_equals_its_round_trips(tmp_path: Path, result: RangeTestResult) -> None:
    """A result, NaN losses included, compares equal to its JSON and CSV round trips."""
    assert RangeTestResult.load_json(result.save_json(tmp_path / "r.json")) == result
    assert RangeTestResult.load_csv(result.save_csv(tmp_path / "r.csv")) == result


def test_results_with_different_losses_differ() -> None:
    """Equality still tells results apart."""
    assert RESULTS["nan-stop"] != RESULTS["inf-stop"] and RESULTS["budget"] != "budget"


GOOD = RESULTS["budget"].to_dict()


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


BAD_JSON_FILES = {
    "empty": ("", r"the file is empty"),
    "whitespace": ("  \n", r"the file is empty"),
    "truncated": (json.dumps(GOOD)[:40], r"not valid JSON \(truncated or corrupted\?\)"),
    "garbage": ("\x00\x01PK\x03", r"not valid JSON"),
    "a-list": ("[1, 2]", r"holds a JSON list, not a result object"),
    "no-lrs": (json.dumps(_without("lrs")), r"missing field 'lrs'"),
    "no-losses": (json.dumps(_without("losses")), r"missing field 'losses'"),
    "lrs-not-list": (json.dumps({**GOOD, "lrs": "0.1"}), r"field 'lrs' must be a list of numbers"),
    "lr-string": (json.dumps({**GOOD, "lrs": ["x", *GOOD["lrs"][1:]]}), r"lrs\[0\] must be a finite number > 0, got 'x'"),
    "loss-bool": (json.dumps({**GOOD, "losses": [True, *GOOD["losses"][1:]]}), r"losses\[0\] must be a number"),
    "lengths": (json.dumps({**GOOD, "losses": GOOD["losses"][:-1]}), r"one entry per point"),
    "stop-reason": (json.dumps({**GOOD, "stop_reason": "tired"}), r"field 'stop_reason' must be null or one of"),
    "options": (json.dumps({**GOOD, "options": [1]}), r"field 'options' must be an object"),
    "format": (json.dumps({**GOOD, "format": "x"}), r"not an LR range test result"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_JSON_FILES.values(), ids=list(BAD_JSON_FILES))
def test_bad_json_file_is_one_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    """Each broken file raises ResultFileError (a ValueError) naming the file and the fault."""
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ResultFileError, match=message) as info:
        RangeTestResult.load_json(path)
    assert str(info.value).startswith(str(path)) and isinstance(info.value, ValueError)


BAD_CSV_FILES = {
    "empty": ("", r"the file is empty"),
    "no-loss-column": ("step,lr,smoothed_loss\n0,0.1,1.0\n", r"missing column\(s\) \['loss'\]"),
    "truncated-row": ("step,lr,loss,smoothed_loss\n0,0.1,1.0,1.0\n1,0.2\n", r"row 2 is not numeric"),
    "text-value": ("step,lr,loss,smoothed_loss\n0,0.1,abc,1.0\n", r"row 1 is not numeric"),
}  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD_CSV_FILES.values(), ids=list(BAD_CSV_FILES))
def test_bad_csv_file_is_one_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    """Each broken CSV (with a good settings file) raises ResultFileError naming the CSV."""
    path = RESULTS["budget"].save_csv(tmp_path / "broken.csv")
    path.write_text(text)
    with pytest.raises(ResultFileError, match=message) as info:
        RangeTestResult.load_csv(path)
    assert str(info.value).startswith(str(path))


def test_corrupted_csv_settings_file_names_it(tmp_path: Path) -> None:
    """A truncated sidecar raises ResultFileError naming the sidecar."""
    path = RESULTS["budget"].save_csv(tmp_path / "r.csv")
    sidecar = tmp_path / "r.csv.meta.json"
    sidecar.write_text(sidecar.read_text()[:10])
    with pytest.raises(ResultFileError, match=r"r\.csv\.meta\.json: not valid JSON"):
        RangeTestResult.load_csv(path)


@pytest.mark.parametrize("load", [RangeTestResult.load_json, RangeTestResult.load_csv])
def test_missing_file_is_a_file_not_found_error_naming_it(tmp_path: Path, load: Any) -> None:
    """A missing file: ResultFileNotFoundError, both a FileNotFoundError and a ResultFileError."""
    with pytest.raises(FileNotFoundError, match=r"nope\.\w+: no such result file") as info:
        load(tmp_path / ("nope.json" if load == RangeTestResult.load_json else "nope.csv"))
    assert isinstance(info.value, ResultFileNotFoundError)
    assert isinstance(info.value, ResultFileError)


def test_a_directory_is_not_a_result_file(tmp_path: Path) -> None:
    """load_json(<a directory>) says so."""
    with pytest.raises(ResultFileError, match=r"is a directory, not a result file"):
        RangeTestResult.load_json(tmp_path)


def test_mismatched_lengths_raise() -> None:
    """A result needs one LR, loss and smoothed loss per point."""
    with pytest.raises(ValueError, match="one entry per point"):
        RangeTestResult(lrs=(0.1, 0.2), losses=(1.0,), smoothed_losses=(1.0,), stop_reason=None)


def test_len_is_the_number_of_points() -> None:
    """len(result) counts the recorded points."""
    assert (len(RESULTS["budget"]), len(RESULTS["no-points"])) == (5, 0)


def test_group_lrs_default_to_one_group() -> None:
    """A result without group_ratios has one group, at the swept LR."""
    result = RangeTestResult(
        lrs=(0.1, 0.2), losses=(1, 2), smoothed_losses=(1, 2), stop_reason=None
    )
    assert result.group_lrs == ((0.1,), (0.2,))


# -- plots ---------------------------------------------------------------------------------------
def marked_methods(figure: Any) -> list[str]:
    """The legend labels of the suggestion markers (scatter points) on the figure."""
    return [c.get_label().split(":")[0] for c in figure.axes[0].collections]


@pytest.mark.parametrize(
    ("suggest", "expected"),
    [
        (True, ["margin"]),
        (False, []),
        ("steepest", ["steepest"]),
        (["valley", "steepest", "minimum"], ["valley", "steepest", "minimum"]),
    ],
    ids=["default", "none", "one-name", "several-names"],
)
def test_plot_writes_a_png_marking_the_chosen_suggestions(
    tmp_path: Path, suggest: Any, expected: list[str]
) -> None:
    """plot() saves a non-empty PNG and marks exactly the requested methods' suggestions."""
    result = result_from_losses(sigmoid_curve())
    figure = result.plot(tmp_path / "plots" / "lr.png", suggest=suggest)
    png = (tmp_path / "plots" / "lr.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
    assert marked_methods(figure) == expected


def test_plot_marks_the_first_suggestion_in_red() -> None:
    """The (first) suggestion is drawn in red, as users expect."""
    figure = result_from_losses(sigmoid_curve()).plot(suggest=["steepest", "valley"])
    colors = [np.asarray(c.get_facecolor())[0].tolist() for c in figure.axes[0].collections]
    assert colors[0] == [1.0, 0.0, 0.0, 1.0] and colors[1] != colors[0]


def test_plot_uses_a_log_lr_axis() -> None:
    """The LR axis is logarithmic by default."""
    assert result_from_losses(sigmoid_curve()).plot().axes[0].get_xscale() == "log"


def test_plot_draws_raw_and_smoothed_curves() -> None:
    """The raw and the smoothed losses are both drawn."""
    labels = [line.get_label() for line in result_from_losses(sigmoid_curve()).plot().axes[0].lines]
    assert {"loss", "smoothed loss"} <= set(labels)


def test_plot_of_a_short_run_warns_nothing(tmp_path: Path) -> None:
    """A run too short for a suggestion still plots (no marker, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = RESULTS["nan-stop"].plot(tmp_path / "short.png")
    assert marked_methods(figure) == [] and (tmp_path / "short.png").stat().st_size > 0


def test_plot_title_names_the_stop_reason() -> None:
    """The default title says how many points and why the test stopped."""
    title = RESULTS["nan-stop"].plot().axes[0].get_title()
    assert title == "LR range test: 3 points, stopped: non_finite"


def test_plot_to_an_existing_directory_is_refused(tmp_path: Path) -> None:
    """output_path=<a directory> raises, names a file to use, and writes nothing beside it."""
    with pytest.raises(IsADirectoryError, match=r"is a directory; pass a file in it"):
        result_from_losses(sigmoid_curve()).plot(tmp_path)
    assert list(tmp_path.parent.glob(f"{tmp_path.name}*")) == [tmp_path]
    assert list(tmp_path.iterdir()) == []


def test_plot_of_a_low_confidence_curve_shows_the_doubt() -> None:
    """A flat curve: the title gives the reason, the marker is hollow, the legend says uncertain."""
    flat = result_from_losses([2.0 + 0.01 * ((i * 7) % 5) for i in range(100)])
    with pytest.warns(NoSuggestionWarning):
        assert flat.suggestion().confidence == 0
    figure = flat.plot()
    axes = figure.axes[0]
    assert "low confidence: no usable descent" in axes.get_title()
    (marker,) = axes.collections
    assert "uncertain" in marker.get_label()
    assert np.asarray(marker.get_facecolor()).size == 0  # hollow: no face colour


def test_plot_of_a_confident_curve_has_a_filled_marker_and_plain_title() -> None:
    """A clear curve is drawn without doubt: filled marker, no 'low confidence' in the title."""
    figure = result_from_losses(sigmoid_curve()).plot()
    assert "low confidence" not in figure.axes[0].get_title()
    assert "uncertain" not in figure.axes[0].collections[0].get_label()


def test_skip_end_never_hides_the_blow_up_that_drove_the_suggestion() -> None:
    """The blow-up in the last points stays drawn, however large skip_end is."""
    losses = [2.0 - i / 100 for i in range(95)] + [20.0, 40.0, 80.0, 160.0, 320.0]
    result = result_from_losses(losses)
    blowup = next(i for i, x in enumerate(losses) if x > 10)
    figure = result.plot(skip_end=5)
    drawn = figure.axes[0].lines[1].get_xdata()  # the smoothed curve
    assert max(drawn) >= result.lrs[blowup]


@pytest.mark.parametrize("points", [4, 14])
def test_a_curve_shorter_than_the_skips_is_drawn_whole(points: int) -> None:
    """4 or 14 points (the data ran out) under the default skip_start=10, skip_end=5: every
    point is drawn, not an empty frame."""
    result = result_from_losses(
        [2.0 - i / 20 for i in range(points)], num_iter=50, stop_reason=StopReason.DATA_EXHAUSTED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = result.plot()
    assert len(figure.axes[0].lines[1].get_xdata()) == points  # the smoothed curve


def test_too_few_points_because_the_data_ran_out_says_so() -> None:
    """The reason names what stopped the test (not 'raise num_iter', which cannot help)."""
    result = result_from_losses([1.0, 0.9, 0.8, 0.7], stop_reason=StopReason.DATA_EXHAUSTED)
    with pytest.warns(NoSuggestionWarning, match="the data ran out: pass more batches"):
        result.suggestion()


def test_a_plot_path_without_a_suffix_is_the_png_it_becomes(tmp_path: Path) -> None:
    """matplotlib adds .png to a path with no suffix; plot() saves there and says so."""
    from lrfinder_plugins.plot import check_output_path

    assert check_output_path(tmp_path / "curve") == tmp_path / "curve.png"
    with pytest.raises(ValueError, match=r"output_path .*cannot be saved as '\.txt'"):
        check_output_path(tmp_path / "curve.txt")
    result_from_losses(sigmoid_curve()).plot(tmp_path / "curve")
    assert [p.name for p in tmp_path.iterdir()] == ["curve.png"]


def test_plot_of_a_result_without_points_says_so(tmp_path: Path) -> None:
    """No points: an empty plot that says so (no curve, no marker, no warning), saved."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = RESULTS["no-points"].plot(tmp_path / "empty.png")
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.texts] == ["no points recorded"]
    assert len(axes.lines) == 0 and len(axes.collections) == 0
    assert "0 points" in axes.get_title() and (tmp_path / "empty.png").stat().st_size > 0

"""Bad input to ``lrfinder``: one line naming what is wrong, exit code 2, never a traceback."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lrfinder_plugins.cli import main

# Lightning adds a stream handler to its logger at import: import it now, not inside a test
# whose captured stderr is closed afterwards (the handler would write to it later).
with contextlib.suppress(ImportError):  # without it, the tune cases that need it are skipped
    import lightning.pytorch  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "config_tune"


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *, after_log: bool = False) -> str:
    """Run ``lrfinder argv``; check exit code 2 and one error line on stderr; return it.

    ``after_log``: the tuner's own lines may come first (an option only the search checks).
    """
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.splitlines()
    if after_log:
        assert all(line.startswith("[lrfinder tune] ") for line in lines[:-1]), captured.err
        lines = lines[-1:]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert "error: " in lines[0]
    return lines[0]


# ---------------------------------------------------------------- demo and show


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--num-iter", "0"], "--num-iter"),
        (["--num-iter", "1"], "--num-iter"),
        (["--num-iter", "ten"], "--num-iter"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--memory-budget-mib", "-1"], "--memory-budget-mib"),
        (["--memory-budget-mib", "0"], "--memory-budget-mib"),
        (["--memory-budget-mib", "nan"], "--memory-budget-mib"),
        (["--memory-budget-mib", "1e-9"], "--memory-budget-mib"),
        (["--method", "best"], "--method"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_demo_rejects_bad_values_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], flag: str
) -> None:
    """Each bad value ends in one line naming its flag; nothing is written."""
    out = tmp_path / "out"
    line = _error(capsys, ["demo", "--output-dir", str(out), "--no-progress", *args])
    assert flag in line
    assert not out.exists() or not any(out.iterdir())


def test_demo_method_error_lists_the_methods(capsys: pytest.CaptureFixture[str]) -> None:
    """--method best names the registered methods."""
    line = _error(capsys, ["demo", "--method", "best"])
    assert "margin" in line and "valley" in line


def test_demo_rejects_an_output_dir_that_cannot_be_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--output-dir under a file: one line naming the flag."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = _error(capsys, ["demo", "--output-dir", str(blocker / "out"), "--no-progress"])
    assert "--output-dir" in line and "cannot be created" in line


def test_demo_rejects_a_plot_path_that_is_a_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--plot naming a folder: one line naming the flag."""
    line = _error(capsys, ["demo", "--plot", str(tmp_path), "--output-dir", str(tmp_path)])
    assert "--plot" in line and "a folder" in line


@pytest.mark.parametrize("command", ["demo", "tune", "show"])
def test_a_plot_path_matplotlib_cannot_write_is_refused_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str
) -> None:
    """--plot out.txt: one line naming the flag and the suffix, before the search runs."""
    plot = str(tmp_path / "out.txt")
    argv = {
        "demo": ["demo", "--plot", plot, "--output-dir", str(tmp_path)],
        "tune": [
            "tune",
            "--config",
            str(EXAMPLE / "run.toml"),
            "--tune-learning-rate",
            "--plot",
            plot,
        ],
        "show": ["show", str(tmp_path / "missing.json"), "--plot", plot],
    }[command]
    line = _error(capsys, argv)
    assert "--plot" in line and "cannot be saved as '.txt'" in line
    assert list(tmp_path.iterdir()) == []


def test_demo_with_a_budget_nothing_fits_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A memory budget too small for a batch of one: one line naming --memory-budget-mib."""
    line = _error(
        capsys,
        ["demo", "--memory-budget-mib", "0.001", "--output-dir", str(tmp_path), "--no-progress"],
    )
    assert "--memory-budget-mib 0.001: too small" in line


def test_show_of_a_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """show of a file that is not there: one line."""
    line = _error(capsys, ["show", str(tmp_path / "nope.json")])
    assert "no such file" in line


@pytest.mark.parametrize(
    ("name", "text", "fault"),
    [
        ("broken.json", "{not json", "not valid JSON"),
        ("other.json", json.dumps({"format": "something else"}), "not an LR range test"),
        ("partial.json", json.dumps({"format": "lrfinder.range_test", "version": 1}), "result"),
        ("broken.csv", "lr,loss\n1,2\n", "settings file"),
        ("binary.json", "\udcff", "not a text file"),
    ],
    ids=["not-json", "another-format", "fields-missing", "csv-without-header", "not-utf8"],
)
def test_show_of_a_corrupt_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, text: str, fault: str
) -> None:
    """show of a file that is not a saved result: one line naming the file and the fault."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    line = _error(capsys, ["show", str(path)])
    assert line.count(str(path)) == 1 and fault in line


def test_show_rejects_an_unknown_method(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """show --method best: one line naming the flag (before the file is read)."""
    line = _error(capsys, ["show", str(tmp_path / "x.json"), "--method", "best"])
    assert "--method 'best'" in line


# ---------------------------------------------------------------- tune


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example configs and their module."""
    for name in ("tiny_task.py", "run.toml", "run.yaml", "torch_run.toml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "nothing to do"),
        (["--write-config"], "nothing to do"),
        (["--fit", "--write-config"], "--write-config without --tune-batch-size"),
        (["--tune-batch-size", "--dry-run", "--fit"], "--dry-run with --fit"),
        (["--tune-batch-size", "--lr-key", "a.b"], "--lr-key without --tune-learning-rate"),
        (["--tune-learning-rate", "--batch-size-key", "a.b"], "--batch-size-key without"),
        (["--tune-batch-size", "--plot", "p.png"], "--plot without --tune-learning-rate"),
        (["--tune-learning-rate", "--plot", "p.png", "--no-plot"], "--plot with --no-plot"),
    ],
    ids=[
        "no-flags",
        "write-only",
        "fit-write",
        "dry-run-fit",
        "lr-key-alone",
        "batch-key-alone",
        "plot-alone",
        "plot-no-plot",
    ],
)
def test_tune_rejects_flags_that_make_no_sense(
    capsys: pytest.CaptureFixture[str], example: Path, flags: list[str], message: str
) -> None:
    """Flags that make no sense together: one line, before the config is even read."""
    line = _error(capsys, ["tune", "--config", str(example / "missing.toml"), *flags])
    assert message in line


def test_tune_of_a_missing_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A config that is not there: one line naming it."""
    line = _error(capsys, ["tune", "--config", str(tmp_path / "run.toml"), "--tune-batch-size"])
    assert "run.toml: no such file" in line


def test_tune_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    """--config is required (argparse's error, on one line)."""
    assert "--config" in _error(capsys, ["tune", "--tune-batch-size"])


def test_tune_of_a_config_that_is_not_toml(
    capsys: pytest.CaptureFixture[str], example: Path
) -> None:
    """A TOML syntax error: one line with the parser's position."""
    _edit(example / "run.toml", "[trainer_config]", "[trainer_config")
    line = _error(capsys, ["tune", "--config", str(example / "run.toml"), "--tune-batch-size"])
    assert "not valid TOML" in line and "line" in line


def test_tune_of_a_config_naming_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A config with none of the known sections: one line saying what it needs."""
    (tmp_path / "run.toml").write_text("[other]\na = 1\n")
    line = _error(capsys, ["tune", "--config", str(tmp_path / "run.toml"), "--tune-batch-size"])
    assert "[module_config]" in line and "[torch_config]" in line


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--tune-batch-size", "--batch-size-key", "datamodule_config.bs"],
            "no key 'datamodule_config.bs'",
        ),
        (["--tune-learning-rate", "--lr-key", "optim.lr"], "no table 'optim'"),
        (["--tune-learning-rate", "--max-lr-key", "sched.max_lr"], "no table 'sched'"),
    ],
    ids=["batch-key", "lr-key", "max-lr-key"],
)
def test_tune_names_a_key_that_does_not_exist(
    capsys: pytest.CaptureFixture[str], example: Path, flags: list[str], message: str
) -> None:
    """A key the config lacks: one line naming it, before anything is built."""
    line = _error(capsys, ["tune", "--config", str(example / "run.toml"), *flags])
    assert message in line


def test_tune_refuses_a_read_only_config(capsys: pytest.CaptureFixture[str], example: Path) -> None:
    """--write-config on a read-only file: one line, before any work; --dry-run is suggested."""
    config = example / "run.toml"
    config.chmod(0o444)
    try:
        line = _error(
            capsys, ["tune", "--config", str(config), "--tune-batch-size", "--write-config"]
        )
    finally:
        config.chmod(0o644)
    assert "read-only" in line and "--dry-run" in line


def test_tune_fit_on_a_torch_config(capsys: pytest.CaptureFixture[str], example: Path) -> None:
    """--fit with a plain-PyTorch factory config: one line, before any work."""
    line = _error(
        capsys,
        ["tune", "--config", str(example / "torch_run.toml"), "--tune-batch-size", "--fit"],
    )
    assert "--fit needs a Lightning config" in line


LIGHTNING_CASES = [
    (
        "run.toml",
        '"tiny_task:TinyClassifier"',
        '"no_such_package.models:Net"',
        "module_config.class_path = 'no_such_package.models:Net': cannot import",
    ),
    ("run.toml", '"tiny_task:TinyDataModule"', '"tiny_task:Nope"', "'tiny_task' has no 'Nope'"),
    ("run.toml", "hidden = 32", "hiden = 32", "unexpected keyword argument 'hiden'"),
    ("run.toml", "max_epochs = 1", "max_epoch = 1", "trainer_config: not arguments of"),
    ("run.toml", "max_trials = 7 ", "max_trails = 7 ", "unknown option(s) ['max_trails']"),
    ("run.toml", "min_lr = 1e-6", 'min_lr = 1e-6\nbatch_arg_name = "bs"', "nowhere to set"),
    ("run.yaml", "tiny_task.TinyClassifier", "tiny_task.Nope", "model.class_path"),
    ("torch_run.toml", "tiny_task:make_parts", "tiny_task:make_nothing", "torch_config.factory"),
    ("torch_run.toml", 'mode = "power"', 'mode = "bogus"', "mode must be one of"),
    ("torch_run.toml", "max_trials = 6", "max_trails = 6", "unknown option(s) ['max_trails']"),
]


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    LIGHTNING_CASES,
    ids=[
        "module-not-importable",
        "class-missing",
        "init-arg",
        "trainer-arg",
        "tuner-option",
        "no-batch-size-attribute",
        "yaml-class",
        "torch-factory",
        "torch-batch-mode",
        "torch-batch-option",
    ],
)
def test_tune_names_what_does_not_build(
    capsys: pytest.CaptureFixture[str],
    example: Path,
    name: str,
    old: str,
    new: str,
    message: str,
) -> None:
    """A class path that does not import, arguments a class does not take: one line, no run."""
    pytest.importorskip("lightning")
    config = _edit(example / name, old, new)
    argv = ["tune", "--config", str(config), "--tune-batch-size", "--no-plot"]
    line = _error(capsys, argv, after_log=name == "torch_run.toml")
    assert message in line
    assert config.read_text().count(new) == 1  # nothing written


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("min_lr = 1e-6", "min_lr = -1", "min_lr must be a finite number > 0, got -1"),
        (
            "min_lr = 1e-6",
            'min_lr = 1e-6\nsuggest_method = "valey"',
            "did you mean suggest_method='valley'?",
        ),
    ],
    ids=["min_lr", "suggest_method"],
)
def test_tune_checks_the_lr_options_before_the_batch_size_search(
    capsys: pytest.CaptureFixture[str], example: Path, old: str, new: str, message: str
) -> None:
    """With both flags a bad LR setting fails before the first batch-size trial, not after
    the batch-size search (the LR search runs second)."""
    pytest.importorskip("lightning")
    config = _edit(example / "run.toml", old, new)
    argv = ["tune", "--config", str(config), "--tune-batch-size", "--tune-learning-rate"]
    line = _error(capsys, [*argv, "--dry-run"], after_log=True)
    assert message in line


def test_a_bad_class_path_prints_no_traceback(example: Path) -> None:
    """The console script itself: exit code 2 and one line on stderr."""
    _edit(example / "run.toml", '"tiny_task:TinyClassifier"', '"tiny_task:Missing"')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrfinder_plugins.cli",
            "tune",
            "--config",
            "run.toml",
            "--tune-batch-size",
            "--tune-learning-rate",
        ],
        cwd=example,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "lrfinder tune: error: run.toml: module_config.class_path = 'tiny_task:Missing': "
        "'tiny_task' has no 'Missing'"
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("module", "config", "extra"),
    [
        ("tomlkit", "run.toml", "lrfinder-plugins[cli]"),
        ("ruamel.yaml", "run.yaml", "lrfinder-plugins[cli]"),
        ("lightning", "run.toml", "lrfinder-plugins[lightning]"),
    ],
    ids=["tomlkit", "ruamel", "lightning"],
)
def test_a_missing_extra_names_its_pip_install(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    example: Path,
    module: str,
    config: str,
    extra: str,
) -> None:
    """Without the extra a config needs: one line naming the pip install that fixes it."""
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it fails
    line = _error(capsys, ["tune", "--config", str(example / config), "--tune-batch-size"])
    assert f"pip install '{extra}'" in line


def test_the_cli_loads_without_the_config_parsers(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import lrfinder_plugins` and the parser (so `lrfinder demo`) need neither parser."""
    for name in ("tomlkit", "ruamel", "ruamel.yaml"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("lrfinder_plugins")]:
        monkeypatch.delitem(sys.modules, name)
    import lrfinder_plugins.cli

    assert "tune" in lrfinder_plugins.cli.build_parser().format_help()


def test_verbose_shows_the_traceback_of_a_refused_option(example: Path) -> None:
    """lrfinder -v tune: an option a search refuses raises as it is (for its traceback)."""
    config = _edit(example / "torch_run.toml", 'mode = "power"', 'mode = "bogus"')
    with pytest.raises(ValueError, match="mode must be one of"):
        main(["-v", "tune", "--config", str(config), "--tune-batch-size"])


@pytest.mark.parametrize(
    "argv",
    [["demo"], ["show", "x.json", "--plot", "x.png"]],
    ids=["demo", "show-plot"],
)
def test_demo_and_show_without_matplotlib_name_the_plot_extra(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    argv: list[str],
) -> None:
    """A plot without matplotlib: one line naming pip install 'lrfinder-plugins[plot]'."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = _error(capsys, argv)
    assert "pip install 'lrfinder-plugins[plot]'" in line


def test_demo_threads_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    line = _error(capsys, ["demo", "--threads", "0"])
    assert "--threads" in line

"""``lrfinder tune --config``: the seed's loop end to end (a real Trainer, in a subprocess)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tomlkit")
pytest.importorskip("ruamel.yaml")
pytest.importorskip("lightning")
pytest.importorskip("matplotlib")

from lrfinder_plugins._config_file import NOTE_PREFIX, ConfigFile

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "config_tune"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _copy_example(folder: Path) -> Path:
    """The example configs and their module, copied (the tests write to the copies)."""
    for name in ("tiny_task.py", "run.toml", "run.yaml", "torch_run.toml"):
        shutil.copy(EXAMPLE / name, folder / name)
    return folder


WITHOUT = """
import sys
for name in sys.argv.pop(1).split(","):
    sys.modules[name] = None  # as if not installed: importing it fails
from lrfinder_plugins.cli import main
sys.exit(main(["tune", *sys.argv[1:]]))
"""


def _lrfinder(folder: Path, *args: str, without: str = "") -> subprocess.CompletedProcess[str]:
    """The real console script, run in ``folder`` as a user runs it (``without`` packages)."""
    command = ["-m", "lrfinder_plugins.cli", "tune"] if not without else ["-c", WITHOUT, without]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=540,
    )


def _number(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} not in:\n{text}"
    return found.group(1)


Run = tuple[Path, subprocess.CompletedProcess[str]]


def _written_back(tmp: pytest.TempPathFactory, config: str, *flags: str) -> Run:
    """`lrfinder tune --config <copy of config> <flags> --write-config`, which must succeed."""
    folder = _copy_example(tmp.mktemp(config.replace(".", "-")))
    done = _lrfinder(folder, "--config", config, *flags, "--write-config")
    assert done.returncode == 0, done.stderr
    return folder, done


@pytest.fixture(scope="module")
def toml_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`lrfinder tune` on the TOML example, the flags in the 'wrong' order, written back."""
    return _written_back(tmp_path_factory, "run.toml", "--tune-learning-rate", "--tune-batch-size")


@pytest.fixture(scope="module")
def yaml_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """`lrfinder tune` on the LightningCLI YAML example, written back."""
    return _written_back(tmp_path_factory, "run.yaml", "--tune-batch-size", "--tune-learning-rate")


def test_toml_logs_the_seed_lines(toml_run: Run) -> None:
    """The seed's lines, with our confidence and range, and the plot where the log says."""
    folder, done = toml_run
    log = done.stderr
    size = _number(r"✓ Optimal batch size found: (\d+)", log)
    lr = _number(r"✓ Suggested learning rate: (\d\.\d\de[-+]\d\d)", log)
    assert int(size) > 16
    assert f"Updated optimizer LR: 1.00e-03 → {lr}" in log
    assert re.search(r"confidence \d\.\d\d, usable range \S+ … \S+ \(margin\)", log)
    assert "LR finder plot saved to: .logs/lr_finder_plot.png" in log
    assert (folder / ".logs" / "lr_finder_plot.png").stat().st_size > 0


def test_the_batch_size_is_tuned_first_whatever_the_flag_order(
    toml_run: Run,
) -> None:
    """--tune-learning-rate before --tune-batch-size: the log says, and does, batch size first."""
    log = toml_run[1].stderr
    assert "Tuning the batch size first, then the learning rate at it" in log
    assert log.index("Optimal batch size found") < log.index("Running learning rate finder")


def _logged_and_written(run: Run, name: str) -> tuple[int, float, ConfigFile]:
    """The batch size and LR the log shows, and the config file as written back."""
    folder, done = run
    size = int(_number(r"Optimal batch size found: (\d+)", done.stderr))
    lr = float(_number(r"Suggested learning rate: (\S+)", done.stderr))
    return size, lr, ConfigFile.load(folder / name)


def test_toml_write_back_writes_the_logged_values_and_keeps_the_rest(toml_run: Run) -> None:
    """The file holds the logged batch size and LR, OneCycleLR's keys, a note, every comment."""
    size, lr, config = _logged_and_written(toml_run, "run.toml")
    upper = float(_number(r"usable range \S+ … (\S+)", toml_run[1].stderr))
    assert config.get("datamodule_config.batch_size") == size
    assert config.get("module_config.optimizer.learning_rate") == pytest.approx(lr, rel=0.01)
    assert config.get("module_config.scheduler.max_lr") == pytest.approx(upper, rel=0.01)
    assert config.get("module_config.scheduler.cycle_momentum") is False
    assert config.get("module_config.scheduler.div_factor") == pytest.approx(4.47, rel=0.01)
    text = config.path.read_text()
    original = (EXAMPLE / "run.toml").read_text()
    assert text.startswith(NOTE_PREFIX)
    # Every original line is still there, unchanged, except the four values written.
    kept = set(text.splitlines())
    changed = {line for line in original.splitlines() if line not in kept}
    assert {line.split("=")[0].strip() for line in changed} == {
        "batch_size",
        "learning_rate",
        "max_lr",
        "div_factor",
    }
    assert [c for c in original.splitlines() if c.lstrip().startswith("#")] == [
        c for c in text.splitlines()[1:] if c.lstrip().startswith("#")
    ]
    assert "# the batch-size finder writes its result here" in text


def test_yaml_write_back_keeps_comments(yaml_run: Run) -> None:
    """A LightningCLI YAML config: the values go under init_args, every comment stays."""
    size, lr, config = _logged_and_written(yaml_run, "run.yaml")
    assert config.get("data.init_args.batch_size") == size
    assert config.get("model.init_args.learning_rate") == pytest.approx(lr, rel=0.01)
    assert "max_lr" in config.get("model.init_args.scheduler")
    text = config.path.read_text()
    for line in (EXAMPLE / "run.yaml").read_text().splitlines():
        if "#" in line:
            assert line[line.index("#") :] in text


def test_torch_factory_config_dry_run_prints_the_diff(tmp_path: Path) -> None:
    """A plain-PyTorch factory config without Lightning, --dry-run: the diff, the file kept."""
    folder = _copy_example(tmp_path)
    before = (folder / "torch_run.toml").read_text()
    done = _lrfinder(
        folder,
        "--config",
        "torch_run.toml",
        "--tune-batch-size",
        "--tune-learning-rate",
        "--dry-run",
        "--no-plot",
        without="lightning,lightning.pytorch,pytorch_lightning",
    )
    assert done.returncode == 0, done.stderr
    size = _number(r"✓ Optimal batch size found: (\d+)", done.stderr)
    lr = float(_number(r"✓ Suggested learning rate: (\S+)", done.stderr))
    assert f"+batch_size = {size}  # the batch-size finder writes its result here" in done.stdout
    # The throughput knee and the recommendation, with its reason and the LR rule:
    assert re.search(r"Throughput knee: \d+ \(samples/s by size: ", done.stderr)
    assert re.search(r"Recommended batch size: \d+: ", done.stderr)
    assert "re-run the range test at this batch" in done.stderr
    written = float(_number(r"\+learning_rate = (\S+)", done.stdout))
    assert written == pytest.approx(lr, rel=0.01)
    assert (folder / "torch_run.toml").read_text() == before
    assert not (folder / ".logs").exists()


def test_fit_trains_with_the_found_lr(tmp_path: Path) -> None:
    """--fit: the LR is tuned, then a fresh module trains (a Trainer run to the end)."""
    folder = _copy_example(tmp_path)
    done = _lrfinder(folder, "--config", "run.toml", "--tune-learning-rate", "--fit", "--no-plot")
    assert done.returncode == 0, done.stderr
    assert "Optimal batch size" not in done.stderr
    assert done.stderr.index("Suggested learning rate") < done.stderr.index(
        "Starting training (fit)"
    )
    assert re.search(r"`Trainer.fit` stopped: `max_epochs=1` reached", done.stderr)
    assert (folder / "run.toml").read_text() == (EXAMPLE / "run.toml").read_text()


def _main_py(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The example's own LightningCLI script (TuningCLI), run in ``folder``."""
    pytest.importorskip("jsonargparse")
    shutil.copy(EXAMPLE / "main.py", folder / "main.py")
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_tuning_cli_tunes_before_fit(tmp_path: Path) -> None:
    """`main.py fit --tune-learning-rate --tune-batch-size`: batch size, LR, then the real fit."""
    folder = _copy_example(tmp_path)
    done = _main_py(
        folder, "fit", "--config", "run.yaml", "--tune-learning-rate", "--tune-batch-size"
    )
    assert done.returncode == 0, done.stderr
    log = done.stderr
    size = _number(r"✓ Optimal batch size found: (\d+)", log)
    lr = _number(r"✓ Suggested learning rate: (\S+)", log)
    assert f"Updated optimizer LR: 1.00e-03 → {lr}" in log
    assert f"batch size set to {size}" in log
    assert (
        log.index("Optimal batch size found")
        < log.index("Suggested learning rate")
        < log.index("Starting training (fit)")
        < log.index("`Trainer.fit` stopped: `max_epochs=1` reached")
    )
    assert (folder / ".logs" / "lr_finder_plot.png").stat().st_size > 0


def test_tuning_cli_without_the_flags_only_fits(tmp_path: Path) -> None:
    """Without the flags TuningCLI is LightningCLI (the config's tuner: section is accepted)."""
    folder = _copy_example(tmp_path)
    done = _main_py(folder, "fit", "--config", "run.yaml")
    assert done.returncode == 0, done.stderr
    assert "Running batch size tuning" not in done.stderr
    assert "`Trainer.fit` stopped: `max_epochs=1` reached" in done.stderr


def test_tuning_cli_names_an_unknown_tuner_option(tmp_path: Path) -> None:
    """A misspelt tuner option: LightningCLI's own error (exit code 2), before any trial."""
    folder = _copy_example(tmp_path)
    done = _main_py(
        folder, "fit", "--config", "run.yaml", "--tune-batch-size", "--tuner", '{"max_trails": 3}'
    )
    assert done.returncode == 2, done.stderr
    assert "error: tuner: unknown option(s) ['max_trails']" in done.stderr
    assert "Traceback" not in done.stderr and "Running batch size tuning" not in done.stderr


def test_tuning_cli_reads_a_dotted_tuner_override_as_a_number(tmp_path: Path) -> None:
    """`--tuner.min_lr=-1` reaches the options as the number -1 (jsonargparse hands a dotted
    override over as a string): LightningCLI's usage error naming it, before any trial."""
    folder = _copy_example(tmp_path)
    done = _main_py(
        folder, "fit", "--config", "run.yaml", "--tune-batch-size", "--tune-learning-rate",
        "--tuner.min_lr=-1",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "error: tuner: min_lr must be a finite number > 0, got -1;" in done.stderr
    assert "Traceback" not in done.stderr and "Running batch size tuning" not in done.stderr


def test_tuner_strings_are_read_as_json_where_they_are_json() -> None:
    """Numbers and booleans from dotted overrides become numbers; other strings stay."""
    from lrfinder_adapters.lightning_cli import _typed

    given = {
        "min_lr": "1e-5",
        "num_training": "30",
        "update_attr": "false",
        "suggest_method": "valley",
    }
    assert _typed(given) == {
        "min_lr": 1e-5, "num_training": 30, "update_attr": False, "suggest_method": "valley"
    }  # fmt: skip

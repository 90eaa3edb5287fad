"""A config file read, changed at named keys and written back: comments kept, atomically."""

from __future__ import annotations

import datetime
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("tomlkit")
pytest.importorskip("ruamel.yaml")

from lrfinder_plugins import _json_file
from lrfinder_plugins._config_file import NOTE_PREFIX, ConfigError, ConfigFile, round_value

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.timezone.utc)

TOML = textwrap.dedent(
    """\
    # the experiment
    [module_config]
    class_path = "pkg.mod:Net"  # the model

    [module_config.optimizer]
    learning_rate = 1e-3    # found by hand
    weight_decay  = 0.01

    [datamodule_config]
    batch_size = 16 # per device
    """
)

YAML = textwrap.dedent(
    """\
    # the experiment
    model:
      class_path: pkg.mod.Net  # the model
      init_args:
        learning_rate: 0.001   # found by hand
    data:
      init_args:
        batch_size: 16 # per device
    """
)


@pytest.fixture
def toml_file(tmp_path: Path) -> Path:
    """A TOML config with comments and irregular spacing."""
    path = tmp_path / "run.toml"
    path.write_text(TOML)
    return path


@pytest.fixture
def yaml_file(tmp_path: Path) -> Path:
    """A YAML (LightningCLI) config with comments."""
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    return path


def _changed_lines(before: str, after: str) -> tuple[set[str], set[str]]:
    old, new = set(before.splitlines()), set(after.splitlines())
    return old - new, new - old


def test_toml_write_back_changes_only_the_named_lines(toml_file: Path) -> None:
    """Two keys set: the note line and those two lines change; comments and spacing stay."""
    config = ConfigFile.load(toml_file)
    config.set("module_config.optimizer.learning_rate", round_value(0.0031622776))
    config.set("datamodule_config.batch_size", 128)
    config.save(NOW)
    text = toml_file.read_text()
    removed, added = _changed_lines(TOML, text)
    assert removed == {"learning_rate = 1e-3    # found by hand", "batch_size = 16 # per device"}
    assert added == {
        "learning_rate = 0.00316    # found by hand",
        "batch_size = 128 # per device",
        text.splitlines()[0],
    }
    assert text.splitlines()[0] == (
        f"{NOTE_PREFIX} 2026-01-02 03:04 UTC: module_config.optimizer.learning_rate 0.001 → "
        "0.00316; datamodule_config.batch_size 16 → 128"
    )
    assert ConfigFile.load(toml_file).get("datamodule_config.batch_size") == 128


def test_yaml_write_back_keeps_comments_and_order(yaml_file: Path) -> None:
    """ruamel's round trip keeps every comment and the key order; the values are read back."""
    config = ConfigFile.load(yaml_file)
    config.set("data.init_args.batch_size", 64)
    config.set("model.init_args.learning_rate", 2e-5)
    config.save(NOW)
    text = yaml_file.read_text()
    for comment in ("# the experiment", "# the model", "# found by hand", "# per device"):
        assert comment in text
    assert text.index("model:") < text.index("data:")
    again = ConfigFile.load(yaml_file)
    assert again.get("data.init_args.batch_size") == 64
    assert again.get("model.init_args.learning_rate") == 2e-5


def test_yaml_floats_read_back_as_floats_by_a_yaml_1_1_reader(yaml_file: Path) -> None:
    """A small float gets a dot in its mantissa: PyYAML (jsonargparse's) reads it as a float."""
    yaml = pytest.importorskip("yaml")
    config = ConfigFile.load(yaml_file)
    config.set("model.init_args.learning_rate", 1e-5)
    value = yaml.safe_load(config.text())["model"]["init_args"]["learning_rate"]
    assert value == 1e-5 and isinstance(value, float)


def test_a_second_run_replaces_the_note(toml_file: Path) -> None:
    """The note of an earlier run is replaced, not stacked."""
    for size in (32, 64):
        config = ConfigFile.load(toml_file)
        config.set("datamodule_config.batch_size", size)
        config.save(NOW)
    lines = toml_file.read_text().splitlines()
    assert sum(line.startswith(NOTE_PREFIX) for line in lines) == 1
    assert lines[0].endswith("datamodule_config.batch_size 32 → 64")
    assert lines[1] == "# the experiment"


def test_diff_shows_the_change_and_writes_nothing(toml_file: Path) -> None:
    """diff() is a unified diff of the file; the file is untouched."""
    config = ConfigFile.load(toml_file)
    assert config.diff() == ""
    config.set("datamodule_config.batch_size", 128)
    diff = config.diff(NOW)
    assert "-batch_size = 16 # per device\n" in diff
    assert "+batch_size = 128 # per device\n" in diff
    assert toml_file.read_text() == TOML


def test_save_keeps_the_file_mode(toml_file: Path) -> None:
    """The rewritten file keeps its permission bits (a temp file starts at 0600)."""
    toml_file.chmod(0o640)
    config = ConfigFile.load(toml_file)
    config.set("datamodule_config.batch_size", 8)
    config.save(NOW)
    assert stat.S_IMODE(toml_file.stat().st_mode) == 0o640


def test_a_fault_before_the_rename_leaves_the_original(
    toml_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error between the temp write and the rename: the old file, and no temp file left."""

    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(_json_file.os, "replace", fail)
    config = ConfigFile.load(toml_file)
    config.set("datamodule_config.batch_size", 128)
    with pytest.raises(OSError, match="disk gone"):
        config.save(NOW)
    assert toml_file.read_text() == TOML
    assert sorted(p.name for p in toml_file.parent.iterdir()) == ["run.toml"]


KILL_BEFORE_RENAME = """
import os, signal, sys
from lrfinder_plugins import _json_file
from lrfinder_plugins._config_file import ConfigFile

def die(src, dst):
    # the temp file is written and fsynced: the process dies before the rename
    assert open(src).read().count("batch_size = 128")
    os.kill(os.getpid(), signal.SIGKILL)

_json_file.os.replace = die
config = ConfigFile.load(sys.argv[1])
config.set("datamodule_config.batch_size", 128)
config.save()
"""


def test_a_kill_mid_write_leaves_the_original(toml_file: Path) -> None:
    """A process SIGKILLed after writing the temp file and before the rename: the old file."""
    done = subprocess.run(
        [sys.executable, "-c", KILL_BEFORE_RENAME, str(toml_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr
    assert toml_file.read_text() == TOML
    assert ConfigFile.load(toml_file).get("datamodule_config.batch_size") == 16


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.toml", None, "no such file"),
        ("run.ini", "[a]\n", "must end in .toml, .yaml or .yml"),
        ("bad.toml", "[a\nb = 1\n", "not valid TOML"),
        ("bad.yaml", "a: [1, 2\n", "not valid YAML"),
        ("list.yaml", "- 1\n- 2\n", "the top level must be a table"),
    ],
    ids=["missing", "suffix", "toml-syntax", "yaml-syntax", "yaml-list"],
)
def test_unreadable_configs_raise_one_line(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    """Each unreadable config raises a one-line ConfigError naming the file."""
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        ConfigFile.load(path)
    assert "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_keys_and_tables_are_named(toml_file: Path) -> None:
    """get() of a missing key or table, set() under a missing table: the key is named."""
    config = ConfigFile.load(toml_file)
    with pytest.raises(ConfigError, match=r"no key 'datamodule_config\.batchsize'"):
        config.get("datamodule_config.batchsize")
    with pytest.raises(ConfigError, match=r"no table 'module_config\.scheduler'"):
        config.set("module_config.scheduler.max_lr", 0.1)
    with pytest.raises(ConfigError, match=r"no table 'module_config\.optimizer\.learning_rate'"):
        config.get("module_config.optimizer.learning_rate.x")
    assert not config.has("trainer_config.max_epochs")
    assert config.has("module_config.optimizer.weight_decay")


def test_a_read_only_config_is_refused_before_any_work(toml_file: Path) -> None:
    """check_writable() refuses a file without write bits (even to root)."""
    toml_file.chmod(0o444)
    try:
        with pytest.raises(ConfigError, match="read-only"):
            ConfigFile.load(toml_file).check_writable()
    finally:
        toml_file.chmod(0o644)


def test_plain_values_have_no_parser_types(yaml_file: Path) -> None:
    """plain() gives dicts, lists and builtin scalars (what a factory or a class receives)."""
    plain = ConfigFile.load(yaml_file).plain()
    assert type(plain["model"]) is dict
    assert type(plain["model"]["init_args"]["learning_rate"]) is float
    assert type(plain["data"]["init_args"]["batch_size"]) is int
    assert type(plain["model"]["class_path"]) is str


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_file_gets_the_mode_open_gives(tmp_path: Path, umask: int) -> None:
    """A file written for the first time is 0666 less the umask, as open() makes it (not the
    temporary file's 0600), and the umask is left as it was."""
    before = os.umask(umask)
    try:
        _json_file.write_atomic(tmp_path / "new.json", "{}")
        assert os.umask(umask) == umask
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask


def test_writing_to_a_directory_says_to_name_a_file(tmp_path: Path) -> None:
    """A directory as the path is refused, naming it and a file path to use instead."""
    with pytest.raises(IsADirectoryError, match=r"is a directory; pass a file path, e\.g\."):
        _json_file.write_atomic(tmp_path, "{}")
    assert list(tmp_path.iterdir()) == []


def test_round_value_keeps_three_significant_digits() -> None:
    """Floats (also in lists) are rounded as a person writes them; others pass through."""
    assert round_value(0.0031622776) == 0.00316
    assert round_value([0.012345, 1.0]) == [0.0123, 1.0]
    assert round_value(128) == 128 and round_value(True) is True and round_value("cos") == "cos"


def test_write_atomic_is_fsynced_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file's bytes reach the disk (fsync) before the rename makes them the file."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        _json_file.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1]
    )
    monkeypatch.setattr(
        _json_file.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1]
    )
    _json_file.write_atomic(tmp_path / "out.txt", "hello")
    assert events[:2] == ["fsync", "replace"]
    assert (tmp_path / "out.txt").read_text() == "hello"

"""A training config (TOML or YAML) read, changed at named keys and written back as it was.

Round-trip parsers keep what a person wrote: tomlkit keeps every comment, the key order and the
formatting of a TOML file; ruamel.yaml keeps a YAML file's comments and key order. A changed
file is written atomically (:func:`~lrfinder_plugins._json_file.write_atomic`: a temporary
file, fsync, rename), so a crash mid-write leaves the old file, and it gets one comment line at
the top saying what changed and when (replacing the note of an earlier run).

Keys are dotted paths: ``module_config.optimizer.learning_rate`` is ``learning_rate`` in the
``[module_config.optimizer]`` table, ``data.init_args.batch_size`` the YAML
``data: {init_args: {batch_size: ...}}``.
"""

from __future__ import annotations

import datetime
import difflib
import io
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from lrfinder_plugins._json_file import write_atomic
from lrfinder_plugins._usage import UsageError, one_line

NOTE_PREFIX = "# lrfinder tune wrote"
"""How the note line starts: a later run replaces the line an earlier one wrote."""

CLI_EXTRA = "pip install 'lrfinder-plugins[cli]'"
"""The install line that brings the config parsers (tomlkit, ruamel.yaml)."""

FORMATS = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}


class ConfigError(UsageError, ValueError):
    """A config that cannot be read, or a key it does not have: one line for the user."""


def _import(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"reading a config file needs {name}: {CLI_EXTRA}") from error


def _yaml() -> Any:
    yaml = _import("ruamel.yaml").YAML()  # round-trip mode: comments and key order kept
    yaml.preserve_quotes = True
    yaml.representer.add_representer(float, _represent_float)
    return yaml


def _represent_float(representer: Any, value: float) -> Any:
    # YAML 1.1 readers (PyYAML, so jsonargparse and LightningCLI) read ``1e-05`` as a string:
    # a float needs a dot in its mantissa.
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _plain(value: Any) -> Any:
    """Plain Python values: dicts, lists, str, int, float, bool (no parser wrapper types)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    for kind in (bool, int, float, str):  # bool first: it is an int
        if isinstance(value, kind):
            return kind(value)
    return value


def round_value(value: Any, digits: int = 3) -> Any:
    """``value`` as a person would write it in a config: floats to ``digits`` significant ones."""
    if isinstance(value, bool) or not isinstance(value, float | list | tuple):
        return value
    if isinstance(value, list | tuple):
        return [round_value(v, digits) for v in value]
    return float(f"{value:.{digits}g}")


class ConfigFile:
    """One config file: its parsed document, the changes made to it, and how to write them.

    Args:
        path: the file.
        text: its text.
        format: ``"toml"`` or ``"yaml"``.

    Use :meth:`load`; :meth:`set` changes a key, :meth:`diff` shows the changes, :meth:`save`
    writes them.

    Example:
        >>> config = ConfigFile.load("run.toml")  # doctest: +SKIP
        >>> config.set("datamodule_config.batch_size", 128)  # doctest: +SKIP
        >>> config.save()  # doctest: +SKIP
    """

    def __init__(self, path: Path, text: str, format: str) -> None:
        self.path = path
        self.format = format
        self.original = text
        self.changes: list[tuple[str, Any, Any]] = []
        try:
            if format == "toml":
                self.document: Any = _import("tomlkit").parse(text)
            else:
                self.document = _yaml().load(text)
        except ImportError:
            raise
        except Exception as error:  # tomlkit's ParseError, ruamel's YAMLError
            raise ConfigError(f"{path}: not valid {format.upper()}: {one_line(error)}") from error
        if not isinstance(self.document, MutableMapping):
            raise ConfigError(f"{path}: the top level must be a table of keys, not {text[:20]!r}")

    @classmethod
    def load(cls, path: str | Path) -> ConfigFile:
        """Read and parse ``path`` (``.toml``, ``.yaml`` or ``.yml``).

        Raises:
            ConfigError: a missing or unreadable file, another suffix, or a parse error.
            ImportError: the parser is not installed (naming the ``pip install`` that fixes it).
        """
        path = Path(path)
        format = FORMATS.get(path.suffix.lower())
        if format is None:
            raise ConfigError(
                f"{path}: a config must end in .toml, .yaml or .yml, not {path.suffix or '(none)'!r}"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: a folder, not a config file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot be read ({error})") from error
        return cls(path, text, format)

    def plain(self) -> dict[str, Any]:
        """The whole config as plain Python values (with the changes made so far)."""
        plain: dict[str, Any] = _plain(self.document)
        return plain

    def _parent(self, key: str) -> tuple[MutableMapping[str, Any], str]:
        *tables, name = key.split(".")
        node: Any = self.document
        for i, part in enumerate(tables):
            child = node.get(part) if isinstance(node, Mapping) else None
            if not isinstance(child, MutableMapping):
                where = ".".join(tables[: i + 1])
                raise ConfigError(f"{self.path}: no table {where!r} (for the key {key!r})")
            node = child
        return node, name

    def has(self, key: str) -> bool:
        """Whether the dotted ``key`` exists."""
        try:
            parent, name = self._parent(key)
        except ConfigError:
            return False
        return name in parent

    def get(self, key: str) -> Any:
        """The plain value at the dotted ``key``.

        Raises:
            ConfigError: the key does not exist.
        """
        parent, name = self._parent(key)
        if name not in parent:
            raise ConfigError(f"{self.path}: no key {key!r}")
        return _plain(parent[name])

    def require(self, key: str, *, table_only: bool = False) -> None:
        """Check that ``key`` exists (``table_only``: that the table holding it does).

        Raises:
            ConfigError: naming the key and the file.
        """
        if table_only:
            self._parent(key)
        else:
            self.get(key)

    def set(self, key: str, value: Any) -> None:
        """Set the dotted ``key`` to ``value`` (its table must exist; the key may be new)."""
        parent, name = self._parent(key)
        old = _plain(parent[name]) if name in parent else None
        if old == value:
            return
        parent[name] = value
        self.changes.append((key, old, value))

    def _body(self) -> str:
        if self.format == "toml":
            text: str = _import("tomlkit").dumps(self.document)
        else:
            buffer = io.StringIO()
            _yaml().dump(self.document, buffer)
            text = buffer.getvalue()
        lines = text.splitlines(keepends=True)
        while lines and lines[0].startswith(NOTE_PREFIX):
            lines.pop(0)
        return "".join(lines)

    def note(self, now: datetime.datetime | None = None) -> str:
        """The one comment line that says what changed and when."""
        when = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
        changed = "; ".join(
            f"{key} {'(new)' if old is None else old} → {new}" for key, old, new in self.changes
        )
        return f"{NOTE_PREFIX} {when}: {changed or 'no change'}\n"

    def text(self, now: datetime.datetime | None = None) -> str:
        """The new text of the file: the note line, then the document with its changes."""
        return self.note(now) + self._body()

    def diff(self, now: datetime.datetime | None = None) -> str:
        """The changes as a unified diff of the file (empty when nothing changed)."""
        if not self.changes:
            return ""
        return "".join(
            difflib.unified_diff(
                self.original.splitlines(keepends=True),
                self.text(now).splitlines(keepends=True),
                fromfile=str(self.path),
                tofile=f"{self.path} (with the found values)",
            )
        )

    def check_writable(self) -> None:
        """Check, before any work, that :meth:`save` can replace the file.

        Raises:
            ConfigError: the file or its folder (the rename writes there) is read-only.
        """
        # A file without write bits is read-only even to root, who could replace it anyway.
        read_only = not self.path.stat().st_mode & 0o222 or not os.access(self.path, os.W_OK)
        for target, blocked in (
            (self.path, read_only),
            (self.path.parent, not os.access(self.path.parent, os.W_OK | os.X_OK)),
        ):
            if blocked:
                raise ConfigError(
                    f"{self.path}: read-only ({target} is not writable); --dry-run shows the "
                    "changes without writing"
                )

    def save(self, now: datetime.datetime | None = None) -> Path:
        """Write the changes back atomically (a crash mid-write leaves the old file)."""
        return write_atomic(self.path, self.text(now))

"""Saving and loading frozen results as JSON files: one implementation for every result type."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="JsonFile")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename; return the path.

    A reader never sees half a file, and several processes writing the same result (every rank
    of a distributed search holds it) cannot interleave their bytes. The temporary file is
    flushed to disk before the rename (and the folder after it), so a crash at any point leaves
    either the old file or the new one; a file that existed keeps its permission bits, a new
    one gets what ``open`` gives (``0o666`` less the umask; the temporary file is ``0o600``).

    Raises:
        IsADirectoryError: ``path`` is a directory (the message says to name a file in it).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a directory; pass a file path, e.g. {path / 'result.json'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _umask() -> int:
    """The process's umask (read by setting it, and at once setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder (Windows cannot).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class ResultFileError(ValueError):
    """A result file that cannot be loaded: empty, truncated, corrupted, not a result of this
    type, or with a missing or mistyped field. The message names the file and what is wrong."""


class ResultFileNotFoundError(ResultFileError, FileNotFoundError):
    """The result file does not exist (a :class:`ResultFileError` and a ``FileNotFoundError``)."""


def read_result_text(path: str | Path) -> str:
    """The text of a result file, or a :class:`ResultFileError` naming it and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise ResultFileError(f"{path}: is a directory, not a result file; pass the file in it")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileNotFoundError(
            f"{path}: no such result file; check the path, or write one with save_json/save_csv"
        ) from None
    except UnicodeDecodeError as error:
        raise ResultFileError(f"{path}: not a text file (corrupted?): {error}") from None
    if not text.strip():
        raise ResultFileError(
            f"{path}: the file is empty; it holds no result (an interrupted save?)"
        )
    return text


def parse_json(path: str | Path, text: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or a :class:`ResultFileError` naming ``path``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultFileError(
            f"{path}: not valid JSON (truncated or corrupted?): {error.msg} at line "
            f"{error.lineno}, column {error.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ResultFileError(
            f"{path}: holds a JSON {type(data).__name__}, not a result object; pass a file "
            "written by save_json"
        )
    return data


def field_of(data: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """``data[name]``, or a ``ValueError`` saying the field is missing or of the wrong type."""
    if name not in data:
        raise ValueError(f"missing field {name!r} ({what})")
    value = data[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"field {name!r} must be {what}, got {value!r} ({type(value).__name__})")
    return value


class JsonFile:
    """Adds ``save_json``/``load_json`` to a result that has ``to_dict``/``from_dict``."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (each result type defines it)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """Rebuild a result from :meth:`to_dict` output (each result type defines it)."""
        raise NotImplementedError

    def save_json(self, path: str | Path) -> Path:
        """Write the result as standard JSON (no NaN/Infinity literals); return the path."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def load_json(cls: type[R], path: str | Path) -> R:
        """Read a result written by :meth:`save_json`.

        Raises:
            ResultFileNotFoundError: there is no such file.
            ResultFileError: the file is empty, truncated, corrupted, not this kind of result,
                or has a missing or mistyped field (the message names the file and what).
        """
        return cls.from_file_data(path, parse_json(path, read_result_text(path)))

    @classmethod
    def from_file_data(cls: type[R], path: str | Path, data: dict[str, Any]) -> R:
        """:meth:`from_dict` on data read from ``path``; its errors name the file."""
        try:
            return cls.from_dict(data)
        except ResultFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise ResultFileError(f"{path}: not a valid {cls.__name__} file: {what}") from error

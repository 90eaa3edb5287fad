"""Saving and loading frozen results as JSON files: one implementation for every result type."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="JsonFile")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename; return the path.

    A reader never sees half a file, and several processes writing the same result (every rank
    of a distributed search holds it) cannot interleave their bytes. The temporary file is
    flushed to disk before the rename (and the folder after it), so a crash at any point leaves
    either the old file or the new one; a file that existed keeps its permission bits.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


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
        """Read a result written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

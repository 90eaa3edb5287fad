"""Bad input from the command line: one error type and the checks that run before any work."""

from __future__ import annotations

import os
from pathlib import Path


class UsageError(Exception):
    """Bad input: the ``lrfinder`` command prints its one line and exits with code 2."""


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def check_writable_dir(flag: str, folder: str | Path) -> None:
    """``folder`` exists (it is made if missing) and files can be written in it.

    Raises:
        UsageError: naming ``flag`` and the folder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {folder}: cannot be created ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: not writable")


def check_writable_file(flag: str, path: str | Path) -> None:
    """``path`` can be written: it is no folder, and its folder is writable.

    Raises:
        UsageError: naming ``flag`` and the path.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder, not a file")
    check_writable_dir(flag, path.parent)


def check_installed(module: str, extra: str, what: str, hint: str = "") -> None:
    """``module`` can be imported, or a one-line error names the ``pip install`` for ``what``.

    Raises:
        UsageError: ``module`` is not installed.
    """
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}: pip install 'lrfinder-plugins[{extra}]'{hint}")

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


FIGURE_FORMATS = frozenset(
    {"png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "pgf"}
)
"""The file types matplotlib's default backends write (the suffix picks the type)."""


def figure_file(path: str | Path) -> Path:
    """The file a figure saved at ``path`` lands in: ``path``, or ``path.png`` when it has no
    suffix (matplotlib adds it).

    Raises:
        ValueError: the suffix is a type matplotlib cannot write (``.txt``).
    """
    path = Path(path)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    if path.suffix[1:].lower() not in FIGURE_FORMATS:
        raise ValueError(
            f"{str(path)!r}: a plot cannot be saved as {path.suffix!r}; name it .png, .pdf or .svg"
        )
    return path


def check_plot_file(flag: str, path: str | Path) -> Path:
    """``path`` can take a plot (:func:`figure_file`) and be written; return where it lands.

    Raises:
        UsageError: naming ``flag`` and the path.
    """
    if Path(path).is_dir():
        raise UsageError(f"{flag} {path}: a folder, not a file")
    try:
        target = figure_file(path)
    except ValueError as error:
        raise UsageError(f"{flag} {error}") from None
    check_writable_file(flag, target)
    return target


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

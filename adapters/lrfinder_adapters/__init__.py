"""Framework adapters for lrfinder-plugins (each imports its framework only when used)."""

from __future__ import annotations


def require(module: str, extra: str) -> None:
    """Raise an ImportError naming the ``pip install`` that provides ``module``."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"this feature needs {module!r}, which is not installed; "
            f"run: pip install 'lrfinder-plugins[{extra}]'"
        )

"""The plugin module named by the entry point: it recognises an ignite ``Engine``.

It imports neither ignite nor torch: a user who never imported ignite cannot pass an Engine, so
``sys.modules`` answers the question for free, and a missing ignite cannot break other plugins.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from lrfinder_plugins import hookimpl


def _is_engine(target: Any) -> bool:
    engine_module = sys.modules.get("ignite.engine")
    return engine_module is not None and isinstance(target, engine_module.Engine)


@hookimpl
def lrfinder_make_step(target: Any, options: Mapping[str, Any]) -> Any:
    """An :class:`~lrfinder_ignite.adapter.EngineStep` for an ignite ``Engine``; else ``None``."""
    if not _is_engine(target):
        return None
    from lrfinder_ignite.adapter import EngineStep

    return EngineStep(target, **options)


@hookimpl
def lrfinder_make_probe(target: Any, options: Mapping[str, Any]) -> Any:
    """An :class:`~lrfinder_ignite.adapter.EngineProbe` for an ignite ``Engine``; else ``None``."""
    if not _is_engine(target):
        return None
    from lrfinder_ignite.adapter import EngineProbe

    return EngineProbe(target, **options)

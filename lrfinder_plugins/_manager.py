"""The plugin manager: built on first use, never at import."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pluggy

from lrfinder_plugins import hookspecs

log = logging.getLogger("lrfinder_plugins")

DISABLE_ENV = "LRFINDER_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = "lrfinder_plugins"

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def _builtin_plugins() -> list[tuple[Any, str]]:
    from lrfinder_plugins import progress, schedules, suggest

    return [
        (schedules, "lrfinder.schedules"),
        (suggest, "lrfinder.suggest"),
        (progress.TqdmProgress(), "lrfinder.progress"),
    ]


def blocked_names() -> set[str]:
    """Plugin names listed in ``LRFINDER_DISABLE_PLUGINS`` (comma separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def build_plugin_manager() -> pluggy.PluginManager:
    """Build a fresh plugin manager: hookspecs, built-in plugins, then entry points.

    Names in ``LRFINDER_DISABLE_PLUGINS`` are blocked, built-ins included. Unknown hooks in a
    plugin raise ``pluggy.PluginValidationError`` (``check_pending``).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked_names():
        pm.set_blocked(name)
    for plugin, name in _builtin_plugins():
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    pm.check_pending()
    return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, building it on first use.

    Example:
        >>> from lrfinder_plugins import get_plugin_manager
        >>> "lrfinder.suggest" in {name for name, _ in get_plugin_manager().list_name_plugin()}
        True
    """
    global _manager
    if _manager is None:
        with _lock:
            if _manager is None:
                _manager = build_plugin_manager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager; the next use builds it again (tests, notebooks)."""
    global _manager
    with _lock:
        _manager = None


def collect_registry(hook_name: str) -> dict[str, Any]:
    """Merge the name → object mappings that every plugin returns from a ``register`` hook.

    Raises:
        ValueError: two plugins register the same name (both are named in the message).
    """
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    merged: dict[str, Any] = {}
    owners: dict[str, str] = {}
    # get_hookimpls() runs last-registered first; walk in registration order for stable owners.
    for impl in hook.get_hookimpls():
        mapping = impl.function()
        for name, obj in (mapping or {}).items():
            if name in merged:
                raise ValueError(
                    f"{hook_name}: name {name!r} is registered by both plugin "
                    f"{owners[name]!r} and plugin {impl.plugin_name!r}; block one of them with "
                    f"{DISABLE_ENV}={impl.plugin_name}"
                )
            merged[name] = obj
            owners[name] = impl.plugin_name
    return merged

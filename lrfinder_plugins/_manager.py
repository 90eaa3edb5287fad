"""The plugin manager: built on first use, never at import."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import pluggy

from lrfinder_plugins import hookspecs

log = logging.getLogger("lrfinder_plugins")

DISABLE_ENV = "LRFINDER_DISABLE_PLUGINS"
ENTRY_POINT_GROUP = "lrfinder_plugins"

_lock = threading.RLock()  # re-entrant: a plugin calling back while loading gets an error
_building = False
_manager: pluggy.PluginManager | None = None


class PluginLoadWarning(UserWarning):
    """An installed plugin could not be loaded (e.g. it imports a framework that is missing).

    The plugin is skipped; every other plugin still works. The message names the plugin, its
    distribution and the error.
    """


class PluginError(RuntimeError):
    """A plugin failed while doing what the user asked for by name (e.g. its suggestion method).

    The message names the plugin; ``plugin`` holds its name and ``__cause__`` the original error.
    """

    def __init__(self, message: str, plugin: str) -> None:
        super().__init__(message)
        self.plugin = plugin


class PluginConflictError(PluginError, ValueError):
    """Two plugins register the same name (the message names both; ``plugin`` is the later)."""


BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("lrfinder.schedules", "lrfinder_plugins.schedules"),
    ("lrfinder.suggest", "lrfinder_plugins.suggest"),
    ("lrfinder.progress", "lrfinder_plugins.progress:TqdmProgress"),
    ("lrfinder.protocols", "lrfinder_plugins._protocols"),
)
"""The plugins every manager starts with: ``(name, "module[:factory]")``.

They are named, not imported here, the way entry points name theirs (and pytest its default
plugins): the manager is a leaf every layer may use, and depends on no module it loads.
"""


def _builtin_plugins() -> list[tuple[Any, str]]:
    plugins = []
    for name, target in BUILTIN_PLUGINS:
        module_name, _, factory = target.partition(":")
        module = importlib.import_module(module_name)
        plugins.append((getattr(module, factory)() if factory else module, name))
    return plugins


def blocked_names() -> set[str]:
    """Plugin names listed in ``LRFINDER_DISABLE_PLUGINS`` (comma separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def build_plugin_manager() -> pluggy.PluginManager:
    """Build a fresh plugin manager: hookspecs, built-in plugins, then entry points.

    Names in ``LRFINDER_DISABLE_PLUGINS`` are blocked, built-ins and entry points alike (a
    blocked entry point is not even imported). Unknown hooks in a built-in plugin raise
    ``pluggy.PluginValidationError`` (``check_pending``); an entry-point plugin that cannot be
    loaded or validated is skipped with a :class:`PluginLoadWarning` (see
    :func:`load_entry_points`).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked_names():
        pm.set_blocked(name)
    for plugin, name in _builtin_plugins():
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    pm.check_pending()
    load_entry_points(pm)
    return pm


def load_entry_points(pm: pluggy.PluginManager, group: str = ENTRY_POINT_GROUP) -> int:
    """Load and register the plugins of an entry-point group one by one; return how many.

    pluggy's ``load_setuptools_entrypoints`` stops at the first plugin whose import fails, so a
    plugin importing a framework that is not installed would break every other plugin. Here such
    a plugin (any error while importing, registering or validating it) is skipped with a
    :class:`PluginLoadWarning` naming it. Blocked and already registered names are skipped
    before the import. Each plugin's distribution is recorded, as pluggy does, for
    ``pm.list_plugin_distinfo()``.
    """
    count = 0
    for entry_point in importlib.metadata.entry_points(group=group):
        name = entry_point.name
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        dist = entry_point.dist
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=name)
        except Exception as error:
            _skip(name, dist, error)
            continue
        try:
            pm.check_pending()  # the plugins before this one passed: a failure is this one's
        except pluggy.PluginValidationError as error:
            pm.unregister(plugin)
            _skip(name, dist, error)
            continue
        if dist is not None:
            # pluggy's own record of entry-point plugins (read by list_plugin_distinfo()).
            pm._plugin_distinfo.append((plugin, dist))
        count += 1
    return count


def _skip(name: str, dist: importlib.metadata.Distribution | None, error: Exception) -> None:
    origin = f" (from {distribution_label(dist)})" if dist is not None else ""
    warnings.warn(
        f"lrfinder plugin {name!r}{origin} could not be loaded and is skipped: "
        f"{type(error).__name__}: {error}; install what it needs, or block it with "
        f"{DISABLE_ENV}={name}",
        PluginLoadWarning,
        stacklevel=2,
    )


def distribution_label(dist: importlib.metadata.Distribution) -> str:
    """``"name version"`` of an installed distribution."""
    return f"{dist.metadata['Name']} {dist.version}"


def plugin_distribution(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """The ``"name version"`` of the distribution that installed ``plugin``, if an entry point did."""
    for candidate, dist in pm.list_plugin_distributions():
        if candidate is plugin:
            return distribution_label(dist)
    return None


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager, building it on first use.

    Example:
        >>> from lrfinder_plugins import get_plugin_manager
        >>> "lrfinder.suggest" in {name for name, _ in get_plugin_manager().list_name_plugin()}
        True
    """
    global _manager, _building
    if _manager is None:
        with _lock:
            if _manager is None:
                if _building:
                    raise RuntimeError(
                        "a plugin called get_plugin_manager() (or a search) while the plugins "
                        "were being loaded; do that inside a hook, not at import time"
                    )
                _building = True
                try:
                    _manager = build_plugin_manager()
                finally:
                    _building = False
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
    return {name: obj for name, (obj, _) in collect_registry_owners(hook_name).items()}


def collect_registry_owners(hook_name: str) -> dict[str, tuple[Any, str]]:
    """As :func:`collect_registry`, with the name of the plugin that registered each object.

    Raises:
        ValueError: two plugins register the same name (both are named in the message).
        PluginError: a plugin's hook raised, returned no mapping, or registered a name that is
            not a non-empty string (the plugin is named).
    """
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    merged: dict[str, tuple[Any, str]] = {}
    owners: dict[str, str] = {}
    # get_hookimpls() runs last-registered first; walk in registration order for stable owners.
    for impl in hook.get_hookimpls():
        try:
            mapping = impl.function()
        except Exception as error:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(error).__name__}: "
                f"{error}; fix it or block it with {DISABLE_ENV}={impl.plugin_name}",
                impl.plugin_name,
            ) from error
        if mapping is not None and not isinstance(mapping, Mapping):
            raise PluginError(
                f"plugin {impl.plugin_name!r}: {hook_name} returned {type(mapping).__name__}, "
                f"not a mapping of names to objects; return a dict (block it with "
                f"{DISABLE_ENV}={impl.plugin_name})",
                impl.plugin_name,
            )
        for name, obj in (mapping or {}).items():
            if not isinstance(name, str) or not name:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {hook_name} registers {name!r}; names must "
                    f"be non-empty strings (block it with {DISABLE_ENV}={impl.plugin_name})",
                    impl.plugin_name,
                )
            if name in merged:
                raise PluginConflictError(
                    f"{hook_name}: name {name!r} is registered by both plugin "
                    f"{owners[name]!r} and plugin {impl.plugin_name!r}; block one of them with "
                    f"{DISABLE_ENV}={impl.plugin_name}",
                    impl.plugin_name,
                )
            merged[name] = (obj, impl.plugin_name)
            owners[name] = impl.plugin_name
    return merged

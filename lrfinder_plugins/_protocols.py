"""Protocol objects are their own adapters: the ``lrfinder.protocols`` built-in plugin.

A target that already is a :class:`~lrfinder_plugins.TrainingStep` or
:class:`~lrfinder_plugins.BatchProbe` runs as it is; asked last, so an adapter plugin that knows
the object better wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrfinder_plugins._seams import BatchProbe, TrainingStep
from lrfinder_plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def lrfinder_make_step(target: Any, options: Mapping[str, Any]) -> TrainingStep | None:
    """A :class:`TrainingStep` passed as the target runs as it is."""
    if not isinstance(target, TrainingStep):
        return None
    _no_options(target, options)
    return target


@hookimpl(trylast=True)
def lrfinder_make_probe(target: Any, options: Mapping[str, Any]) -> BatchProbe | None:
    """A :class:`BatchProbe` passed as the target runs as it is."""
    if not isinstance(target, BatchProbe):
        return None
    _no_options(target, options)
    return target


def _no_options(target: Any, options: Mapping[str, Any]) -> None:
    if options:
        raise TypeError(
            f"a {type(target).__name__} is run as it is and takes no options, got "
            f"{sorted(options)}; configure it when you build it"
        )

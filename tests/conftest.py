"""Shared fixtures: every test starts with a fresh plugin manager."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lrfinder_plugins._manager import reset_plugin_manager


@pytest.fixture(autouse=True)
def _fresh_plugin_manager() -> Iterator[None]:
    reset_plugin_manager()
    yield
    reset_plugin_manager()

"""Shared fixtures: every test starts with a fresh plugin manager."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from lrfinder_plugins._manager import reset_plugin_manager

# No per-example deadline: on a busy 2-core machine one example of a fast property can take
# longer than Hypothesis's default 200 ms, which fails the test (DeadlineExceeded / Flaky)
# though nothing is wrong. Wall-clock limits are the job of the benchmarks, not of tests.
settings.register_profile("lrfinder", deadline=None)
settings.load_profile("lrfinder")


@pytest.fixture(autouse=True)
def _fresh_plugin_manager() -> Iterator[None]:
    reset_plugin_manager()
    yield
    reset_plugin_manager()

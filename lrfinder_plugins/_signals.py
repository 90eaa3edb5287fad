"""Ctrl-C held back while a restore runs, so it is never cut in half."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (a restore must not be cut in half).

    A SIGINT that arrives meanwhile is re-delivered once the block is done, to whatever handled
    SIGINT before: Python's default raises KeyboardInterrupt, a custom handler is called, an
    ignored signal stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            signal.raise_signal(signal.SIGINT)

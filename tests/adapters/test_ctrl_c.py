"""A real Ctrl-C (SIGINT) during a range test, and during the restore itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from lrfinder_plugins import RangeTest, StopReason, run_range_test

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = textwrap.dedent(
    """
    import os, random, signal
    import numpy as np
    import torch
    from lrfinder_plugins import LearningRateFinder

    # A Python started from a background job inherits SIGINT ignored; make Ctrl-C raise, as at
    # an interactive prompt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = [(torch.randn(16, 8), torch.randint(0, 2, (16,))) for _ in range(4)]
    torch.nn.functional.cross_entropy(model(data[0][0]), data[0][1]).backward()
    optimizer.step()

    def fingerprint():
        tensors = list(model.state_dict().values())
        tensors += [v for s in optimizer.state.values() for v in s.values()]
        tensors += [p.grad for p in model.parameters()]
        return ([t.reshape(-1).view(torch.uint8).tolist() for t in tensors],
                optimizer.param_groups[0]["lr"], random.getstate(), np.random.get_state()[1].tolist(),
                torch.get_rng_state().tolist())

    before = fingerprint()
    calls = 0

    def loss_fn(out, target):
        global calls
        calls += 1
        if calls == 6:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered mid-step
        return torch.nn.functional.cross_entropy(out, target)

    finder = LearningRateFinder(model, optimizer, loss_fn, progress=False)
    try:
        finder.find_lr(data, num_iter=50)
    except KeyboardInterrupt:
        print("interrupted", finder.result.stop_reason.value, len(finder.result))
    print("restored" if fingerprint() == before else "CHANGED")
    """
)


def test_sigint_mid_test_restores_everything() -> None:
    """A SIGINT delivered mid-step raises KeyboardInterrupt after a bitwise restore."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    assert "interrupted interrupted 5" in done.stdout, done.stdout + done.stderr
    assert "restored" in done.stdout.splitlines()[-1]


class _SignalDuringRestore:
    """A training step whose restore is hit by Ctrl-C half-way through."""

    def __init__(self) -> None:
        self.restored_parts: list[str] = []
        self.value = 0.0

    def snapshot(self) -> float:
        return self.value

    def restore(self, snapshot: Any) -> None:
        self.restored_parts.append("first half")
        os.kill(os.getpid(), signal.SIGINT)
        self.restored_parts.append("second half")
        self.value = snapshot

    def set_lr(self, lr: float) -> None:
        self.value = lr

    def run(self) -> float | None:
        return 1.0


@pytest.fixture
def interactive_sigint() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as at a prompt (a background job starts with it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("interactive_sigint")
def test_sigint_during_restore_waits_for_the_restore() -> None:
    """Ctrl-C during the restore is held back until the restore is complete, then raised."""
    step = _SignalDuringRestore()
    test = RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=5)
    with pytest.raises(KeyboardInterrupt):
        run_range_test(step, test, progress=False)
    assert step.restored_parts == ["first half", "second half"]
    assert step.value == 0.0
    assert test.stop_reason is StopReason.BUDGET


def test_sigint_during_restore_goes_to_a_custom_handler() -> None:
    """A SIGINT held back during the restore is handed to the user's own handler afterwards."""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        step = _SignalDuringRestore()
        result = run_range_test(
            step, RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=5), progress=False
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]
    assert step.restored_parts == ["first half", "second half"]
    assert result.stop_reason is StopReason.BUDGET

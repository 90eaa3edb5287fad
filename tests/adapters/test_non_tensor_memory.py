"""Non-tensor memory in a trial's profile: what a step takes that is no tensor (a kernel's
scratch, a NumPy buffer, allocator rounding) counts against the same limit as its tensors, so
the CPU meter reads each step's resident high-water mark and carries the part its tensors do
not explain in the profile the guided search extrapolates. Real memory, no mocks."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest
import torch

from lrfinder_adapters import _memory
from lrfinder_adapters.probe import TorchProbe

MIB = 2**20

needs_hwm = pytest.mark.skipif(
    not _memory.ResidentPeak.available(), reason="a resettable VmHWM (/proc/self/clear_refs)"
)


def _probe(step_fn, **options) -> TorchProbe:  # type: ignore[no-untyped-def]
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(size: int) -> None:
        step_fn(size)
        loss = model(torch.randn(size, 4)).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return TorchProbe(model, optimizer, step_fn=step, pin_allocator=False, **options)


@needs_hwm
def test_a_steps_non_tensor_buffer_is_in_the_profile() -> None:
    """A step that fills 1 MiB of scratch per sample, mapped afresh as a kernel's would be
    with glibc pinned: the profile's peak exceeds the tensor peak by about that scratch; a step
    without one shows (almost) nothing beyond its tensors."""

    def numpy_scratch(size: int) -> None:
        with mmap.mmap(-1, size * MIB) as block:  # no torch tensor, resident once touched
            view = np.frombuffer(block, dtype=np.uint8)
            view.fill(1)
            del view

    for size in (8, 32):
        report = _probe(numpy_scratch).try_batch_size(size, 3)
        assert report.fitted and report.profile is not None
        tensor_peak = max(report.peak_bytes.values())  # type: ignore[union-attr]
        extra = max(report.profile) - tensor_peak
        assert 0.9 * size * MIB <= extra <= size * MIB + 8 * MIB, (size, extra / MIB)

    plain = _probe(lambda size: None).try_batch_size(32, 3)
    assert plain.profile is not None
    assert max(plain.profile) - max(plain.peak_bytes.values()) < 2 * MIB  # type: ignore[union-attr]


@needs_hwm
def test_a_budget_counts_tensors_only() -> None:
    """With ``memory_budget`` (a limit in tensor bytes) the profile stays in tensor bytes."""
    report = _probe(lambda size: np.ones(size * MIB), memory_budget=2**30).try_batch_size(16, 3)
    assert report.profile is not None
    assert max(report.profile) == max(report.peak_bytes.values())  # type: ignore[union-attr]
    assert _memory.make_meter(torch.device("cpu"), 2**30).resident is None


def test_the_non_tensor_part_is_never_negative() -> None:
    """Tensors that reuse resident heap pages raise no high-water mark: nothing is subtracted."""
    peak = _memory.ResidentPeak()
    assert peak.non_tensor(10**9) == 0  # never started
    if _memory.ResidentPeak.available():
        peak.start()
        assert peak.non_tensor(10**12) == 0


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="off Linux only")
def test_off_linux_there_is_no_resident_reading() -> None:
    assert not _memory.ResidentPeak.available()

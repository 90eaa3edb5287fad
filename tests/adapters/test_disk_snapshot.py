"""``snapshot="disk"`` streams each tensor to its file and reads it back into place.

The memory a disk snapshot costs is measured in a fresh process from the kernel's own peak
resident size (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the snapshot), so
it is the real figure, not an estimate; the same measure on a memory snapshot shows it sees a
copy of the state when there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lrfinder_adapters import _torch_state
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state

MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from lrfinder_adapters import _torch_state

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1500, 1500), torch.nn.Linear(1500, 1500))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 1500)).sum().backward()
    optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for t in
                      [*model.parameters(), *(p.grad for p in model.parameters())]
                      + [v for s in optimizer.state.values() for v in s.values()])
    before = [p.detach().clone() for p in model.parameters()]
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    base = status("VmRSS")
    saved = _torch_state.capture(model, optimizer, where=sys.argv[1])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    _torch_state.restore(saved, model, optimizer)
    peak = status("VmHWM")
    saved.close()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    print(json.dumps({"state_bytes": state_bytes, "extra_bytes": peak - base}))
    """
)


def peak_extra(where: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, where],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed")
def test_a_disk_snapshot_holds_no_copy_of_the_state_in_memory() -> None:
    """Saving and restoring ~54 MB of state (two layers, grads, AdamW moments) to disk raises
    the process's peak resident memory by under a tenth of it; in memory, by about all of it."""
    disk, memory = peak_extra("disk"), peak_extra("cpu")
    state = disk["state_bytes"]
    assert state > 50e6
    assert disk["extra_bytes"] < 0.1 * state, disk
    assert memory["extra_bytes"] > 0.9 * state, memory  # the measure sees a copy when there is one


def test_the_disk_snapshot_reads_back_into_the_same_tensors() -> None:
    """Restored in place: the same parameter and optimizer-state tensors, same storage, bitwise;
    and it can be restored twice (a batch-size search restores after every trial)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 5), nn.BatchNorm1d(5), nn.Linear(5, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 7)).sum().backward()
    optimizer.step()
    before = capture_state(model, optimizer)
    pointers = [p.data_ptr() for p in model.parameters()]
    moments = [s["exp_avg"].data_ptr() for s in optimizer.state.values()]
    saved = _torch_state.capture(model, optimizer, where="disk")
    try:
        for _ in range(2):
            model(torch.randn(4, 7)).sum().backward()
            optimizer.step()
            _torch_state.restore(saved, model, optimizer)
            assert_state_bitwise_equal(before, capture_state(model, optimizer))
            assert [p.data_ptr() for p in model.parameters()] == pointers
            assert [s["exp_avg"].data_ptr() for s in optimizer.state.values()] == moments
    finally:
        saved.close()


def test_odd_tensors_round_trip_through_the_disk_file(tmp_path: Path) -> None:
    """Every dtype (bool, bfloat16, complex, int), 0-d, empty and non-contiguous tensors."""
    disk = _torch_state.DiskFile(tmp_path / "f.bin")
    try:
        tensors = [
            torch.tensor(True),
            torch.arange(6, dtype=torch.bfloat16).reshape(2, 3),
            torch.randn(3, dtype=torch.complex64),
            torch.arange(10, dtype=torch.int64),
            torch.empty(0, 4),
            torch.randn(4, 6).t(),  # not contiguous
            torch.tensor(3.5, dtype=torch.float64),
        ]
        saved = [disk.write(t) for t in tensors]
        for tensor, record in zip(tensors, saved):
            assert isinstance(record, _torch_state.OnDisk)
            back = _torch_state.load_into(None, record)
            assert back.dtype == tensor.dtype and back.shape == tensor.shape
            assert torch.equal(back, tensor)
        # Read in place only into a tensor of the same shape and dtype; else a new one is made.
        record = saved[3]
        assert isinstance(record, _torch_state.OnDisk)
        same, other = torch.zeros(10, dtype=torch.int64), torch.zeros(10, dtype=torch.int32)
        assert _torch_state.load_into(same, record) is same
        assert _torch_state.load_into(other, record) is not other
    finally:
        disk.close()

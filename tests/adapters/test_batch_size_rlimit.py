"""Real allocation failures: the search runs in subprocesses under ``RLIMIT_AS``.

The model needs more memory as the batch grows (a 16384-wide hidden layer); the address space
is capped a few dozen MiB above what the warmed-up process uses, so large batches fail in the
CPU allocator for real. The search must survive those failures, end on a size that really fits
(run again in the same process and in a fresh one), and land within the margin of the true
limit, which an independent linear scan finds in a process of its own. Every child pins glibc's
allocator as the search does (one arena, a fixed mmap threshold), so the scan measures the
allocator the training runs with after a search. Each child is bounded by a timeout; nothing
here asserts a wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADROOM_MIB = 48
MARGIN = 0.05

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux"),
    pytest.mark.timeout(300),
]

CHILD = r"""
import gc, json, logging, resource, sys
import torch

torch.set_num_threads(1)
torch.backends.mkldnn.enabled = False  # oneDNN keeps scratch memory after a failure
from lrfinder_adapters._memory import pin_allocator
from lrfinder_adapters.batch_size import find_batch_size

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(4, 16384), torch.nn.ReLU(), torch.nn.Linear(16384, 10)
)
optimizer = torch.optim.Adam(model.parameters())
data = torch.utils.data.TensorDataset(torch.randn(4096, 4), torch.randint(0, 10, (4096,)))
loss_fn = torch.nn.functional.cross_entropy


def fits(size):
    # Three plain training steps, written out here: independent of the library.
    ok = True
    try:
        batches = iter(torch.utils.data.DataLoader(data, batch_size=size))
        for _ in range(3):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):
            raise
        ok = False
    optimizer.state.clear()
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    return ok


# Warm up above the limit-to-be: threads, lazy imports and the allocators' one-off reservations
# (which grow with the largest batch run so far) are made before the cap, so they do not eat
# into the headroom differently in the search and in the scan.
fits(1024)
vm_size = next(
    int(line.split()[1]) * 1024
    for line in open("/proc/self/status")
    if line.startswith("VmSize:")
)
headroom = int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (vm_size + headroom, resource.RLIM_INFINITY))

if sys.argv[1] in ("guided", "binsearch", "power"):
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("lrfinder_plugins").addHandler(handler)
    logging.getLogger("lrfinder_plugins").setLevel(logging.INFO)
    result = find_batch_size(
        model, optimizer, loss_fn, dataset=data, mode=sys.argv[1], margin=float(sys.argv[3]),
        progress=False,
    )
    found = result.batch_size
    report = {
        "found": found,
        "trials": [[t.size, t.fitted, t.error] for t in result.trials],
        "oom_trials": result.oom_trials,
        "stop": str(result.stop_reason),
        "fits_again": fits(found),
        "pinned": any("pinned glibc malloc" in message for message in records),
    }
elif sys.argv[1] == "refit":  # the answer, run in a fresh process pinned as the search pins
    pin_allocator(None)
    report = {"fits": fits(int(sys.argv[3]))}
else:  # an independent linear scan for the true limit: stride 16, then stride 1
    pin_allocator(None)
    size = 16
    while fits(size):
        size += 16
    limit = size - 16
    while fits(limit + 1):
        limit += 1
    report = {"limit": limit}
print(json.dumps(report))
"""

PINNING = r"""
import json, resource, sys
import torch
from lrfinder_adapters import _memory


def vm_size():
    return _memory._read_kib("/proc/self/status", "VmSize")


def churn(mib):  # allocate, touch and free a tensor three times
    for _ in range(3):
        block = torch.empty(mib * 2**20, dtype=torch.uint8)
        block.fill_(1)
        del block


soft = vm_size() + 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))
churn(4)  # before any pinning: glibc's moving threshold leaves 4 MiB free on the heap
made = _memory.pin_allocator({"auto": None, "off": False}[sys.argv[1]])
counted = _memory.cpu_headroom() - (soft - vm_size())
before, headroom = vm_size(), _memory.cpu_headroom()
churn(16)  # left alone, the second 16 MiB tensor lands on the heap and stays there when freed
print(json.dumps({
    "made": made,
    "heap_counted": counted,
    "grew": vm_size() - before,
    "headroom_change": _memory.cpu_headroom() - headroom,
    "held_free": _memory.malloc_free_bytes(),
}))
"""


TRIM = r"""
import json, resource, sys
import torch
from lrfinder_adapters import _memory


def vm_size():
    return _memory._read_kib("/proc/self/status", "VmSize")


def small_objects(mib):  # 64 KiB objects: below any mmap threshold, so on the heap
    blocks = [bytearray(64 * 2**10) for _ in range(mib * 16)]
    del blocks


unlimited = _memory.trim_heap()
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + 512 * 2**20, resource.RLIM_INFINITY))
block = torch.empty(16 * 2**20, dtype=torch.uint8)  # freed, it moves glibc's thresholds up
block.fill_(1)
del block
start = vm_size()
small_objects(12)  # left free at the heap's top: under the moved trim threshold
kept = vm_size() - start
made = _memory.pin_allocator()
after_pin = vm_size() - start
small_objects(12)  # pinned: the trim threshold is back at 128 KiB
print(json.dumps({
    "unlimited": unlimited,
    "made": made,
    "kept": kept,
    "after_pin": after_pin,
    "after_churn": vm_size() - start,
}))
"""


def test_pinning_gives_the_free_top_of_the_heap_back_and_keeps_it_back() -> None:
    """Left alone, glibc's trim threshold moves up with its mmap threshold and 12 MiB freed at
    the top of the heap stay in the address space; pinning trims them and fixes the trim
    threshold at 128 KiB, so the same churn afterwards leaves nothing behind, and the capacity
    read between trials does not depend on where glibc last trimmed. Without a limit the
    trim does not run."""
    report = report_of(start_child(script=TRIM))
    assert report["unlimited"] is False, report
    assert report["made"].get("M_TRIM_THRESHOLD") == 128 * 2**10, report
    assert report["kept"] >= 10 * 2**20, report
    assert report["after_pin"] < 2**20 and report["after_churn"] < 2**20, report


def start_child(*args: str, script: str = CHILD) -> subprocess.Popen[str]:
    """Start a child script on one thread, with glibc's allocator left to the library."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "adapters")]),
        "OMP_NUM_THREADS": "1",
    }
    for tunable in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"):
        env.pop(tunable, None)
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def report_of(child: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait (at most two minutes) for a child; fail with its stderr if it died."""
    try:
        out, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    assert child.returncode == 0, f"the child died (exit {child.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


NOISE = 0.05
"""How far a fresh process's limit wanders here: the same scan gave 241 to 267 in fresh
processes of one machine (its first failure ends it, so it errs low), and a size near the limit
fitted in 5 of 6 fresh processes. Comparisons with the limit allow this much."""


@pytest.fixture(scope="module")
def true_limit() -> int:
    """The largest size that fits: the best of three independent linear scans, each in a
    process of its own (run side by side)."""
    scans = [start_child("scan", str(HEADROOM_MIB)) for _ in range(3)]
    return max(int(report_of(scan)["limit"]) for scan in scans)


def test_guided_predicts_the_limit_under_a_real_address_space_limit(true_limit: int) -> None:
    """Guided: at most 5 trials with at most 1 out of memory, at least 85% of the limit less the
    margin (see below), not above the limit (within NOISE); the allocator pinning is logged, and the answer fits when run
    again, in the same process and in a fresh one.

    A fresh process's own room varies by a few MiB of this 48 MiB headroom (measured: the same
    size near the limit failed in 1 of 6 fresh processes), so the fresh re-run gets up to three
    processes; the answer must fit in one. The in-process re-run and ``found <= true_limit``
    hold every time."""
    report = report_of(start_child("guided", str(HEADROOM_MIB), str(MARGIN)))
    assert len(report["trials"]) <= 5 and report["oom_trials"] <= 1, report
    # 0.85, not the 0.95: the limit and the search's answer each wander between fresh
    # processes here (measured: answers 235-249, limits 241-267; see NOISE), so a 0.95 bound
    # fails on noise alone; benchmarks/batch_size.py measures the figure itself.
    low, high = 0.85 * (1 - MARGIN) * true_limit, (1 + NOISE) * true_limit
    assert low <= report["found"] <= high, (report, true_limit)
    assert report["fits_again"] and report["pinned"], report
    refits = []
    for _ in range(3):
        refits.append(report_of(start_child("refit", str(HEADROOM_MIB), str(report["found"]))))
        if refits[-1]["fits"]:
            break
    assert refits[-1]["fits"], (report, refits, true_limit)


@pytest.mark.parametrize("mode", ["binsearch", "power"])
def test_real_allocation_failures_end_trials_and_the_answer_ran_after_the_last(
    mode: str, true_limit: int
) -> None:
    """binsearch and power run out of memory for real (DefaultCPUAllocator), the process lives
    on, and the answer is a size that fitted after the last failure, and fits again."""
    report = report_of(start_child(mode, str(HEADROOM_MIB), str(MARGIN)))
    failures = [i for i, (_, fitted, _) in enumerate(report["trials"]) if not fitted]
    assert failures, report
    assert all("DefaultCPUAllocator" in report["trials"][i][2] for i in failures), report
    after = [size for size, fitted, _ in report["trials"][failures[-1] + 1 :] if fitted]
    assert report["found"] in after and report["found"] <= (1 + NOISE) * true_limit, (
        report,
        true_limit,
    )
    assert report["fits_again"], report


def test_pinning_makes_freed_tensors_leave_the_address_space() -> None:
    """Pinned, a freed 16 MiB tensor gives its address space back, and the heap's free memory
    (for allocations below 128 KiB only) is not counted as room; left alone, glibc keeps the tensor on
    the heap, and the capacity reading counts it as room anyway (mallinfo2)."""
    pinned = report_of(start_child("auto", script=PINNING))
    alone = report_of(start_child("off", script=PINNING))
    assert pinned["made"] == {
        "M_ARENA_MAX": 1,
        "M_MMAP_THRESHOLD": 128 * 2**10,
        "M_TRIM_THRESHOLD": 128 * 2**10,
    }
    assert alone["made"] == {}
    # Left alone, glibc keeps at least part of the churned 16 MiB on the heap (seen: 12-16 MiB,
    # depending on where its moving threshold stood); pinned, less than 1 MiB stays.
    assert pinned["grew"] < 2**20 and alone["grew"] >= 8 * 2**20, (pinned, alone)
    # Pinned, the heap's free memory is not room for such tensors and is not counted (what the
    # moved trim threshold kept free at its top was given back when pinning).
    assert pinned["heap_counted"] == 0, pinned
    assert alone["held_free"] >= 8 * 2**20 and abs(alone["headroom_change"]) < 2**20, alone


ACCELERATE_CHILD = r"""
import gc, json, logging, resource, sys
import torch

torch.set_num_threads(1)
torch.backends.mkldnn.enabled = False
from accelerate import Accelerator
from lrfinder_adapters import _memory
from lrfinder_adapters.accelerate import find_batch_size, find_executable_batch_size

torch.manual_seed(0)
accelerator = Accelerator(cpu=True)
model = torch.nn.Sequential(
    torch.nn.Linear(4, 16384), torch.nn.ReLU(), torch.nn.Linear(16384, 10)
)
model, optimizer = accelerator.prepare(model, torch.optim.Adam(model.parameters()))
data = torch.utils.data.TensorDataset(torch.randn(4096, 4), torch.randint(0, 10, (4096,)))
loss_fn = torch.nn.functional.cross_entropy


def steps(size):  # three training steps through the accelerator
    batches = iter(torch.utils.data.DataLoader(data, batch_size=size))
    try:
        for _ in range(3):
            x, y = next(batches)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss_fn(model(x), y))
            optimizer.step()
    finally:
        optimizer.optimizer.state.clear()
        optimizer.zero_grad(set_to_none=True)


def fits(size):
    try:
        steps(size)
        ok = True
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):
            raise
        ok = False
    gc.collect()
    return ok


fits(1024)  # warm up before the cap, as the other children do
vm_size = _memory._read_kib("/proc/self/status", "VmSize")
resource.setrlimit(resource.RLIMIT_AS, (vm_size + int(sys.argv[2]) * 2**20, resource.RLIM_INFINITY))
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append(record.getMessage())
logging.getLogger("lrfinder_plugins").addHandler(handler)
logging.getLogger("lrfinder_plugins").setLevel(logging.INFO)
pin = {"auto": None, "off": False}[sys.argv[4]]
if sys.argv[1] == "search":
    result = find_batch_size(
        accelerator, model, optimizer, loss_fn, dataset=data, margin=float(sys.argv[3]),
        progress=False, pin_allocator=pin,
    )
    found, trials = result.batch_size, [[t.size, t.fitted] for t in result.trials]
else:  # accelerate's decorator, guided: each call is one trial of three steps
    # From 16: a call is measured by phase (a call loads its own batches, so its operations do
    # not line up between sizes), and below 16 the optimizer step's flat peak hides how the
    # forward-backward peak grows.
    trials = []

    @find_executable_batch_size(
        starting_batch_size=16, mode="guided", accelerator=accelerator,
        margin=float(sys.argv[3]), pin_allocator=pin,
    )
    def train(batch_size):
        trials.append([batch_size, False])
        steps(batch_size)
        trials[-1][1] = True
        return batch_size

    found = train()
print(json.dumps({
    "found": found,
    "trials": trials,
    "oom_trials": sum(not fitted for _, fitted in trials),
    "fits_again": fits(found),
    "pinned": any("pinned glibc malloc" in message for message in records),
    "made": dict(_memory._PINNED),
}))
"""


@pytest.mark.parametrize("entry", ["search", "decorator"])
def test_accelerate_searches_pin_and_predict_under_a_real_address_space_limit(
    entry: str, true_limit: int
) -> None:
    """Accelerate's ``find_batch_size`` and ``find_executable_batch_size`` (guided) run their
    trials through the same runner as the raw-torch search: glibc is pinned before the first
    trial and it is logged; the meter's profile lets the guided search predict (at most 5
    trials, at most 1 out of memory) an answer near the true limit (the tolerances of the
    raw-torch test above) that fits again; ``pin_allocator=False`` leaves the allocator alone."""
    pinned = report_of(
        start_child(entry, str(HEADROOM_MIB), str(MARGIN), "auto", script=ACCELERATE_CHILD)
    )
    assert pinned["pinned"], pinned
    assert pinned["made"] == {
        "M_ARENA_MAX": 1,
        "M_MMAP_THRESHOLD": 128 * 2**10,
        "M_TRIM_THRESHOLD": 128 * 2**10,
    }, pinned
    assert len(pinned["trials"]) <= 5 and pinned["oom_trials"] <= 1, pinned
    low, high = 0.85 * (1 - MARGIN) * true_limit, (1 + NOISE) * true_limit
    assert low <= pinned["found"] <= high, (pinned, true_limit)
    assert pinned["fits_again"], pinned
    alone = report_of(
        start_child(entry, str(HEADROOM_MIB), str(MARGIN), "off", script=ACCELERATE_CHILD)
    )
    # Left alone, what fits depends on the allocator's history (a size that fitted after a
    # failure may fail again: seen once, 160 of a limit near 260), which is why it is pinned.
    assert not alone["pinned"] and alone["made"] == {}, alone
    assert alone["found"] and alone["trials"], alone

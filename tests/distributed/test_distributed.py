"""Two real processes (torchrun, gloo, CPU): the same search on every rank, faults on one rank.

Three launches in all, each bounded by a timeout so a hang fails fast: one runs every scenario
that leaves the process group usable, one the exception that strands the other rank inside DDP's
gradient all-reduce, one Ctrl-C on the launcher.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

WORKER = Path(__file__).with_name("worker.py")
LAUNCH_TIMEOUT = 600  # seconds: generous for a busy 2-core machine; a hang still fails
HEALTHY = [
    "lr",
    "overlap",
    "hand_synced",
    "fsdp",
    "nan",
    "exhausted",
    "error_after_backward",
    "batch",
    "batch_error",
    # After a trial that raised on one rank: the next search opens its group on every rank alike
    # (the posting rank alone used to drop it, and this search hung in new_group).
    "noise_scale",
    "exit_cleanup",
]


def torchrun(
    out: Path, *scenarios: str, worker: Path = WORKER, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``torchrun --standalone --nproc_per_node 2 worker.py out scenarios...``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    # seed_everything() in an earlier test leaves these behind; Lightning's DDP setup would then
    # re-seed every RNG inside fit(), before any search starts.
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        env.pop(name, None)
    with (out / "launcher.log").open("wb") as log:  # the launcher keeps its own descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "2",
                str(worker),
                str(out),
                *scenarios,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a hung launch is killed with all its workers
        )


def finish(process: subprocess.Popen[bytes], out: Path) -> None:
    """Wait for a launch; kill its whole session and fail if it outlives the timeout."""
    try:
        rc = process.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the launch hung; log:\n{(out / 'launcher.log').read_text()[-4000:]}")
    written = sorted(p.name for p in out.glob("*.json"))  # which scenarios finished, per rank
    assert rc == 0, f"results written: {written}\n" + (out / "launcher.log").read_text()[-4000:]


def records(out: Path, scenario: str) -> list[dict[str, Any]]:
    """Both ranks' records of one scenario (failing if a rank crashed in it)."""
    found = [json.loads((out / f"{scenario}.{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(found):
        assert "crashed" not in record, f"rank {rank}:\n{record['crashed']}"
    return found


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One launch running every scenario that leaves the process group usable."""
    out = tmp_path_factory.mktemp("healthy")
    finish(torchrun(out, *HEALTHY), out)
    yield out


def test_range_test_is_equal_on_every_rank(healthy: Path) -> None:
    """Both ranks record the same points and stop reason, and state the world and global batch."""
    rank0, rank1 = records(healthy, "lr")
    assert rank0["lrs"] == rank1["lrs"] and rank0["losses"] == rank1["losses"]
    assert rank0["stop_reason"] == rank1["stop_reason"] == "budget"
    assert rank0["world_size"] == 2 and rank0["global_batch"] == 16


def test_range_test_equals_one_process_on_the_global_batch(healthy: Path) -> None:
    """DDP over 2 ranks records what one process records on the whole global batch."""
    rank0, _ = records(healthy, "lr")
    single = rank0["single"]
    assert single["world_size"] == 1 and single["global_batch"] == 16
    assert single["lrs"] == rank0["lrs"]
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(rank0["losses"], single["losses"]))


def test_hand_synced_gradients_over_a_process_group_match_ddp(healthy: Path) -> None:
    """all_reduce_grads=True on a model without DDP, over process_group=: DDP's points."""
    ddp_run, _ = records(healthy, "lr")
    rank0, rank1 = records(healthy, "hand_synced")
    assert rank0 == rank1 and rank0["world_size"] == 2
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(rank0["losses"], ddp_run["losses"]))


def test_deciding_one_step_late_changes_no_result_and_no_fault(healthy: Path) -> None:
    """overlap=True against overlap=False under DDP: the same points, stop reasons and errors on
    both ranks (a test that diverges, NaN on one rank, one rank's data ending, an error after backward), the
    state restored in each (checked in the worker), at most one step more run, and the process
    group still usable after the error (the later scenarios of this launch run on it)."""
    rank0, rank1 = records(healthy, "overlap")
    for case in ("diverges", "nan", "exhausted", "error"):
        for record in (rank0, rank1):
            end, late = dict(record[f"{case}/end"]), dict(record[f"{case}/late"])
            ran_end, ran_late = end.pop("ran"), late.pop("ran")
            assert late == end, case
            assert ran_end <= ran_late <= ran_end + 1, case
        assert {
            k: v for k, v in rank0[f"{case}/late"].items() if k not in ("ran", "message", "type")
        } == {k: v for k, v in rank1[f"{case}/late"].items() if k not in ("ran", "message", "type")}
    diverged = rank0["diverges/late"]
    assert diverged["stop_reason"] == "diverged" and len(diverged["losses"]) < 12
    assert (
        rank0["nan/late"]["stop_reason"] == "non_finite" and len(rank0["nan/late"]["losses"]) == 4
    )
    assert rank0["exhausted/late"]["stop_reason"] == "data_exhausted"
    assert len(rank0["exhausted/late"]["losses"]) == 4
    assert rank1["error/late"] == {
        "type": "ValueError",
        "message": "bad step on rank 1",
        "ran": rank1["error/late"]["ran"],
    }
    assert rank0["error/late"]["type"] == "RankFailedError"
    assert "ValueError: bad step on rank 1" in rank0["error/late"]["message"]


def test_an_fsdp2_model_is_restored_shard_by_shard(healthy: Path) -> None:
    """fully_shard: equal results on both ranks; each restored its own DTensor shards bitwise."""
    rank0, rank1 = records(healthy, "fsdp")
    assert rank0["losses"] == rank1["losses"] and rank0["stop_reason"] == "budget"
    assert rank0["parameter_types"] == ["DTensor"]


def test_only_rank_0_writes_the_plot(healthy: Path) -> None:
    """finder.plot(output_path) on every rank leaves one file, written by rank 0."""
    assert (healthy / "plot.png").stat().st_size > 0
    assert json.loads((healthy / "result.json").read_text())["options"]["world_size"] == 2


def test_nan_on_one_rank_stops_every_rank_at_that_step(healthy: Path) -> None:
    """Rank 1's NaN at the 4th step: both ranks stop there as non_finite."""
    rank0, rank1 = records(healthy, "nan")
    assert rank0 == rank1
    assert rank0["stop_reason"] == "non_finite" and len(rank0["losses"]) == 4
    assert rank0["losses"][-1] == "nan"


def test_data_running_out_on_one_rank_stops_every_rank(healthy: Path) -> None:
    """Rank 1 has 4 batches, rank 0 ten: both stop after 4 points as data_exhausted."""
    rank0, rank1 = records(healthy, "exhausted")
    assert rank0 == rank1
    assert rank0["stop_reason"] == "data_exhausted" and len(rank0["losses"]) == 4


def test_an_exception_on_one_rank_is_raised_on_every_rank(healthy: Path) -> None:
    """The failing rank raises its own error, the other a RankFailedError naming it."""
    rank0, rank1 = records(healthy, "error_after_backward")
    notes = rank1.pop("notes")
    assert rank1 == {"type": "ValueError", "message": "bad step on rank 1", "rank": None}
    # The note gives the global batch and says so (each rank's is half of it).
    assert any("at step 3 of" in n and "samples over 2 ranks" in n for n in notes), notes
    assert rank0["type"] == "RankFailedError" and rank0["rank"] == 1
    assert "ValueError: bad step on rank 1" in rank0["message"]


def test_out_of_memory_on_one_rank_counts_on_every_rank(healthy: Path) -> None:
    """Rank 1's smaller memory decides (its capacity is the smallest, its failures count
    everywhere): equal trials everywhere, the answer fits on rank 1."""
    rank0, rank1 = records(healthy, "batch")
    assert rank0 == rank1
    assert rank0["oom_trials"] <= 1 and rank0["world_size"] == 2
    assert rank0["global_batch"] == 2 * rank0["batch_size"]
    assert rank0["batch_size"] == rank0["single_batch_size"]  # one process with rank 1's budget


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_ranks_with_different_real_memory_limits_end_on_one_size_that_fits_everywhere(
    tmp_path: Path,
) -> None:
    """Rank 1 under RLIMIT_AS fails in the CPU allocator for real; rank 0 has no limit. Both end
    on the same size, and that size runs again on rank 1 under its cap."""
    # The search pins glibc's allocator on rank 1 itself (finite RLIMIT_AS): no MALLOC_* here.
    finish(torchrun(tmp_path, "batch_rlimit"), tmp_path)
    rank0, rank1 = records(tmp_path, "batch_rlimit")
    assert rank0["batch_size"] == rank1["batch_size"] and rank0["trials"] == rank1["trials"]
    assert rank1["oom_trials"] <= 1 and rank1["capped"]  # predicted from rank 1's capacity
    assert rank1["answer_runs_here"] and rank0["answer_runs_here"]


def test_a_trial_error_on_one_rank_is_raised_on_every_rank(healthy: Path) -> None:
    """A non-OOM error in one rank's trial: it raises its own, the other names it."""
    rank0, rank1 = records(healthy, "batch_error")
    assert rank1["type"] == "ValueError" and rank0["type"] == "RankFailedError"
    assert rank0["rank"] == 1 and "corrupt shard on rank 1" in rank0["message"]


def test_ddp_noise_scale_equals_accumulation_on_one_process(healthy: Path) -> None:
    """B_simple from the ranks' gradients (DDP communication hook) equals, step by step, the
    estimate from accumulating the same micro-batches on one process; every rank agrees."""
    rank0, rank1 = records(healthy, "noise_scale")
    assert len(rank0["ddp"]) == 39 and rank0["ddp"] == rank1["ddp"]
    for ddp_step, single_step in zip(rank0["ddp"], rank0["single"]):
        assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(ddp_step, single_step))


def test_ddp_noise_scale_hook_is_registered_once_and_a_foreign_hook_refused(healthy: Path) -> None:
    """A second monitor reuses the model's hook; a model with its own hook is refused, saying
    why; find_batch_size(noise_scale=True) measures over both ranks, the same on each."""
    rank0, rank1 = records(healthy, "noise_scale")
    assert "already has a communication hook" in rank0["refused"]
    assert rank0["found"] == rank1["found"] and rank0["found"]["steps"] >= 3
    assert rank0["found_b_big"] == 2 * rank0["found"]["b_small"]
    assert rank0["recommended"] == rank1["recommended"] is not None


def test_the_kept_search_group_is_destroyed_at_exit(healthy: Path) -> None:
    """The exit handler destroys the gloo group searches keep (one left alive at teardown can
    abort the process: "terminate called without an active exception"); a later search opens
    a fresh one on every rank."""
    rank0, rank1 = records(healthy, "exit_cleanup")
    assert rank0 == rank1
    # Every group kept is destroyed: this search's and, in the shared launch, the one kept for
    # scenario hand_synced's own training group (alive in c10d, so its entry stays).
    assert rank0["registered"] and not any(rank0["registered"]) and rank0["left"] == 0
    assert rank0["again"] == 10 and rank0["reopened"] == 1


def test_an_exception_that_strands_the_other_rank_ends_within_seconds(tmp_path: Path) -> None:
    """Rank 1 fails in forward while rank 0 waits in DDP's all-reduce: both raise, restored."""
    finish(torchrun(tmp_path, "error_in_forward"), tmp_path)
    rank0, rank1 = records(tmp_path, "error_in_forward")
    assert rank1["type"] == "KeyError" and rank0["type"] == "RankFailedError"
    assert rank0["rank"] == 1 and "missing column on rank 1" in rank0["message"]
    assert rank0["seconds"] < 120  # fault_timeout=5: not the process group's 30 minutes


def test_a_stalled_rank_is_named_as_waited_for_not_the_rank_that_timed_out(
    tmp_path: Path,
) -> None:
    """Rank 1 stalls past fault_timeout while rank 0 waits in DDP's all-reduce: rank 0's
    timeout says it waited for the others, and rank 1 learns that, not that rank 0 broke."""
    finish(torchrun(tmp_path, "stall"), tmp_path)
    rank0, rank1 = records(tmp_path, "stall")
    assert rank0["type"] is not None and rank1["type"] is not None
    waited = "timed out after fault_timeout=2 s waiting for the other ranks"
    assert any(waited in note for note in rank0["notes"]), rank0
    assert rank1["type"] == "RankFailedError" and waited in rank1["message"], rank1


@pytest.mark.parametrize("scenario", ["slow", "slow_one", "batch_slow"])
def test_ctrl_c_on_the_launcher_leaves_no_process_and_restores(
    tmp_path: Path, scenario: str
) -> None:
    """SIGINT to torchrun: both workers restore their state, exit, and none is left behind.

    ``slow_one``: at the Ctrl-C rank 0 waits in DDP's all-reduce for the slow rank 1, which
    never joins it. Rank 1 leaves at once, joining no collective, so rank 0's fails and it
    restores too; waiting for fault_timeout (120 s here) the launcher would kill it first.
    ``batch_slow``: Ctrl-C in a batch-size search with rank 1 slow: its trials run the inner
    module (no DDP collective), so rank 0 waits in the trial's all-gather, which the
    interrupted rank 1 joins with its failure: both restore and raise at once."""
    process = torchrun(tmp_path, scenario)
    started = [tmp_path / f"started.{rank}" for rank in (0, 1)]
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while not all(p.exists() for p in started):
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail((tmp_path / "launcher.log").read_text()[-4000:])
        time.sleep(0.2)
    workers = [int(p.read_text()) for p in started]
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the launcher did not exit after Ctrl-C")
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "orphan workers"
    # Each rank restored its state bitwise before raising: its own KeyboardInterrupt, or (when
    # the other rank's interrupt reached the reduce first) the RankFailedError naming it.
    raised = [(tmp_path / f"restored.{r}").read_text() for r in (0, 1)]
    assert set(raised) <= {"KeyboardInterrupt", "RankFailedError"} and "KeyboardInterrupt" in raised


def test_the_torchrun_example_runs_on_two_processes(tmp_path: Path) -> None:
    """examples/ddp/tune_ddp.py under torchrun: rank 0 reports both answers and writes the plot."""
    example = Path(__file__).parents[2] / "examples" / "ddp" / "tune_ddp.py"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(example),
            "--out",
            str(tmp_path),
            "--global-batch",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("✓ Optimal batch size found:") == 1  # rank 0 only
    assert "× 2 ranks = 256 per step" in done.stdout
    assert "✓ Suggested learning rate:" in done.stdout
    assert (tmp_path / "lr_finder_plot.png").stat().st_size > 0


# -- Accelerate: Accelerator(cpu=True) under torchrun ----------------------------------------------
@pytest.fixture(scope="module")
def accelerate_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One launch of every Accelerate scenario."""
    pytest.importorskip("accelerate")
    out = tmp_path_factory.mktemp("accelerate")
    worker = WORKER.with_name("accelerate_worker.py")
    finish(torchrun(out, "lr", "nan", "batch", "noise", "decorator", worker=worker), out)
    yield out


def test_accelerate_range_test_is_equal_on_both_processes(accelerate_run: Path) -> None:
    """find_lr(accelerator, ...) on 2 processes: the same points, world size 2."""
    rank0, rank1 = records(accelerate_run, "lr")
    assert rank0 == rank1 and rank0["world_size"] == 2 and rank0["stop_reason"] == "budget"


def test_accelerate_nan_on_one_process_stops_both(accelerate_run: Path) -> None:
    """Process 1's NaN at its 3rd step stops both there."""
    rank0, rank1 = records(accelerate_run, "nan")
    assert rank0 == rank1 and rank0["stop_reason"] == "non_finite" and len(rank0["losses"]) == 3


def test_accelerate_processes_with_different_memory_end_on_one_size(accelerate_run: Path) -> None:
    """Budgets of 4 and 2 MiB: the same trials and answer on both, within process 1's budget
    (the guided search predicts it: at most one trial runs out of memory)."""
    rank0, rank1 = records(accelerate_run, "batch")
    assert rank0 == rank1 and rank0["oom_trials"] <= 1 and rank0["world_size"] == 2
    assert rank0["answer_peak"] is not None and rank0["answer_peak"] <= 2 * 2**20, rank0


def test_accelerate_noise_scale_is_the_same_on_both_processes(accelerate_run: Path) -> None:
    """noise_scale=True under 2 processes: one estimate, equal on both, from the processes' own
    gradients (small) and DDP's reduced one (big: twice the samples); state restored."""
    rank0, rank1 = records(accelerate_run, "noise")
    assert rank0 == rank1 and rank0["world_size"] == 2, (rank0, rank1)
    noise = rank0["noise"]
    assert 3 <= noise["steps"] <= 12 and noise["b_big"] == 2 * noise["b_small"]
    assert isinstance(noise["b_simple"], float) and noise["b_simple"] > 0
    assert rank0["recommended"] is not None


def test_accelerate_decorator_agrees_across_processes(accelerate_run: Path) -> None:
    """Limits of 90 and 60 calls: both processes try the same sizes and return 60."""
    rank0, rank1 = records(accelerate_run, "decorator")
    assert rank0 == rank1 and rank0["answer"] == 60


# -- Lightning: Trainer(strategy="ddp", devices=2) under torchrun -----------------------------------
@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One launch of the Lightning DDP scenarios."""
    pytest.importorskip("lightning")
    out = tmp_path_factory.mktemp("lightning")
    finish(
        torchrun(
            out,
            "lr",
            "nan",
            "batch",
            "noise",
            "batch_noise",
            worker=WORKER.with_name("lightning_worker.py"),
        ),
        out,
    )
    yield out


def test_lightning_lr_find_under_ddp_is_equal_on_both_ranks(lightning_run: Path) -> None:
    """Tuner.lr_find with strategy='ddp': the same points and suggestion on both ranks."""
    rank0, rank1 = records(lightning_run, "lr")
    assert rank0 == rank1 and rank0["world_size"] == 2 and len(rank0["losses"]) == 20
    assert rank0["global_step"] == 0  # the trainer's counters are back


def test_lightning_nan_on_one_rank_stops_both(lightning_run: Path) -> None:
    """Rank 1's NaN at its 5th step stops both ranks there (Lightning uses rank 0's loss)."""
    rank0, rank1 = records(lightning_run, "nan")
    assert rank0 == rank1 and rank0["stop_reason"] == "non_finite" and len(rank0["losses"]) == 5


def test_lightning_scale_batch_size_under_ddp_agrees_on_both_ranks(lightning_run: Path) -> None:
    """Tuner.scale_batch_size with strategy='ddp', rank 1 with a smaller memory_budget: both
    ranks end on the same size, one that fits rank 1's budget (Lightning refuses DDP)."""
    rank0, rank1 = records(lightning_run, "batch")
    assert rank0["found"] == rank1["found"] == rank0["batch_size"] == rank1["batch_size"]
    assert rank0["type"] == "int" and rank0["global_step"] == 0
    # Rank 1's 20 kB of live tensors hold about 160 samples of this model (rank 0's 100 kB
    # far more): rank 1's limit decided for both.
    assert 32 <= rank0["found"] < 200


def test_lightning_batch_size_finder_measures_the_noise_scale_under_ddp(
    lightning_run: Path,
) -> None:
    """BatchSizeFinder(noise_scale=True) with strategy='ddp': one size and one estimate on both
    ranks, each rank's gradient the small batch and DDP's reduced one the big (twice) batch."""
    rank0, rank1 = records(lightning_run, "batch_noise")
    assert rank0 == rank1, (rank0, rank1)
    noise = rank0["noise"]
    assert 3 <= noise["steps"] <= 8 and noise["b_small"] == rank0["batch_size"]
    assert noise["b_big"] == 2 * noise["b_small"] and rank0["accumulate"] == 1
    assert isinstance(noise["b_simple"], float) and noise["b_simple"] > 0
    assert rank0["recommended"] is not None


def test_lightning_noise_scale_callback_under_ddp_is_equal_on_both_ranks(
    lightning_run: Path,
) -> None:
    """NoiseScaleCallback with strategy='ddp' and no accumulation: the ranks are the small
    batches (32 each), their all-reduced gradient the big one (64); every estimate is the same
    on both ranks, finite, positive and inside its own interval."""
    rank0, rank1 = records(lightning_run, "noise")
    assert rank0 == rank1 and rank0["global_step"] == 12
    history = rank0["history"]
    assert [h["step"] for h in history] == list(range(2, 13))  # from the second step on
    last = history[-1]
    assert (last["b_small"], last["b_big"], last["steps"]) == (32, 64, 12)
    assert all(math.isfinite(h["b_simple"]) and h["b_simple"] > 0 for h in history)
    assert last["low"] <= last["b_simple"] <= last["high"]
    assert last["b_simple"] < 2048 * 100  # sane: within a few orders of the data set's size


def test_lightning_error_on_one_rank_ends_the_sweep_on_both(tmp_path: Path) -> None:
    """Rank 1's training_step raises while rank 0 waits in DDP: both raise, rank 0 names rank 1."""
    pytest.importorskip("lightning")
    finish(torchrun(tmp_path, "error", worker=WORKER.with_name("lightning_worker.py")), tmp_path)
    rank0, rank1 = records(tmp_path, "error")
    assert rank1["type"] == "KeyError" and rank0["type"] == "RankFailedError"
    assert rank0["rank"] == 1 and "missing column on rank 1" in rank0["message"]
    assert rank0["seconds"] < 120  # fault_timeout=5: not the process group's 30 minutes

"""Deciding each step one step late (``overlap``): the same result as deciding at its end.

The pull driver can run step k+1 while step k's reduce (and a device's loss read) is in flight;
the decision on step k comes after. These tests drive the same fake steps both ways and compare
everything a user sees: the points, the stop reason, the error raised, the restore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from lrfinder_plugins import RangeTest, StepOutcome, run_range_test
from lrfinder_plugins.spi import RankError, start_step
from lrfinder_plugins.testing import FakeStep


def rising(lr: float) -> float:
    """A loss that falls, then climbs fast: the default threshold stops it as diverged."""
    return 1.0 / (1.0 + 1e3 * lr) + 50.0 * lr


def flat(lr: float) -> float:
    return 1.0 + 0.0 * lr


CASES: dict[str, dict[str, Any]] = {
    "budget": {"loss_at": flat},
    "diverged": {"loss_at": rising},
    "nan": {"nan_at": 4},
    "exhausted": {"exhaust_at": 5},
    "error": {"raise_at": 3},
    "ctrl_c": {"raise_at": 6, "error": KeyboardInterrupt()},
    "samples": {"samples": 32.0, "exhaust_at": 7},
}
ENDS = {
    "budget": "budget",
    "diverged": "diverged",
    "nan": "non_finite",
    "exhausted": "data_exhausted",
    "error": RuntimeError,
    "ctrl_c": KeyboardInterrupt,
    "samples": "data_exhausted",
}


def outcome(case: dict[str, Any], overlap: bool) -> tuple[Any, FakeStep]:
    """Run one case; return what the user sees (result or error) and the step."""
    step = FakeStep(**case)
    test = RangeTest(start_lr=1e-4, end_lr=1.0, num_iter=10)
    try:
        result = run_range_test(step, test, progress=False, overlap=overlap)
    except BaseException as error:
        return (type(error), str(error), test.result()), step
    return result, step


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_step_late_gives_the_same_result_and_restores(name: str) -> None:
    """Points, stop reason, raised error and the restore: identical; at most one step more ran."""
    at_end, end_step = outcome(CASES[name], overlap=False)
    late, late_step = outcome(CASES[name], overlap=True)
    assert late == at_end
    ended = at_end[0] if isinstance(at_end, tuple) else str(at_end.stop_reason)
    assert ended == ENDS[name]
    assert late_step.restored and end_step.restored
    assert end_step.runs <= late_step.runs <= end_step.runs + 1
    # Every step ran at the LR the test recorded for it (the extra one at the next planned LR).
    recorded = at_end.lrs if hasattr(at_end, "lrs") else at_end[2].lrs
    assert late_step.lrs[: len(recorded)] == list(recorded)


def test_a_failed_step_on_one_process_runs_no_further_step() -> None:
    """One process: a step that raised is the last one run (nothing to keep in step)."""
    _, step = outcome({"raise_at": 3}, overlap=True)
    assert step.runs == 3


def test_a_skipped_step_cannot_be_decided_late() -> None:
    """A skipped step would have shifted the next step's LR: refused, and still restored."""
    step = FakeStep(skip_at=[2])
    with pytest.raises(RuntimeError, match="overlap=False"):
        run_range_test(step, RangeTest(num_iter=10), progress=False, overlap=True)
    assert step.restored


@dataclass
class Peer:
    """The other rank of two, simulated: its outcome of each reduce, in order."""

    outcomes: list[StepOutcome]
    reduces: int = 0


class PeerReducer:
    """Rank 0 of two, with a start_step that sums with the simulated peer's record."""

    rank, world_size = 0, 2

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.posted: list[RankError] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def reduce_step(self, local: StepOutcome) -> StepOutcome:
        return self.start_step(local).wait()

    def start_step(self, local: Any) -> Any:
        theirs = self.peer.outcomes[min(self.peer.reduces, len(self.peer.outcomes) - 1)]
        self.peer.reduces += 1
        if local.error is not None:
            self.posted.append(RankError(0, f"{type(local.error).__name__}: {local.error}"))
        if theirs.error is not None:
            self.posted.append(RankError(1, f"{type(theirs.error).__name__}: {theirs.error}"))
        summed = [a + b for a, b in zip(local.to_vector(), theirs.to_vector())]

        class Done:
            def wait(self) -> StepOutcome:
                return StepOutcome.from_vector(summed, local.error)

        return Done()

    def reduce_trial(self, report: Any) -> Any:
        raise AssertionError("no trials here")

    def failures(self) -> list[RankError]:
        return list(self.posted)


def test_a_rank_that_stopped_joins_the_reduce_the_others_started() -> None:
    """Rank 0 fails at step 3 and stops running steps (its step cannot continue), while its peer,
    not knowing yet, starts step 4 and its reduce: rank 0 joins that reduce with an empty record,
    so both ranks end after the same number of reduces (4)."""
    peer = Peer([StepOutcome.of_loss(1.0, 8)] * 10)
    step = FakeStep(raise_at=3, samples=8.0, reducer=PeerReducer(peer))
    with pytest.raises(RuntimeError, match="step 3 failed"):
        run_range_test(step, RangeTest(num_iter=10), progress=False, overlap=True)
    assert step.runs == 3 and peer.reduces == 4 and step.restored


def test_the_peer_failing_stops_this_rank_one_step_later_with_its_error() -> None:
    """The peer's error at step 2 reaches rank 0 with step 3 running; it raises the peer's
    error, after 3 reduces (the step in flight is waited for), restored."""
    from lrfinder_plugins import RankFailedError

    fine = StepOutcome.of_loss(1.0, 8)
    peer = Peer([fine, StepOutcome.failed(KeyError("missing column")), fine, fine])
    step = FakeStep(samples=8.0, reducer=PeerReducer(peer))
    with pytest.raises(RankFailedError, match="missing column") as raised:
        run_range_test(step, RangeTest(num_iter=10), progress=False, overlap=True)
    assert raised.value.rank == 1
    assert step.runs == 3 and peer.reduces == 3 and step.restored


def test_no_extra_reduce_at_the_budget() -> None:
    """A test that runs its whole budget starts exactly num_iter reduces."""
    peer = Peer([StepOutcome.of_loss(1.0, 8)] * 10)
    step = FakeStep(samples=8.0, reducer=PeerReducer(peer))
    result = run_range_test(step, RangeTest(num_iter=6), progress=False, overlap=True)
    assert len(result) == 6 and step.runs == 6 and peer.reduces == 6
    assert math.isclose(result.losses[0], 1.0 * 8 / 16 + step.loss_at(result.lrs[0]) * 8 / 16)


def test_start_step_without_a_start_method_reduces_when_waited_for() -> None:
    """A reducer with only reduce_step still works: its reduce runs at wait()."""
    calls: list[StepOutcome] = []

    class Plain:
        rank, world_size = 0, 1

        def reduce_step(self, local: StepOutcome) -> StepOutcome:
            calls.append(local)
            return local

    pending = start_step(Plain(), StepOutcome.of_loss(0.25))  # type: ignore[arg-type]
    assert calls == []
    assert pending.wait().loss == 0.25 and len(calls) == 1

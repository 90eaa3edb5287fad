"""Push sessions and their one reduce point, with a second rank simulated in-process."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from lrfinder_plugins import (
    BatchSizeSearch,
    BatchSizeSession,
    LocalReducer,
    RangeTest,
    RangeTestSession,
    RankFailedError,
    Reducer,
    StepOutcome,
    StopReason,
    TrialReport,
)
from lrfinder_plugins.spi import RankError, combine_reports


class TwoRanks:
    """A reducer for rank 0 of two: the other rank's outcome of step i is ``other(i)``."""

    rank, world_size = 0, 2

    def __init__(
        self,
        other: Callable[[int], StepOutcome] | None = None,
        trial: Callable[[int], TrialReport] | None = None,
    ) -> None:
        self.other, self.trial = other, trial
        self.steps = self.trials = 0
        self.posted: list[RankError] = []
        self.opened = self.closed = 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def reduce_step(self, outcome: StepOutcome) -> StepOutcome:
        theirs = self.other(self.steps) if self.other else outcome
        self.steps += 1
        for rank, o in ((0, outcome), (1, theirs)):
            if o.error is not None:
                self.posted.append(RankError(rank, f"{type(o.error).__name__}: {o.error}"))
        summed = [a + b for a, b in zip(outcome.to_vector(), theirs.to_vector())]
        return StepOutcome.from_vector(summed, outcome.error)

    def reduce_trial(self, report: TrialReport) -> TrialReport:
        theirs = self.trial(self.trials) if self.trial else report
        self.trials += 1
        combined = combine_reports([report, theirs])
        if theirs.exception is not None:
            self.posted.append(RankError(1, str(theirs.exception)))
            return TrialReport(fitted=False, exception=RankFailedError(1, str(theirs.exception)))
        return combined

    def failures(self) -> list[RankError]:
        return list(self.posted)


def session(reducer: Reducer, **options: float) -> RangeTestSession:
    test = RangeTest(
        **{"start_lr": 1e-3, "end_lr": 1.0, "num_iter": 6, "diverge_threshold": None, **options}
    )
    return RangeTestSession(test, reducer=reducer, progress=False)


def drive(s: RangeTestSession, loss: Callable[[int], StepOutcome]) -> None:
    s.start()
    i = 0
    while not s.finished:
        s.next_lr()
        s.end_step(loss(i))
        i += 1


def test_the_recorded_loss_is_the_sample_weighted_mean_over_ranks() -> None:
    """Rank 0: loss 1 over 3 samples; rank 1: loss 3 over 1 sample → 1.5 over 4."""
    reducer = TwoRanks(other=lambda i: StepOutcome.of_loss(3.0, 1))
    s = session(reducer, smoothing=0.0)
    drive(s, lambda i: StepOutcome.of_loss(1.0, 3))
    result = s.finish()
    assert result.losses == (1.5,) * 6 and result.global_batch == 4 and result.world_size == 2
    assert reducer.opened == reducer.closed == 1


def test_nan_on_the_other_rank_stops_this_one_at_the_same_step() -> None:
    """A non-finite loss anywhere records NaN and stops as non_finite."""
    reducer = TwoRanks(lambda i: StepOutcome.of_loss(math.nan if i == 2 else 1.0, 4))
    s = session(reducer)
    drive(s, lambda i: StepOutcome.of_loss(1.0, 4))
    result = s.finish()
    assert result.stop_reason is StopReason.NON_FINITE and len(result) == 3
    assert math.isnan(result.losses[-1])


def test_the_other_rank_running_out_of_data_stops_this_one() -> None:
    """ "No batch left" on any rank ends the test after that step, as data_exhausted."""
    reducer = TwoRanks(lambda i: StepOutcome.of_loss(1.0, 4, last=i == 1))
    s = session(reducer)
    drive(s, lambda i: StepOutcome.of_loss(1.0, 4))
    result = s.finish()
    assert result.stop_reason is StopReason.DATA_EXHAUSTED and len(result) == 2


def test_an_error_on_the_other_rank_raises_here_naming_it() -> None:
    """This rank raises RankFailedError with the failing rank and its message."""
    reducer = TwoRanks(
        lambda i: (
            StepOutcome.failed(ValueError("bad shard")) if i == 1 else StepOutcome.of_loss(1.0)
        )
    )
    s = session(reducer)
    with pytest.raises(RankFailedError, match="rank 1 failed: ValueError: bad shard") as caught:
        drive(s, lambda i: StepOutcome.of_loss(1.0))
    assert caught.value.rank == 1
    assert s.finish().stop_reason is StopReason.INTERRUPTED and reducer.closed == 1


def test_the_failing_rank_raises_its_own_error() -> None:
    """A step that raised here re-raises the very exception after the reduce."""
    error = KeyError("mine")
    s = session(TwoRanks(lambda i: StepOutcome.of_loss(1.0)))
    with pytest.raises(KeyError) as caught:
        drive(s, lambda i: StepOutcome.failed(error) if i == 2 else StepOutcome.of_loss(1.0))
    assert caught.value is error


def test_a_skip_on_any_rank_is_not_a_point() -> None:
    """An AMP overflow skip reduces to a skipped step on every rank."""
    reducer = TwoRanks(lambda i: StepOutcome.skipped_step() if i == 0 else StepOutcome.of_loss(1.0))
    s = session(reducer)
    drive(s, lambda i: StepOutcome.skipped_step() if i == 0 else StepOutcome.of_loss(1.0))
    result = s.finish()
    assert len(result) == 6 and result.options["skipped_steps"] == 1


def test_a_float_outcome_is_a_point_without_a_sample_count() -> None:
    """end_step(0.5) on one process records 0.5; the global batch stays unknown."""
    s = session(LocalReducer())
    drive(s, lambda i: 0.5)  # type: ignore[arg-type, return-value]
    result = s.finish()
    assert result.losses == (0.5,) * 6 and result.global_batch is None


def test_finish_is_idempotent_and_marks_an_unfinished_test_interrupted() -> None:
    """finish() twice returns the same result; an unfinished test is interrupted."""
    s = session(LocalReducer())
    s.start()
    s.end_step(1.0)
    first = s.finish()
    assert s.finish() is first and first.stop_reason is StopReason.INTERRUPTED


def test_a_trial_fits_only_if_it_fitted_on_every_rank() -> None:
    """The other rank's out of memory at 8 makes 8 a failure here too (then 4 runs again)."""
    reducer = TwoRanks(trial=lambda i: TrialReport(fitted=i != 2, steps=3 if i != 2 else 0))
    s = BatchSizeSession(BatchSizeSearch(mode="power", init_val=2), reducer=reducer, progress=False)
    s.start()
    while not s.finished:
        size = s.next_size()
        s.end_trial(size, TrialReport())
    result = s.finish()
    assert [(t.size, t.fitted) for t in result.trials] == [
        (2, True),
        (4, True),
        (8, False),
        (4, True),
    ]
    assert result.batch_size == 4 and result.world_size == 2 and result.global_batch == 8


def test_a_trial_error_on_the_other_rank_raises_here() -> None:
    """A non-OOM error in the other rank's trial raises RankFailedError here."""
    reducer = TwoRanks(trial=lambda i: TrialReport(exception=ValueError("disk full")))
    s = BatchSizeSession(BatchSizeSearch(), reducer=reducer, progress=False)
    s.start()
    with pytest.raises(RankFailedError, match="rank 1"):
        s.end_trial(s.next_size(), TrialReport())


def test_combine_reports_takes_the_worst_of_every_rank() -> None:
    """Largest peaks per phase, smallest capacity, elementwise largest profile, slowest seconds."""
    a = TrialReport(peak_bytes={"fb": 5, "opt": 9}, profile=(1, 4), capacity_bytes=50, seconds=1.0)
    b = TrialReport(peak_bytes={"fb": 7, "opt": 3}, profile=(3, 2), capacity_bytes=40, seconds=2.0)
    combined = combine_reports([a, b])
    assert combined.peak_bytes == {"fb": 7, "opt": 9} and combined.profile == (3, 4)
    assert combined.capacity_bytes == 40 and combined.seconds == 2.0 and combined.fitted


def test_combine_reports_times_the_fewest_bare_steps_in_the_slowest_seconds() -> None:
    """The timed part (the bare steps a metered trial's throughput reads): the fewest steps in
    the slowest rank's seconds; none unless every rank timed one."""
    a = TrialReport(seconds=3.0, timed_steps=2, timed_seconds=1.0)
    b = TrialReport(seconds=4.0, timed_steps=2, timed_seconds=1.5)
    combined = combine_reports([a, b])
    assert (combined.timed_steps, combined.timed_seconds, combined.seconds) == (2, 1.5, 4.0)
    untimed = combine_reports([a, TrialReport(seconds=2.0)])
    assert untimed.timed_steps is None and untimed.timed_seconds is None


def test_step_outcome_survives_its_vector() -> None:
    """to_vector/from_vector round-trip every number (what a collective sums)."""
    outcome = StepOutcome(2.5, 4.0, non_finite=1, skipped=0, out_of_data=1, errors=0)
    assert StepOutcome.from_vector(outcome.to_vector()) == outcome


class _FloatStep:
    """A step whose loss is a float that falls with the LR; ``nan_at`` gives NaN at that call."""

    def __init__(self, nan_at: int | None = None) -> None:
        self.lr, self.calls, self.nan_at = 0.0, 0, nan_at

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def run(self) -> float:
        self.calls += 1
        return math.nan if self.calls == self.nan_at else 1.0 / (1.0 + self.lr)


@pytest.mark.parametrize(
    ("reducer", "nan_at", "through_end_step"),
    [
        (None, None, 0),  # one process, no observer: every finite float recorded as it comes
        (None, 4, 1),  # ... and the NaN through end_step, which stops the test
        ("two ranks", None, 6),  # several processes: every step through end_step's reduce
    ],
    ids=["local", "local-nan", "two-ranks"],
)
def test_drive_records_floats_directly_only_on_one_process(
    reducer: str | None, nan_at: int | None, through_end_step: int
) -> None:
    """``drive`` runs the steps; on one process with no per-step observer it records a finite
    float without ``end_step``, with the same points as ``end_step`` records."""
    points = []
    for direct in (True, False):
        session = RangeTestSession(
            RangeTest(start_lr=1e-3, end_lr=1.0, num_iter=6, diverge_threshold=None),
            reducer=TwoRanks(lambda i: StepOutcome()) if reducer else None,
            progress=False,
        )
        session.start()
        calls: list[object] = []
        end_step = session.end_step

        def counted(
            outcome: object,
            end_step: Callable[..., StepOutcome] = end_step,
            calls: list[object] = calls,
        ) -> object:
            calls.append(outcome)
            return end_step(outcome)

        session.end_step = counted  # type: ignore[method-assign]
        step = _FloatStep(nan_at)
        if direct:
            session.drive(step, lambda s: s.run())
            assert len(calls) == through_end_step
        else:  # the loop a framework's callbacks make, through end_step every step
            while not session.finished:
                step.set_lr(session.next_lr())
                session.end_step(step.run())
        result = session.finish()
        points.append((result.lrs, result.losses, result.stop_reason))
    assert points[0] == points[1]


# -- the push API's order -------------------------------------------------------------------------
def test_a_step_before_start_is_refused_naming_the_order() -> None:
    """end_step or submit before start(): the reduce point is not open and the observers were
    not told, so it is an error that says the order, not a point recorded silently."""
    s = session(LocalReducer())
    with pytest.raises(RuntimeError, match=r"end_step\(\) before start\(\): call session\.start"):
        s.end_step(1.0)
    with pytest.raises(RuntimeError, match=r"submit\(\) before start\(\)"):
        s.submit(StepOutcome.of_loss(1.0))
    assert len(s.test.losses) == 0


def test_a_session_starts_once() -> None:
    """start() twice (or after finish()) is refused: a session runs one test."""
    s = session(LocalReducer())
    drive(s, lambda i: StepOutcome.of_loss(1.0))
    s.finish()
    with pytest.raises(RuntimeError, match="started already; a session runs one test"):
        s.start()


def test_a_submitted_step_is_decided_once() -> None:
    """decide() twice with the same step would record its point twice: refused."""
    s = session(LocalReducer())
    s.start()
    submitted = s.submit(StepOutcome.of_loss(1.0))
    s.decide(submitted)
    with pytest.raises(RuntimeError, match="decide\\(\\) was called twice"):
        s.decide(submitted)
    assert len(s.test.losses) == 1


@pytest.mark.parametrize("outcome", ["1.0", [1.0], True])
def test_end_step_names_what_it_takes(outcome: object) -> None:
    """A loss of the wrong type is a TypeError that says what end_step takes."""
    s = session(LocalReducer())
    s.start()
    with pytest.raises(TypeError, match="end_step takes a StepOutcome, a DeferredOutcome, a float"):
        s.end_step(outcome)  # type: ignore[arg-type]


def test_end_trial_names_what_it_takes() -> None:
    """end_trial(size, True) instead of a TrialReport: a TypeError with an example."""
    search = BatchSizeSession(BatchSizeSearch(mode="power"), reducer=LocalReducer())
    search.start()
    with pytest.raises(TypeError, match=r"takes a TrialReport, got True \(bool\)"):
        search.end_trial(search.next_size(), True)  # type: ignore[arg-type]

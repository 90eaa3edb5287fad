"""Test doubles for adapter and plugin authors: a fake training step and a fake batch probe.

:class:`FakeStep` is a :class:`~lrfinder_plugins.spi.TrainingStep` and :class:`FakeProbe` a
:class:`~lrfinder_plugins.spi.BatchProbe`, in pure Python: no framework, no model, no device.
Each keeps a small mutable "training state" that every ``run()`` / ``try_batch_size()``
changes, and writes down every call in ``events``, so a test can check what a driver, a
session, a reducer or an observer plugin did with them: that ``restore`` was called (after
an error too), with the snapshot that was taken, and that the state came back.

Both are deterministic: the same arguments give the same losses, sizes and reports.

Example:
    >>> from lrfinder_plugins import RangeTest, run_range_test
    >>> step = FakeStep(nan_at=4)
    >>> result = run_range_test(step, RangeTest(num_iter=10), progress=False)
    >>> result.stop_reason, len(result), step.restored
    (<StopReason.NON_FINITE: 'non_finite'>, 4, True)
    >>> step.events[:3], step.events[-2:]
    (['snapshot', 'set_lr', 'run'], ['restore', 'close'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lrfinder_plugins.spi import Reducer, StepOutcome, TrialReport

__all__ = ["FakeProbe", "FakeStep", "default_loss"]


def default_loss(lr: float) -> float:
    """The loss curve of a well-behaved LR range test, as a function of the LR.

    A plateau near 2 at tiny LRs, the steepest descent around ``1e-3``, the lowest loss (about
    1.12) near ``3e-2``, then a blow-up: 2 at ``0.1``, 101 at ``1``. With the default
    :class:`~lrfinder_plugins.RangeTest` settings the test diverges at about ``0.24`` (its
    80th point of 100) and suggests about ``2e-3``.

    Example:
        >>> round(default_loss(1e-7), 3), round(default_loss(3e-2), 3), default_loss(1.0) > 100
        (2.0, 1.122, True)
    """
    return 1.0 + 1.0 / (1.0 + lr / 1e-3) + (lr / 0.1) ** 2


class _Snapshot:
    """What a fake's ``snapshot()`` returns: the saved state, and a ``close()`` the driver calls."""

    def __init__(self, owner: FakeStep | FakeProbe, state: tuple[float, float]) -> None:
        self.owner = owner
        self.state = state
        self.closed = False

    def close(self) -> None:
        """Record ``"close"`` in the owner's events."""
        self.closed = True
        self.owner.events.append("close")

    def __repr__(self) -> str:
        return f"<snapshot of {type(self.owner).__name__}: {self.state}>"


class FakeStep:
    """A :class:`~lrfinder_plugins.spi.TrainingStep` whose loss is a function of the LR.

    Steps are counted from 1 (the n-th call to :meth:`run`). Every step that runs changes the
    fake's state (``weight`` grows by one, ``lr`` is the LR it was given); :meth:`restore` puts
    back what :meth:`snapshot` saved.

    Args:
        loss_at: the loss of a step at a given LR (default :func:`default_loss`).
        raise_at: step that raises ``error`` (after changing the state, as a half-done step
            would).
        error: what ``raise_at`` raises (default ``RuntimeError("FakeStep: step N failed")``);
            a ``KeyboardInterrupt`` plays a Ctrl-C.
        exhaust_at: step that raises ``StopIteration``: the data ran out before it (nothing
            changes).
        skip_at: steps that return ``None`` (an AMP overflow: the scaler skipped the update);
            they change the state all the same.
        nan_at: step whose loss is NaN.
        samples: when given, every step returns a :class:`~lrfinder_plugins.spi.StepOutcome`
            over that many samples (what a data-parallel adapter reports) instead of a float.
        lr: the LR before the test (what a restore must put back).
        group_ratios: each param group's LR over the swept one (the optional attribute the
            ``range_test`` entry point reads).
        reducer: the optional ``reducer`` attribute the drivers read (``None``: one process).

    Attributes:
        events: every call, in order: ``"snapshot"``, ``"set_lr"``, ``"run"``, ``"restore"``,
            ``"close"`` (the driver closing the snapshot).
        lrs: every LR :meth:`set_lr` was given.
        runs: how many times :meth:`run` was called.
        weight, lr: the state a step changes.

    Example:
        >>> from lrfinder_plugins import RangeTest, run_range_test
        >>> step = FakeStep(exhaust_at=6, samples=32)
        >>> result = run_range_test(step, RangeTest(num_iter=10), progress=False)
        >>> result.stop_reason, len(result), result.options["global_batch"], step.restored
        (<StopReason.DATA_EXHAUSTED: 'data_exhausted'>, 5, 32, True)
    """

    def __init__(
        self,
        loss_at: Callable[[float], float] = default_loss,
        *,
        raise_at: int | None = None,
        error: BaseException | None = None,
        exhaust_at: int | None = None,
        skip_at: Iterable[int] = (),
        nan_at: int | None = None,
        samples: float | None = None,
        lr: float = 0.01,
        group_ratios: Sequence[float] = (1.0,),
        reducer: Reducer | None = None,
    ) -> None:
        self.loss_at = loss_at
        self.raise_at = raise_at
        self.error = error
        self.exhaust_at = exhaust_at
        self.skip_at = frozenset(skip_at)
        self.nan_at = nan_at
        self.samples = samples
        self.group_ratios = tuple(float(r) for r in group_ratios)
        self.reducer = reducer
        self.weight = 0.0
        self.lr = float(lr)
        self.lrs: list[float] = []
        self.runs = 0
        self.events: list[str] = []
        self._snapshots: list[_Snapshot] = []

    @property
    def state(self) -> tuple[float, float]:
        """The state a step changes: ``(weight, lr)``."""
        return (self.weight, self.lr)

    @property
    def restored(self) -> bool:
        """Whether :meth:`restore` ran since the last step and the state is what the first
        snapshot saved."""
        last_run = max((i for i, e in enumerate(self.events) if e == "run"), default=-1)
        return (
            bool(self._snapshots)
            and "restore" in self.events[last_run + 1 :]
            and self.state == self._snapshots[0].state
        )

    def snapshot(self) -> Any:
        """Save the state (a new snapshot object each call, with a ``close()`` method)."""
        self.events.append("snapshot")
        snapshot = _Snapshot(self, self.state)
        self._snapshots.append(snapshot)
        return snapshot

    def restore(self, snapshot: Any) -> None:
        """Put back the state ``snapshot`` saved.

        Raises:
            ValueError: ``snapshot`` was not taken by this step's :meth:`snapshot`.
        """
        self.events.append("restore")
        if not any(snapshot is taken for taken in self._snapshots):
            raise ValueError(f"FakeStep.restore() got {snapshot!r}, not one of its snapshots")
        self.weight, self.lr = snapshot.state

    def set_lr(self, lr: float) -> None:
        """Use ``lr`` for the next step."""
        self.events.append("set_lr")
        self.lrs.append(lr)
        self.lr = lr

    def run(self) -> float | StepOutcome | None:
        """Run one step: its loss, ``None`` when skipped; raise as configured."""
        self.events.append("run")
        self.runs += 1
        n = self.runs
        if n == self.exhaust_at:
            raise StopIteration
        self.weight += 1.0
        if n == self.raise_at:
            if self.error is not None:
                raise self.error
            raise RuntimeError(f"FakeStep: step {n} failed")
        if n in self.skip_at:
            return None if self.samples is None else StepOutcome.skipped_step()
        loss = math.nan if n == self.nan_at else float(self.loss_at(self.lr))
        return loss if self.samples is None else StepOutcome.of_loss(loss, self.samples)


class FakeProbe:
    """A :class:`~lrfinder_plugins.spi.BatchProbe` with a memory limit.

    A size above ``limit`` raises ``MemoryError`` (an out-of-memory error to every
    classifier); any other size fits. Every trial changes the probe's state (``weight`` grows
    by the size tried, ``allocated`` holds what the trial left); :meth:`restore` puts it back
    and frees it.

    Args:
        limit: the largest batch size that fits.
        bytes_per_sample: when given, every report carries ``peak_bytes = base_bytes +
            size * bytes_per_sample`` (what a probe that measures memory reports).
        base_bytes: the memory in use whatever the size (the model, the optimizer state).
        capacity_bytes: when given, every report carries it (the device's memory or a budget).
        upper_bound: the optional attribute that caps the sizes tried (the dataset length).
        fail_at: a size whose trial raises ``error``, an error that is not out of memory.
        error: what ``fail_at`` raises (default ``RuntimeError("FakeProbe: trial at N failed")``).
        reducer: the optional ``reducer`` attribute the drivers read (``None``: one process).

    Attributes:
        events: every call, in order: ``"snapshot"``, ``"try <size>"``, ``"restore"``,
            ``"close"``.
        tried: every size tried, in order.
        restores: how many times :meth:`restore` ran.

    Example:
        >>> from lrfinder_plugins import BatchSizeSearch, run_batch_size_search
        >>> probe = FakeProbe(limit=100)
        >>> found = run_batch_size_search(probe, BatchSizeSearch(mode="power"), progress=False)
        >>> found.batch_size, probe.tried, probe.restores == len(probe.tried), probe.restored
        (64, [2, 4, 8, 16, 32, 64, 128], True, True)
    """

    def __init__(
        self,
        limit: int = 64,
        *,
        bytes_per_sample: int | None = None,
        base_bytes: int = 0,
        capacity_bytes: int | None = None,
        upper_bound: int | None = None,
        fail_at: int | None = None,
        error: BaseException | None = None,
        reducer: Reducer | None = None,
    ) -> None:
        self.limit = limit
        self.bytes_per_sample = bytes_per_sample
        self.base_bytes = base_bytes
        self.capacity_bytes = capacity_bytes
        self.upper_bound = upper_bound
        self.fail_at = fail_at
        self.error = error
        self.reducer = reducer
        self.weight = 0.0
        self.allocated = 0
        self.tried: list[int] = []
        self.events: list[str] = []
        self.restores = 0
        self._snapshots: list[_Snapshot] = []

    @property
    def state(self) -> tuple[float, float]:
        """The state a trial changes: ``(weight, allocated)``."""
        return (self.weight, float(self.allocated))

    @property
    def restored(self) -> bool:
        """Whether :meth:`restore` ran after the last trial and the state is what the first
        snapshot saved (the memory a trial left freed)."""
        last_trial = max((i for i, e in enumerate(self.events) if e.startswith("try ")), default=-1)
        return (
            bool(self._snapshots)
            and "restore" in self.events[last_trial + 1 :]
            and self.state == self._snapshots[0].state
        )

    def peak_bytes(self, size: int) -> int | None:
        """The peak memory a trial at ``size`` reports (``None`` without ``bytes_per_sample``)."""
        if self.bytes_per_sample is None:
            return None
        return self.base_bytes + size * self.bytes_per_sample

    def snapshot(self) -> Any:
        """Save the state (a new snapshot object each call, with a ``close()`` method)."""
        self.events.append("snapshot")
        snapshot = _Snapshot(self, self.state)
        self._snapshots.append(snapshot)
        return snapshot

    def restore(self, snapshot: Any) -> None:
        """Put back the state ``snapshot`` saved and free what the last trial left.

        Raises:
            ValueError: ``snapshot`` was not taken by this probe's :meth:`snapshot`.
        """
        self.events.append("restore")
        if not any(snapshot is taken for taken in self._snapshots):
            raise ValueError(f"FakeProbe.restore() got {snapshot!r}, not one of its snapshots")
        self.restores += 1
        weight, allocated = snapshot.state
        self.weight, self.allocated = weight, int(allocated)

    def try_batch_size(self, size: int, steps: int) -> TrialReport | None:
        """Run a trial of ``steps`` steps at ``size``.

        Raises:
            MemoryError: ``size`` is above ``limit`` (the trial's memory stays allocated until
                :meth:`restore`).
        """
        self.events.append(f"try {size}")
        self.tried.append(size)
        self.weight += size
        self.allocated += size
        if size == self.fail_at:
            if self.error is not None:
                raise self.error
            raise RuntimeError(f"FakeProbe: trial at {size} failed")
        if size > self.limit:
            raise MemoryError(f"FakeProbe: a batch of {size} does not fit (limit {self.limit})")
        return TrialReport(
            steps=steps, peak_bytes=self.peak_bytes(size), capacity_bytes=self.capacity_bytes
        )

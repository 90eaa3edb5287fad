"""The batch-size trials run under the memory meter only where the search reads their memory.

Real counts: a forward pre-hook on the model looks at the dispatch-mode stack while the user's
step runs, so what is checked is whether the meter really sat under each step. A trial the
search reads (the guided mode's measuring trials) meters its last step, the one its profile
comes from; one it does not read runs bare, but for its last step under a CPU budget (the
budget is counted op by op).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from lrfinder_adapters import _memory
from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_plugins import BatchSizeSearch, run_batch_size_search
from lrfinder_plugins.testing import FakeProbe

STEPS = 3


def _problem() -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.utils.data.TensorDataset(torch.randn(512, 8), torch.randint(0, 3, (512,)))
    return model, optimizer, data


def _metered_steps(model: torch.nn.Module) -> list[tuple[int, bool]]:
    """(batch size, whether a memory meter is on the dispatch stack) for every forward."""
    seen: list[tuple[int, bool]] = []

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        metered = any(
            isinstance(m, _memory.TensorMeter) for m in _get_current_dispatch_mode_stack()
        )
        seen.append((int(args[0].shape[0]), metered))

    model.register_forward_pre_hook(hook)
    return seen


def _per_trial(seen: list[tuple[int, bool]], result: Any) -> list[list[bool]]:
    """The forwards grouped by trial (each trial's steps, in order)."""
    out, i = [], 0
    for trial in result.trials:
        steps = seen[i : i + STEPS] if trial.fitted else []
        if not trial.fitted:  # a failed trial: its forwards up to the failure
            while i + len(steps) < len(seen) and seen[i + len(steps)][0] == trial.size:
                steps.append(seen[i + len(steps)])
        assert all(size == trial.size for size, _ in steps)
        out.append([metered for _, metered in steps])
        i += len(steps)
    assert i == len(seen)
    return out


def test_binsearch_without_budget_runs_bare() -> None:
    model, optimizer, data = _problem()
    seen = _metered_steps(model)
    result = find_batch_size(
        model,
        optimizer,
        torch.nn.functional.cross_entropy,
        dataset=data,
        mode="binsearch",
        max_val=64,
        progress=False,
    )
    assert result.batch_size == 64 and len(result.trials) == 6
    assert seen and not any(metered for _, metered in seen)
    assert all(t.peak_bytes is None for t in result.trials)  # the CPU has no bare peak
    assert all(t.timed_steps is None for t in result.trials)  # all bare: the whole trial timed
    assert all(t.capacity_bytes is None or t.capacity_bytes > 0 for t in result.trials)


def test_budget_meters_the_last_step_only_where_nothing_is_read() -> None:
    model, optimizer, data = _problem()
    seen = _metered_steps(model)
    budget = 60_000
    result = find_batch_size(
        model,
        optimizer,
        torch.nn.functional.cross_entropy,
        dataset=data,
        mode="binsearch",
        memory_budget=budget,
        progress=False,
    )
    assert any(not t.fitted for t in result.trials)  # the budget decided
    for trial, steps in zip(result.trials, _per_trial(seen, result)):
        if trial.fitted:
            assert steps == [False] * (STEPS - 1) + [True], trial
            assert trial.peak_bytes is not None and trial.peak_bytes <= budget
            _assert_throughput_of_bare_steps(trial)
        else:
            assert steps[:-1] == [False] * (len(steps) - 1) and steps[-1], trial


def test_guided_meters_the_last_step_of_the_trials_it_reads() -> None:
    # No budget: what the search reads is the profile of each measuring trial's last step
    # (steady state); the steps before it run bare.
    model, optimizer, data = _problem()
    seen = _metered_steps(model)
    result = find_batch_size(
        model,
        optimizer,
        torch.nn.functional.cross_entropy,
        dataset=data,
        max_val=256,
        progress=False,
    )
    roles = [t.role for t in result.trials]
    assert roles[:4] == ["init", "explore", "explore", "jump"], roles
    for trial, steps in zip(result.trials, _per_trial(seen, result)):
        assert steps == [False] * (STEPS - 1) + [True], trial
        assert trial.peak_bytes is not None and trial.peak_bytes > 0
        _assert_throughput_of_bare_steps(trial)


def _assert_throughput_of_bare_steps(trial: Any) -> None:
    """A trial with a metered last step times its bare steps only, and its throughput reads
    them: the meter's cost per operation is not the user's."""
    assert trial.timed_steps == STEPS - 1, trial
    assert trial.timed_seconds is not None and 0 < trial.timed_seconds <= trial.seconds
    expected = trial.size * (STEPS - 1) / trial.timed_seconds
    assert trial.samples_per_second == pytest.approx(expected)


class _RecordingProbe(FakeProbe):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.measured: list[tuple[int, bool]] = []

    def try_batch_size(self, size: int, steps: int, *, measure: bool = True) -> Any:
        self.measured.append((size, measure))
        return super().try_batch_size(size, steps)


@pytest.mark.parametrize("mode", ["binsearch", "power", "shrink"])
def test_only_guided_asks_for_measurements(mode: str) -> None:
    probe = _RecordingProbe(limit=100, bytes_per_sample=10, capacity_bytes=1000)
    search = BatchSizeSearch(mode=mode, init_val=2 if mode != "shrink" else 200)
    run_batch_size_search(probe, search, progress=False)
    assert probe.measured and not any(m for _, m in probe.measured)


def test_guided_final_verify_is_not_measured() -> None:
    # No capacity: the guided mode doubles and bisects; its final verify is never read.
    probe = _RecordingProbe(limit=100, bytes_per_sample=10)
    result = run_batch_size_search(probe, BatchSizeSearch(), progress=False)
    flags = dict(zip(range(len(probe.measured)), (m for _, m in probe.measured)))
    for i, trial in enumerate(result.trials):
        assert flags[i] is (trial.role != "verify"), (i, trial.role)
    assert result.trials[-1].role == "verify"


def test_guided_stops_measuring_after_two_failed_aims() -> None:
    # The memory grows faster than the three small sizes say: both aims run out of memory,
    # and the search then doubles and bisects, unmeasured.
    class Bent(_RecordingProbe):
        def peak_bytes(self, size: int) -> int | None:
            return 100 + 10 * size + (size * size if size > 8 else 0)

    probe = Bent(limit=300, bytes_per_sample=10, capacity_bytes=100_000)
    result = run_batch_size_search(probe, BatchSizeSearch(), progress=False)
    aims = [i for i, t in enumerate(result.trials) if t.role in ("jump", "predict")]
    assert len(aims) == 2 and not any(result.trials[i].fitted for i in aims)
    measured = [m for _, m in probe.measured]
    assert measured[: aims[-1] + 1] == [True] * (aims[-1] + 1)
    assert len(measured) > aims[-1] + 3 and not any(measured[aims[-1] + 1 :])
    assert result.batch_size is not None and result.batch_size <= 300


@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
@pytest.mark.filterwarnings(
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
)
@pytest.mark.parametrize("budget", [False, True], ids=["no-budget", "budget"])
def test_lightning_trials_meter_as_the_torch_ones(budget: bool) -> None:
    """Lightning's trials run in the fit loop: binsearch reads nothing, so they run bare, but
    for the last step under a CPU budget."""
    pytest.importorskip("lightning")
    from lrfinder_adapters.lightning import BatchSizeFinder
    from tests.adapters.test_lightning import BUDGET, Sized, _trainer

    class Watched(Sized):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            stack = _get_current_dispatch_mode_stack()
            self.metered.append(any(isinstance(m, _memory.TensorMeter) for m in stack))
            return super().training_step(batch, batch_idx)

    model = Watched()
    model.metered = []
    options: dict[str, Any] = {"memory_budget": BUDGET} if budget else {"max_val": 128}
    finder = BatchSizeFinder(mode="binsearch", init_val=32, progress=False, **options)
    finder._early_exit = True
    _trainer(callbacks=[finder]).fit(model)
    result = finder.result
    assert result is not None and len(model.metered) == len(model.shapes)
    if not budget:
        assert len(result.trials) == 3 and not any(model.metered)
        return
    assert any(not t.fitted for t in result.trials)
    i = 0
    for trial in result.trials:
        steps = STEPS if trial.fitted else model.shapes[i:].count(trial.size)
        flags = model.metered[i : i + steps]
        i += steps
        if trial.fitted:
            assert flags == [False] * (STEPS - 1) + [True], trial
            assert trial.peak_bytes is not None and trial.peak_bytes <= BUDGET
            _assert_throughput_of_bare_steps(trial)


def test_the_schema_fast_path_counts_what_the_input_check_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Operators whose schema says no output aliases an input, or that every output does, skip
    the input set: the same live bytes after every operation of a real step (views and
    in-place ops included) as when every output is checked against the inputs."""
    model, optimizer, data = _problem()
    inputs, targets = data[:16]
    outside = torch.randn(64, 64)  # never tracked: a view of it must not count

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss = loss + outside.t()[0, 0] * 0
        loss.backward()
        optimizer.step()

    step()
    traces = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(_memory, "_returns", lambda func: _memory.MIXED)
        torch.manual_seed(0)
        meter = _memory.TensorMeter()
        meter.track(_memory.state_tensors(model, optimizer))
        with meter:
            step()
        traces.append(meter._trace)
    assert traces[0] == traces[1] and len(traces[0]) > 50


_LIBRARY = torch.library.Library("lrfinder_meter_test", "DEF")
_LIBRARY.define("claims_view(Tensor(a) x) -> Tensor(a)")
_LIBRARY.impl("claims_view", lambda x: x * 2, "CompositeExplicitAutograd")


def test_another_librarys_aliasing_annotation_is_not_trusted() -> None:
    """An operator outside PyTorch whose schema says its output aliases its input but that
    returns a new tensor is still counted (only ``aten``'s annotations skip the check)."""
    x = torch.randn(1000)
    meter = _memory.TensorMeter()
    meter.track([x])
    before = meter.live
    with meter:
        y = torch.ops.lrfinder_meter_test.claims_view(x)
        counted = meter.live - before
    assert y.untyped_storage()._cdata != x.untyped_storage()._cdata
    assert counted == y.untyped_storage().nbytes() == 4000


def test_storages_grown_in_place_are_counted() -> None:
    """An ``out=`` argument that the operator fills (an empty one) or grows, and ``resize_``,
    add what they took; a budget sees it; freeing the storage gives back its grown size."""
    x = torch.randn(1000)
    meter = _memory.TensorMeter()
    meter.track([x])
    base = meter.live
    with meter:
        z = torch.empty(0)
        torch.add(x, x, out=z)  # an empty out= storage, filled: 4000 bytes
        filled = meter.live - base
        w = torch.empty(2)  # 8 bytes, counted when made
        w.resize_(10_000)  # grown in place to 40,000 bytes
        grown = meter.live - base
        del z, w
        freed = meter.live - base
    assert (filled, grown, freed) == (4000, 44_000, 0)
    budget = _memory.TensorMeter(budget=base + 10_000)
    budget.track([x])
    with budget, pytest.raises(torch.OutOfMemoryError, match="memory_budget"):
        torch.empty(2).resize_(10_000)

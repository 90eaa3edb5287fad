"""One rank of the 2-process tests: runs the scenarios named on the command line, writes JSON.

Started by ``torchrun --standalone --nproc_per_node 2 worker.py OUT SCENARIO...`` from
``test_distributed.py``. Each scenario writes ``OUT/<scenario>.<rank>.json``; an exception a
scenario expects is caught and recorded, anything else fails the process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lrfinder_adapters.batch_size import find_batch_size
from lrfinder_adapters.pytorch import LearningRateFinder, find_lr
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state
from lrfinder_plugins import RankFailedError

FEATURES, GLOBAL_BATCH, STEPS = 6, 16, 12


def make_model(seed: int = 0) -> nn.Module:
    """A small MLP without BatchNorm or dropout: DDP over 2 ranks is then the same arithmetic as
    one process on the whole global batch."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))


def global_batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(FEATURES, 1, generator=gen)
    out = []
    for _ in range(count):
        x = torch.randn(GLOBAL_BATCH, FEATURES, generator=gen)
        out.append((x, x @ w + 0.1 * torch.randn(GLOBAL_BATCH, 1, generator=gen)))
    return out


def shard(batches: list[Any], rank: int, world: int) -> list[Any]:
    return [(x[rank::world], y[rank::world]) for x, y in batches]


def ddp(model: nn.Module) -> nn.Module:
    return nn.parallel.DistributedDataParallel(model)


def summary(result: Any) -> dict[str, Any]:
    return {
        "lrs": list(result.lrs),
        "losses": [x if math.isfinite(x) else str(x) for x in result.losses],
        "stop_reason": str(result.stop_reason),
        "world_size": result.world_size,
        "global_batch": result.global_batch,
    }


# -- scenarios ------------------------------------------------------------------------------------
def scenario_lr(rank: int, world: int) -> dict[str, Any]:
    """A normal range test; the same test on one process over the whole global batch."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = shard(global_batches(STEPS), rank, world)
    before = capture_state(model, optimizer)
    finder = LearningRateFinder(model, optimizer, nn.functional.mse_loss, progress=False)
    finder.find_lr(data, start_lr=1e-4, end_lr=1.0, num_iter=STEPS, diverge_threshold=None)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert finder.result is not None
    finder.plot(output_path=Path(os.environ["LRF_OUT"]) / "plot.png", skip_start=0, skip_end=0)
    result_file = finder.result.save_json(Path(os.environ["LRF_OUT"]) / "result.json")
    single_model = make_model()
    single = find_lr(
        single_model,
        torch.optim.SGD(single_model.parameters(), lr=0.01, momentum=0.9),
        nn.functional.mse_loss,
        global_batches(STEPS),
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=STEPS,
        diverge_threshold=None,
        distributed=False,
        progress=False,
    )
    return {**summary(finder.result), "single": summary(single), "json": str(result_file)}


def scenario_nan(rank: int, world: int) -> dict[str, Any]:
    """Rank 1's loss is NaN at the 4th step: every rank stops there."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = {"n": 0}

    def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.mse_loss(m(batch[0]), batch[1])
        return loss * math.nan if rank == 1 and calls["n"] == 4 else loss

    before = capture_state(model, optimizer)
    result = find_lr(
        model,
        optimizer,
        None,
        shard(global_batches(STEPS), rank, world),
        num_iter=STEPS,
        compute_loss=compute_loss,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return summary(result)


def scenario_exhausted(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 has 4 batches, rank 0 has 10 (one-shot iterators): every rank stops after 4."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = shard(global_batches(10 if rank == 0 else 4), rank, world)
    before = capture_state(model, optimizer)
    result = find_lr(
        model, optimizer, nn.functional.mse_loss, iter(batches), num_iter=STEPS, progress=False
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return summary(result)


def scenario_error_after_backward(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 raises in its 3rd optimizer step (after the gradients were synchronised)."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = {"n": 0}

    def hook(*_: Any) -> None:
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            raise ValueError("bad step on rank 1")

    before = capture_state(model, optimizer)
    handle = optimizer.register_step_pre_hook(hook)
    try:
        find_lr(
            model,
            optimizer,
            nn.functional.mse_loss,
            shard(global_batches(STEPS), rank, world),
            num_iter=STEPS,
            progress=False,
        )
    except (ValueError, RankFailedError) as error:
        raised = {
            "type": type(error).__name__,
            "message": str(error),
            "rank": getattr(error, "rank", None),
            "notes": list(getattr(error, "__notes__", [])),
        }
    else:
        raised = {"type": None}
    handle.remove()
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return raised


def _forward_fault(
    rank: int, world: int, fault: Callable[[], None], fault_timeout: float
) -> dict[str, Any]:
    """Rank 1 runs ``fault`` in its 3rd forward pass (rank 0 is then left in DDP's gradient
    all-reduce); returns what each rank raised, how long it took, and its notes."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = {"n": 0}

    def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            fault()
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    before = capture_state(model, optimizer)
    start = time.monotonic()
    try:
        find_lr(
            model,
            optimizer,
            None,
            shard(global_batches(STEPS), rank, world),
            num_iter=STEPS,
            compute_loss=compute_loss,
            fault_timeout=fault_timeout,
            progress=False,
        )
    except Exception as error:
        raised = {
            "type": type(error).__name__,
            "message": str(error),
            "rank": getattr(error, "rank", None),
            "notes": list(getattr(error, "__notes__", [])),
        }
    else:
        raised = {"type": None}
    raised["seconds"] = time.monotonic() - start
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return raised


def scenario_error_in_forward(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 raises in its 3rd forward pass: rank 0 is left in DDP's gradient all-reduce."""

    def fault() -> None:
        raise KeyError("missing column on rank 1")

    return _forward_fault(rank, world, fault, fault_timeout=5.0)


def scenario_stall(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 stalls 6 s in its 3rd forward pass, past fault_timeout=2: rank 0, waiting in
    DDP's all-reduce, times out; the messages must say a rank was waited for, and which."""
    return _forward_fault(rank, world, lambda: time.sleep(6.0), fault_timeout=2.0)


def scenario_overlap(rank: int, world: int) -> dict[str, Any]:
    """The same four tests decided at each step's end and one step late (``overlap``): one that
    diverges (momentum 0.9 up to LR 1), rank 1's NaN at step 4, rank 1's data ending after 4 batches, and rank 1 raising in its
    3rd optimizer step. Each records its points (or error), the steps each rank ran, and checks
    the state was restored bitwise."""

    def run(case: str, overlap: bool) -> dict[str, Any]:
        model = ddp(make_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        ran = {"n": 0}

        def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
            ran["n"] += 1
            loss = nn.functional.mse_loss(m(batch[0]), batch[1])
            return loss * math.nan if case == "nan" and rank == 1 and ran["n"] == 4 else loss

        def hook(*_: Any) -> None:
            if case == "error" and rank == 1 and ran["n"] == 3:
                raise ValueError("bad step on rank 1")

        data: Any = shard(global_batches(STEPS), rank, world)
        if case == "exhausted":
            data = iter(shard(global_batches(10 if rank == 0 else 4), rank, world))
        before = capture_state(model, optimizer)
        handle = optimizer.register_step_pre_hook(hook)
        try:
            result = find_lr(
                model,
                optimizer,
                None,
                data,
                start_lr=1e-4,
                end_lr=1.0,
                num_iter=STEPS,
                compute_loss=compute_loss,
                overlap=overlap,
                progress=False,
            )
            record: dict[str, Any] = summary(result)
        except (ValueError, RankFailedError) as error:
            record = {"type": type(error).__name__, "message": str(error)}
        finally:
            handle.remove()
        assert_state_bitwise_equal(before, capture_state(model, optimizer))
        return {**record, "ran": ran["n"]}

    cases = ("diverges", "nan", "exhausted", "error")
    return {
        f"{case}/{mode}": run(case, mode == "late") for case in cases for mode in ("end", "late")
    }


def scenario_fsdp(rank: int, world: int) -> dict[str, Any]:
    """An FSDP2 (``fully_shard``) model: each rank restores its own shards bitwise."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = shard(global_batches(STEPS), rank, world)
    before = capture_state(model, optimizer)
    result = find_lr(
        model,
        optimizer,
        nn.functional.mse_loss,
        data,
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=STEPS,
        diverge_threshold=None,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    local = [type(p).__name__ for p in model.parameters()]
    return {**summary(result), "parameter_types": sorted(set(local))}


def scenario_hand_synced(rank: int, world: int) -> dict[str, Any]:
    """A model without DDP whose loop averages gradients by hand (all_reduce_grads=True), over
    an explicit process_group: the same points as the DDP run of scenario_lr."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    group = dist.new_group(list(range(world)))
    data = shard(global_batches(STEPS), rank, world)
    before = capture_state(model, optimizer)
    result = find_lr(
        model,
        optimizer,
        nn.functional.mse_loss,
        data,
        start_lr=1e-4,
        end_lr=1.0,
        num_iter=STEPS,
        diverge_threshold=None,
        all_reduce_grads=True,
        process_group=group,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return summary(result)


def _dataset(rank: int) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(2 + rank)
    x = torch.randn(4096, 64, generator=gen)
    return torch.utils.data.TensorDataset(x, x[:, :1])


def _wide_model() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))


def scenario_batch(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 has less memory (a smaller budget): its out-of-memory trials count everywhere."""
    model = ddp(_wide_model())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    budget = (4 if rank == 0 else 2) * 2**20
    before = capture_state(model, optimizer)
    result = find_batch_size(
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=_dataset(rank),
        memory_budget=budget,
        max_val=4096,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    # The same search on one process with rank 1's budget (the tighter one).
    alone = _wide_model()
    single = find_batch_size(
        alone,
        torch.optim.Adam(alone.parameters(), lr=1e-3),
        nn.functional.mse_loss,
        dataset=_dataset(rank),
        memory_budget=2 * 2**20,
        max_val=4096,
        progress=False,
        distributed=False,
    )
    return {
        "batch_size": result.batch_size,
        "trials": [(t.size, t.fitted, t.peak_bytes) for t in result.trials],
        "world_size": result.world_size,
        "global_batch": result.global_batch,
        "oom_trials": result.oom_trials,
        "single_batch_size": single.batch_size,
    }


def scenario_batch_error(rank: int, world: int) -> dict[str, Any]:
    """Rank 1's step function raises (not an out-of-memory error) in the 2nd trial."""
    model = ddp(_wide_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    inner = model.module
    calls = {"n": 0}

    def step_fn(size: int) -> None:
        calls["n"] += 1
        if rank == 1 and calls["n"] == 4:
            raise ValueError("corrupt shard on rank 1")
        x = torch.randn(size, 64)
        optimizer.zero_grad()
        inner(x).pow(2).mean().backward()
        optimizer.step()

    before = capture_state(model, optimizer)
    try:
        find_batch_size(model, optimizer, step_fn=step_fn, progress=False)
    except (ValueError, RankFailedError) as error:
        raised = {
            "type": type(error).__name__,
            "message": str(error),
            "rank": getattr(error, "rank", None),
        }
    else:
        raised = {"type": None}
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    return raised


def scenario_batch_rlimit(rank: int, world: int) -> dict[str, Any]:
    """Rank 1 runs under RLIMIT_AS (a real allocator failure), rank 0 without a limit: both end
    on one size, and it really runs on rank 1 under its limit."""
    import gc
    import resource

    torch.backends.mkldnn.enabled = False  # oneDNN keeps scratch memory after a failure
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16384), nn.ReLU(), nn.Linear(16384, 10))
    optimizer = torch.optim.Adam(model.parameters())
    gen = torch.Generator().manual_seed(5)
    data = torch.utils.data.TensorDataset(
        torch.randn(4096, 4, generator=gen), torch.randint(0, 10, (4096,), generator=gen)
    )
    loss_fn = nn.functional.cross_entropy

    def fits(size: int) -> bool:
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

    # Warm up first (threads, lazy imports, allocator reservations) and open and close one
    # search's group, so what the cap leaves is what the trials need.
    fits(1024)
    find_batch_size(model, optimizer, loss_fn, dataset=data, max_trials=1, progress=False)
    if rank == 1:
        vm_size = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
        resource.setrlimit(resource.RLIMIT_AS, (vm_size + 160 * 2**20, resource.RLIM_INFINITY))
    before = capture_state(model, optimizer)
    result = find_batch_size(model, optimizer, loss_fn, dataset=data, progress=False)
    assert_state_bitwise_equal(before, capture_state(model, optimizer))
    assert result.batch_size is not None
    return {
        "batch_size": result.batch_size,
        "trials": [(t.size, t.fitted) for t in result.trials],
        "oom_trials": result.oom_trials,
        "answer_runs_here": fits(result.batch_size),
        "capped": rank == 1,
    }


def scenario_slow(rank: int, world: int, *, only_rank_1: bool = False) -> dict[str, Any]:
    """A long range test for the Ctrl-C test: each rank says when it started, then what it saw.

    ``only_rank_1``: only rank 1 is slow, so at the Ctrl-C rank 0 waits inside DDP's gradient
    all-reduce, a collective rank 1 never joins; and fault_timeout is 120 s, longer than the
    launcher waits before it kills its workers (30 s)."""
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out = Path(os.environ["LRF_OUT"])

    def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        (out / f"started.{rank}").write_text(str(os.getpid()))
        if rank == 1 or not only_rank_1:
            time.sleep(0.2)
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    with _restored_when_interrupted(model, optimizer, out / f"restored.{rank}"):
        find_lr(
            model,
            optimizer,
            None,
            shard(global_batches(STEPS), rank, world),
            num_iter=10_000,
            compute_loss=compute_loss,
            diverge_threshold=None,
            progress=False,
            **({"fault_timeout": 120.0} if only_rank_1 else {}),
        )
    return {}


@contextlib.contextmanager
def _restored_when_interrupted(model: nn.Module, optimizer: Any, record: Path) -> Iterator[None]:
    """On the way out of an interrupted search: check the restore, write what was raised."""
    before = capture_state(model, optimizer)
    try:
        yield
    except BaseException as error:
        assert_state_bitwise_equal(before, capture_state(model, optimizer))
        record.write_text(type(error).__name__)
        raise


def scenario_batch_slow(rank: int, world: int) -> dict[str, Any]:
    """A long batch-size search for the Ctrl-C test (rank 1 alone slow, fault_timeout 120 s):
    each rank says when it started, then what it raised after its restore."""
    model = ddp(make_model())
    inner = model.module
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    out = Path(os.environ["LRF_OUT"])

    def step_fn(size: int) -> None:
        (out / f"started.{rank}").write_text(str(os.getpid()))
        if rank == 1:
            time.sleep(0.2)
        optimizer.zero_grad()
        inner(torch.randn(min(size, 64), 64)).pow(2).mean().backward()
        optimizer.step()

    with _restored_when_interrupted(model, optimizer, out / f"restored.{rank}"):
        find_batch_size(
            model, optimizer, step_fn=step_fn, mode="binsearch", max_trials=10_000,
            max_val=None, steps_per_trial=50, fault_timeout=120.0, progress=False,
        )  # fmt: skip
    return {}


def scenario_slow_one(rank: int, world: int) -> dict[str, Any]:
    """:func:`scenario_slow` with rank 1 alone slow (see there)."""
    return scenario_slow(rank, world, only_rank_1=True)


def _noise_history(monitor: Any) -> list[list[float]]:
    return [[e.b_simple, e.low, e.high] for _, e in monitor.history]


def scenario_noise_scale(rank: int, world: int) -> dict[str, Any]:
    """B_simple under DDP (rank-local gradients vs the all-reduced one, in the communication
    hook) and on one process accumulating the same micro-batches (both shards in turn); then a
    second monitor on the same DDP model (the hook is registered once), a DDP model that has a
    hook of its own (refused), and find_batch_size(noise_scale=True) on every rank."""
    from lrfinder_adapters.gradient_noise import NoiseScaleMonitor

    batches = global_batches(40)
    model = ddp(make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = NoiseScaleMonitor(model, optimizer, micro_batch_size=GLOBAL_BATCH // world)
    for x, y in shard(batches, rank, world):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    monitor.close()
    single = make_model()
    single_optimizer = torch.optim.SGD(single.parameters(), lr=0.05)
    alone = NoiseScaleMonitor(
        single, single_optimizer, micro_batch_size=GLOBAL_BATCH // world, accumulation_steps=world
    )
    for x, y in batches:
        single_optimizer.zero_grad()
        for r in range(world):
            (nn.functional.mse_loss(single(x[r::world]), y[r::world]) / world).backward()
        single_optimizer.step()
    alone.close()
    again = NoiseScaleMonitor(model, optimizer, micro_batch_size=GLOBAL_BATCH // world)
    again.close()
    other = ddp(make_model())
    other.register_comm_hook(None, lambda _, bucket: _allreduce(bucket))
    try:
        NoiseScaleMonitor(other, torch.optim.SGD(other.parameters(), lr=0.1), micro_batch_size=8)
        refused = ""
    except RuntimeError as error:
        refused = str(error)
    wide = ddp(_wide_model())
    wide_optimizer = torch.optim.Adam(wide.parameters(), lr=1e-3)
    before = capture_state(wide, wide_optimizer)
    found = find_batch_size(
        wide,
        wide_optimizer,
        nn.functional.mse_loss,
        dataset=_dataset(rank),
        memory_budget=2 * 2**20,
        max_val=512,
        progress=False,
        noise_scale=True,
        gns_max_steps=8,
    )
    assert_state_bitwise_equal(before, capture_state(wide, wide_optimizer))
    assert found.noise_scale is not None
    return {
        "ddp": _noise_history(monitor),
        "single": _noise_history(alone),
        "refused": refused,
        "found": found.noise_scale.to_dict(),
        "found_b_big": found.noise_scale.b_big,
        "recommended": found.recommendation.batch_size if found.recommendation else None,
    }


def scenario_exit_cleanup(rank: int, world: int) -> dict[str, Any]:
    """The kept search group is destroyed by the exit handler; a later search opens a new one."""
    from lrfinder_adapters import distributed as lrf_dist

    def search() -> Any:
        model = ddp(make_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        data = shard(global_batches(10), rank, world)
        finder = LearningRateFinder(model, optimizer, nn.functional.mse_loss, progress=False)
        finder.find_lr(data, num_iter=10, diverge_threshold=None)
        return finder.result

    search()
    kept = [control for control, _ in lrf_dist._control_groups.values()]
    lrf_dist._close_control_groups()
    left = len(lrf_dist._control_groups)
    registered = [g in dist.distributed_c10d._world.pg_map for g in kept]
    del kept  # the last references: the gloo backend and its threads go now
    again = search()
    return {
        "left": left,
        "registered": registered,
        "again": len(again.losses),
        "reopened": len(lrf_dist._control_groups),
    }


def _allreduce(bucket: Any) -> Any:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


def main() -> None:
    out = Path(sys.argv[1])
    os.environ["LRF_OUT"] = str(out)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for name in sys.argv[2:]:
        try:
            record = globals()[f"scenario_{name}"](rank, world)
        except Exception:
            record = {"crashed": traceback.format_exc()}
        (out / f"{name}.{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""One process of the 2-process Accelerate tests (``torchrun ... accelerate_worker.py OUT ...``).

Each process builds ``Accelerator(cpu=True)`` (gloo under torchrun), runs the scenarios named on
the command line, and writes ``OUT/<scenario>.<rank>.json``.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from lrfinder_adapters.accelerate import find_batch_size, find_executable_batch_size, find_lr
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state

STEPS = 10


def prepared(accelerator: Accelerator) -> tuple[nn.Module, Any, Any]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32 * STEPS, 6, generator=gen)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return accelerator.prepare(model, optimizer, loader)


def points(result: Any) -> dict[str, Any]:
    return {
        "losses": [x if math.isfinite(x) else str(x) for x in result.losses],
        "lrs": list(result.lrs),
        "stop_reason": str(result.stop_reason),
        "world_size": result.world_size,
    }


def scenario_lr(accelerator: Accelerator) -> dict[str, Any]:
    """A range test on both processes: the same points, everything restored."""
    model, optimizer, loader = prepared(accelerator)
    before = capture_state(model, optimizer.optimizer)
    result = find_lr(
        accelerator,
        model,
        optimizer,
        loader,
        nn.functional.mse_loss,
        num_iter=STEPS,
        diverge_threshold=None,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    return points(result)


def scenario_nan(accelerator: Accelerator) -> dict[str, Any]:
    """Process 1's loss is NaN at its 3rd step: both stop there."""
    model, optimizer, loader = prepared(accelerator)
    rank, calls = accelerator.process_index, {"n": 0}

    def compute_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.mse_loss(m(batch[0]), batch[1])
        return loss * math.nan if rank == 1 and calls["n"] == 3 else loss

    before = capture_state(model, optimizer.optimizer)
    result = find_lr(
        accelerator,
        model,
        optimizer,
        loader,
        compute_loss=compute_loss,
        num_iter=STEPS,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    return points(result)


def scenario_batch(accelerator: Accelerator) -> dict[str, Any]:
    """Process 1 has half the memory budget: both end on one size that fits on process 1."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4096, 64, generator=gen)
    budget = (4 if accelerator.process_index == 0 else 2) * 2**20
    before = capture_state(model, optimizer.optimizer)
    result = find_batch_size(
        accelerator,
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=torch.utils.data.TensorDataset(x, x[:, :1]),
        memory_budget=budget,
        progress=False,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    return {
        "batch_size": result.batch_size,
        "oom_trials": result.oom_trials,
        "trials": [(t.size, t.fitted) for t in result.trials],
        "world_size": result.world_size,
        # The largest peak over the ranks (the reduce keeps the larger), of the answer's trial.
        "answer_peak": max(
            (t.peak_bytes or 0 for t in result.trials if t.fitted and t.size == result.batch_size),
            default=None,
        ),
    }


def scenario_noise(accelerator: Accelerator) -> dict[str, Any]:
    """find_batch_size(noise_scale=True) on 2 processes: every process measures the same steps
    (the small gradient its own, the big one DDP's reduced one) and reports the same estimate."""
    import dataclasses
    import math

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    gen = torch.Generator().manual_seed(1 + accelerator.process_index)  # each its own shard
    x = torch.randn(1024, 8, generator=gen)
    dataset = torch.utils.data.TensorDataset(x, x @ torch.ones(8, 1))
    before = capture_state(model, optimizer.optimizer)
    result = find_batch_size(
        accelerator,
        model,
        optimizer,
        nn.functional.mse_loss,
        dataset=dataset,
        memory_budget=300_000,
        progress=False,
        noise_scale=True,
        gns_max_steps=12,
    )
    assert_state_bitwise_equal(before, capture_state(model, optimizer.optimizer))
    assert result.noise_scale is not None
    return {
        "batch_size": result.batch_size,
        "world_size": result.world_size,
        "noise": {
            k: (v if math.isfinite(v) else str(v)) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(result.noise_scale).items()
        },
        "recommended": None if result.recommendation is None else result.recommendation.batch_size,
    }


def scenario_decorator(accelerator: Accelerator) -> dict[str, Any]:
    """Processes with different limits (60 and 90): both end on one size, ≤ 60."""
    limit = 60 if accelerator.process_index == 1 else 90
    tried: list[int] = []

    @find_executable_batch_size(
        starting_batch_size=8, mode="binsearch", margin=0.0, accelerator=accelerator
    )
    def train(batch_size: int) -> int:
        tried.append(batch_size)
        if batch_size > limit:
            raise RuntimeError("CUDA out of memory.")
        return batch_size

    return {"answer": train(), "tried": tried}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    for name in sys.argv[2:]:
        try:
            record = globals()[f"scenario_{name}"](accelerator)
        except Exception:
            record = {"crashed": traceback.format_exc()}
        (out / f"{name}.{rank}.json").write_text(json.dumps(record))
        accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()

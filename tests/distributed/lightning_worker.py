"""One rank of the 2-process Lightning tests: ``Trainer(strategy="ddp", devices=2)`` under torchrun.

Runs the scenarios named on the command line and writes ``OUT/<scenario>.<rank>.json``.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lrfinder_adapters.lightning import Tuner
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state


class Regressor(pl.LightningModule):
    """A small MLP regression; ``nan_at`` makes rank 1's loss NaN at that training step."""

    def __init__(self, nan_at: int | None = None, raise_at: int | None = None) -> None:
        super().__init__()
        self.lr = 1e-3
        self.nan_at = nan_at
        self.raise_at = raise_at
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )
        self.calls = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.calls += 1
        if self.raise_at is not None and self.global_rank == 1 and self.calls == self.raise_at:
            raise KeyError("missing column on rank 1")  # before backward: rank 0 waits in DDP
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        if self.nan_at is not None and self.global_rank == 1 and self.calls == self.nan_at:
            loss = loss * math.nan
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 4, generator=g)
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=32)


def trainer(**overrides: Any) -> pl.Trainer:
    """A quiet 2-process DDP trainer on the CPU (one epoch unless ``overrides`` say)."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**options, **overrides})


def run(model: Regressor) -> dict[str, Any]:
    t = trainer()
    found = Tuner(t).lr_find(model, num_training=20, update_attr=False, early_stop_threshold=None)
    assert found is not None
    result = found.result
    return {
        "losses": [x if math.isfinite(x) else str(x) for x in result.losses],
        "lrs": list(result.lrs),
        "stop_reason": str(result.stop_reason),
        "world_size": result.world_size,
        "suggestion": found.suggestion(),
        "global_step": t.global_step,
    }


def scenario_lr() -> dict[str, Any]:
    """Tuner.lr_find under DDP: the same points on both ranks, the model restored bitwise."""
    torch.manual_seed(0)
    model = Regressor()
    before = capture_state(model, torch.optim.SGD(model.parameters()))
    record = run(model)
    assert_state_bitwise_equal(
        {k: v for k, v in before.items() if k != "optimizer"},
        {
            k: v
            for k, v in capture_state(model, torch.optim.SGD(model.parameters())).items()
            if k != "optimizer"
        },
    )
    return record


def scenario_nan() -> dict[str, Any]:
    """Rank 1's loss is NaN at its 5th step: both ranks stop there."""
    torch.manual_seed(0)
    return run(Regressor(nan_at=5))


class Sized(Regressor):
    """The regressor with a ``batch_size`` attribute its train dataloader reads."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 4
        self.shapes: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.shapes.append(batch[0].shape[0])
        return super().training_step(batch, batch_idx)

    def train_dataloader(self) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2048, 4, generator=g)
        data = TensorDataset(x, x.sum(dim=1, keepdim=True))
        return DataLoader(data, batch_size=self.batch_size)


BUDGETS = (100_000, 20_000)
"""Each rank's memory_budget: rank 1's is the smaller, so rank 1 decides the size."""


def scenario_batch() -> dict[str, Any]:
    """Tuner.scale_batch_size under DDP, rank 1 with a smaller budget: the same size on both."""
    import os

    torch.manual_seed(0)
    rank = int(os.environ.get("RANK", 0))
    model = Sized()
    before = capture_state(model, torch.optim.SGD(model.parameters()))
    t = trainer()
    finder_options = {"memory_budget": BUDGETS[rank], "progress": False}
    found = Tuner(t).scale_batch_size(model, mode="binsearch", init_val=32, **finder_options)
    assert_state_bitwise_equal(
        {k: v for k, v in before.items() if k != "optimizer"},
        {
            k: v
            for k, v in capture_state(model, torch.optim.SGD(model.parameters())).items()
            if k != "optimizer"
        },
    )
    return {
        "found": found,
        "type": type(found).__name__,
        "batch_size": model.batch_size,
        "global_step": t.global_step,
        "sizes": sorted(set(model.shapes)),
    }


def scenario_noise() -> dict[str, Any]:
    """NoiseScaleCallback in a DDP fit: the ranks' micro-batches are the small batches, the
    all-reduced gradient the big one; every estimate the callback kept, per rank."""
    from lrfinder_adapters.lightning import NoiseScaleCallback

    torch.manual_seed(0)
    callback = NoiseScaleCallback(log_every_n_steps=1)
    t = trainer(max_steps=12, max_epochs=None, callbacks=[callback])
    t.fit(Regressor())
    return {
        "history": [
            {
                "step": step,
                "b_simple": e.b_simple,
                "low": e.low,
                "high": e.high,
                "b_small": e.b_small,
                "b_big": e.b_big,
                "steps": e.steps,
            }
            for step, e in callback.history
        ],
        "global_step": t.global_step,
    }


def scenario_batch_noise() -> dict[str, Any]:
    """BatchSizeFinder(noise_scale=True) under DDP, rank 1 with the smaller budget: the same
    size and the same noise-scale estimate on both ranks (each rank's gradient is a small
    batch, DDP's reduced one the big batch)."""
    import dataclasses
    import os

    from lrfinder_adapters.lightning import BatchSizeFinder

    class Snapshot(pl.Callback):
        """The module's and optimizer's state at fit start (before or after the finder's)."""

        def __init__(self) -> None:
            self.state: dict[str, Any] = {}

        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.state = capture_state(pl_module, trainer.optimizers[0])

    torch.manual_seed(0)
    rank = int(os.environ.get("RANK", 0))
    before, after = Snapshot(), Snapshot()
    finder = BatchSizeFinder(
        mode="binsearch",
        init_val=32,
        memory_budget=BUDGETS[rank],
        noise_scale=True,
        gns_max_steps=8,
        progress=False,
    )
    t = trainer(limit_train_batches=2, callbacks=[before, finder, after])
    t.fit(Sized())
    assert_state_bitwise_equal(before.state, after.state)  # the search and its noise steps
    result = finder.result
    assert result is not None and result.noise_scale is not None
    return {
        "batch_size": result.batch_size,
        "noise": {
            k: (v if math.isfinite(v) else str(v)) if isinstance(v, float) else v
            for k, v in dataclasses.asdict(result.noise_scale).items()
        },
        "recommended": None if result.recommendation is None else result.recommendation.batch_size,
        "accumulate": t.accumulate_grad_batches,
    }


def scenario_error() -> dict[str, Any]:
    """Rank 1's training_step raises at its 3rd step while rank 0 waits in DDP's all-reduce:
    both raise within about fault_timeout, rank 0 naming rank 1; both models restored."""
    import time

    from lrfinder_plugins import RankFailedError

    torch.manual_seed(0)
    model = Regressor(raise_at=3)
    optimizer = torch.optim.SGD(model.parameters())
    before = capture_state(model, optimizer)
    start = time.monotonic()
    try:
        Tuner(trainer()).lr_find(
            model, num_training=20, update_attr=False, early_stop_threshold=None, fault_timeout=5.0
        )
    except (KeyError, RankFailedError) as error:
        raised: dict[str, Any] = {
            "type": type(error).__name__,
            "message": str(error),
            "rank": getattr(error, "rank", None),
        }
    else:
        raised = {"type": None}
    raised["seconds"] = time.monotonic() - start
    after = capture_state(model, optimizer)
    assert_state_bitwise_equal(
        {k: v for k, v in before.items() if k not in ("optimizer", "rng")},
        {k: v for k, v in after.items() if k not in ("optimizer", "rng")},
    )
    return raised


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for name in sys.argv[2:]:
        rank = 0
        try:
            record = globals()[f"scenario_{name}"]()
        except Exception:
            record = {"crashed": traceback.format_exc()}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        else:
            import os

            rank = int(os.environ.get("RANK", 0))
        (out / f"{name}.{rank}.json").write_text(json.dumps(record))
    if torch.distributed.is_initialized():
        # Lightning leaves the group of a torchrun launch to the script: a gloo group that
        # outlives the interpreter's teardown can abort the process as it exits.
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

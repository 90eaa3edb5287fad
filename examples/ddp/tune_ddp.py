"""Find the batch size, then the LR, of a DDP model on every rank of ``torchrun``.

Run it on one machine (CPU processes with gloo, or one process per GPU with NCCL)::

    torchrun --nproc_per_node 2 examples/ddp/tune_ddp.py
    torchrun --nproc_per_node 8 examples/ddp/tune_ddp.py --global-batch 1024

or on several nodes (the same command on each, as torchrun documents)::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 examples/ddp/tune_ddp.py

Every rank runs the same calls as on one process; the library sees the initialised process
group, reduces each step's loss (and each trial's outcome) across ranks once, and every rank
gets the same answer. Only rank 0 prints, plots and writes files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lrfinder_adapters.batch_size import tune


def make_dataset(samples: int = 8192, features: int = 32, classes: int = 4) -> TensorDataset:
    """A synthetic classification task (the same on every rank: a fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, features, generator=gen)
    w = torch.randn(features, classes, generator=gen)
    return TensorDataset(x, (x @ w).argmax(dim=1))


def main() -> None:
    """Tune batch size and LR on every rank; rank 0 reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global-batch", type=int, default=None, help="keep this global batch")
    parser.add_argument("--out", type=Path, default=Path(".logs"), help="where rank 0 writes")
    parser.add_argument(
        "--memory-budget-mib", type=int, default=None,
        help="bytes a step may use (default on CPU: 8 MiB, a pretend device; on CUDA: the card)",
    )
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if device is not None:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4)).to(device or "cpu")
    model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataset = make_dataset()
    budget_mib = args.memory_budget_mib or (None if cuda else 8)
    budget = None if budget_mib is None else budget_mib * 2**20

    def make_loader(batch_size: int) -> DataLoader:
        # Each rank reads its own shard, as in training.
        sampler = DistributedSampler(dataset, shuffle=True, seed=0, drop_last=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)

    found = tune(
        model,
        optimizer,
        nn.functional.cross_entropy,
        make_loader=make_loader,
        device=device,
        batch_options={
            "max_val": len(dataset) // dist.get_world_size(),
            "target_batch": args.global_batch,
            "memory_budget": budget,
        },
        lr_options={"num_iter": 100},
        progress=rank == 0,
    )
    suggestion = found.lr.suggestion()
    if rank == 0:
        print(f"✓ Optimal batch size found: {found.batch_size} per rank "
              f"× {found.accumulation_steps} accumulation × {found.batch.world_size} ranks "
              f"= {found.batch.global_batch} per step")
        print(f"✓ Suggested learning rate: {suggestion.lr:.2e} "
              f"(confidence {suggestion.confidence:.2f}, range {suggestion.lower:.2e} "
              f"… {suggestion.upper:.2e})")
        found.lr.plot(args.out / "lr_finder_plot.png")
        found.lr.save_json(args.out / "lr_finder.json")
        print(f"LR finder plot saved to: {args.out / 'lr_finder_plot.png'}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""The range test and the batch-size search in an Accelerate script, one process or many.

Runs unchanged with::

    python examples/accelerate/tune_accelerate.py                       # one process
    torchrun --nproc_per_node 2 examples/accelerate/tune_accelerate.py --cpu   # 2 CPU processes
    accelerate launch examples/accelerate/tune_accelerate.py   # your `accelerate config` (GPUs,
                                                               # nodes, FSDP)

Only the main process prints and writes the plot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrfinder_adapters.accelerate import find_batch_size, find_executable_batch_size, find_lr


def main() -> None:
    """Batch size (direct form), then the LR at that size, then the decorator."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU processes even with GPUs")
    parser.add_argument("--out", type=Path, default=Path(".logs"))
    args = parser.parse_args()
    accelerator = Accelerator(cpu=args.cpu)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(1)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=gen)
    dataset = TensorDataset(x, (x @ torch.randn(32, 4, generator=gen)).argmax(dim=1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = nn.functional.cross_entropy

    # 1. The largest per-process batch that fits everywhere (on CPU: a pretend 8 MiB device),
    #    keeping a global batch of 512 through gradient_accumulation_steps.
    budget = 8 * 2**20 if accelerator.device.type == "cpu" else None
    found = find_batch_size(
        accelerator,
        model,
        optimizer,
        loss_fn,
        dataset=dataset,
        memory_budget=budget,
        target_batch=512,
        max_val=1024,
        progress=accelerator.is_main_process,
    )
    loader = accelerator.prepare(DataLoader(dataset, batch_size=found.batch_size, shuffle=True))

    # 2. The LR range test at that size, through accumulate / backward / clip_grad_norm_.
    result = find_lr(
        accelerator, model, optimizer, loader, loss_fn, num_iter=100, max_grad_norm=1.0
    )
    suggestion = result.suggestion()

    # 3. accelerate's decorator, searched by our engine and agreed by every process.
    @find_executable_batch_size(starting_batch_size=64, mode="power", accelerator=accelerator)
    def largest_eval_batch(batch_size: int) -> int:
        with torch.no_grad():
            model(torch.randn(batch_size, 32, device=accelerator.device))
        return batch_size

    largest = largest_eval_batch()
    if accelerator.is_main_process:
        print(
            f"✓ Optimal batch size found: {found.batch_size} per process × "
            f"{accelerator.gradient_accumulation_steps} accumulation × "
            f"{accelerator.num_processes} processes = {found.global_batch}"
        )
        print(
            f"✓ Suggested learning rate: {suggestion.lr:.2e} (confidence "
            f"{suggestion.confidence:.2f}, range {suggestion.lower:.2e} … {suggestion.upper:.2e})"
        )
        print(f"✓ Evaluation batch that runs: {largest}")
        result.plot(args.out / "lr_finder_plot.png")
        print(f"LR finder plot saved to: {args.out / 'lr_finder_plot.png'}")
    accelerator.end_training()


if __name__ == "__main__":
    main()

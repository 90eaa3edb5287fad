"""A small classification task for ``lrfinder tune``: runs on a CPU in seconds, no downloads.

``TinyClassifier`` and ``TinyDataModule`` are what ``run.toml`` and ``run.yaml`` name (a
LightningModule and a LightningDataModule); ``make_parts`` is what ``torch_run.toml`` names (a
plain-PyTorch factory). The data is generated in code from a fixed seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

FEATURES = 16
CLASSES = 4


def make_dataset(samples: int = 512, seed: int = 0) -> TensorDataset:
    """A classification problem drawn from a random linear teacher, with label noise."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=gen)
    logits = inputs @ torch.randn(FEATURES, CLASSES, generator=gen)
    targets = (logits + 0.3 * torch.randn(samples, CLASSES, generator=gen)).argmax(dim=1)
    return TensorDataset(inputs, targets)


def make_model(hidden: int = 32) -> torch.nn.Module:
    """A two-layer MLP."""
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, CLASSES)
    )


def make_parts(config: dict[str, Any]) -> dict[str, Any]:
    """The plain-PyTorch factory: model, optimizer, loss and dataset from the whole config."""
    model_config = config["module_config"]
    optimizer_config = model_config["optimizer"]
    model = make_model(model_config.get("hidden", 32))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optimizer_config["learning_rate"],
        weight_decay=optimizer_config.get("weight_decay", 0.0),
    )
    dataset = make_dataset(config["datamodule_config"].get("samples", 512))
    return {
        "model": model,
        "optimizer": optimizer,
        "loss_fn": torch.nn.functional.cross_entropy,
        "dataset": dataset,
    }


try:
    import lightning.pytorch as pl
except ImportError:  # the torch factory above needs no Lightning
    pass
else:

    class TinyClassifier(pl.LightningModule):
        """The MLP as a LightningModule: AdamW at ``learning_rate``, optionally OneCycleLR.

        Args:
            hidden: the hidden layer's width.
            learning_rate: the optimizer's LR (the LR finder sets ``self.learning_rate``).
            weight_decay: AdamW's weight decay.
            scheduler: ``OneCycleLR`` arguments (``max_lr``, ``div_factor``, ...); ``None``:
                a constant LR.
            optimizer: the seed's layout: ``{"learning_rate": ..., "weight_decay": ...}``
                (overrides the two arguments above).
        """

        def __init__(
            self,
            hidden: int = 32,
            learning_rate: float = 1e-3,
            weight_decay: float = 0.0,
            scheduler: dict[str, Any] | None = None,
            optimizer: dict[str, Any] | None = None,
        ) -> None:
            super().__init__()
            optimizer = optimizer or {}
            self.learning_rate = float(optimizer.get("learning_rate", learning_rate))
            self.weight_decay = float(optimizer.get("weight_decay", weight_decay))
            self.scheduler = dict(scheduler or {})
            self.net = make_model(hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """The class logits."""
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            """Cross-entropy on one batch."""
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self) -> Any:
            """AdamW at ``self.learning_rate``; OneCycleLR over the fit when configured."""
            optimizer = torch.optim.AdamW(
                self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
            )
            if not self.scheduler:
                return optimizer
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, total_steps=max(total, 1), **self.scheduler
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }

    class TinyDataModule(pl.LightningDataModule):
        """The task's data, loaded at ``batch_size`` (the batch-size finder sets it).

        Args:
            batch_size: the training batch size.
            samples: how many examples to generate.
        """

        def __init__(self, batch_size: int = 16, samples: int = 512) -> None:
            super().__init__()
            self.batch_size = batch_size
            self.samples = samples

        def setup(self, stage: str) -> None:
            """Generate the data."""
            self.train_set = make_dataset(self.samples)

        def train_dataloader(self) -> DataLoader[Any]:
            """Shuffled batches of ``self.batch_size`` (rebuilt by the batch-size finder)."""
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

"""The seed guide's "Complete Example", end to end, with only the imports changed."""

from __future__ import annotations

import inspect
import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lrfinder_plugins import LearningRateFinder


class SequenceEncoder(nn.Module):
    """A small stand-in for the guide's SequenceEncoder: embedding, encoder, two heads."""

    def __init__(self, vocab_size: int = 6, embedding_dim: int = 16, max_bp: int = 12) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.position = nn.Parameter(torch.zeros(max_bp, embedding_dim))
        self.encoder = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.GELU(),
            nn.LayerNorm(embedding_dim),
            nn.Dropout(0.1),
        )
        self.base_head = nn.Linear(embedding_dim, 1)
        self.nuc_head = nn.Linear(embedding_dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.encoder(self.embedding(tokens) + self.position[: tokens.shape[1]])
        return {
            "base_prediction": self.base_head(hidden.mean(dim=1)).squeeze(-1),
            "nuc_prediction": self.nuc_head(hidden),
        }


class MultiTaskLoss(nn.Module):
    """A stand-in for the guide's MultiTaskLoss: a dict with "total_loss" and its parts."""

    def __init__(self, penalty: float = 1.0, nuc_penalty: float = 0.0) -> None:
        super().__init__()
        self.penalty, self.nuc_penalty = penalty, nuc_penalty

    def forward(self, outputs: dict[str, torch.Tensor], targets: Any) -> dict[str, torch.Tensor]:
        base_loss = nn.functional.mse_loss(outputs["base_prediction"], targets["base_target"])
        nuc_loss = nn.functional.cross_entropy(
            outputs["nuc_prediction"].flatten(0, 1), targets["tokens"].flatten()
        )
        total = self.penalty * base_loss + self.nuc_penalty * nuc_loss
        return {"total_loss": total, "base_loss": base_loss, "nuc_loss": nuc_loss}


class ASVDataset(Dataset):
    """Synthetic token sequences whose target depends on their composition."""

    def __init__(self, samples: int = 160, length: int = 12) -> None:
        gen = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(1, 6, (samples, length), generator=gen)
        self.target = (self.tokens == 2).float().mean(dim=1) * 4.0 - 1.0

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.target[index]


def collate_dicts(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    tokens, target = torch.stack([t for t, _ in items]), torch.stack([y for _, y in items])
    return {"inputs": tokens, "targets": {"base_target": target, "tokens": tokens}}


def collate_tuples(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[Any, Any]:
    batch = collate_dicts(items)
    return batch["inputs"], batch["targets"]


@pytest.fixture(autouse=True)
def _no_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example's call stays verbatim (progress on by default); keep the test output clean.
    monkeypatch.setenv("LRFINDER_DISABLE_PLUGINS", "lrfinder.progress")


@pytest.mark.parametrize("collate_fn", [collate_dicts, collate_tuples], ids=["dicts", "tuples"])
def test_complete_example_runs_and_plots(tmp_path: Path, collate_fn: Any) -> None:
    """The guide's example: 100 LRs from 1e-7 to 10, a finite suggestion in range, a PNG plot."""
    train_dataset = ASVDataset()
    train_loader = DataLoader(train_dataset, batch_size=32, shuffle=True, collate_fn=collate_fn)

    model = SequenceEncoder(vocab_size=6, embedding_dim=16, max_bp=12)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = MultiTaskLoss(penalty=1.0, nuc_penalty=0.0)

    lr_finder = LearningRateFinder(model, optimizer, loss_fn, device)
    lrs, losses, suggested_lr = lr_finder.find_lr(
        train_loader,
        start_lr=1e-7,
        end_lr=10.0,
        num_iter=100,
    )

    output_path = tmp_path / "lr_finder_plot.png"
    fig = lr_finder.plot(output_path=output_path)
    plt.close(fig)

    assert len(lrs) == len(losses) > 10
    assert lrs[0] == 1e-7 and all(a < b for a, b in itertools.pairwise(lrs))
    assert math.isfinite(suggested_lr) and 1e-7 <= suggested_lr <= 10.0
    assert output_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_lr_defaults_match_the_guide() -> None:
    """find_lr's defaults are the guide's: (1e-7, 10.0, 100, 0.05, 5.0)."""
    params = inspect.signature(LearningRateFinder.find_lr).parameters
    names = ("start_lr", "end_lr", "num_iter", "smooth_factor", "diverge_threshold")
    assert tuple(params[n].default for n in names) == (1e-7, 10.0, 100, 0.05, 5.0)


def test_plot_defaults_match_the_guide() -> None:
    """plot's defaults are the guide's: (output_path=None, skip_start=10, skip_end=5)."""
    params = inspect.signature(LearningRateFinder.plot).parameters
    names = ("output_path", "skip_start", "skip_end")
    assert tuple(params[n].default for n in names) == (None, 10, 5)


def test_constructor_takes_the_guides_positional_arguments() -> None:
    """``LearningRateFinder(model, optimizer, loss_fn, device)`` in that order."""
    params = list(inspect.signature(LearningRateFinder.__init__).parameters)
    assert params[1:5] == ["model", "optimizer", "loss_fn", "device"]

"""The TensorBoard observer (extra ``tensorboard``): each point, the suggestion, each trial."""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lrfinder_plugins import NoSuggestionWarning, batch_size_search, get_plugin_manager, range_test

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

from lrfinder_adapters.tensorboard import ENV, TensorBoardObserver
from tests.adapters.conftest import Batch


def runs(root: Path) -> list[Path]:
    """The run directories (those holding an event file) under ``root``."""
    return sorted({event.parent for event in root.rglob("events.out.tfevents.*")})


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run, as (step, value) pairs."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def sweep(model: nn.Module, optimizer: Any, batches: list[Batch], **options: Any) -> Any:
    settings = {"start_lr": 1e-4, "end_lr": 1.0, "num_iter": 12, "progress": False, **options}
    return range_test(
        model, optimizer=optimizer, loss_fn=nn.functional.mse_loss, train_loader=batches, **settings
    )


def test_each_point_is_logged(
    tmp_path: Path, model: nn.Module, optimizer: Any, batches: list[Batch]
) -> None:
    """lr, loss and smoothed loss per point, at the point's index, in one run per search."""
    get_plugin_manager().register(TensorBoardObserver(tmp_path), name="test.tensorboard")
    result = sweep(model, optimizer, batches)
    (run,) = runs(tmp_path)
    logged = scalars(run)
    assert [v for _, v in logged["lr_finder/lr"]] == pytest.approx(list(result.lrs))
    assert [v for _, v in logged["lr_finder/loss"]] == pytest.approx(list(result.losses))
    assert [s for s, _ in logged["lr_finder/smoothed_loss"]] == list(range(len(result)))
    assert run.name.startswith("lr_range_test-")


class ValleyStep:
    """A deterministic TrainingStep (no torch): the loss dips at LR 1e-2, then rises."""

    def __init__(self) -> None:
        self.lr = 0.0

    def snapshot(self) -> None:
        return None

    def restore(self, snapshot: None) -> None:
        pass

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def run(self) -> float:
        return 1.0 + (math.log10(self.lr) + 2.0) ** 2 / 10


def test_the_suggestion_is_logged(tmp_path: Path) -> None:
    """The chosen method's suggestion is a scalar at its point, with a summary text."""
    get_plugin_manager().register(
        TensorBoardObserver(tmp_path, method="minimum"), name="test.tensorboard"
    )
    result = range_test(ValleyStep(), start_lr=1e-5, end_lr=10.0, num_iter=60, progress=False)
    with warnings.catch_warnings():  # the curve's confidence is not what this test is about
        warnings.simplefilter("ignore", NoSuggestionWarning)
        suggestion = result.suggestion("minimum")
    assert suggestion.ok
    (run,) = runs(tmp_path)
    events = EventAccumulator(str(run)).Reload()
    assert scalars(run)["lr_finder/suggested_lr"] == [
        (suggestion.index, pytest.approx(suggestion.lr))
    ]
    assert "lr_finder/summary/text_summary" in events.Tags()["tensors"]


def test_environment_variable_turns_the_entry_point_plugin_on(
    tmp_path: Path,
    model: nn.Module,
    optimizer: Any,
    batches: list[Batch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LRFINDER_TENSORBOARD=<dir>: the lrfinder.tensorboard plugin logs every search there."""
    monkeypatch.setenv(ENV, str(tmp_path / "tb"))
    result = sweep(model, optimizer, batches)
    (run,) = runs(tmp_path / "tb")
    assert len(scalars(run)["lr_finder/loss"]) == len(result)


def test_without_the_environment_variable_nothing_is_written(
    tmp_path: Path,
    model: nn.Module,
    optimizer: Any,
    batches: list[Batch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The entry-point plugin is inert until LRFINDER_TENSORBOARD names a directory."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    sweep(model, optimizer, batches)
    assert list(tmp_path.iterdir()) == []


def test_user_writer_is_flushed_not_closed(
    tmp_path: Path, model: nn.Module, optimizer: Any, batches: list[Batch]
) -> None:
    """A writer the user passes receives the scalars and stays usable afterwards."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    get_plugin_manager().register(TensorBoardObserver(writer=writer), name="test.tensorboard")
    sweep(model, optimizer, batches)
    writer.add_scalar("training/loss", 1.0, 0)  # still open
    writer.close()
    assert {"lr_finder/lr", "training/loss"} <= set(scalars(tmp_path))


def test_batch_size_trials_are_logged(tmp_path: Path, model: nn.Module, optimizer: Any) -> None:
    """A batch-size search logs each trial's size and outcome, and the size found."""
    get_plugin_manager().register(TensorBoardObserver(tmp_path), name="test.tensorboard")
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    result = batch_size_search(
        model,
        optimizer=optimizer,
        loss_fn=nn.functional.mse_loss,
        dataset=data,
        steps_per_trial=1,
        max_val=16,
        progress=False,
    )
    (run,) = runs(tmp_path)
    logged = scalars(run)
    assert [v for _, v in logged["batch_size/size"]] == [t.size for t in result.trials]
    assert logged["batch_size/found"] == [(0, result.batch_size)]


def test_missing_tensorboard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the tensorboard package: an ImportError naming pip install '...[tensorboard]'."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'lrfinder-plugins\[tensorboard\]'"):
        TensorBoardObserver(tmp_path)


def test_log_dir_and_writer_are_exclusive(tmp_path: Path) -> None:
    """Passing both a directory and a writer is ambiguous: a TypeError."""
    with pytest.raises(TypeError, match="not both"):
        TensorBoardObserver(tmp_path, writer=object())

"""The Lightning adapter with a real ``lightning.pytorch.Trainer`` (CPU, single process)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lrfinder_adapters.lightning import (
    BatchSizeFinder,
    LearningRateFinder,
    LRFinderResult,
    Tuner,
    TuneResult,
    tune,
)
from lrfinder_adapters.testing import assert_state_bitwise_equal, capture_state
from lrfinder_plugins import RangeTestResult

pytestmark = [
    # Lightning's advice for tiny CPU test setups, not faults of the adapter.
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used:UserWarning"),
    # Lightning's pytree helper against a newer torch (a deprecation inside Lightning).
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[0.5], [-0.3], [0.2], [0.4]]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(pl.LightningModule):
    """A small MLP regression with an LR attribute, Adam and a StepLR schedule."""

    def __init__(self, lr: float = 1e-3, groups: bool = False) -> None:
        super().__init__()
        self.lr = lr
        self.groups = groups
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 1)
        self.losses: list[float] = []
        self.group_lrs: list[list[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        self.group_lrs.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])
        return loss

    def configure_optimizers(self) -> Any:
        if self.groups:
            params = [
                {"params": self.body.parameters(), "lr": self.lr * 0.1},
                {"params": self.head.parameters(), "lr": self.lr},
            ]
        else:
            params = [{"params": self.parameters()}]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_data(512), batch_size=32, shuffle=True)


class NoLR(Regressor):
    """No ``lr`` attribute anywhere."""

    def __init__(self) -> None:
        super().__init__()
        del self.lr

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(**kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Probe(pl.Callback):
    """Captures the full state at fit start; ``prime`` first makes the optimizer state non-trivial."""

    def __init__(self, prime: bool = False) -> None:
        self.prime = prime
        self.state: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        if self.prime:  # one step and one schedule step: Adam moments, a scheduler count
            x, y = _data(8, seed=1).tensors
            torch.nn.functional.mse_loss(pl_module(x), y).backward()
            optimizers[0].step()
            schedulers[0].step()
        self.state = {
            "torch": [
                capture_state(pl_module, o, schedulers=schedulers if i == 0 else ())
                for i, o in enumerate(optimizers)
            ],
            "global_step": trainer.global_step,
            "current_epoch": trainer.current_epoch,
            "loop": trainer.fit_loop.state_dict(),
        }
        trainer.should_stop = True  # nothing more of this fit is needed


def _assert_put_back(before: _Probe, after: _Probe, trainer: pl.Trainer, finder: Any) -> None:
    """What the probe saw before the finder is what it sees after: state, counters, settings."""
    for saved, now in zip(before.state["torch"], after.state["torch"], strict=True):
        assert_state_bitwise_equal(saved, now)
    for key in ("global_step", "current_epoch", "loop"):
        assert before.state[key] == after.state[key], key
    assert trainer.limit_val_batches == 1.0 and trainer.max_epochs == 1
    assert trainer.callbacks[:3] == [before, finder, after]


def test_callback_restores_everything_bitwise() -> None:
    pl.seed_everything(0, verbose=False)
    before, after = _Probe(prime=True), _Probe()
    finder = LearningRateFinder(num_training_steps=15, update_attr=False, progress=False)
    trainer = _trainer(callbacks=[before, finder, after], limit_train_batches=4)
    model = Regressor()
    trainer.fit(model)
    assert finder.optimal_lr is not None and len(finder.optimal_lr.results["lr"]) == 15
    _assert_put_back(before, after, trainer, finder)


def test_tuner_restores_model_rng_and_counters(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = Regressor()
    trainer = _trainer(default_root_dir=tmp_path)
    shadow = torch.optim.SGD(model.parameters(), lr=0.1)  # only to fit capture_state's signature
    before = capture_state(model, shadow)
    found = Tuner(trainer).lr_find(model, num_training=20, update_attr=False, progress=False)
    assert_state_bitwise_equal(before, capture_state(model, shadow))
    assert (trainer.global_step, trainer.current_epoch) == (0, 0)
    assert trainer.fit_loop.epoch_progress.current.completed == 0
    assert not list(tmp_path.rglob("*.ckpt")) and not trainer.should_stop
    assert isinstance(found, LRFinderResult) and len(found.results["lr"]) == 20
    assert not any(isinstance(cb, LearningRateFinder) for cb in trainer.callbacks)


def test_sweep_is_not_cut_by_max_epochs_or_limit_train_batches() -> None:
    model = Regressor()
    trainer = _trainer(limit_train_batches=10, max_epochs=1, max_steps=3)
    found = Tuner(trainer).lr_find(
        model, num_training=30, early_stop_threshold=None, update_attr=False, progress=False
    )
    assert len(found.results["lr"]) == len(found.results["loss"]) == 30
    assert len(model.losses) == 30  # one batch per point, across 3 epochs of 10 batches
    assert found.result.stop_reason == "budget"
    assert found.results["lr"][0] == pytest.approx(1e-8) and found.results["lr"][-1] == 1.0


class _Validating(Regressor):
    def __init__(self) -> None:
        super().__init__()
        self.validated = 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.validated += 1

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_data(8), batch_size=4)


def test_fit_after_lr_find_equals_fit_without() -> None:
    def run(tune: str) -> tuple[dict[str, torch.Tensor], _Validating]:
        pl.seed_everything(0, verbose=False)
        model = _Validating()
        callbacks = []
        if tune == "callback":
            callbacks = [
                LearningRateFinder(num_training_steps=12, update_attr=False, progress=False)
            ]
        trainer = _trainer(
            max_epochs=2, limit_train_batches=5, val_check_interval=2, callbacks=callbacks
        )
        if tune == "tuner":
            Tuner(trainer).lr_find(model, num_training=12, update_attr=False, progress=False)
            assert model.validated == 0  # no validation inside the sweep
        model.losses.clear()
        trainer.fit(model)
        assert trainer.global_step == 10 and trainer.current_epoch == 2
        return _params(model), model

    plain, plain_model = run("none")
    for kind in ("tuner", "callback"):
        tuned, tuned_model = run(kind)
        assert plain.keys() == tuned.keys()
        for key in plain:
            assert torch.equal(plain[key], tuned[key]), (kind, key)
        # The same training and validation steps as the plain fit: none inside the sweep.
        assert tuned_model.validated == plain_model.validated > 0, kind
        assert tuned_model.losses[-len(plain_model.losses) :] == plain_model.losses, kind


class _DocsPattern(LearningRateFinder):
    """Lightning's documented fine-tuning pattern, unchanged but for the import."""

    def __init__(self, milestones: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = milestones

    def on_fit_start(self, *args: Any, **kwargs: Any) -> None:
        return

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch in self.epochs or trainer.current_epoch == 0:
            self.lr_find(trainer, pl_module)


@pytest.mark.parametrize("how", ["milestones", "docs-subclass"])
def test_a_sweep_mid_fit_records_points_and_the_fit_goes_on_unchanged(how: str) -> None:
    def run(finder: LearningRateFinder | None) -> tuple[dict[str, torch.Tensor], Regressor, int]:
        pl.seed_everything(0, verbose=False)
        model = Regressor()  # shuffled data: the batches of every epoch come from the RNG
        trainer = _trainer(
            max_epochs=3, limit_train_batches=6, callbacks=[finder] if finder else []
        )
        trainer.fit(model)
        return _params(model), model, trainer.global_step

    plain, plain_model, plain_steps = run(None)
    options: dict[str, Any] = {"num_training_steps": 9, "update_attr": False, "progress": False}
    finder = (
        LearningRateFinder(milestones=(1, 2), **options)
        if how == "milestones"
        else _DocsPattern((1, 2), **options)
    )
    tuned, tuned_model, steps = run(finder)
    assert sorted(finder.history) == [0, 1, 2]
    for epoch, found in finder.history.items():
        assert len(found.results["lr"]) == 9, epoch  # Lightning's records none after epoch 0
    # Each sweep started from that epoch's weights: the curves differ.
    assert finder.history[0].results["loss"] != finder.history[2].results["loss"]
    # The fit itself is the fit without the finder: same steps, same batches, same weights.
    assert steps == plain_steps == 18
    # Each epoch: the sweep's 9 steps, then the epoch's 6 real ones, as in the plain fit.
    losses = tuned_model.losses
    assert len(losses) == 3 * (9 + 6)
    assert [x for e in range(3) for x in losses[15 * e + 9 : 15 * e + 15]] == plain_model.losses
    for key in plain:
        assert torch.equal(plain[key], tuned[key]), key


def test_a_mid_fit_sweep_sets_the_lr_for_the_rest_of_the_fit() -> None:
    model = Regressor(lr=1e-3)
    finder = LearningRateFinder(num_training_steps=40, min_lr=1e-4, milestones=(1,), progress=False)
    trainer = _trainer(max_epochs=2, limit_train_batches=4, callbacks=[finder])
    trainer.fit(model)
    lr = finder.history[1].suggestion()
    assert lr is not None and model.lr == lr
    assert model.group_lrs[-1] == [lr]  # the last real step ran at the epoch-1 suggestion


def test_bad_milestones() -> None:
    for bad, kind in [
        ((0, 2), ValueError),
        ("12", TypeError),
        ((1.5,), ValueError),
        (3, TypeError),
    ]:
        with pytest.raises(kind, match="milestones"):
            LearningRateFinder(milestones=bad)  # type: ignore[arg-type]
        with pytest.raises(kind, match="milestones"):
            BatchSizeFinder(milestones=bad)  # type: ignore[arg-type]


def test_lr_lands_in_model_lr_and_in_the_running_optimizer() -> None:
    model = Regressor(lr=1e-3)
    found = Tuner(_trainer()).lr_find(model, num_training=60, min_lr=1e-4, progress=False)
    lr = found.suggestion()
    assert isinstance(lr, float) and math.isfinite(lr)
    assert model.lr == lr

    model = Regressor(lr=1e-3)
    finder = LearningRateFinder(num_training_steps=60, min_lr=1e-4, progress=False)
    trainer = _trainer(callbacks=[finder], max_steps=1)
    trainer.fit(model)
    assert finder.optimal_lr is not None
    assert model.lr == finder.optimal_lr.suggestion()
    assert model.group_lrs[-1] == [model.lr]  # the real fit trained with the found LR


class _OneCycle(Regressor):
    """A OneCycleLR schedule built from the LR attribute, stepped every batch."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=10 * self.lr, total_steps=16
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def test_a_schedule_built_from_the_lr_runs_as_a_fresh_fit_at_the_found_lr() -> None:
    """The callback moves a OneCycleLR built from ``self.lr`` (max_lr too) with the LR it sets:
    the fit's LRs are those of a fresh fit whose ``lr`` is the suggestion, step by step."""
    model = _OneCycle(lr=1e-3)
    finder = LearningRateFinder(num_training_steps=30, min_lr=1e-4, progress=False)
    _trainer(callbacks=[finder], max_steps=16).fit(model)
    assert finder.optimal_lr is not None and model.lr == finder.optimal_lr.suggestion() != 1e-3
    fresh = _OneCycle(lr=model.lr)
    _trainer(max_steps=16).fit(fresh)
    assert len(fresh.group_lrs) == 16  # the sweep's steps come first in model.group_lrs
    assert [g[0] for g in model.group_lrs[-16:]] == pytest.approx([g[0] for g in fresh.group_lrs])


class _HparamsLR(Regressor):
    def __init__(self, learning_rate: float = 1e-3) -> None:
        super().__init__()
        del self.lr
        self.save_hyperparameters()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate)


def test_lr_lands_in_hparams() -> None:
    model = _HparamsLR()
    found = Tuner(_trainer()).lr_find(model, num_training=20, min_lr=1e-5, progress=False)
    assert model.hparams.learning_rate == found.suggestion()


def test_no_lr_attribute_is_a_clear_error_before_anything_runs() -> None:
    model = NoLR()
    trainer = _trainer()
    with pytest.raises(AttributeError, match=r"model\.lr.*attr_name=.*update_attr=False"):
        Tuner(trainer).lr_find(model)
    assert model.losses == [] and trainer.global_step == 0
    with pytest.raises(AttributeError, match=r"model\.my_lr"):
        Tuner(trainer).lr_find(model, attr_name="my_lr")
    trainer = _trainer(callbacks=[LearningRateFinder()])
    with pytest.raises(AttributeError, match=r"model\.lr"):
        trainer.fit(model)
    assert model.losses == []


def test_accumulation_gives_one_point_per_optimizer_step() -> None:
    model = Regressor()
    trainer = _trainer(accumulate_grad_batches=2, limit_train_batches=6)
    found = Tuner(trainer).lr_find(
        model, num_training=10, early_stop_threshold=None, update_attr=False, progress=False
    )
    assert len(found.results["lr"]) == 10
    assert len(model.losses) == 20
    pairs = [(a + b) / 2 for a, b in zip(model.losses[::2], model.losses[1::2])]
    assert list(found.result.losses) == pytest.approx(pairs, rel=1e-6)
    lrs = [group[0] for group in model.group_lrs]
    assert lrs[::2] == lrs[1::2] == list(found.results["lr"])  # one LR per window


def test_gradient_clipping_is_applied() -> None:
    def sweep(**kwargs: Any) -> list[float]:
        pl.seed_everything(0, verbose=False)
        model = Regressor()
        found = Tuner(_trainer(**kwargs)).lr_find(
            model, num_training=20, min_lr=1e-2, max_lr=10.0, early_stop_threshold=None,
            update_attr=False, progress=False,
        )  # fmt: skip
        assert len(found.results["lr"]) == 20
        return list(found.result.losses)

    plain, clipped = sweep(), sweep(gradient_clip_val=0.01)
    assert plain[0] == clipped[0]  # the same first batch
    assert plain != clipped


def test_param_groups_keep_their_ratios() -> None:
    model = Regressor(groups=True)
    found = Tuner(_trainer()).lr_find(
        model, num_training=10, early_stop_threshold=None, update_attr=False, progress=False
    )
    assert found.result.group_ratios == pytest.approx((0.1, 1.0))
    for (body, head), lr in zip(model.group_lrs, found.results["lr"]):
        assert head == lr and body == pytest.approx(0.1 * lr)


def test_lightning_compatible_result_surface(tmp_path: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.use("Agg")
    model = Regressor()
    found = Tuner(_trainer()).lr_find(
        model, num_training=30, min_lr=1e-5, update_attr=False, progress=False,
        plot_path=tmp_path / "lr.png", suggest_method="valley",
    )  # fmt: skip
    assert set(found.results) == {"lr", "loss"}
    assert found.results["loss"] == list(found.result.smoothed_losses)
    lr = found.suggestion()
    assert isinstance(lr, float) and lr == found.result.suggestion("valley").lr
    figure = found.plot(suggest=True)
    assert isinstance(figure, Figure)
    assert (tmp_path / "lr.png").stat().st_size > 0
    assert isinstance(found.result, RangeTestResult)
    assert "lightning" in found.suggestions()
    assert 0.0 <= found.confidence <= 1.0
    assert found.one_cycle(100)["total_steps"] == 100
    path = found.save_json(tmp_path / "lr.json")
    assert RangeTestResult.load_json(path).lrs == found.result.lrs
    import matplotlib.pyplot as plt

    plt.close("all")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="must be above min_lr"):  # Lightning's names
        LearningRateFinder(min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="min_lr"):
        LearningRateFinder(min_lr=-1.0)
    with pytest.raises(ValueError, match="early_stop_threshold"):
        LearningRateFinder(early_stop_threshold=0.5)
    tuner = Tuner(_trainer())
    with pytest.raises(ValueError, match="method='fit'"):
        tuner.lr_find(Regressor(), method="validate")
    with pytest.raises(TypeError, match="unknown option"):
        tuner.lr_find(Regressor(), bogus=1)


class _Counting(Regressor):
    """Fails the test if a training step runs: the error must come before the sweep."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        raise AssertionError("a bad argument let a training step run")


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"suggest_method": "valey"}, ValueError, r"suggest_method .*got 'valey'; did you mean"),
        ({"plot_path": 123}, TypeError, r"plot_path must be a str or pathlib\.Path, got 123"),
        ({"progress": "no"}, TypeError, r"progress must be True or False, got 'no'"),
        ({"fault_timeout": -1.0}, ValueError, r"fault_timeout .*got -1\.0"),
        ({"log_to_loggers": 1}, TypeError, r"log_to_loggers must be True or False, got 1"),
        ({"update_attr": "yes"}, TypeError, r"update_attr must be True or False, got 'yes'"),
        ({"attr_name": 5}, TypeError, r"attr_name must be a str .*got 5"),
    ],
)
def test_a_bad_lr_find_option_fails_before_the_sweep(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each option is checked up front, named as the caller spelled it (suggest_method for the
    Tuner, not the callback's method)."""
    with pytest.raises(error, match=message):
        Tuner(_trainer()).lr_find(_Counting(), num_training=5, **options)
    with pytest.raises(IsADirectoryError, match=r"plot_path .* is a directory; pass a file in it"):
        Tuner(_trainer()).lr_find(_Counting(), num_training=5, plot_path=tmp_path)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'bogus'"):
        LearningRateFinder(method="bogus")


def test_train_dataloaders_and_logged_metrics() -> None:
    class Logging(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    model = Logging()
    trainer = _trainer()
    loader = DataLoader(_data(64), batch_size=16)  # handed to fit(), 4 batches an epoch
    found = Tuner(trainer).lr_find(
        model, train_dataloaders=loader, num_training=10, early_stop_threshold=None,
        update_attr=False, progress=False,
    )  # fmt: skip
    assert len(found.results["lr"]) == 10
    assert trainer.callback_metrics == {} and trainer.logged_metrics == {}
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == 4 and "train_loss" in trainer.callback_metrics


class TwoOptimizers(Regressor):
    """Manual optimisation with two optimizers: one point per batch, both swept."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.lrs: list[tuple[float, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        body, head = self.optimizers()  # type: ignore[misc]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        body.zero_grad()
        head.zero_grad()
        self.manual_backward(loss)
        body.step()
        head.step()
        self.lrs.append((body.param_groups[0]["lr"], head.param_groups[0]["lr"]))
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.body.parameters(), lr=1e-3, momentum=0.9),
            torch.optim.Adam(self.head.parameters(), lr=1e-2),
        ]


def test_manual_optimization_with_two_optimizers() -> None:
    pl.seed_everything(0, verbose=False)
    before, after = _Probe(), _Probe()
    finder = LearningRateFinder(
        num_training_steps=12, early_stop_threshold=None, update_attr=False, progress=False
    )
    model = TwoOptimizers()
    _trainer(callbacks=[before, finder, after]).fit(model)
    assert finder.optimal_lr is not None
    assert list(finder.optimal_lr.result.losses) == model.losses[:12]
    assert finder.optimal_lr.result.group_ratios == pytest.approx((0.1, 1.0))
    for (body, head), lr in zip(model.lrs, finder.optimal_lr.results["lr"]):
        assert head == lr and body == pytest.approx(0.1 * lr)
    assert before.state["global_step"] == after.state["global_step"] == 0
    for saved, now in zip(before.state["torch"], after.state["torch"], strict=True):
        assert_state_bitwise_equal(saved, now)


def test_bf16_mixed_precision() -> None:
    pl.seed_everything(0, verbose=False)
    before, after = _Probe(), _Probe()
    finder = LearningRateFinder(num_training_steps=10, update_attr=False, progress=False)
    _trainer(precision="bf16-mixed", callbacks=[before, finder, after]).fit(Regressor())
    assert finder.optimal_lr is not None and len(finder.optimal_lr.result) == 10
    for saved, now in zip(before.state["torch"], after.state["torch"], strict=True):
        assert_state_bitwise_equal(saved, now)


class _Failing(Regressor):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if len(self.losses) == 5:
            raise RuntimeError("boom in step 6")
        return super().training_step(batch, batch_idx)


def test_an_error_inside_the_sweep_restores_the_state() -> None:
    model = _Failing()
    trainer = _trainer()
    shadow = torch.optim.SGD(model.parameters(), lr=0.1)
    before = capture_state(model, shadow)
    with pytest.raises(RuntimeError, match="boom in step 6"):
        Tuner(trainer).lr_find(model, num_training=20, update_attr=False, progress=False)
    assert len(model.losses) == 5
    assert_state_bitwise_equal(before, capture_state(model, shadow))
    assert trainer.global_step == 0 and trainer.current_epoch == 0


class _Stream(torch.utils.data.IterableDataset[Any]):
    """Three batches a pass, no length."""

    def __iter__(self) -> Any:
        x, y = _data(48).tensors
        return iter(list(zip(x.split(16), y.split(16))))


def test_iterable_data_without_length_cycles() -> None:
    model = Regressor()
    loader = DataLoader(_Stream(), batch_size=None)
    found = Tuner(_trainer()).lr_find(
        model, train_dataloaders=loader, num_training=8, early_stop_threshold=None,
        update_attr=False, progress=False,
    )  # fmt: skip
    assert found is not None and len(found.results["lr"]) == 8


def test_fast_dev_run_skips_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="fast_dev_run"):
        found = Tuner(_trainer(fast_dev_run=True)).lr_find(Regressor(), progress=False)
    assert found is None


class _Recording(pl.loggers.Logger):
    """A logger that keeps every metrics call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append(dict(metrics))


def test_loggers_get_no_sweep_steps() -> None:
    class Logging(Regressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    logger = _Recording()
    trainer = _trainer(logger=logger, log_every_n_steps=1)
    found = Tuner(trainer).lr_find(Logging(), num_training=10, update_attr=False, progress=False)
    assert found is not None and len(found.result) == 10
    assert trainer.logger is logger
    # Once, after the sweep: the suggestion, not a training metric of any sweep step.
    assert len(logger.calls) == 1
    (call,) = logger.calls
    assert set(call) == {"lr_finder/points", "lr_finder/confidence", "lr_finder/suggested_lr"}
    assert call["lr_finder/points"] == 10
    assert call["lr_finder/suggested_lr"] == found.suggestion()


def test_tensorboard_and_csv_loggers_get_the_curve_once(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("tensorboard")
    tb = pl.loggers.TensorBoardLogger(tmp_path, name="tb")
    csv = pl.loggers.CSVLogger(tmp_path, name="csv")
    trainer = _trainer(logger=[tb, csv], max_epochs=1, limit_train_batches=2)
    finder = LearningRateFinder(
        num_training_steps=30, min_lr=1e-4, update_attr=False, progress=False
    )
    trainer.callbacks = [finder, *trainer.callbacks]
    trainer.fit(Regressor())
    assert finder.optimal_lr is not None
    for logger in (tb, csv):
        saved = RangeTestResult.load_json(Path(logger.log_dir) / "lr_finder-epoch0.json")
        assert saved.losses == finder.optimal_lr.result.losses
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert events.Tags()["images"] == ["lr_finder"]
    assert [e.step for e in events.Scalars("lr_finder/points")] == [0]
    metrics = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    assert metrics[0].split(",").count("lr_finder/points") == 1 and len(metrics) == 2  # one row


# -- the batch-size finder -------------------------------------------------------------------

BUDGET = 20_000
"""Live tensor bytes a trial may use: the tiny regressor fits about 160 samples under it."""


class Sized(Regressor):
    """The regressor with a ``batch_size`` attribute its train dataloader reads."""

    def __init__(self, batch_size: int = 4, fail_above: int | None = None) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.fail_above = fail_above
        self.shapes: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.shapes.append(batch[0].shape[0])
        if self.fail_above is not None and batch[0].shape[0] > self.fail_above:
            raise RuntimeError("boom: not an out-of-memory error")
        return super().training_step(batch, batch_idx)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_data(512), batch_size=self.batch_size, shuffle=True, drop_last=True)


class KeepsLast(Sized):
    """The sized regressor whose loader keeps each epoch's short last batch (``drop_last=False``,
    the DataLoader default)."""

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_data(512), batch_size=self.batch_size, shuffle=True)


class _Data(pl.LightningDataModule):
    """A datamodule holding the batch size in its ``hparams`` only."""

    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_data(512), batch_size=self.hparams.batch_size, drop_last=True)


def test_found_batch_size_fits_the_budget_and_lands_in_the_model() -> None:
    model = Sized()
    trainer = _trainer()
    found = Tuner(trainer).scale_batch_size(
        model, mode="binsearch", init_val=32, memory_budget=BUDGET, progress=False
    )
    assert type(found) is int  # Lightning's contract: the size as an int
    assert model.batch_size == found
    finder = BatchSizeFinder(mode="binsearch", init_val=32, memory_budget=BUDGET, progress=False)
    finder._early_exit = True
    _trainer(callbacks=[finder]).fit(Sized())
    result = finder.result
    assert result is not None and finder.optimal_batch_size == found
    assert result.smallest_oom is not None and found < result.smallest_oom
    assert any(t.size == found and t.fitted for t in result.trials)  # verified, not assumed
    assert all(
        t.peak_bytes is not None and t.peak_bytes <= BUDGET for t in result.trials if t.fitted
    )
    assert not any(isinstance(cb, BatchSizeFinder) for cb in trainer.callbacks)


@pytest.mark.parametrize("mode", ["binsearch", "guided"])
def test_an_epochs_short_last_batch_is_not_what_a_trial_measures(mode: str) -> None:
    """A loader that keeps the short last batch answers what one that drops it does: the step
    on the remainder (512 mod size samples) runs uncounted, so no trial reads its memory."""
    answers = []
    for model in (Sized(), KeepsLast()):
        finder = BatchSizeFinder(mode=mode, init_val=32, memory_budget=BUDGET, progress=False)
        finder._early_exit = True
        _trainer(callbacks=[finder]).fit(model)
        assert finder.result is not None
        assert all(t.peak_bytes <= BUDGET for t in finder.result.trials if t.fitted)
        answers.append(finder.optimal_batch_size)
    assert answers[0] == answers[1]


def test_a_skipped_short_batch_is_not_in_the_trials_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skipped remainder step runs (Lightning's loop cannot skip it), but its time is not
    the size's: a clock that only training steps advance (1 s each) gives the trial 3 s for its
    3 counted steps, though 5 ran (20 samples in batches of 12: 12, 8, 12, 8, 12)."""
    import lrfinder_adapters.lightning as adapter

    clock = [0.0]
    monkeypatch.setattr(adapter.time, "perf_counter", lambda: clock[0])

    class Timed(Sized):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            clock[0] += 1.0
            return super().training_step(batch, batch_idx)

        def train_dataloader(self) -> DataLoader[Any]:
            return DataLoader(_data(20), batch_size=self.batch_size)

    model = Timed(batch_size=12)
    finder = BatchSizeFinder(
        mode="binsearch", init_val=12, max_val=12, max_trials=1, steps_per_trial=3, progress=False
    )
    finder._early_exit = True
    _trainer(callbacks=[finder]).fit(model)
    assert finder.result is not None
    trial = finder.result.trials[0]
    assert model.shapes[:5] == [12, 8, 12, 8, 12] and trial.steps == 3
    assert trial.seconds == 3.0


def test_power_mode_then_fit_trains_at_the_found_size() -> None:
    model = Sized()
    finder = BatchSizeFinder(memory_budget=BUDGET, progress=False)  # mode="power", as Lightning
    trainer = _trainer(callbacks=[finder], limit_train_batches=2)
    trainer.fit(model)
    found = finder.optimal_batch_size
    assert found is not None and found & (found - 1) == 0  # power: a power of two
    result = finder.result
    assert result is not None and result.smallest_oom == 2 * found
    assert model.batch_size == found
    assert model.shapes[-2:] == [found, found]  # the fit's dataloader was rebuilt at it
    assert trainer.global_step == 2  # the fit itself ran from step 0


def test_a_mid_fit_search_rebuilds_the_running_fit_at_the_new_size() -> None:
    finder = BatchSizeFinder(memory_budget=BUDGET, milestones=(1,), progress=False)

    class Tighten(pl.Callback):  # less memory from epoch 1 on: the search must find less
        first: int | None = None

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if trainer.current_epoch == 0:
                self.first = finder.optimal_batch_size
                finder.memory_budget = BUDGET // 4

    tighten = Tighten()
    model = Sized()
    trainer = _trainer(callbacks=[finder, tighten], max_epochs=2, limit_train_batches=2)
    trainer.fit(model)
    first, second = tighten.first, finder.optimal_batch_size
    assert first is not None and second is not None and second < first
    assert model.batch_size == second
    assert model.shapes[-2:] == [second, second]  # epoch 1 iterated loaders rebuilt at it
    assert trainer.global_step == 4 and trainer.current_epoch == 2


def test_scale_batch_size_restores_everything_bitwise() -> None:
    pl.seed_everything(0, verbose=False)
    before, after = _Probe(prime=True), _Probe()
    finder = BatchSizeFinder(memory_budget=BUDGET, progress=False)
    trainer = _trainer(callbacks=[before, finder, after], limit_train_batches=4)
    trainer.fit(Sized())
    assert finder.optimal_batch_size is not None
    _assert_put_back(before, after, trainer, finder)


def test_tuner_scale_batch_size_restores_model_and_counters(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = Sized()
    trainer = _trainer(default_root_dir=tmp_path)
    shadow = torch.optim.SGD(model.parameters(), lr=0.1)  # only to fit capture_state's signature
    before = capture_state(model, shadow)
    Tuner(trainer).scale_batch_size(model, memory_budget=BUDGET, progress=False)
    assert_state_bitwise_equal(before, capture_state(model, shadow))
    assert (trainer.global_step, trainer.current_epoch) == (0, 0)
    assert trainer.fit_loop.epoch_progress.current.completed == 0
    assert not list(tmp_path.rglob("*.ckpt")) and not trainer.should_stop


def test_no_batch_size_attribute_is_a_clear_error_before_anything_runs() -> None:
    model = Regressor()
    with pytest.raises(AttributeError, match=r"model\.batch_size.*batch_arg_name="):
        Tuner(_trainer()).scale_batch_size(model)
    with pytest.raises(AttributeError, match=r"model\.my_bs"):
        Tuner(_trainer()).scale_batch_size(Sized(), batch_arg_name="my_bs")
    with pytest.raises(AttributeError, match=r"model\.batch_size"):
        _trainer(callbacks=[BatchSizeFinder()]).fit(model)
    assert model.losses == []


def test_batch_size_in_datamodule_hparams() -> None:
    data = _Data()
    model = Regressor()
    found = Tuner(_trainer()).scale_batch_size(
        model, datamodule=data, memory_budget=BUDGET, progress=False
    )
    assert isinstance(found, int) and found > 4
    assert data.hparams.batch_size == found


def test_a_trial_error_that_is_not_oom_propagates_and_restores() -> None:
    model = Sized(fail_above=8)
    trainer = _trainer()
    before = _params(model)
    with pytest.raises(RuntimeError, match="boom"):
        Tuner(trainer).scale_batch_size(model, progress=False)
    assert model.batch_size == 4  # the original size, not the failing one
    after = _params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 0


def test_bad_batch_size_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        BatchSizeFinder(mode="sideways")
    with pytest.raises(TypeError, match="init_val"):
        BatchSizeFinder(init_val=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pin_allocator"):
        BatchSizeFinder(pin_allocator="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_arg_name must be a str .*got 5"):
        BatchSizeFinder(batch_arg_name=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"progress must be True or False, got 'x'"):
        BatchSizeFinder(progress="x")  # type: ignore[arg-type]
    tuner = Tuner(_trainer())
    with pytest.raises(TypeError, match="unknown option"):
        tuner.scale_batch_size(Sized(), budget=5)
    with pytest.raises(ValueError, match="train_dataloaders="):
        tuner.scale_batch_size(Sized(), dataloaders=DataLoader(_data()))
    with pytest.raises(ValueError, match="not both"):
        tuner.scale_batch_size(Sized(), train_dataloaders=DataLoader(_data()), datamodule=_Data())
    with pytest.raises(ValueError, match="method='fit'"):
        tuner.scale_batch_size(Sized(), method="validate")


def test_tune_finds_the_batch_size_first_then_the_lr_at_it() -> None:
    model = Sized()
    found = tune(
        _trainer(), model, memory_budget=BUDGET, num_training=10, update_attr=False, progress=False
    )
    assert isinstance(found, TuneResult)
    batch_size, lr_finder = found
    assert isinstance(batch_size, int) and model.batch_size == batch_size
    assert isinstance(lr_finder, LRFinderResult) and len(lr_finder.results["lr"]) == 10
    # The trials ran first (several sizes), the LR sweep's 10 steps last, all at the found size.
    assert len(set(model.shapes[:-10])) > 1
    assert model.shapes[-10:] == [batch_size] * 10
    only_lr = tune(
        _trainer(), Sized(), batch_size=False, num_training=5, update_attr=False, progress=False
    )
    assert only_lr.batch_size is None and only_lr.lr_finder is not None
    with pytest.raises(TypeError, match="unknown option"):
        tune(_trainer(), Sized(), mode="power")
    # Every option of Tuner.lr_find passes through tune(), fault_timeout and log_to_loggers too.
    found = tune(
        _trainer(), Sized(), batch_size=False, num_training=5, update_attr=False,
        progress=False, fault_timeout=60.0, log_to_loggers=False,
    )  # fmt: skip
    assert found.lr_finder is not None


def _loader(batch_size: int = 4, **options: Any) -> DataLoader[Any]:
    return DataLoader(_data(512), batch_size=batch_size, shuffle=True, drop_last=True, **options)


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Samples from a stream with no length: the loader batches them."""

    def __init__(self) -> None:
        self.x, self.y = _data(512).tensors

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(zip(self.x, self.y))


def test_a_loader_passed_to_fit_is_resized_by_the_callback_and_the_fit_uses_it() -> None:
    reference = Tuner(_trainer()).scale_batch_size(Sized(), memory_budget=BUDGET, progress=False)
    for loader in (_loader(), DataLoader(_Stream(), batch_size=4)):
        model = Sized()  # its batch_size attribute is not what the fit iterates here
        finder = BatchSizeFinder(memory_budget=BUDGET, progress=False)
        trainer = _trainer(callbacks=[finder], limit_train_batches=2)
        trainer.fit(model, train_dataloaders=loader)
        found = finder.optimal_batch_size
        assert found == reference  # the same memory per sample as through the attribute
        assert finder.train_dataloader is not None and finder.train_dataloader.batch_size == found
        assert model.shapes[-2:] == [found, found] and trainer.global_step == 2
        assert loader.batch_size == 4 and model.batch_size == 4  # the user's objects untouched


def test_tuner_and_tune_take_a_train_dataloader() -> None:
    loader = _loader()
    model = Sized()
    tuner = Tuner(_trainer())
    found = tuner.scale_batch_size(
        model, train_dataloaders=loader, memory_budget=BUDGET, progress=False
    )
    assert isinstance(found, int) and tuner.train_dataloader.batch_size == found
    assert loader.batch_size == 4 and tuner.train_dataloader.dataset is loader.dataset
    model = Sized()
    result = tune(
        _trainer(),
        model,
        train_dataloaders=loader,
        memory_budget=BUDGET,
        num_training=6,
        update_attr=False,
        progress=False,
    )
    size, lr_finder = result  # still a pair
    assert size == found and lr_finder is not None and len(lr_finder.results["lr"]) == 6
    assert result.train_dataloader.batch_size == size
    assert model.shapes[-6:] == [size] * 6  # the LR sweep ran on the resized loader


class _OwnLoader(DataLoader):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    ("loader", "error", "match"),
    [
        (DataLoader(_data(64), batch_size=None), ValueError, "batch_size=None"),
        (
            DataLoader(_data(64), batch_sampler=[[0, 1], [2, 3]]),
            ValueError,
            "custom batch_sampler",
        ),
        (_OwnLoader(_data(64), batch_size=4), TypeError, "_OwnLoader"),
    ],
)
def test_a_loader_that_cannot_be_resized_is_refused_before_anything_runs(
    loader: Any, error: type[Exception], match: str
) -> None:
    model = Sized()
    before = _params(model)
    trainer = _trainer()
    with pytest.raises(error, match=match):
        Tuner(trainer).scale_batch_size(model, train_dataloaders=loader, progress=False)
    assert model.shapes == [] and trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in _params(model).items())
    with pytest.raises(error, match=match):
        _trainer(callbacks=[BatchSizeFinder(progress=False)]).fit(model, train_dataloaders=loader)
    assert model.shapes == []


def test_guided_mode_extrapolates_the_measured_memory() -> None:
    finder = BatchSizeFinder(mode="guided", memory_budget=BUDGET, progress=False)
    finder._early_exit = True
    _trainer(callbacks=[finder]).fit(Sized())
    result = finder.result
    assert result is not None and finder.optimal_batch_size == result.batch_size
    assert any(t.role == "jump" for t in result.trials)  # a prediction from the profile
    assert any(t.size == result.batch_size and t.fitted for t in result.trials)
    assert result.smallest_oom is None or result.batch_size < result.smallest_oom
    assert len(result.trials) < 10  # fewer than power + bisection need


def test_a_deepspeed_strategy_is_refused_before_anything_runs() -> None:
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy

    # DeepSpeed itself is not installed here: an instance of Lightning's strategy class, unset.
    trainer = SimpleNamespace(strategy=DeepSpeedStrategy.__new__(DeepSpeedStrategy))
    model = Sized()
    for callback in (LearningRateFinder(progress=False), BatchSizeFinder(progress=False)):
        with pytest.raises(ValueError, match="strategy='ddp'"):
            callback.setup(trainer, model, "fit")  # type: ignore[arg-type]


def test_target_batch_keeps_the_global_batch_through_accumulation() -> None:
    largest = Tuner(_trainer()).scale_batch_size(Sized(), memory_budget=BUDGET, progress=False)
    model = Sized()
    trainer = _trainer(limit_train_batches=8)
    found = Tuner(trainer).scale_batch_size(
        model, memory_budget=BUDGET, target_batch=4 * largest, progress=False
    )
    assert found == model.batch_size and found is not None and found <= largest
    assert found * trainer.accumulate_grad_batches == 4 * largest
    assert trainer.accumulate_grad_batches > 1
    model.shapes.clear()
    trainer.fit(model)
    batches = min(8, 512 // found)  # limit_train_batches, or the whole (drop_last) epoch
    assert trainer.global_step == batches // trainer.accumulate_grad_batches
    assert set(model.shapes) == {found}
    with pytest.raises(ValueError, match="target_batch"):
        BatchSizeFinder(target_batch=0)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"min_lr": -1.0}, ValueError, "min_lr"),  # an LR option: checked before any trial
        ({"num_training": 0}, ValueError, "num_training"),
        ({"max_lr": 1e-9}, ValueError, "max_lr"),
        ({"max_size": 64}, TypeError, "did you mean max_val="),
        ({"num_iters": 5}, TypeError, "did you mean num_training="),
        ({"steps_per_trial": 0}, ValueError, "steps_per_trial"),
    ],
)
def test_tune_checks_every_option_before_the_batch_size_search(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = Sized()
    trainer = _trainer()
    with pytest.raises(error, match=match):
        tune(trainer, model, memory_budget=BUDGET, progress=False, **options)
    assert model.shapes == [] and model.batch_size == 4 and trainer.global_step == 0


def test_lightning_unknown_options_name_the_nearest() -> None:
    from lrfinder_plugins.spi import validate

    tuner = Tuner(_trainer())
    with pytest.raises(validate.UnknownOptionError, match="did you mean plot_path="):
        tuner.lr_find(Regressor(), plot_pth="x.png")
    with pytest.raises(validate.UnknownOptionError, match="did you mean memory_budget="):
        tuner.scale_batch_size(Sized(), memory_budgt=1)


@pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning")  # 20 points
def test_tune_lightning_without_an_lr_attribute_and_update_attr_false_runs() -> None:
    """`lrfinder tune`'s Lightning path with update_attr=False needs no LR attribute: the sweep
    runs and there is no 'Updated optimizer LR' line to print (no old value)."""
    from lrfinder_adapters.config_tune import tune_lightning

    found = tune_lightning(
        _trainer(),
        NoLR(),
        tune_batch_size=False,
        options={"update_attr": False, "num_training": 20, "progress": False},
    )
    assert found.old_lr is None and found.result is not None and len(found.result) == 20

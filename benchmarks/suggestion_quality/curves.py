"""Every range test of the suite, through the runs cache (one per task, seed and finder)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from benchmarks.suggestion_quality import peers
from benchmarks.suggestion_quality.cache import JsonCache
from benchmarks.suggestion_quality.tasks import Task
from lrfinder_plugins import RangeTestResult


@dataclass(frozen=True)
class Curves:
    """The range tests of one ``(task, seed)``.

    Attributes:
        ours: our ``find_lr`` at its defaults.
        fastai: fastai's protocol run by our engine.
        lightning_lr: the real Lightning's suggestion (NaN: none).
        lightning_curve: Lightning's recorded ``{"lr", "loss"}`` (smoothed losses).
        tlf_lr: the real torch-lr-finder's steepest-gradient suggestion.
        tlf_curve: torch-lr-finder's ``history`` (smoothed losses).
        val: our ``find_lr`` with the held-out split as ``val_loader`` (BatchNorm on each
            batch's statistics, the default).
        val_running: the same in plain eval mode (``val_batch_norm="running"``).
    """

    ours: RangeTestResult
    fastai: RangeTestResult
    lightning_lr: float
    lightning_curve: dict[str, list[float]]
    tlf_lr: float
    tlf_curve: dict[str, list[float]]
    val: RangeTestResult
    val_running: RangeTestResult


def _result(cache: JsonCache, key: str, run: object) -> RangeTestResult:
    return RangeTestResult.from_dict(cache.get_or_compute(key, lambda: run().to_dict()))  # type: ignore[operator]


def _peer(cache: JsonCache, key: str, run: object) -> tuple[float, dict[str, list[float]]]:
    def compute() -> dict[str, object]:
        lr, curve = run()  # type: ignore[operator]
        return {"lr": lr if math.isfinite(lr) else "nan", "curve": curve}

    stored = cache.get_or_compute(key, compute)
    return float(stored["lr"]), stored["curve"]


def collect(task: Task, seed: int, cache: JsonCache, *, with_peers: bool = True) -> Curves:
    """Run (or read from ``cache``) every range test of ``(task, seed)``."""
    prefix = f"{task.key}|seed={seed}|"
    ours = _result(cache, prefix + "ours", lambda: peers.our_range_test(task, seed))
    fastai = _result(cache, prefix + "fastai", lambda: peers.fastai_range_test(task, seed))
    val, val_running = (
        _result(cache, prefix + key, functools.partial(peers.our_val_range_test, task, seed, mode))
        for key, mode in (("ours_val", "batch"), ("ours_val_running", "running"))
    )
    if not with_peers:
        return Curves(ours, fastai, math.nan, {}, math.nan, {}, val, val_running)
    lightning_lr, lightning_curve = _peer(
        cache, prefix + "lightning", lambda: peers.lightning_range_test(task, seed)
    )
    tlf_lr, tlf_curve = _peer(
        cache, prefix + "torch_lr_finder", lambda: peers.torch_lr_finder_range_test(task, seed)
    )
    return Curves(ours, fastai, lightning_lr, lightning_curve, tlf_lr, tlf_curve, val, val_running)

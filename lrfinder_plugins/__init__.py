"""lrfinder-plugins: the LR range test and a batch-size finder for any PyTorch training loop.

The core (this package) imports no torch: it holds the engine (:class:`RangeTest`), its driver
(:func:`run_range_test`), results, suggestion methods, plots and the plugin system. The torch
convenience names (:class:`LearningRateFinder`, :func:`find_lr`, :class:`TorchStep`) are loaded
on first use from the ``lrfinder_adapters`` package.

Example:
    >>> from lrfinder_plugins import LearningRateFinder  # doctest: +SKIP
    >>> finder = LearningRateFinder(model, optimizer, loss_fn, device)  # doctest: +SKIP
    >>> lrs, losses, suggested_lr = finder.find_lr(train_loader)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lrfinder_plugins._adapt import batch_size_search, range_test
from lrfinder_plugins._batch_driver import run_batch_size_search
from lrfinder_plugins._batch_search import (
    BatchSizeResult,
    BatchSizeSearch,
    BatchStopReason,
    BatchTrial,
    NothingFitsError,
)
from lrfinder_plugins._driver import run_range_test
from lrfinder_plugins._json_file import ResultFileError, ResultFileNotFoundError
from lrfinder_plugins._manager import PluginError, PluginLoadWarning, get_plugin_manager
from lrfinder_plugins._observers import Point, SearchInfo
from lrfinder_plugins._range_test import RangeTest, StopReason
from lrfinder_plugins._results import RangeTestResult
from lrfinder_plugins._seams import (
    BatchProbe,
    LocalReducer,
    RankFailedError,
    Reducer,
    StepOutcome,
    TrainingStep,
    TrialReport,
)
from lrfinder_plugins._session import BatchSizeSession, RangeTestSession
from lrfinder_plugins.hookspecs import hookimpl
from lrfinder_plugins.noise_scale import NoiseScale, NoiseScaleEstimator, Recommendation
from lrfinder_plugins.suggest import LowConfidenceWarning, NoSuggestionWarning, Suggestion

if TYPE_CHECKING:
    from lrfinder_adapters.batch_size import find_batch_size, tune
    from lrfinder_adapters.pytorch import LearningRateFinder, TorchStep, find_lr

__version__ = "0.1.0"

__all__ = [
    "BatchProbe",
    "BatchSizeResult",
    "BatchSizeSearch",
    "BatchSizeSession",
    "BatchStopReason",
    "BatchTrial",
    "LearningRateFinder",
    "LocalReducer",
    "LowConfidenceWarning",
    "NoSuggestionWarning",
    "NoiseScale",
    "NoiseScaleEstimator",
    "NothingFitsError",
    "PluginError",
    "PluginLoadWarning",
    "Point",
    "RangeTest",
    "RangeTestResult",
    "RangeTestSession",
    "RankFailedError",
    "Recommendation",
    "Reducer",
    "ResultFileError",
    "ResultFileNotFoundError",
    "SearchInfo",
    "StepOutcome",
    "StopReason",
    "Suggestion",
    "TorchStep",
    "TrainingStep",
    "TrialReport",
    "__version__",
    "batch_size_search",
    "find_batch_size",
    "find_lr",
    "get_plugin_manager",
    "hookimpl",
    "range_test",
    "run_batch_size_search",
    "run_range_test",
    "tune",
]

_LAZY = {
    "LearningRateFinder": "lrfinder_adapters.pytorch",
    "TorchStep": "lrfinder_adapters.pytorch",
    "find_lr": "lrfinder_adapters.pytorch",
    "find_batch_size": "lrfinder_adapters.batch_size",
    "tune": "lrfinder_adapters.batch_size",
}


def __getattr__(name: str) -> Any:
    """Load the torch-backed names on first use, so ``import lrfinder_plugins`` needs no torch."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lrfinder_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

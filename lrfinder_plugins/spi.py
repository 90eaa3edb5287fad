"""The adapter SPI: every core name a framework adapter may use, ours and third parties' alike.

An adapter (the built-in torch adapters, or a plugin for another framework) imports from
here and from :mod:`lrfinder_plugins` only, never from a private
module: ``pyproject.toml`` states that as an import-linter contract, checked in CI.

What an adapter builds on:

- the seams it implements: :class:`TrainingStep`, :class:`BatchProbe`, :class:`Reducer`
  (:class:`LocalReducer` on one process), and the records they hand in: :class:`StepOutcome`,
  :class:`TrialReport` (:func:`combine_reports` is the rule every reducer applies to trials);
- the sessions, for a loop the framework owns (push): :class:`RangeTestSession`,
  :class:`BatchSizeSession`; the pull drivers, for a loop the adapter owns:
  :func:`run_range_test`, :func:`run_batch_size_search`, :func:`search_with_probe`, with
  :func:`run_step` / :func:`run_trial` (one step or trial turned into its record);
- the engine and results: :class:`RangeTest`, :func:`group_ratios`, :class:`BatchSizeSearch`,
  :class:`RangeTestResult`, :class:`BatchSizeResult`, :class:`NoiseScaleEstimator` (the
  gradient noise scale from two batch sizes' squared gradient norms) and its
  :class:`NoiseScale`, and :class:`JsonFile` (``save_json`` /
  ``load_json`` for an adapter's own result built of them; :class:`ResultFileError`);
- helpers: :mod:`validate` (argument checks whose errors name the argument, the value and the
  fix), :func:`is_oom`, :func:`deferred_sigint`, :func:`registered_suggesters`,
  :func:`registered_schedules`, :func:`first_line`, :func:`raise_failure`.
"""

from __future__ import annotations

from lrfinder_plugins import _validate as validate
from lrfinder_plugins._adapt import make_probe, make_step, search_with_probe
from lrfinder_plugins._batch_driver import is_oom, run_batch_size_search, run_trial
from lrfinder_plugins._batch_search import (
    BatchSizeResult,
    BatchSizeSearch,
    BatchStopReason,
    BatchTrial,
    NothingFitsError,
)
from lrfinder_plugins._driver import run_range_test, run_step
from lrfinder_plugins._json_file import JsonFile, ResultFileError
from lrfinder_plugins._manager import get_plugin_manager
from lrfinder_plugins._observers import Point, SearchInfo
from lrfinder_plugins._range_test import RangeTest, group_ratios
from lrfinder_plugins._results import RangeTestResult, StopReason
from lrfinder_plugins._seams import (
    STEP_FIELDS,
    BatchProbe,
    DeferredOutcome,
    LocalReducer,
    PendingStep,
    RankError,
    RankFailedError,
    Reducer,
    StepOutcome,
    TrainingStep,
    TrialReport,
    combine_reports,
    first_line,
    raise_failure,
    reduce_when_waited,
    resolve_outcome,
    start_step,
)
from lrfinder_plugins._session import MAX_SKIPPED_STEPS, BatchSizeSession, RangeTestSession
from lrfinder_plugins._signals import deferred_sigint
from lrfinder_plugins.hookspecs import hookimpl
from lrfinder_plugins.noise_scale import NoiseScale, NoiseScaleEstimator
from lrfinder_plugins.schedules import registered as registered_schedules
from lrfinder_plugins.suggest import registered as registered_suggesters

__all__ = [
    "MAX_SKIPPED_STEPS",
    "STEP_FIELDS",
    "BatchProbe",
    "BatchSizeResult",
    "BatchSizeSearch",
    "BatchSizeSession",
    "BatchStopReason",
    "BatchTrial",
    "DeferredOutcome",
    "JsonFile",
    "LocalReducer",
    "NoiseScale",
    "NoiseScaleEstimator",
    "NothingFitsError",
    "PendingStep",
    "Point",
    "RangeTest",
    "RangeTestResult",
    "RangeTestSession",
    "RankError",
    "RankFailedError",
    "Reducer",
    "ResultFileError",
    "SearchInfo",
    "StepOutcome",
    "StopReason",
    "TrainingStep",
    "TrialReport",
    "combine_reports",
    "deferred_sigint",
    "first_line",
    "get_plugin_manager",
    "group_ratios",
    "hookimpl",
    "is_oom",
    "make_probe",
    "make_step",
    "raise_failure",
    "reduce_when_waited",
    "registered_schedules",
    "registered_suggesters",
    "resolve_outcome",
    "run_batch_size_search",
    "run_range_test",
    "run_step",
    "run_trial",
    "search_with_probe",
    "start_step",
    "validate",
]

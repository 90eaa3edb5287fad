"""Every plugin hook of lrfinder-plugins, with its calling contract.

A plugin is any object or module with functions named like these hooks and marked with
:data:`lrfinder_plugins.hookimpl`. Plugins are found through the ``lrfinder_plugins`` entry-point
group (see ``docs/plugins.md``). A hook implementation may accept fewer arguments than the
specification lists (pluggy passes only the ones it names).

Hooks marked *first result* (``firstresult=True``) stop at the first implementation that returns
something other than ``None``; the others are called on every plugin. Among plugins, the
last registered is asked first, except implementations marked ``hookimpl(trylast=True)`` (the
built-in adapters and OOM classifier use it, so a third-party plugin is asked before them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from lrfinder_plugins._batch_search import BatchTrial
    from lrfinder_plugins._observers import Point, SearchInfo
    from lrfinder_plugins._results import RangeTestResult
    from lrfinder_plugins._seams import BatchProbe, TrainingStep
    from lrfinder_plugins.schedules import ScheduleFactory
    from lrfinder_plugins.suggest import Suggester

PROJECT_NAME = "lrfinder_plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def lrfinder_register_suggesters() -> Mapping[str, Suggester]:
    """Return suggestion methods to register, by name.

    Called each time the registry is looked up (``suggestion(method=...)``, ``suggestions()``,
    ``lrfinder show``), so a plugin registered at run time counts at once. No arguments. Each
    value is a callable ``suggester(result, **options) -> Suggestion`` (build it with
    ``lrfinder_plugins.suggest.make_suggestion``, or ``no_suggestion`` when the curve allows
    none); its name becomes a valid ``RangeTestResult.suggestion(method=name)``, and the user's
    keyword options reach it. Returning ``None`` or an empty mapping registers nothing.
    Registering a name twice raises ``ValueError`` naming both plugins. A suggester that raises
    when asked for by name reaches the user as a ``PluginError`` naming the plugin; in
    ``suggestions()`` it is logged and left out.
    """


@hookspec
def lrfinder_register_schedules() -> Mapping[str, ScheduleFactory]:
    """Return learning-rate schedules to register, by name.

    Called each time the registry is looked up (when a ``RangeTest`` is created). No arguments.
    Each value is a factory ``factory(*, start_lr, end_lr, num_iter) -> Callable[[int], float]``
    whose result maps a point index ``0 .. num_iter - 1`` to a learning rate, non-decreasing,
    equal to ``start_lr`` at 0 and ``end_lr`` at ``num_iter - 1``. Its name becomes a valid
    ``mode=``. Returning ``None`` or an empty mapping registers nothing. Registering a name twice
    raises ``ValueError`` naming both plugins.
    """


@hookspec
def lrfinder_observes(search: SearchInfo) -> bool | None:
    """Say whether this plugin observes ``search`` at all (optional).

    Called once per search, before :func:`lrfinder_search_started`. ``False`` leaves the plugin
    out of this search: none of its observer hooks is called, and when no plugin observes the
    steps the hot path builds no ``Point`` and makes no call per step (the built-in progress bar
    answers ``search.progress``). ``True`` or ``None``: observed. An exception counts as
    ``False`` and is logged with the plugin's name.
    """


@hookspec
def lrfinder_search_started(search: SearchInfo) -> None:
    """Observe the start of a search, after its arguments were validated and the state saved.

    Called once per search (LR range test or batch-size search), before the first step or
    trial. ``search`` (a ``SearchInfo``: ``kind``, ``total``, ``progress``, ``description``,
    ``search_id``, ``options``) identifies the search in the calls that follow: the same object
    is passed to every observer hook of one search. The return value is ignored. An exception is
    logged with the plugin's name and the plugin is not called again for this search; the search
    goes on.
    """


@hookspec
def lrfinder_step_recorded(search: SearchInfo, point: Point) -> None:
    """Observe one recorded point (one optimizer step) of an LR range test.

    Called after each point is recorded, on the hot path: keep it cheap. ``point`` (a ``Point``)
    holds its ``index``, the ``lr`` the step used, its ``loss`` and ``smoothed_loss``. The return
    value is ignored. Errors are handled as in :func:`lrfinder_search_started`.
    """


@hookspec
def lrfinder_search_finished(search: SearchInfo, result: RangeTestResult) -> None:
    """Observe the end of a search, after the training state was restored.

    Called exactly once per started search, whether it finished, diverged, raised or was
    interrupted (then ``result.stop_reason`` is ``"interrupted"`` and the exception is re-raised
    after the observers ran). ``result`` is a ``RangeTestResult`` (``search.kind ==
    "lr_range_test"``) or a ``BatchSizeResult`` (``"batch_size"``). The return value is ignored.
    Errors are logged with the plugin's name; the result is still returned.
    """


@hookspec(firstresult=True)
def lrfinder_is_oom(error: BaseException) -> bool | None:
    """Decide whether an exception raised by a batch-size trial means "out of memory".

    Called by the batch-size search each time a trial raises an ``Exception``, before the
    built-in classifier (``torch.OutOfMemoryError``, ``MemoryError``, then the CUDA, cuDNN,
    cuBLAS, HIP, MPS, XPU and CPU-allocator messages). ``error`` is the exception as raised.
    Return ``True``: it is an out-of-memory error (the size does not fit; the search goes on
    with a smaller one). ``False``: it is not (the state is restored and the exception re-raised
    unchanged). ``None``: no opinion; the next plugin, then the built-in classifier, decides. The
    first ``True``/``False`` wins (``False`` stops the lookup too). The built-in classifier is
    itself an implementation of this hook, marked ``trylast`` (plugin ``lrfinder.torch``);
    without any answer only ``MemoryError`` counts. Do not keep a reference to ``error``: its
    traceback pins the failed step's tensors.
    """


@hookspec
def lrfinder_trial_recorded(search: SearchInfo, trial: BatchTrial) -> None:
    """Observe one trial of a batch-size search (``search.kind == "batch_size"``).

    Called after each trial is recorded and the training state restored: ``trial`` holds the
    size, whether it fitted, the steps that ran, the peak memory (``None`` where the backend
    does not report it), the seconds it took, its ``role`` and the OOM ``error`` line. The return
    value is ignored. Errors are handled
    as in :func:`lrfinder_search_started`. A batch-size search also calls
    :func:`lrfinder_search_started` and :func:`lrfinder_search_finished`, the latter with a
    ``BatchSizeResult``.
    """


@hookspec(firstresult=True)
def lrfinder_make_step(target: Any, options: Mapping[str, Any]) -> TrainingStep | None:
    """Build the training step of an LR range test on ``target``, if ``target`` is yours.

    Called once by :func:`lrfinder_plugins.range_test` (before anything is run or saved) with
    the object the user passed as ``target`` (a ``torch.nn.Module``, an ignite ``Engine``, a
    Keras model, ...) and the user's other keyword arguments as ``options`` (e.g.
    ``optimizer``, ``train_loader``; read-only). This is how a new training framework plugs in.

    Return a :class:`~lrfinder_plugins.TrainingStep` that runs one optimizer step of ``target``
    per ``run()``. It may have a ``group_ratios`` attribute (each param group's LR divided by the
    largest group's LR; one group when absent), so results record every group's LR.
    Return ``None`` when ``target`` is not for this plugin: the next plugin is asked. The first
    non-``None`` answer wins; when every plugin answers ``None``, ``range_test`` raises a
    ``TypeError`` naming the target's type and the adapter plugins installed. Raise
    ``TypeError``/``ValueError`` when ``target`` is yours but ``options`` are wrong: the user
    gets the error before anything ran. Recognise the target without importing a framework the
    user has not imported (``sys.modules.get("torch")``, then ``isinstance``), so the check is
    free for users of other frameworks.
    """


@hookspec(firstresult=True)
def lrfinder_make_probe(target: Any, options: Mapping[str, Any]) -> BatchProbe | None:
    """Build the batch probe of a batch-size search on ``target``, if ``target`` is yours.

    Called once by :func:`lrfinder_plugins.batch_size_search` (before anything is run or
    saved), with ``target`` and ``options`` as in :func:`lrfinder_make_step` (e.g.
    ``optimizer``, ``make_loader``). Return a :class:`~lrfinder_plugins.BatchProbe` whose
    ``try_batch_size(size, steps)`` runs ``steps`` training steps at that batch size and raises
    the backend's out-of-memory error when it does not fit (classified by
    :func:`lrfinder_is_oom`). It may have an ``upper_bound`` attribute (the largest useful size,
    e.g. the dataset length). ``None``, the first non-``None`` answer and errors mean what they
    mean for :func:`lrfinder_make_step`.
    """

"""Framework-agnostic entry points: ask the adapter plugins how to run a search on a target.

:func:`range_test` and :func:`batch_size_search` take whatever the user trains (a
``torch.nn.Module``, an ignite ``Engine``, ...) and ask the ``lrfinder_make_step`` /
``lrfinder_make_probe`` hooks for the object that runs it. The core knows no framework: the
built-in torch adapter is an entry-point plugin (``lrfinder.torch``) like any other; a target
that already is a :class:`TrainingStep` or :class:`BatchProbe` is used as it is (the
``lrfinder.protocols`` plugin, :mod:`lrfinder_plugins._protocols`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrfinder_plugins._batch_driver import run_batch_size_search
from lrfinder_plugins._batch_search import BatchSizeResult, BatchSizeSearch
from lrfinder_plugins._driver import run_range_test
from lrfinder_plugins._manager import DISABLE_ENV, get_plugin_manager
from lrfinder_plugins._range_test import RangeTest
from lrfinder_plugins._results import RangeTestResult
from lrfinder_plugins._seams import BatchProbe, TrainingStep

GUIDE = "docs/plugins.md"


def make_step(target: Any, options: Mapping[str, Any]) -> TrainingStep:
    """The training step the adapter plugins build for ``target`` (first non-``None`` answer).

    Raises:
        TypeError: no plugin knows ``target`` (the message names its type and the adapters).
    """
    step = get_plugin_manager().hook.lrfinder_make_step(target=target, options=dict(options))
    if step is None:
        raise _unknown_target(target, "lrfinder_make_step", "an LR range test")
    _check_built(step, "lrfinder_make_step", ("snapshot", "restore", "set_lr", "run"))
    return step


def make_probe(target: Any, options: Mapping[str, Any]) -> BatchProbe:
    """The batch probe the adapter plugins build for ``target`` (first non-``None`` answer).

    Raises:
        TypeError: no plugin knows ``target`` (the message names its type and the adapters).
    """
    probe = get_plugin_manager().hook.lrfinder_make_probe(target=target, options=dict(options))
    if probe is None:
        raise _unknown_target(target, "lrfinder_make_probe", "a batch-size search")
    _check_built(probe, "lrfinder_make_probe", ("snapshot", "restore", "try_batch_size"))
    return probe


def _check_built(built: Any, hook_name: str, methods: tuple[str, ...]) -> None:
    """Raise a ``TypeError`` naming the hook's plugins unless ``built`` has ``methods``."""
    missing = [m for m in methods if not callable(getattr(built, m, None))]
    if missing:
        pm = get_plugin_manager()
        plugins = sorted(i.plugin_name for i in getattr(pm.hook, hook_name).get_hookimpls())
        raise TypeError(
            f"an adapter plugin's {hook_name} returned {built!r} ({type(built).__name__}), which "
            f"has no {', '.join(m + '()' for m in missing)}; it must return an object with "
            f"{', '.join(m + '()' for m in methods)}, or None for a target it does not know "
            f"(plugins answering {hook_name}: {plugins}; see {GUIDE})"
        )


def _unknown_target(target: Any, hook_name: str, what: str) -> TypeError:
    pm = get_plugin_manager()
    adapters = sorted(impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls())
    kind = f"{type(target).__module__}.{type(target).__qualname__}"
    return TypeError(
        f"no installed plugin can run {what} on a {kind}; adapter plugins: {adapters} "
        f"(check `lrfinder plugins`, and that none is blocked by {DISABLE_ENV}). Install the "
        f"adapter for your framework (raw PyTorch needs torch: pip install "
        f"'lrfinder-plugins[torch]'), or write one: see {GUIDE}"
    )


def range_test(
    target: Any,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: str = "exponential",
    smoothing: float = 0.05,
    diverge_threshold: float | None = 5.0,
    progress: bool = True,
    **options: Any,
) -> RangeTestResult:
    """Run the LR range test on any target an installed adapter plugin knows.

    The ``lrfinder_make_step`` hook turns ``target`` and ``options`` into a
    :class:`TrainingStep` (raw PyTorch: ``target`` is the model, ``options`` are
    ``optimizer=``, ``loss_fn=``, ``train_loader=`` and any ``TorchStep`` option; another
    framework: see its adapter), then :func:`run_range_test` runs it: the state is restored
    afterwards, whatever happens. A :class:`TrainingStep` is accepted as the target itself.

    Args:
        target: what to train (a ``torch.nn.Module``, an ignite ``Engine``, a TrainingStep...).
        start_lr, end_lr, num_iter, mode, smoothing, diverge_threshold: see :class:`RangeTest`.
        progress: show a progress bar.
        **options: passed to the adapter that takes ``target``.

    Raises:
        TypeError: no adapter plugin takes ``target``, or the adapter rejects ``options``.
        ValueError: a bad argument (before anything ran).

    Example:
        >>> result = range_test(model, optimizer=opt, loss_fn=loss_fn, train_loader=loader)  # doctest: +SKIP
        >>> result.suggestion().lr  # doctest: +SKIP
    """
    step = make_step(target, options)
    test = RangeTest(
        start_lr=start_lr,
        end_lr=end_lr,
        num_iter=num_iter,
        mode=mode,
        smoothing=smoothing,
        diverge_threshold=diverge_threshold,
        group_ratios=getattr(step, "group_ratios", (1.0,)),
    )
    return run_range_test(step, test, progress=progress)


def batch_size_search(
    target: Any,
    *,
    mode: str = "guided",
    init_val: int = 2,
    max_trials: int = 25,
    steps_per_trial: int = 3,
    max_val: int | None = 8192,
    margin: float = 0.05,
    target_batch: int | None = None,
    progress: bool = True,
    **options: Any,
) -> BatchSizeResult:
    """Find the largest batch size that fits, on any target an installed adapter plugin knows.

    The ``lrfinder_make_probe`` hook turns ``target`` and ``options`` into a
    :class:`BatchProbe` (raw PyTorch: ``target`` is the model, ``options`` are ``optimizer=``,
    ``loss_fn=`` and one of ``dataset=``/``make_loader=``/``step_fn=``, as in
    ``find_batch_size``), then :func:`run_batch_size_search` runs it, restoring the state after
    every trial. A :class:`BatchProbe` is accepted as the target itself.

    Args:
        target: what to train.
        mode, init_val, max_trials, steps_per_trial, max_val, margin, target_batch: see
            :class:`BatchSizeSearch`.
        progress: show a progress bar.
        **options: passed to the adapter that takes ``target``.

    Raises:
        TypeError: no adapter plugin takes ``target``, or the adapter rejects ``options``.
        NothingFitsError: even the smallest size ran out of memory.

    Example:
        >>> found = batch_size_search(model, optimizer=opt, loss_fn=loss_fn, dataset=data)  # doctest: +SKIP
        >>> found.batch_size  # doctest: +SKIP
    """
    return search_with_probe(
        make_probe(target, options),
        progress=progress,
        mode=mode,
        init_val=init_val,
        max_trials=max_trials,
        steps_per_trial=steps_per_trial,
        max_val=max_val,
        margin=margin,
        target_batch=target_batch,
    )


def search_with_probe(
    probe: BatchProbe, *, progress: bool = True, **search: Any
) -> BatchSizeResult:
    """Run a :class:`BatchSizeSearch` (built from ``search``'s options) over ``probe``.

    The probe's optional ``upper_bound`` (e.g. the dataset's length) caps the sizes tried.
    """
    size_search = BatchSizeSearch(upper_bound=getattr(probe, "upper_bound", None), **search)
    return run_batch_size_search(probe, size_search, progress=progress)

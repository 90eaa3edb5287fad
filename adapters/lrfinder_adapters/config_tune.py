"""Tune what a config file names: the engine behind ``lrfinder tune --config run.toml``.

Three kinds of config, told apart by their sections (:func:`config_kind`):

- ``"lightning"`` (TOML, the seed's layout): ``[module_config]`` and ``[datamodule_config]``
  name a ``LightningModule`` and a ``LightningDataModule`` by ``class_path =
  "package.module:ClassName"``; their other keys are the init arguments (tables included, so
  ``[module_config.optimizer]`` arrives as ``optimizer={...}``). ``[trainer_config]`` holds the
  ``Trainer``'s arguments, ``[tuner_config]`` the options of :func:`lrfinder_adapters.lightning.tune`.
- ``"lightning_cli"`` (YAML, a ``LightningCLI`` config): ``model:`` and ``data:`` with
  ``class_path`` / ``init_args``, ``trainer:``, and optionally ``seed_everything:`` and
  ``tuner:`` (the same options; :class:`lrfinder_adapters.lightning_cli.TuningCLI` accepts it).
- ``"torch"`` (plain PyTorch, no Lightning): ``[torch_config] factory = "package.module:fn"``;
  ``fn(config)`` gets the whole config as plain values and returns the model, optimizer, loss
  and dataset (a mapping or an object with those names). ``[tuner_config.batch_options]`` and
  ``[tuner_config.lr_options]`` are :func:`lrfinder_adapters.batch_size.tune`'s arguments.

Nested ``{"class_path": ..., "init_args": {...}}`` values (a trainer's callbacks or logger, a
module's sub-model) are built too, innermost first. The config's folder and the working folder
are searched for the named modules, so an example next to its config needs no install.

The batch size is always found before the learning rate (the best LR depends on the batch
size). The log (logger ``lrfinder_plugins.tune``) carries the lines of the seed's tuner.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrfinder_plugins.spi import validate

if TYPE_CHECKING:
    from lrfinder_plugins import RangeTestResult, Suggestion

__all__ = [
    "BadConfigError",
    "ConfigKeys",
    "Found",
    "config_kind",
    "default_keys",
    "fit_config",
    "import_object",
    "instantiate",
    "tune_config",
    "tune_lightning",
]

log = logging.getLogger("lrfinder_plugins.tune")


class BadConfigError(ValueError):
    """What a config names does not build (or is not there): one line, raised before any work."""


@dataclass(frozen=True)
class ConfigKeys:
    """The dotted keys the found values are read from and written to.

    Attributes:
        batch_size: the batch size.
        learning_rate: the learning rate.
        max_lr: ``OneCycleLR``'s ``max_lr``; the other ``one_cycle()`` keys go into the same
            table (``None``: write no scheduler keys).
    """

    batch_size: str
    learning_rate: str
    max_lr: str | None

    def scheduler_key(self, name: str) -> str | None:
        """Where the ``one_cycle()`` key ``name`` goes (``None``: nowhere)."""
        if self.max_lr is None:
            return None
        if name == "max_lr":
            return self.max_lr
        table = self.max_lr.rpartition(".")[0]
        return f"{table}.{name}" if table else name


def default_keys(kind: str) -> ConfigKeys:
    """The keys of the seed's layout (TOML kinds) or of a ``LightningCLI`` config (YAML)."""
    if kind == "lightning_cli":
        return ConfigKeys(
            "data.init_args.batch_size",
            "model.init_args.learning_rate",
            "model.init_args.scheduler.max_lr",
        )
    return ConfigKeys(
        "datamodule_config.batch_size",
        "module_config.optimizer.learning_rate",
        "module_config.scheduler.max_lr",
    )


def config_kind(config: Mapping[str, Any]) -> str:
    """``"torch"``, ``"lightning"`` or ``"lightning_cli"``, from the config's sections.

    Raises:
        BadConfigError: none of ``[torch_config]``, ``[module_config]``, ``model:`` is there.
    """
    if "torch_config" in config:
        return "torch"
    if "module_config" in config:
        return "lightning"
    if "model" in config:
        return "lightning_cli"
    raise BadConfigError(
        "the config names nothing to tune: it needs a [module_config] table (a LightningModule), "
        "a model: section (a LightningCLI config) or a [torch_config] table (a PyTorch factory)"
    )


@dataclass(frozen=True)
class Found:
    """What a tuning run found.

    Attributes:
        batch_size: the batch size (``None``: not tuned).
        lr: the suggested learning rate (``None``: not tuned, or the curve gave none).
        old_lr: the learning rate before.
        suggestion: the suggestion, with its confidence, range and ``one_cycle()``.
        result: the range test's result.
        plot_path: where the plot was saved.
    """

    batch_size: int | None = None
    lr: float | None = None
    old_lr: float | None = None
    suggestion: Suggestion | None = None
    result: RangeTestResult | None = None
    plot_path: Path | None = None

    def one_cycle(self) -> dict[str, Any]:
        """``OneCycleLR`` arguments from the suggestion (without ``total_steps``), or ``{}``."""
        if self.suggestion is None or self.lr is None:
            return {}
        return self.suggestion.one_cycle()


@contextlib.contextmanager
def _search_path(folders: Sequence[Path]) -> Iterator[None]:
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for folder in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def import_object(path: str, key: str = "class_path") -> Any:
    """The object ``path`` names: ``"package.module:Name"`` or ``"package.module.Name"``.

    Raises:
        BadConfigError: one line naming ``key``, the path and why it does not import.
    """
    if not isinstance(path, str) or not path.strip():
        raise BadConfigError(f"{key} must be 'package.module:Name', not {path!r}")
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    if not module_name or not name:
        raise BadConfigError(f"{key} = {path!r}: write it as 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or whatever the module raises as it loads
        raise BadConfigError(
            f"{key} = {path!r}: cannot import {module_name!r} ({type(error).__name__}: {error})"
        ) from error
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise BadConfigError(f"{key} = {path!r}: {module_name!r} has no {name!r}")
        obj = getattr(obj, part)
    return obj


def instantiate(value: Any, key: str) -> Any:
    """``value`` with every ``{"class_path": ..., "init_args": {...}}`` in it built.

    Raises:
        BadConfigError: a class path that does not import, or init arguments it does not take.
    """
    if isinstance(value, list):
        return [instantiate(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    if "class_path" not in value:
        return {k: instantiate(v, f"{key}.{k}") for k, v in value.items()}
    extra = set(value) - {"class_path", "init_args"}
    if extra:
        raise BadConfigError(
            f"{key}: unexpected {sorted(extra)} next to class_path (use init_args)"
        )
    return _build(value["class_path"], value.get("init_args") or {}, key)


def _build(class_path: str, init_args: Mapping[str, Any], key: str) -> Any:
    factory = import_object(class_path, f"{key}.class_path")
    args = {k: instantiate(v, f"{key}.{k}") for k, v in init_args.items()}
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as error:
        raise BadConfigError(
            f"{key}: {class_path} does not take these arguments: {error}"
        ) from None
    except ValueError:  # no signature to check (a builtin): its own TypeError tells
        try:
            return factory(**args)
        except TypeError as error:
            raise BadConfigError(f"{key}: {class_path}: {error}") from None
    return factory(**args)


def _section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key, {})
    if not isinstance(value, Mapping):
        raise BadConfigError(f"{key} must be a table of arguments, not {value!r}")
    return dict(value)


def _build_section(config: Mapping[str, Any], key: str, kind: str) -> Any:
    """A module or data module: the seed's flat table, or LightningCLI's class_path/init_args."""
    section = _section(config, key)
    if "class_path" not in section:
        raise BadConfigError(
            f"{key}.class_path is missing: name the class as 'package.module:Name'"
        )
    if kind == "lightning_cli":
        return instantiate(section, key)
    init_args = {k: v for k, v in section.items() if k != "class_path"}
    return _build(section["class_path"], init_args, key)


@dataclass
class _LightningRun:
    module: Any
    datamodule: Any
    trainer_options: dict[str, Any]
    tuner_options: dict[str, Any]


_SECTIONS = {
    "lightning": ("module_config", "datamodule_config", "trainer_config", "tuner_config"),
    "lightning_cli": ("model", "data", "trainer", "tuner"),
}


def _lightning_run(config: Mapping[str, Any], kind: str) -> _LightningRun:
    from lrfinder_adapters import require

    require("lightning", "lightning")
    model_key, data_key, trainer_key, tuner_key = _SECTIONS[kind]
    if kind == "lightning_cli":
        unsupported = {"optimizer", "lr_scheduler"} & set(config)
        if unsupported:
            raise BadConfigError(
                f"{sorted(unsupported)[0]}: LightningCLI's optimizer/lr_scheduler sections are not "
                "read by lrfinder tune; build them in configure_optimizers from init_args"
            )
        if config.get("seed_everything") not in (None, False):
            import lightning.pytorch as pl

            pl.seed_everything(config["seed_everything"], verbose=False)
    module = _build_section(config, model_key, kind)
    datamodule = _build_section(config, data_key, kind) if data_key in config else None
    trainer_options = instantiate(_section(config, trainer_key), trainer_key)
    return _LightningRun(module, datamodule, trainer_options, _section(config, tuner_key))


def _trainer(options: Mapping[str, Any], key: str) -> Any:
    import lightning.pytorch as pl

    try:
        inspect.signature(pl.Trainer).bind(**options)
    except TypeError as error:
        raise BadConfigError(f"{key}: not arguments of lightning's Trainer: {error}") from None
    return pl.Trainer(**options)


def _defaults(function: Any, *names: str) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


def _lr_line(found: Found) -> None:
    suggestion = found.suggestion
    if found.lr is None or suggestion is None:
        reason = suggestion.reason if suggestion is not None else "no curve"
        log.warning("✗ No learning rate suggested (%s): the learning rate is unchanged", reason)
        return
    log.info("✓ Suggested learning rate: %.2e", found.lr)
    if found.old_lr is not None:
        log.info("  Updated optimizer LR: %.2e → %.2e", found.old_lr, found.lr)
    log.info(
        "  confidence %.2f, usable range %.2e … %.2e (%s)",
        suggestion.confidence,
        suggestion.lower,
        suggestion.upper,
        suggestion.method,
    )
    if found.plot_path is not None:
        log.info("  LR finder plot saved to: %s", found.plot_path)


def tune_lightning(
    trainer: Any,
    module: Any,
    datamodule: Any = None,
    *,
    tune_batch_size: bool = True,
    tune_lr: bool = True,
    options: Mapping[str, Any] | None = None,
    plot_path: Path | None = None,
    options_key: str = "tuner",
) -> Found:
    """Find the batch size, then the LR, with :func:`lrfinder_adapters.lightning.tune`; log both.

    The log lines are the seed's (``✓ Optimal batch size found: ...``, ``✓ Suggested learning
    rate: ...``, ``Updated optimizer LR: ... → ...``, ``LR finder plot saved to: ...``) plus the
    suggestion's confidence and usable range. The found values are set in the module's and
    data module's attributes (as ``tune`` does); the training state is as before.

    Args:
        trainer: the trainer to tune with (reusable for the fit afterwards).
        module: the LightningModule.
        datamodule: its LightningDataModule (``None``: the module builds its loaders).
        tune_batch_size: find the batch size (first).
        tune_lr: run the LR range test (at the found batch size).
        options: ``tune()``'s options (``max_trials``, ``num_training``, ...).
        plot_path: save the range test's plot there.
        options_key: the config key the options came from (named in the error).

    Raises:
        BadConfigError: an unknown option, a bad setting, or no LR attribute (one line,
            before any work).
    """
    from lrfinder_adapters.lightning import Tuner, check_tune, find_lr_attr, get_lr_attr, tune

    options = dict(options or {})
    if plot_path is not None:
        options["plot_path"] = plot_path

    def run(**which: bool) -> Any:
        return tune(trainer, module, datamodule, **which, **options)

    # Every check of both searches before either runs (each runs below as its own tune() call,
    # which would check only its own): a misspelt option, a bad LR setting or nowhere to put a
    # found value fails before the first batch-size trial.
    try:
        check_tune(module, datamodule, tune_lr, tune_batch_size, **options)
    except (validate.UnknownOptionError, TypeError, ValueError) as error:
        raise BadConfigError(f"{options_key}: {error}") from None
    except AttributeError as error:
        raise BadConfigError(str(error)) from None
    old_lr = None  # the LR attribute before, for the "Updated optimizer LR" line
    if tune_lr:
        try:  # check_tune found it already unless update_attr=False: then it may be missing
            container, name = find_lr_attr(module, options.get("attr_name", ""))
        except AttributeError:
            pass
        else:
            old_lr = float(get_lr_attr(container, name))
    found_size = None
    if tune_batch_size:
        shown = _defaults(Tuner.scale_batch_size, "mode", "init_val", "max_trials")
        shown["mode"] = options.get("batch_size_mode", shown["mode"])
        shown.update({k: options[k] for k in ("init_val", "max_trials") if k in options})
        log.info("Running batch size tuning...")
        log.info("Mode: %(mode)s, init_val: %(init_val)s, max_trials: %(max_trials)s", shown)
        found_size = run(lr=False).batch_size
        log.info("✓ Optimal batch size found: %s", found_size)
    if not tune_lr:
        return Found(batch_size=found_size)
    steps = options.get("num_training", _defaults(Tuner.lr_find, "num_training")["num_training"])
    log.info("Running learning rate finder (LR range test)...")
    log.info("Training for ~%s iterations while exponentially increasing LR...", steps)
    finder = run(batch_size=False).lr_finder
    if finder is None:  # fast_dev_run: skipped, with Lightning's warning
        return Found(batch_size=found_size)
    suggestion = finder.result.suggestion(finder.method)
    found = Found(found_size, finder.suggestion(), old_lr, suggestion, finder.result, plot_path)
    _lr_line(found)
    return found


def _torch_parts(config: Mapping[str, Any]) -> dict[str, Any]:
    section = _section(config, "torch_config")
    factory = import_object(section.get("factory", ""), "torch_config.factory")
    parts = factory(config)
    names = ("model", "optimizer", "loss_fn", "dataset")
    if isinstance(parts, Mapping):
        missing = [n for n in names if n not in parts]
        got = dict(parts)
    else:
        missing = [n for n in names if not hasattr(parts, n)]
        got = {n: getattr(parts, n) for n in names if hasattr(parts, n)}
    if missing:
        raise BadConfigError(
            f"torch_config.factory = {section['factory']!r} returned no {', '.join(missing)} "
            f"(it must return {', '.join(names)})"
        )
    return got


def _tune_torch(
    config: Mapping[str, Any],
    tune_batch_size: bool,
    tune_lr: bool,
    plot_path: Path | None,
    batch_size: int | None,
) -> Found:
    import torch

    from lrfinder_adapters.batch_size import find_batch_size, tune
    from lrfinder_adapters.pytorch import find_lr

    options = _section(config, "tuner_config")
    unknown = set(options) - {"batch_options", "lr_options"}
    if unknown:
        raise BadConfigError(
            f"tuner_config: unknown {sorted(unknown)}; a torch config takes "
            "[tuner_config.batch_options] and [tuner_config.lr_options]"
        )
    batch_options = _section(options, "batch_options")
    lr_options = _section(options, "lr_options")
    parts = _torch_parts(config)
    model, optimizer, loss_fn, dataset = (
        parts[n] for n in ("model", "optimizer", "loss_fn", "dataset")
    )
    old_lr = float(optimizer.param_groups[0]["lr"])
    if tune_batch_size:
        log.info("Running batch size tuning...")
        shown = _defaults(find_batch_size, "mode", "init_val", "max_trials") | batch_options
        log.info("Mode: %(mode)s, init_val: %(init_val)s, max_trials: %(max_trials)s", shown)
    if tune_batch_size and tune_lr:
        both = tune(
            model,
            optimizer,
            loss_fn,
            dataset=dataset,
            batch_options=batch_options,
            lr_options=lr_options,
            progress=False,
        )
        found_size: int | None = both.batch_size
        result = both.lr
        _log_batch_advice(both.batch)
    elif tune_batch_size:
        batch = find_batch_size(
            model, optimizer, loss_fn, dataset=dataset, progress=False, **batch_options
        )
        log.info("✓ Optimal batch size found: %s", batch.batch_size)
        _log_batch_advice(batch)
        return Found(batch_size=batch.batch_size)
    else:
        found_size = None
        assert batch_size is not None
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
        result = find_lr(model, optimizer, loss_fn, loader, progress=False, **lr_options)
    if found_size is not None:
        log.info("✓ Optimal batch size found: %s", found_size)
    log.info("Running learning rate finder (LR range test)...")
    log.info("Trained for %d iterations while exponentially increasing LR", len(result))
    suggestion = result.suggestion()
    if plot_path is not None:
        import matplotlib.pyplot as plt

        plt.close(result.plot(plot_path))
    lr = float(suggestion.lr) if suggestion.ok else None
    found = Found(found_size, lr, old_lr, suggestion, result, plot_path)
    _lr_line(found)
    return found


def tune_config(
    config: Mapping[str, Any],
    *,
    tune_batch_size: bool,
    tune_lr: bool,
    plot_path: Path | None = None,
    batch_size: int | None = None,
    search: Sequence[Path] = (),
) -> Found:
    """Build what ``config`` names and find its batch size, then its learning rate.

    Args:
        config: the config as plain values (``ConfigFile.plain()``); its kind is read from its
            sections (:func:`config_kind`).
        tune_batch_size: find the largest batch size that fits.
        tune_lr: run the LR range test (after the batch-size search, at the size it found).
        plot_path: save the range test's plot there.
        batch_size: the batch size the LR test runs at when the batch size is not tuned (a
            torch config; a data module holds its own).
        search: folders searched first for the modules the config names.

    Returns:
        What was found; the training state is as before (apply the values to the config).

    Raises:
        BadConfigError: a class path that does not import, arguments a class does not take, an
            unknown option (one line, raised before any training step).
    """
    kind = config_kind(config)
    with _search_path(search):
        if tune_batch_size and tune_lr:
            log.info("Tuning the batch size first, then the learning rate at it")
        if kind == "torch":
            return _tune_torch(config, tune_batch_size, tune_lr, plot_path, batch_size)
        run = _lightning_run(config, kind)
        trainer_key, tuner_key = _SECTIONS[kind][2:]
        return tune_lightning(
            _trainer(run.trainer_options, trainer_key),
            run.module,
            run.datamodule,
            tune_batch_size=tune_batch_size,
            tune_lr=tune_lr,
            options=run.tuner_options,
            plot_path=plot_path,
            options_key=tuner_key,
        )


def fit_config(config: Mapping[str, Any], *, search: Sequence[Path] = ()) -> None:
    """Build the module, data module and trainer ``config`` names afresh, and fit.

    Raises:
        BadConfigError: a torch config (it names no training loop to run), or a bad class path.
    """
    kind = config_kind(config)
    if kind == "torch":
        raise BadConfigError(
            "--fit needs a Lightning config: a torch factory names no training loop"
        )
    with _search_path(search):
        run = _lightning_run(config, kind)
        trainer = _trainer(run.trainer_options, _SECTIONS[kind][2])
        log.info("Starting training (fit)...")
        trainer.fit(run.module, datamodule=run.datamodule)


def _log_batch_advice(batch: Any) -> None:
    """The throughput knee and the recommendation (with its reason and the LR rule)."""
    rates = batch.throughput
    if rates:
        shown = ", ".join(f"{size}: {rate:,.0f}" for size, rate in rates.items())
        log.info("Throughput knee: %s (samples/s by size: %s)", batch.knee, shown)
    if batch.noise_scale is not None:
        log.info("Noise scale: %s", batch.noise_scale.describe())
    advice = batch.recommendation
    if advice is not None:
        log.info("Recommended batch size: %d: %s", advice.batch_size, advice.reason)
        log.info("%s", advice.lr_advice())

"""``lrfinder tune``: tune the model a config file names, and write the found values back.

The front end only: it checks the flags and the config before anything runs (bad input ends
in one line and exit code 2), hands the config's plain values to
:mod:`lrfinder_adapters.config_tune` (imported when the command runs) and writes what it found
back through :class:`~lrfinder_plugins._config_file.ConfigFile`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lrfinder_plugins._config_file import ConfigError, ConfigFile, round_value
from lrfinder_plugins._usage import (
    UsageError,
    check_installed,
    check_plot_file,
    one_line,
)

DESCRIPTION = """\
Find the batch size (first) and the learning rate of the model a config file names, log them
as the seed's tuner does, and with --write-config write them back into the same file (comments,
key order and format kept; atomically). A TOML config names a LightningModule and DataModule
([module_config], [datamodule_config], [trainer_config], [tuner_config]) or a plain-PyTorch
factory ([torch_config] factory = "package.module:fn"); a YAML config is a LightningCLI one
(model:, data:, trainer:, tuner:)."""

TUNE_LOGGER = "lrfinder_plugins.tune"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lrfinder tune``."""
    parser.add_argument("--config", required=True, help="the TOML or YAML config to tune")
    parser.add_argument("--tune-batch-size", action="store_true", help="find the batch size")
    parser.add_argument(
        "--tune-learning-rate", action="store_true", help="find the LR (after the batch size)"
    )
    parser.add_argument("--fit", action="store_true", help="then train with the found values")
    parser.add_argument(
        "--write-config", action="store_true", help="write the found values into the config"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the diff --write-config would make"
    )
    parser.add_argument(
        "--batch-size-key",
        default=None,
        help="where the batch size goes (TOML: datamodule_config.batch_size; "
        "YAML: data.init_args.batch_size)",
    )
    parser.add_argument(
        "--lr-key",
        default=None,
        help="where the LR goes (TOML: module_config.optimizer.learning_rate; "
        "YAML: model.init_args.learning_rate)",
    )
    parser.add_argument(
        "--max-lr-key",
        default=None,
        help="where OneCycleLR's max_lr goes, its other keys beside it (TOML: "
        "module_config.scheduler.max_lr; YAML: model.init_args.scheduler.max_lr; 'none': "
        "write no scheduler keys)",
    )
    parser.add_argument(
        "--plot", default=None, help="the LR plot (default .logs/lr_finder_plot.png)"
    )
    parser.add_argument("--no-plot", action="store_true", help="save no LR plot")


def _check_flags(args: argparse.Namespace) -> None:
    tuned = args.tune_batch_size or args.tune_learning_rate
    if not tuned and not args.fit:
        raise ConfigError(
            "nothing to do: pass --tune-batch-size and/or --tune-learning-rate (and --fit to train)"
        )
    for flag, given in (("--write-config", args.write_config), ("--dry-run", args.dry_run)):
        if given and not tuned:
            raise ConfigError(
                f"{flag} without --tune-batch-size or --tune-learning-rate: nothing to write"
            )
    if args.dry_run and args.fit:
        raise ConfigError("--dry-run with --fit: a dry run trains nothing; drop one of them")
    if args.no_plot and args.plot is not None:
        raise ConfigError("--plot with --no-plot: drop one of them")
    needs = (
        ("--batch-size-key", args.batch_size_key, args.tune_batch_size, "--tune-batch-size"),
        ("--lr-key", args.lr_key, args.tune_learning_rate, "--tune-learning-rate"),
        ("--max-lr-key", args.max_lr_key, args.tune_learning_rate, "--tune-learning-rate"),
        ("--plot", args.plot, args.tune_learning_rate, "--tune-learning-rate"),
    )
    for flag, value, tuned_here, tune_flag in needs:
        if value is not None and not tuned_here:
            raise ConfigError(f"{flag} without {tune_flag}: nothing goes there")


def _keys(args: argparse.Namespace, default: Any) -> Any:
    from lrfinder_adapters.config_tune import ConfigKeys

    max_lr = default.max_lr if args.max_lr_key is None else args.max_lr_key
    return ConfigKeys(
        args.batch_size_key or default.batch_size,
        args.lr_key or default.learning_rate,
        None if max_lr is None or max_lr.lower() == "none" else max_lr,
    )


def _check_keys(args: argparse.Namespace, config: ConfigFile, keys: Any, kind: str) -> None:
    """Every key a found value goes to exists (the scheduler's: its table), before any work."""
    if args.tune_batch_size or kind == "torch":  # a torch LR test reads the batch size there
        config.get(keys.batch_size)
    if args.tune_learning_rate:
        config.get(keys.learning_rate)
        if keys.max_lr is not None:
            config.require(keys.max_lr, table_only=True)


def _plot_path(args: argparse.Namespace) -> Path | None:
    if not args.tune_learning_rate or args.no_plot:
        return None
    check_installed("matplotlib", "plot", "the LR plot", " (or pass --no-plot)")
    path = check_plot_file("--plot", args.plot or ".logs/lr_finder_plot.png")
    return path


def _apply(config: ConfigFile, keys: Any, found: Any) -> None:
    if found.batch_size is not None:
        config.set(keys.batch_size, int(found.batch_size))
    if found.lr is None:
        return
    config.set(keys.learning_rate, round_value(found.lr))
    for name, value in found.one_cycle().items():
        key = keys.scheduler_key(name)
        if key is not None:
            config.set(key, round_value(value))


@contextlib.contextmanager
def _tune_log() -> Iterator[None]:
    """The tuner's lines on stderr at INFO, as the seed's tuner prints them."""
    logger = logging.getLogger(TUNE_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[lrfinder tune] %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def _one_line_errors(args: argparse.Namespace, path: Path) -> Iterator[None]:
    """A config's mistakes as one line; other errors too, unless ``-v`` asks for the traceback."""
    from lrfinder_adapters.config_tune import BadConfigError

    try:
        yield
    except UsageError:  # already one line
        raise
    except (BadConfigError, ImportError) as error:  # what the config names, a missing extra
        raise ConfigError(f"{path}: {one_line(error)}") from None
    except (ValueError, TypeError) as error:  # an option a search refused, or the model's own
        if getattr(args, "verbose", False):
            raise
        raise ConfigError(
            f"{path}: {type(error).__name__}: {one_line(error)} (lrfinder -v tune ... shows where)"
        ) from None


def _load(args: argparse.Namespace) -> tuple[ConfigFile, str, Any]:
    """The config, its kind and the keys the found values go to, all checked before any work."""
    try:
        config = ConfigFile.load(args.config)
    except ImportError as error:  # the parser's extra is not installed: the message names it
        raise ConfigError(one_line(error)) from None
    from lrfinder_adapters import config_tune

    with _one_line_errors(args, config.path):
        kind = config_tune.config_kind(config.plain())
    if args.fit and kind == "torch":
        raise ConfigError(
            f"{config.path}: --fit needs a Lightning config (a torch factory names no training "
            "loop to run); drop --fit"
        )
    keys = _keys(args, config_tune.default_keys(kind))
    _check_keys(args, config, keys, kind)
    if args.write_config and not args.dry_run:
        config.check_writable()
    return config, kind, keys


def _write(args: argparse.Namespace, config: ConfigFile) -> None:
    """--dry-run: print the diff; --write-config: write the file (and log the note)."""
    if args.dry_run:
        print(config.diff() or f"{config.path}: no change")
    elif args.write_config and config.changes:
        config.save()
        logging.getLogger(TUNE_LOGGER).info("%s: %s", config.path, config.note().strip("# \n"))
    elif args.write_config:
        logging.getLogger(TUNE_LOGGER).info("%s: no change to write", config.path)


def run(args: argparse.Namespace) -> int:
    """Run ``lrfinder tune`` with parsed ``args``; return the exit code.

    Raises:
        ConfigError: bad flags, a config that cannot be read or lacks a key, a read-only
            config, a class path that does not import (one line; ``main`` exits with 2).
    """
    from lrfinder_adapters import config_tune

    _check_flags(args)
    config, kind, keys = _load(args)
    plot = _plot_path(args)
    search = [config.path.resolve().parent, Path.cwd()]
    with _tune_log(), _one_line_errors(args, config.path):
        if args.tune_batch_size or args.tune_learning_rate:
            found = config_tune.tune_config(
                config.plain(),
                tune_batch_size=args.tune_batch_size,
                tune_lr=args.tune_learning_rate,
                plot_path=plot,
                batch_size=config.get(keys.batch_size) if kind == "torch" else None,
                search=search,
            )
            _apply(config, keys, found)
            _write(args, config)
        if args.fit:
            config_tune.fit_config(config.plain(), search=search)
    return 0

"""The ``lrfinder`` console script: ``lrfinder demo``, ``plugins``, ``show`` and ``tune``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import lrfinder_plugins
from lrfinder_plugins._usage import (
    UsageError,
    check_installed,
    check_plot_file,
    check_writable_dir,
    check_writable_file,
    one_line,
)

DESCRIPTION = (
    "Find a good initial learning rate (the LR range test) and the largest batch size that "
    "fits, before training. Commands: demo (a built-in example), plugins (what is "
    "registered), show (a saved result), tune (a model a config file names). "
    "Run lrfinder COMMAND --help for each."
)
"""The top-level --help text: plain words (no reST markup, as the module docstring has)."""

USAGE_ERROR = 2
"""The exit code of bad input (argparse's own)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _check_method(flag: str, method: str | None) -> None:
    if method is None:
        return
    from lrfinder_plugins.suggest import registered

    names = sorted(registered())
    if method not in names:
        raise UsageError(f"{flag} {method!r}: not a suggestion method; one of {', '.join(names)}")


def _demo(args: argparse.Namespace) -> int:
    from lrfinder_plugins._batch_search import NothingFitsError
    from lrfinder_plugins.demo import describe, run_demo

    _check_method("--method", args.method)
    if int(args.memory_budget_mib * 2**20) < 1:
        raise UsageError(f"--memory-budget-mib {args.memory_budget_mib:g}: below one byte")
    check_installed("matplotlib", "plot", "the demo's plot")
    check_writable_dir("--output-dir", args.output_dir)
    if args.plot is not None:
        args.plot = str(check_plot_file("--plot", args.plot))
    if args.json is not None:
        check_writable_file("--json", args.json)
    try:
        run = run_demo(
            output_dir=args.output_dir,
            plot_path=args.plot,
            json_path=args.json,
            num_iter=args.num_iter,
            batch_size=args.batch_size,
            memory_budget=int(args.memory_budget_mib * 2**20),
            method=args.method,
            progress=not args.no_progress,
            threads=args.threads,
        )
    except NothingFitsError:
        raise UsageError(
            f"--memory-budget-mib {args.memory_budget_mib:g}: too small, not even a batch of "
            "one fits; raise it"
        ) from None
    print("\n".join(describe(run)))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from lrfinder_plugins._manager import (
        DISABLE_ENV,
        blocked_names,
        get_plugin_manager,
        plugin_distribution,
    )

    pm = get_plugin_manager()  # a plugin that fails to load is skipped with a warning
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # a blocked name: listed below
            continue
        origin = plugin_distribution(pm, plugin)
        if origin is None:
            origin = f"lrfinder-plugins {lrfinder_plugins.__version__}, built in"
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        print(f"{name}  ({origin})")
        for hook in hooks:
            print(f"    {hook}")
    blocked = sorted(blocked_names())
    if blocked:
        print(f"blocked by {DISABLE_ENV}: {', '.join(blocked)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from lrfinder_plugins._json_file import ResultFileError
    from lrfinder_plugins._results import RangeTestResult

    _check_method("--method", args.method)
    if args.plot:
        check_installed("matplotlib", "plot", "--plot")
        args.plot = str(check_plot_file("--plot", args.plot))
    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"{path}: {'a folder' if path.is_dir() else 'no such file'}")
    load = RangeTestResult.load_csv if path.suffix == ".csv" else RangeTestResult.load_json
    try:
        result = load(path)
    except ResultFileError as error:  # names the file and what is wrong already
        raise UsageError(one_line(error)) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        kind = "CSV" if path.suffix == ".csv" else "JSON"
        raise UsageError(
            f"{path}: not a result written by save_{kind.lower()} ({one_line(error)})"
        ) from None
    print(f"{len(result)} points, stopped: {result.stop_reason}")
    for name, suggestion in result.suggestions().items():
        value = f"{suggestion.lr:.2e}" if suggestion.ok else f"none ({suggestion.reason})"
        print(f"  {name:>16}: {value}")
    if args.plot:
        result.plot(args.plot, suggest=args.method or True)
        print(f"plot saved to: {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lrfinder`` command."""
    parser = _Parser(prog="lrfinder", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=lrfinder_plugins.__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the LR range test on a built-in example")
    demo.add_argument("--output-dir", default=".logs", help="where outputs go (default .logs)")
    demo.add_argument(
        "--plot", default=None, help="PNG path (default <output-dir>/lr_finder_plot.png)"
    )
    demo.add_argument(
        "--json", default=None, help="JSON path (default <output-dir>/lr_finder.json)"
    )
    demo.add_argument(
        "--num-iter", type=_int_at_least(2), default=100, help="range-test steps (default 100)"
    )
    demo.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=None,
        help="skip the batch-size search and use this size",
    )
    demo.add_argument(
        "--memory-budget-mib",
        type=_positive_float,
        default=2.0,
        help="the pretend device's memory for the batch-size search (default 2 MiB)",
    )
    demo.add_argument("--method", default=None, help="suggestion method (default: the default)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=1,
        help="torch threads (default 1: the demo's small model runs fastest on one)",
    )
    demo.set_defaults(func=_demo)

    plugins = sub.add_parser("plugins", help="list registered plugins and the hooks they implement")
    plugins.set_defaults(func=_plugins)

    show = sub.add_parser("show", help="print (and plot) a saved result, JSON or CSV")
    show.add_argument("path", help="a file written by save_json / save_csv")
    show.add_argument("--plot", default=None, help="also save a PNG plot here")
    show.add_argument("--method", default=None, help="mark this method's suggestion")
    show.set_defaults(func=_show)

    _add_tune(sub)
    return parser


def _add_tune(sub: Any) -> None:
    from lrfinder_plugins import _tune_command

    tune = sub.add_parser(
        "tune",
        help="find the batch size and LR of a model a config file names; write them back",
        description=_tune_command.DESCRIPTION,
    )
    _tune_command.add_arguments(tune)
    tune.set_defaults(func=_tune_command.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrfinder`` command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    handler = logging.StreamHandler()
    # On the handler too: a framework's logger with its own level (Lightning's) would otherwise
    # print its INFO lines through it.
    handler.setLevel(level)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", handlers=[handler])
    from lrfinder_plugins._manager import PluginError

    try:
        return int(args.func(args))
    except UsageError as error:
        print(f"lrfinder {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except PluginError as error:  # names the plugin and the fix (block it, or fix it)
        print(f"lrfinder {args.command}: error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

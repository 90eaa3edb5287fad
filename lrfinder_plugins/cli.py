"""The ``lrfinder`` console script: ``lrfinder demo``, ``lrfinder plugins``, ``lrfinder show``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import lrfinder_plugins


def _demo(args: argparse.Namespace) -> int:
    from lrfinder_plugins.demo import describe, run_demo

    run = run_demo(
        output_dir=args.output_dir,
        plot_path=args.plot,
        json_path=args.json,
        num_iter=args.num_iter,
        batch_size=args.batch_size,
        memory_budget=int(args.memory_budget_mib * 2**20),
        method=args.method,
        progress=not args.no_progress,
    )
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
    from lrfinder_plugins._results import RangeTestResult

    load = RangeTestResult.load_csv if args.path.endswith(".csv") else RangeTestResult.load_json
    result = load(args.path)
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
    parser = argparse.ArgumentParser(prog="lrfinder", description=__doc__)
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
    demo.add_argument("--num-iter", type=int, default=100, help="range-test steps (default 100)")
    demo.add_argument(
        "--batch-size", type=int, default=None, help="skip the batch-size search and use this size"
    )
    demo.add_argument(
        "--memory-budget-mib",
        type=float,
        default=2.0,
        help="the pretend device's memory for the batch-size search (default 2 MiB)",
    )
    demo.add_argument("--method", default=None, help="suggestion method (default: the default)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(func=_demo)

    plugins = sub.add_parser("plugins", help="list registered plugins and the hooks they implement")
    plugins.set_defaults(func=_plugins)

    show = sub.add_parser("show", help="print (and plot) a saved result, JSON or CSV")
    show.add_argument("path", help="a file written by save_json / save_csv")
    show.add_argument("--plot", default=None, help="also save a PNG plot here")
    show.add_argument("--method", default=None, help="mark this method's suggestion")
    show.set_defaults(func=_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lrfinder`` command line."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``LightningCLI`` with ``--tune-batch-size`` / ``--tune-learning-rate`` on ``fit``.

A user's own ``main.py`` swaps one name::

    from lrfinder_adapters.lightning_cli import TuningCLI

    if __name__ == "__main__":
        TuningCLI()  # as LightningCLI(); takes LightningCLI's arguments

and then ``python main.py fit --config run.yaml --tune-batch-size --tune-learning-rate`` finds the
batch size first, then the LR at it (:func:`lrfinder_adapters.config_tune.tune_lightning`, the
seed's log lines), sets both on the model and data module, and fits with them on the same
trainer. A ``tuner:`` section of the config (or ``--tuner '{"max_trials": 6}'``) holds the
options of :func:`lrfinder_adapters.lightning.tune`; ``--tune-plot PATH`` saves the LR plot
(default ``.logs/lr_finder_plot.png``). The same YAML works with ``lrfinder tune --config
run.yaml --write-config``, which also writes the found values back into it.
"""

from __future__ import annotations

from lrfinder_adapters import require

require("lightning", "lightning")
require("jsonargparse", "lightning")

import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402

from lrfinder_adapters.config_tune import BadConfigError, Found, tune_lightning  # noqa: E402

__all__ = ["TuningCLI"]

log = logging.getLogger("lrfinder_plugins.tune")


def _typed(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tuner`` options with each string value read as JSON where it is JSON (a dotted
    override, ``--tuner.min_lr=1e-5``, reaches the dict as the string ``"1e-5"``); any other
    string (``"valley"``) stays a string."""
    typed = {}
    for key, value in options.items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        typed[key] = value
    return typed


class TuningCLI(LightningCLI):
    """``LightningCLI`` whose ``fit`` can tune the batch size and the LR first.

    Adds ``--tune-batch-size``, ``--tune-learning-rate``, ``--tuner`` (``tune()``'s options,
    also a ``tuner:`` section of the config) and ``--tune-plot`` to every subcommand's parser;
    only ``fit`` acts on them. After the fit's tuning, :attr:`found` holds what was found.
    """

    found: Found | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the tuning flags (then whatever a subclass adds)."""
        super().add_arguments_to_parser(parser)
        parser.add_argument(
            "--tune-batch-size", action="store_true", help="find the batch size before fit"
        )
        parser.add_argument(
            "--tune-learning-rate",
            action="store_true",
            help="find the LR before fit (after the batch size)",
        )
        parser.add_argument(
            "--tuner", type=dict, default={}, help="options of lrfinder_adapters.lightning.tune"
        )
        parser.add_argument(
            "--tune-plot",
            type=str,
            default=".logs/lr_finder_plot.png",
            help="where the LR plot goes ('' for none)",
        )

    def before_fit(self) -> None:
        """Tune, batch size first, when asked to (then ``fit`` runs as LightningCLI's)."""
        config: Any = self.config[self.subcommand] if self.subcommand else self.config
        tune_batch_size = bool(config.get("tune_batch_size"))
        tune_lr = bool(config.get("tune_learning_rate"))
        if not (tune_batch_size or tune_lr):
            return
        if tune_batch_size and tune_lr:
            log.info("Tuning the batch size first, then the learning rate at it")
        plot = config.get("tune_plot") or None
        try:
            self.found = tune_lightning(
                self.trainer,
                self.model,
                self.datamodule,
                tune_batch_size=tune_batch_size,
                tune_lr=tune_lr,
                options=_typed(config.get("tuner") or {}),
                plot_path=Path(plot) if plot and tune_lr else None,
            )
        except BadConfigError as error:  # an unknown tuner option, no LR attribute: before work
            self.parser.error(str(error))
        log.info("Starting training (fit)...")

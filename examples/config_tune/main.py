"""A user's own LightningCLI script, with lrfinder's tuning flags on ``fit``.

    python examples/config_tune/main.py fit --config examples/config_tune/run.yaml \
        --tune-batch-size --tune-learning-rate
"""

import logging

from lrfinder_adapters.lightning_cli import TuningCLI

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    TuningCLI(save_config_kwargs={"overwrite": True})

"""An lrfinder-plugins adapter for pytorch-ignite, found through the ``lrfinder_plugins`` entry point.

Nothing to import: once installed, ``lrfinder_plugins.range_test(trainer, ...)`` and
``lrfinder_plugins.batch_size_search(trainer, ...)`` accept an ignite ``Engine``.
"""

__version__ = "0.1.0"

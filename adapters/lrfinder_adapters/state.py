"""The exact snapshot of a torch training state, for adapters: :func:`capture`, :func:`restore`.

The built-in torch adapters save and restore with these; an adapter for another torch-based
framework (ignite, a custom trainer) can do the same and add only its own counters::

    from lrfinder_adapters.state import capture, restore

    saved = capture(model, optimizer, schedulers=[scheduler], scaler=scaler)
    try:
        ...  # the steps of a range test or the trials of a batch-size search
    finally:
        restore(saved, model, optimizer, schedulers=[scheduler], scaler=scaler)
        saved.close()  # removes the on-disk copy, if any (a no-op for a CPU snapshot)

What :func:`capture` saves (a :class:`TrainingState`):

- the model's parameters and their gradients, every registered buffer (``None`` slots
  included) and every module's train/eval mode;
- the parameters the optimizer trains outside the model (a learnable loss weight, a separate
  head), in optimizer order;
- the optimizer's state (per parameter, each tensor with its device; global entries a custom
  optimizer keeps too), every param group's options (LRs included) and the attributes an LR
  scheduler sets on it (``_opt_called``);
- each scheduler's ``state_dict``; the ``GradScaler``'s state, whether it was still
  uninitialised, and its per-iteration bookkeeping (so an error between ``unscale_`` and
  ``update`` does not leave it stuck);
- the random generators (:class:`RngState`): Python's ``random``, NumPy's (if NumPy is
  imported), torch's CPU generator and every CUDA generator (if CUDA is initialised), and each
  ``torch.Generator`` passed as ``generators=`` (the raw adapter passes its data loaders'
  generators: :func:`lrfinder_adapters.pytorch.loader_generators`).

``keep_weights=True`` saves only what a search must put back when the user keeps the trained
weights: LRs, schedulers, scaler and RNG.

Where the copy lives: tensors are copied to CPU memory (pinned and asynchronous for CUDA
tensors, never a second copy on the accelerator), or with ``where="disk"`` to a temporary
directory that :meth:`TrainingState.close` removes.

How :func:`restore` puts it back: bitwise, and in place: values are copied back into the live
tensors and param-group dicts, so every reference the user holds (optimizer param lists, DDP
buckets, captured CUDA graphs, a scheduler's optimizer) stays valid and sees the old values; a
buffer or optimizer state the search created is dropped, one it replaced put back. Every part is
restored even if one fails (the first error is raised at the end), and the snapshot stays usable
for another restore.
"""

from __future__ import annotations

from lrfinder_adapters import require

require("torch", "torch")

from lrfinder_adapters._torch_state import (  # noqa: E402
    RngState,
    TrainingState,
    capture,
    restore,
)

__all__ = ["RngState", "TrainingState", "capture", "restore"]

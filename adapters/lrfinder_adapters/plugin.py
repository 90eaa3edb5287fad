"""The built-in adapters' plugin (entry point ``lrfinder.torch``), found like any third party's.

It imports no framework at module level: loading it costs nothing for users of other frameworks,
and a missing torch cannot break the other plugins. It recognises a target by looking at
``sys.modules`` first: a ``torch.nn.Module`` can only be passed by someone who imported torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lrfinder_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from lrfinder_adapters.probe import TorchProbe
    from lrfinder_adapters.pytorch import TorchStep


def _is_torch_module(target: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(target, torch.nn.Module)


def _require_options(options: Mapping[str, Any], needed: tuple[str, ...], call: str) -> None:
    missing = [name for name in needed if name not in options]
    if missing:
        raise TypeError(
            f"{call} on a torch.nn.Module needs {', '.join(f'{n}=' for n in missing)} "
            f"(got {sorted(options) or 'no options'}); e.g. {call}(model, optimizer=optimizer, "
            "loss_fn=loss_fn, ...)"
        )


# trylast: a third-party adapter for a kind of torch model (e.g. HuggingFace's) is asked first.
@hookimpl(trylast=True)
def lrfinder_make_step(target: Any, options: Mapping[str, Any]) -> TorchStep | None:
    """A raw-PyTorch :class:`~lrfinder_adapters.pytorch.TorchStep` for a ``torch.nn.Module``.

    ``options``: ``optimizer=``, ``train_loader=``, ``loss_fn=`` (``None`` when the model returns
    its loss) and any other ``TorchStep`` option.
    """
    if not _is_torch_module(target):
        return None
    from lrfinder_adapters.pytorch import TorchStep

    _require_options(options, ("optimizer", "train_loader"), "range_test")
    return TorchStep(target, **{"loss_fn": None, **options})


@hookimpl(trylast=True)
def lrfinder_make_probe(target: Any, options: Mapping[str, Any]) -> TorchProbe | None:
    """A raw-PyTorch :class:`~lrfinder_adapters.probe.TorchProbe` for a ``torch.nn.Module``.

    ``options``: as :func:`~lrfinder_adapters.batch_size.find_batch_size`'s keyword arguments
    (``optimizer=``, ``loss_fn=``, one of ``dataset=``/``make_loader=``/``step_fn=``, ...).
    """
    if not _is_torch_module(target):
        return None
    from lrfinder_adapters.probe import TorchProbe

    _require_options(options, ("optimizer",), "batch_size_search")
    return TorchProbe(target, **options)


@hookimpl(trylast=True)
def lrfinder_is_oom(error: BaseException) -> bool | None:
    """The built-in classifier (torch's types, then every backend's messages), asked last.

    Answers ``True`` or ``None`` (never ``False``), so the caller's own fallback still applies.
    """
    from lrfinder_adapters._oom import builtin_is_oom

    return True if builtin_is_oom(error) else None

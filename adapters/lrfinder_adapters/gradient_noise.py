"""The gradient noise scale from the gradients a training loop computes anyway (no extra
forward or backward): :class:`NoiseScaleMonitor`, a hook for any loop (raw PyTorch, the LR
finder's steps, Lightning's callback).

Where the two batch sizes come from:

- **one process, gradient accumulation**: the *small* gradient is one micro-batch's (read in a
  ``register_post_accumulate_grad_hook`` on every parameter as the difference the micro-batch
  added to ``.grad``: this needs one copy of the gradients), the *big* one is the window's mean
  (``.grad`` after the window's last micro-batch, before any clipping);
- **DDP**: the small gradient is each rank's local one, before the all-reduce, the big one is the
  reduced one, both read in a DDP communication hook that wraps the default all-reduce (as
  k-diffusion's ``gns.py`` does); each optimizer step then costs one extra all-reduce of two
  numbers, while the monitor is active.

DDP allows one communication hook per model, registered for good: the monitor registers its
own on the first use and keeps it (it only measures while a monitor is active; otherwise it is
the plain default all-reduce); a model that already has a hook of someone else's is refused with
the reason (use the accumulation form on the inner module instead).

The arithmetic is the core's :class:`~lrfinder_plugins.NoiseScaleEstimator`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from lrfinder_plugins.noise_scale import GNS_PRECISION, NoiseScale, check_precision
from lrfinder_plugins.spi import NoiseScaleEstimator
from lrfinder_plugins.spi import validate as _validate

log = logging.getLogger("lrfinder_plugins")

_HOOK_ATTRIBUTE = "_lrfinder_noise_scale_hook"


class _CommHookState:
    """The state of the communication hook a DDP model keeps for good (one per model)."""

    def __init__(self, process_group: Any) -> None:
        self.process_group = process_group
        self.monitor: NoiseScaleMonitor | None = None  # measuring only while one is active
        self.local_sq = torch.zeros((), dtype=torch.float64)
        self.reduced_sq = torch.zeros((), dtype=torch.float64)

    def reset(self) -> None:
        self.local_sq = torch.zeros((), dtype=torch.float64)
        self.reduced_sq = torch.zeros((), dtype=torch.float64)


def _comm_hook(state: _CommHookState, bucket: Any) -> torch.futures.Future[torch.Tensor]:
    """The default all-reduce, with the bucket's squared norm read before and after it."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if state.monitor is None:
        return default_hooks.allreduce_hook(state.process_group, bucket)
    local = _squared_norm(bucket.buffer().detach())
    state.local_sq = state.local_sq + local
    future = default_hooks.allreduce_hook(state.process_group, bucket)

    def measure(done: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        reduced = done.value()
        state.reduced_sq = state.reduced_sq + _squared_norm(reduced.detach())
        return reduced

    return future.then(measure)


def _install_comm_hook(model: Any, process_group: Any) -> _CommHookState:
    state = getattr(model, _HOOK_ATTRIBUTE, None)
    if state is not None:
        return state
    state = _CommHookState(process_group)

    # DDP checks the hook's annotations against the real classes; this module's are strings
    # (postponed evaluation), so the registered hook carries none.
    def hook(state, bucket):  # type: ignore[no-untyped-def]
        return _comm_hook(state, bucket)

    try:
        model.register_comm_hook(state, hook)
    except RuntimeError as error:
        raise RuntimeError(
            "this DistributedDataParallel model already has a communication hook (DDP allows "
            "one, for good), so NoiseScaleMonitor cannot read the gradients before and after "
            "the all-reduce; measure on one process instead (the inner module with "
            "accumulation_steps >= 2), or register the monitor before your own hook"
        ) from error
    object.__setattr__(model, _HOOK_ATTRIBUTE, state)
    return state


class NoiseScaleMonitor:
    """Measures the simple gradient noise scale ``B_simple`` as a model trains.

    Attach it to the model and optimizer of any loop; it reads the squared gradient norms in
    hooks and records one pair per optimizer step (after ``optimizer.step()``, in its
    post-hook). Nothing about the training changes: the hooks only read.

    Args:
        model: the model (a ``DistributedDataParallel`` model: the ranks are the small
            batches; else the micro-batches of an accumulation window are).
        optimizer: its optimizer (a step closes a window).
        micro_batch_size: samples per micro-batch per rank (``None``: set
            :attr:`micro_batch_size` before the first step, as the Lightning callback does).
        accumulation_steps: micro-batches per optimizer step (>= 2 on one process).
        loss_divided: the loop divides each micro-batch's loss by ``accumulation_steps``
            before ``backward()`` (the usual form, and what ``TorchStep`` and Lightning do).
        scaler: a ``GradScaler`` the backward passes are scaled by (the norms are unscaled).
        confidence: the interval's coverage.
        window: average over the last ``window`` steps only (``None``: all of them).
        process_group: the DDP model's process group (``None``: the default group).

    Raises:
        TypeError, ValueError: bad arguments (before any hook is attached).
        RuntimeError: a DDP model that already has a communication hook of its own.

    Example:
        >>> monitor = NoiseScaleMonitor(model, optimizer, micro_batch_size=32, accumulation_steps=4)  # doctest: +SKIP
        >>> ...  # train as usual: backward per micro-batch, optimizer.step() per window
        >>> monitor.estimate.describe()  # doctest: +SKIP
        'B_simple ≈ 410 (95% interval 300-520, 60 steps)'
        >>> monitor.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        micro_batch_size: int | None = None,
        accumulation_steps: int = 1,
        loss_divided: bool = True,
        scaler: Any = None,
        confidence: float = 0.95,
        window: int | None = None,
        process_group: Any = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if micro_batch_size is not None:
            _validate.int_at_least("micro_batch_size", micro_batch_size, 1)
        self.accumulation_steps = _validate.int_at_least(
            "accumulation_steps", accumulation_steps, 1
        )
        self.loss_divided = _validate.boolean("loss_divided", loss_divided)
        self.estimator = NoiseScaleEstimator(confidence=confidence, window=window)
        self.micro_batch_size = micro_batch_size
        self.scaler = scaler
        self.history: list[tuple[int, NoiseScale]] = []
        """``(optimizer step, estimate so far)`` after every recorded step."""
        self._ddp = _distributed_world(model, process_group)
        if self._ddp is None and self.accumulation_steps < 2:
            raise ValueError(
                "on one process the noise scale needs two micro-batches per optimizer step (the "
                f"small and the big batch), got accumulation_steps={accumulation_steps}; pass "
                "accumulation_steps=2 or more (and accumulate), or wrap the model in DDP"
            )
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._steps = 0
        self._handles: list[Any] = []
        self._state: _CommHookState | None = None
        self._reset_window()
        if self._ddp is not None:
            self._state = _install_comm_hook(model, process_group)
            if self._state.monitor is not None:
                raise RuntimeError(
                    "another NoiseScaleMonitor is active on this DDP model; close() it first"
                )
            self._state.monitor = self
            self._state.reset()
        else:
            for param in self._params:
                self._handles.append(param.register_post_accumulate_grad_hook(self._on_grad))
        self._handles.append(optimizer.register_step_post_hook(self._on_step))

    # -- one process: the micro-batches of a window ---------------------------------------------
    def _reset_window(self) -> None:
        self._counts: dict[int, int] = {}
        self._previous: dict[int, torch.Tensor] = {}
        self._micro_sq = torch.zeros((), dtype=torch.float64)
        self._window_sq = torch.zeros((), dtype=torch.float64)

    def _on_grad(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None:
            return
        key = id(param)
        count = self._counts.get(key, 0)
        if count >= self.accumulation_steps:  # a step the scaler skipped: drop that window
            self._reset_window()
            count = 0
        with torch.no_grad():
            current = grad.detach()
            previous = self._previous.get(key)
            added = current if previous is None else current.float() - previous.float()
            self._micro_sq = self._micro_sq + _squared_norm(added)
            count += 1
            if count == self.accumulation_steps:
                self._window_sq = self._window_sq + _squared_norm(current)
                self._previous.pop(key, None)
            else:  # one copy of the gradient, in its own dtype
                self._previous[key] = current.clone()
        self._counts[key] = count

    # -- closing a window -----------------------------------------------------------------------
    def _on_step(self, *_: Any) -> None:
        self._steps += 1
        scale = 1.0
        if self.scaler is not None and self.scaler.is_enabled():
            scale = float(self.scaler.get_scale()) ** 2
        k = self.accumulation_steps
        if self._state is not None:
            self._close_distributed(scale)
            return
        complete = bool(self._counts) and all(c == k for c in self._counts.values())
        if complete and self.micro_batch_size is not None:
            # A micro-batch's gradient is k times what it added when the loss was divided by k.
            micro = self._micro_sq.item() / k * (k**2 if self.loss_divided else 1.0)
            window = self._window_sq.item() / (1.0 if self.loss_divided else k**2)
            self._record(micro / scale, window / scale, self.micro_batch_size, k)
        self._reset_window()

    def _close_distributed(self, scale: float) -> None:
        import torch.distributed as dist

        state = self._state
        assert state is not None and self._ddp is not None
        group, world = self._ddp
        k = self.accumulation_steps
        unscale = 1.0 if self.loss_divided else float(k**2)
        local = torch.stack([state.local_sq, torch.ones((), dtype=torch.float64)])
        local = local.to(_collective_device(group))
        dist.all_reduce(local, group=group)  # the mean of the ranks' own squared norms
        ranks = local[1].item()
        small, big = local[0].item() / ranks, state.reduced_sq.item()
        state.reset()
        if self.micro_batch_size is not None and big > 0:
            self._record(
                small / unscale / scale, big / unscale / scale, self.micro_batch_size * k, world
            )

    def _record(self, small_sq: float, big_sq: float, b_small: int, multiple: int) -> None:
        if not (math.isfinite(small_sq) and math.isfinite(big_sq)):
            return  # an overflowed step (AMP): not a measurement
        self.estimator.update(small_sq, big_sq, b_small=b_small, b_big=b_small * multiple)
        estimate = self.estimator.estimate()
        if estimate is not None:
            self.history.append((self._steps, estimate))
            log.debug("step %d: %s", self._steps, estimate.describe())

    # -- what it found --------------------------------------------------------------------------
    @property
    def estimate(self) -> NoiseScale | None:
        """The noise scale so far (``None`` before two recorded steps)."""
        return self.estimator.estimate()

    @property
    def steps(self) -> int:
        """How many optimizer steps the estimate averages."""
        return self.estimator.steps

    def precise_enough(self, precision: float = GNS_PRECISION) -> bool:
        """Whether the interval's relative half-width is down to ``precision``."""
        return self.estimator.precise_enough(check_precision("precision", precision))

    def close(self) -> None:
        """Detach every hook (the DDP communication hook stays, inactive: DDP cannot drop it)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._state is not None and self._state.monitor is self:
            self._state.monitor = None
            self._state.reset()
        self._reset_window()

    def __enter__(self) -> NoiseScaleMonitor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _squared_norm(tensor: torch.Tensor) -> torch.Tensor:
    """``|tensor|²`` as a float64 CPU scalar (summed in float32 at least, on its device)."""
    wide = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    return torch.linalg.vector_norm(wide).double().pow(2).cpu()


def _distributed_world(model: torch.nn.Module, process_group: Any) -> tuple[Any, int] | None:
    """``(group, world size)`` for a DDP model of more than one rank, else ``None``."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return None
    import torch.distributed as dist

    group = process_group if process_group is not None else model.process_group
    world = dist.get_world_size(group)
    return (group, world) if world > 1 else None


def _collective_device(group: Any) -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def measure_during(
    monitor: NoiseScaleMonitor,
    step: Callable[[], Any],
    *,
    precision: float = GNS_PRECISION,
    max_steps: int = 50,
) -> NoiseScale | None:
    """Run ``step()`` (one optimizer step) until the estimate's relative half-width is down to
    ``precision`` or ``max_steps`` steps ran; return the estimate."""
    precision = check_precision("gns_precision", precision)
    max_steps = _validate.int_at_least("gns_max_steps", max_steps, 3)
    for _ in range(max_steps):
        step()
        if monitor.estimator.precise_enough(precision):
            break
    return monitor.estimate


def exact_noise_scale(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = 256,
) -> float:
    """The exact ``B_simple = tr(Σ) / |G|²`` over ``inputs`` (the population), from every
    example's own gradient (``torch.func.vmap(grad)``) at the model's current parameters: what
    the two-batch estimate estimates, for checking it (costs one gradient per example).

    ``loss_fn(outputs, targets)`` must be a mean over the batch (it is called on one example
    at a time). ``Σ`` is the per-example covariance over the population (``1/N``), as for
    batches drawn with replacement.

    Example:
        >>> exact_noise_scale(model, torch.nn.functional.mse_loss, x, y)  # doctest: +SKIP
        37.2
    """
    from torch.func import functional_call, grad, vmap

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("inputs", inputs), ("targets", targets)):
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            raise TypeError(f"{name} must be a tensor with one example per row, got {value!r}")
    if len(inputs) != len(targets) or len(inputs) < 2:
        raise ValueError(
            f"inputs and targets must hold the same number (>= 2) of examples, got "
            f"{len(inputs)} and {len(targets)}"
        )
    chunk = _validate.int_at_least("chunk", chunk, 1)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_example = vmap(grad(loss_of), in_dims=(None, 0, 0))
    total: torch.Tensor | None = None
    total_sq = torch.zeros((), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for start in range(0, len(inputs), chunk):
            grads = per_example(
                params, inputs[start : start + chunk], targets[start : start + chunk]
            )
            flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1).double()
            summed = flat.sum(0)
            total = summed if total is None else total + summed
            total_sq = total_sq + flat.pow(2).sum()
            count += flat.shape[0]
    assert total is not None
    mean = total / count
    gradient_sq = float(mean.pow(2).sum())
    trace = float(total_sq / count) - gradient_sq  # E|g|² - |E g|²
    return trace / gradient_sq

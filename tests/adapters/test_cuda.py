"""CUDA-only checks (skipped without a GPU): restore on the device, CPU-side snapshot, AMP."""

from __future__ import annotations

import pytest
import torch

from lrfinder_adapters import _torch_state
from lrfinder_adapters.pytorch import LearningRateFinder, find_lr

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    # Short sweeps about restore, not suggestion quality (tested in tests/core).
    pytest.mark.filterwarnings("ignore::lrfinder_plugins.NoSuggestionWarning"),
]


def _problem(
    device: str = "cuda",
) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 256),
        torch.nn.BatchNorm1d(256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(256, 10),
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.randn(64, 32), torch.randint(0, 10, (64,))) for _ in range(8)]
    # one prior step so the optimizer state is not empty
    x, y = batches[0]
    torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device)).backward()
    optimizer.step()
    return model, optimizer, batches


def _fingerprint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[bytes]:
    tensors = [t for t in model.state_dict().values()]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    tensors += [torch.cuda.get_rng_state(), torch.get_rng_state()]
    return [t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors]


def test_snapshot_adds_no_gpu_memory() -> None:
    """The snapshot of a CUDA model lives in CPU memory: GPU allocation is unchanged."""
    model, optimizer, _ = _problem()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    state = _torch_state.capture(model, optimizer)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    assert all(value.device.type == "cpu" for value, _ in state.weights["params"].values())  # type: ignore[index]


def test_cuda_restore_after_exception_is_bitwise() -> None:
    """A loss that raises mid-test leaves a CUDA model, Adam state and CUDA RNG bitwise intact."""
    model, optimizer, batches = _problem()
    torch.cuda.manual_seed(123)
    before = _fingerprint(model, optimizer)
    calls = 0

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 7:
            raise RuntimeError("boom")
        return torch.nn.functional.cross_entropy(out, y)

    finder = LearningRateFinder(model, optimizer, loss_fn, "cuda", progress=False)
    with pytest.raises(RuntimeError, match="boom"):
        finder.find_lr(batches, num_iter=20)
    assert _fingerprint(model, optimizer) == before


def test_amp_fp16_with_scaler_restores_scaler() -> None:
    """float16 autocast with a GradScaler records points and restores the scaler and model."""
    model, optimizer, batches = _problem()
    scaler = torch.amp.GradScaler("cuda")
    before = _fingerprint(model, optimizer)
    result = find_lr(
        model,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        batches,
        device="cuda",
        amp=True,
        scaler=scaler,
        num_iter=30,
        progress=False,
    )
    assert len(result) >= 10
    assert _fingerprint(model, optimizer) == before
    assert scaler._scale is None  # lazily initialised before: put back uninitialised
    assert scaler.get_scale() == 65536.0


def test_the_loss_read_one_step_late_records_the_same_points() -> None:
    """On CUDA overlap is on by default (the loss is copied to pinned memory behind an event and
    read after the next step is queued): the same points bitwise as reading it at once."""
    results = []
    for overlap in (False, True):
        model, optimizer, batches = _problem()
        torch.manual_seed(5)
        torch.cuda.manual_seed(5)
        result = find_lr(
            model,
            optimizer,
            torch.nn.functional.cross_entropy,
            batches,
            device="cuda",
            end_lr=10.0,
            num_iter=20,
            overlap=overlap,
            progress=False,
        )
        results.append((result.lrs, result.losses, result.stop_reason))
    assert results[0] == results[1]

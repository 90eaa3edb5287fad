"""Is this exception an out-of-memory error? Plugins first, then the built-in classifier.

The built-in classifier looks at the exception type first (``torch.OutOfMemoryError``,
``MemoryError``), then at the message, for every backend PyTorch runs on: CUDA, cuDNN, cuBLAS
(and the other CUDA libraries), HIP/ROCm, MPS, XPU, HPU, the CPU allocator and oneDNN. It walks the explicit
``raise ... from`` chain, so an OOM wrapped by user code is still recognised. It imports no
torch: it only looks at ``torch`` if something else already imported it.
"""

from __future__ import annotations

import sys

from lrfinder_plugins.spi import get_plugin_manager

OOM_MESSAGES: tuple[str, ...] = (
    # CUDA runtime and the caching allocator
    "cuda out of memory",
    "cuda error: out of memory",
    "cudaerrormemoryallocation",
    # CUDA libraries: handle or workspace allocation failures
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
    "cufft_alloc_failed",
    "curand_status_allocation_failed",
    # cuDNN refuses configurations it cannot fit (pytorch/pytorch#4107), as Lightning counts it
    "cudnn error: cudnn_status_not_supported",
    # HIP / ROCm
    "hip out of memory",
    "hip error: out of memory",
    "hiperroroutofmemory",
    "hipblas_status_alloc_failed",
    "rocblas_status_memory_error",
    "miopenstatusallocfailed",
    # Apple MPS
    "mps backend out of memory",
    # Intel XPU (SYCL / Unified Runtime)
    "xpu out of memory",
    "ur_result_error_out_of_device_memory",
    "ur_result_error_out_of_host_memory",
    "pi_error_out_of_host_memory",
    # the CPU allocator (Linux/macOS and Windows wording) and C++ allocation failures
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
    # the CPU allocator's aligned allocation under an address-space limit (torch 2.13, oneDNN
    # convolutions under RLIMIT_AS: "posix_memalign failed:Cannot allocate memory (12)")
    "posix_memalign failed",
    "std::bad_alloc",
    # Intel Gaudi (HPU)
    "pt_devmem allocation failed",
)
"""Lower-case fragments of the messages PyTorch raises when an allocation fails."""

OOM_EXACT_MESSAGES: tuple[str, ...] = (
    # oneDNN (CPU convolutions, matmuls) when it cannot allocate a primitive's memory; matched
    # whole, as its longer "could not create a primitive descriptor ..." means unsupported.
    "could not create a primitive",
)
"""Lower-case messages that mean out of memory only when they are the whole message."""


def _oom_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None:
        for owner, name in (
            (torch, "OutOfMemoryError"),
            (getattr(torch, "cuda", None), "OutOfMemoryError"),
        ):
            error_type = getattr(owner, name, None)
            if isinstance(error_type, type) and issubclass(error_type, BaseException):
                types.append(error_type)
    return tuple(types)


def builtin_is_oom(error: BaseException) -> bool:
    """The built-in classifier: by exception type, then by message, along the ``from`` chain.

    Example:
        >>> builtin_is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
        >>> builtin_is_oom(ValueError("shapes do not match"))
        False
    """
    types = _oom_types()
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types):
            return True
        if isinstance(current, RuntimeError):
            text = str(current).lower()
            if any(fragment in text for fragment in OOM_MESSAGES):
                return True
            if text.strip() in OOM_EXACT_MESSAGES:
                return True
        current = current.__cause__
    return False


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` means the batch did not fit in memory.

    The ``lrfinder_is_oom`` plugin hook is asked first (the first plugin that answers ``True``
    or ``False`` decides); :func:`builtin_is_oom` answers when no plugin does. ``KeyboardInterrupt``
    and other non-``Exception`` errors are never out-of-memory errors.
    """
    if not isinstance(error, Exception):
        return False
    verdict = get_plugin_manager().hook.lrfinder_is_oom(error=error)
    if verdict is not None:
        return bool(verdict)
    return builtin_is_oom(error)

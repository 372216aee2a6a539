"""Loading of the compiled kernels, backend discovery and implementation choice."""
import os
import warnings

import torch

try:
    from . import _C  # noqa: F401
    _C_ERROR = None
except ImportError as exc:  # source tree without a build, or a broken install
    _C = None
    _C_ERROR = exc

try:
    from . import _build_info as build_info
except ImportError:
    build_info = None

try:
    from .ops import triton_kernels
    TRITON_AVAILABLE = triton_kernels.AVAILABLE
except ImportError:
    triton_kernels = None
    TRITON_AVAILABLE = False

IMPLS = ("auto", "cpu", "cuda", "triton", "torch")
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
# Which GPU backend impl="auto" uses; chosen by bench/bench_gpu.py (see bench/RESULTS.md).
AUTO_GPU_IMPL = os.environ.get("FASTFACE_GPU_IMPL", "cuda")

_warned = False


def _warn_no_extension():
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"fastface: compiled kernels unavailable ({_C_ERROR}); using pure PyTorch",
                      RuntimeWarning, stacklevel=3)


def cuda_built() -> bool:
    return _C is not None and bool(_C.cuda_built)


def cuda_usable() -> bool:
    return cuda_built() and torch.cuda.is_available() and _C.cuda_device_count() > 0


def triton_usable(device: torch.device) -> bool:
    if not TRITON_AVAILABLE:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def backend_info() -> dict:
    """Return a dict: version, what was compiled, and what is usable now."""
    from . import __version__
    return {
        "version": __version__,
        "cpu": _C is not None,
        "cpu_error": None if _C_ERROR is None else str(_C_ERROR),
        "openmp": bool(build_info and build_info.openmp),
        "cuda_built": cuda_built(),
        "cuda_version": build_info.cuda_version if build_info else "",
        "archs": build_info.cuda_archs if build_info else "",
        "cuda_available": cuda_usable(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "triton": TRITON_AVAILABLE,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "auto_gpu_impl": AUTO_GPU_IMPL,
    }


def resolve_impl(impl: str, device: torch.device) -> str:
    """Return the concrete implementation for `impl` on `device`, or raise a clear error."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        if device.type == "cuda":
            if AUTO_GPU_IMPL == "triton" and triton_usable(device):
                return "triton"
            if cuda_usable():
                return "cuda"
            return "triton" if triton_usable(device) else "torch"
        if device.type == "cpu":
            if _C is None:
                _warn_no_extension()
                return "torch"
            return "cpu"
        return "torch"
    if impl == "cpu":
        if _C is None:
            raise ValueError(f"impl='cpu' is not available: the extension did not load ({_C_ERROR})")
        if device.type != "cpu":
            raise ValueError(f"impl='cpu' needs CPU tensors, got tensors on {device}")
    elif impl == "cuda":
        if not cuda_built():
            raise ValueError("impl='cuda' is not available: fastface was built without CUDA")
        if device.type != "cuda":
            raise ValueError(f"impl='cuda' needs CUDA tensors, got tensors on {device}")
        if not cuda_usable():
            raise ValueError("impl='cuda' is not available: no usable CUDA device")
    elif impl == "triton":
        if not TRITON_AVAILABLE:
            raise ValueError("impl='triton' is not available: install the 'triton' extra")
        if not triton_usable(device):
            raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    return impl


def ptr(t):
    """Return the data pointer of t as an int, 0 for None."""
    return 0 if t is None else t.data_ptr()


def stream_of(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def threads() -> int:
    return max(1, torch.get_num_threads())

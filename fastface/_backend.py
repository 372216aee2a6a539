"""Loading of the compiled kernels, backend discovery and implementation choice."""
import functools
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


# Codes of _C.cuda_status() and _C.cuda_compatibility() (csrc/common/cuda_compat.h, CudaStatus).
(CUDA_OK, CUDA_NOT_BUILT, CUDA_NO_DRIVER, CUDA_NO_DEVICE, CUDA_DRIVER_TOO_OLD, CUDA_NO_IMAGE,
 CUDA_PTX_NEEDS_DRIVER, CUDA_QUERY_FAILED) = range(8)

_warned_cuda = set()


@functools.lru_cache(maxsize=None)
def cuda_status() -> dict:
    """Return what the compiled extension finds about CUDA here (cached for the process).

    Keys: status (a CUDA_* code), driver_version and runtime_version (CUDA's 1000 * major +
    10 * minor), archs (FASTFACE_CUDA_ARCHS of the build), error, devices [(major, minor, code)].
    """
    if _C is None:
        return dict(status=CUDA_NOT_BUILT, driver_version=0, runtime_version=0, archs="", error="",
                    devices=[])
    return dict(_C.cuda_status())


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _cuda_reason(code: int, status: dict, index=None, capability=None) -> str:
    """Return the sentence that explains a CUDA_* code to the user."""
    driver, runtime = _cuda_version(status["driver_version"]), _cuda_version(status["runtime_version"])
    archs = status["archs"] or "?"
    gpu = f"cuda:{index} (compute capability {capability[0]}.{capability[1]})" if capability else ""
    if code == CUDA_NOT_BUILT:
        return ("fastface was built without CUDA" if _C is not None
                else f"the compiled extension did not load ({_C_ERROR})")
    if code == CUDA_NO_DRIVER:
        return "no CUDA driver was found"
    if code == CUDA_NO_DEVICE:
        return "the CUDA driver reports no GPU"
    if code == CUDA_DRIVER_TOO_OLD:
        have = f"supports CUDA {driver}" if status["driver_version"] else "is too old"
        return (f"the NVIDIA driver {have}, but fastface's kernels were built with CUDA {runtime}, "
                f"whose runtime is linked statically and needs a driver for CUDA "
                f"{status['runtime_version'] // 1000}.x or newer: update the driver, or rebuild "
                f"fastface with an older CUDA toolkit")
    if code == CUDA_NO_IMAGE:
        return (f"{gpu} is not among the architectures fastface's kernels were compiled for "
                f"({archs}, FASTFACE_CUDA_ARCHS): rebuild with FASTFACE_CUDA_ARCHS including "
                f"{capability[0]}{capability[1]}")
    if code == CUDA_PTX_NEEDS_DRIVER:
        return (f"{gpu} can only run the PTX of fastface's kernels (compiled for {archs}), and "
                f"JIT-compiling PTX from CUDA {runtime} needs a driver for CUDA {runtime} or newer "
                f"(this one supports CUDA {driver}): update the driver, or rebuild with "
                f"FASTFACE_CUDA_ARCHS including {capability[0]}{capability[1]}")
    return f"the CUDA device query failed ({status['error'] or f'code {code}'})"


def cuda_unusable_reason(index=None):
    """Return why the CUDA kernels cannot run on cuda:index (on any GPU when None); None if they can."""
    status = cuda_status()
    if status["status"] != CUDA_OK:
        return _cuda_reason(status["status"], status)
    devices = status["devices"]
    if index is None:
        if any(code == CUDA_OK for _, _, code in devices):
            index = next(i for i, (_, _, code) in enumerate(devices) if code == CUDA_OK)
        else:
            index = 0
    if index >= len(devices):
        return f"cuda:{index} is not visible to fastface's CUDA runtime ({len(devices)} GPU(s))"
    major, minor, code = devices[index]
    if code != CUDA_OK:
        return _cuda_reason(code, status, index, (major, minor))
    if not torch.cuda.is_available():
        return "torch cannot use CUDA here (torch.cuda.is_available() is False)"
    return None


def _cuda_index(device) -> int:
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def cuda_usable(device=None) -> bool:
    """Whether the CUDA kernels can run on `device` (on some GPU when None)."""
    if not cuda_built():
        return False
    return cuda_unusable_reason(None if device is None else _cuda_index(device)) is None


def _warn_cuda_unusable(reason: str, fallback: str):
    if reason not in _warned_cuda:
        _warned_cuda.add(reason)
        warnings.warn(f"fastface: the CUDA kernels cannot run: {reason}; impl='auto' uses "
                      f"impl={fallback!r} instead", RuntimeWarning, stacklevel=4)


def triton_usable(device: torch.device) -> bool:
    if not TRITON_AVAILABLE:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def cpu_isa_info() -> dict:
    """Return the CPU kernel sets: cpu_isa (the one every call runs, None if FASTFACE_CPU_ISA cannot be
    honoured), cpu_isa_error (why not), cpu_isas_built, cpu_isas_supported (those this CPU runs),
    cpu_avx512_bf16 (the bf16 dot products of patch_cost)."""
    if _C is None:
        return dict(cpu_isa=None, cpu_isa_error=None, cpu_isas_built=[], cpu_isas_supported=[],
                    cpu_avx512_bf16=False)
    try:
        isa, error = _C.cpu_isa(), None
    except ValueError as exc:
        isa, error = None, str(exc)
    return dict(cpu_isa=isa, cpu_isa_error=error, cpu_isas_built=list(_C.cpu_isas_built()),
                cpu_isas_supported=list(_C.cpu_isas_supported()),
                cpu_avx512_bf16=bool(_C.cpu_has("avx512_bf16")) and isa == "avx512")


def backend_info() -> dict:
    """Return a dict: version, what was compiled, and what is usable now."""
    from . import __version__
    return {
        "version": __version__,
        "cpu": _C is not None,
        "cpu_error": None if _C_ERROR is None else str(_C_ERROR),
        "openmp": bool(build_info and build_info.openmp),
        **cpu_isa_info(),
        "cuda_built": cuda_built(),
        "cuda_version": build_info.cuda_version if build_info else "",
        "archs": build_info.cuda_archs if build_info else "",
        "cuda_available": cuda_usable(),
        "cuda_unusable_reason": cuda_unusable_reason(),
        "cuda_driver_version": _cuda_version(cuda_status()["driver_version"])
        if cuda_status()["driver_version"] else "",
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
            fallback = "triton" if triton_usable(device) else "torch"
            if not cuda_built():
                return fallback
            reason = cuda_unusable_reason(_cuda_index(device))
            if reason is None:
                return "cuda"
            _warn_cuda_unusable(reason, fallback)  # built with CUDA, but this GPU cannot run it
            return fallback
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
        reason = cuda_unusable_reason(_cuda_index(device))
        if reason is not None:
            raise ValueError(f"impl='cuda' is not available on {device}: {reason}")
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

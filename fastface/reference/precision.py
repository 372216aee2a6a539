"""Full float32 for the pure-PyTorch twins, whatever the global precision flags say.

cuDNN allows TF32 convolutions by default, `torch.set_float32_matmul_precision("high")` makes CUDA
matmuls TF32 and, on CPUs with bf16 support, "medium" makes oneDNN matmuls bf16: ~1e-3 errors
before exp(-C/eps). The twins are oracles, so they run inside `full_fp32()`, which sets every
float32 precision setting to IEEE and restores the caller's settings afterwards.
"""
import contextlib
import functools

import torch

# The per-backend settings of torch's fp32_precision API (torch >= 2.9).
_SETTINGS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


def _precision_settings():
    found = []
    for path in _SETTINGS:
        obj = torch.backends
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "fp32_precision"):
            found.append(obj)
    return found


@contextlib.contextmanager
def full_fp32():
    """Run the block with IEEE float32 matmuls and convolutions; restore the flags after."""
    settings = _precision_settings()
    if settings:
        saved = [s.fp32_precision for s in settings]
        try:
            for s in settings:
                s.fp32_precision = "ieee"
            yield
        finally:
            for s, value in zip(settings, saved):
                s.fp32_precision = value
        return
    # Older torch: the legacy flags (mixing them with the new API raises, hence only as fallback).
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]


def in_full_fp32(fn):
    """Decorator: run fn inside full_fp32()."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with full_fp32():
            return fn(*args, **kwargs)
    return wrapper

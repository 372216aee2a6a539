"""Argument checks shared by fastface.data and fastface.eval (tensors: fastface._checks).

Errors name the argument, what was expected and what was given.
"""
import numbers

import numpy as np
import torch

from .._checks import check_int


def _kind(value):
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (numbers.Number, str)) else type(value).__name__


def as_int(name, value, *, min_value=None, max_value=None):
    """value: a Python/numpy int or a 0-d integer tensor (not bool, not float) -> int within
    [min_value, max_value] (None: unbounded)."""
    return check_int(name, value, lo=min_value, hi=max_value)


def as_int_tensor(name, value):
    """Integer labels or indices (tensor, array or list of ints; not bool, not float) -> int64 tensor."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be integers (a tensor, array or list), got {_kind(value)}") from e
    if not t.numel() and not isinstance(value, (torch.Tensor, np.ndarray)):
        return t.long()   # empty lists: torch.as_tensor makes them float32
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer labels or indices, got {t.dtype}")
    return t.long()


def as_real_tensor(name, value):
    """Real numbers (tensor, array or list) -> a tensor of their own dtype (no copy of a tensor)."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be real numbers (a tensor, array or list), got {_kind(value)}") from e
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {t.dtype}")
    return t


def as_float_tensor(name, value, ndim=None):
    """Finite real numbers (tensor, array or list) -> float64 tensor of ndim dimensions."""
    t = as_real_tensor(name, value).to(torch.float64)
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or inf value(s)")
    return t

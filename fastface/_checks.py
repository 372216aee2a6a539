"""Input validation: one place, before any kernel runs. Errors name the argument, expected, actual."""
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name, t, *, min_ndim=None, ndim=None, finite=True):
    """Check that t is a floating tensor of the right rank (and finite); return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    if finite and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def check_same_device(**tensors):
    devices = {k: v.device for k, v in tensors.items() if v is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_positive(name, value, *, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {type(value).__name__}")
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def check_weights(name, w, shape, normalise=True):
    """Check non-negative weights of the given shape; return them normalised to sum 1 per row."""
    check_tensor(name, w)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(w.shape)}")
    if w.numel() and bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative, got min {w.min().item():.3g}")
    total = w.sum(-1, keepdim=True)
    if w.numel() and bool((total <= 0).any()):
        raise ValueError(f"{name} must have a positive sum in every problem; some rows sum to 0")
    # Weights not summing to 1 are rescaled (documented): EMD compares distributions.
    return w / total if normalise else w


def float_dtype_of(*tensors):
    """Return float64 if any input is float64, else float32 (the accumulation type)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32

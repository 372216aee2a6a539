"""Patch cosine cost, pure PyTorch."""
import torch

from .precision import in_full_fp32

# Norms below this count as zero: such a patch is orthogonal to everything (cost 1, weight 0).
NORM_FLOOR = 1e-12


def accumulation_dtype(*tensors):
    """float64 if any input is float64, else float32: how mixed input dtypes are promoted."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) \
        else torch.float32


def unit_rows(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Return x (..., C) scaled to unit L2 norm over the last dim, in dtype (default: float32, or
    float64 for float64 x); rows with norm < NORM_FLOOR count as zero (they stay ~0)."""
    x = x.to(dtype or accumulation_dtype(x))
    # Rescale each row by a power of two >= its largest |value| first (exact): squares of values
    # >~ 1e19 overflow float32, and the norm would become inf.
    _, exponent = torch.frexp(x.abs().amax(-1, keepdim=True))
    scale = torch.exp2(exponent.to(x.dtype))   # exact for integer exponents
    scaled = x / scale
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    return scaled / torch.maximum(norm, NORM_FLOOR / scale)


@in_full_fp32
def patch_cost_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return 1 - cos between patches: x (..., n, C), y (..., m, C) -> (..., n, m), float32/64."""
    acc = accumulation_dtype(x, y)
    xu, yu = unit_rows(x, acc), unit_rows(y, acc)
    # Full-precision matmul: TF32 would put 1e-3 errors into exp(-C/eps).
    return 1.0 - xu @ yu.transpose(-1, -2)

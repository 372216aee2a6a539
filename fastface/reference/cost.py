"""Patch cosine cost, pure PyTorch."""
import torch

# Norms below this count as zero: such a patch is orthogonal to everything (cost 1, weight 0).
NORM_FLOOR = 1e-12


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Return x (..., C) scaled to unit L2 norm over the last dim; zero rows stay zero."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(acc)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norm.clamp_min(NORM_FLOOR)


def patch_cost_ref(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Return 1 - cos between patches: x (..., n, C), y (..., m, C) -> (..., n, m), float32/64."""
    xu, yu = unit_rows(x), unit_rows(y)
    # Full-precision matmul: TF32 would put 1e-3 errors into exp(-C/eps).
    return 1.0 - xu @ yu.transpose(-1, -2)

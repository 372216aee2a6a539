"""Patch weightings of DeepFace-EMD (dissertation §3.1.5 and the official code), pure PyTorch."""
import math

import torch

from .cost import accumulation_dtype, unit_rows
from .precision import in_full_fp32

WEIGHTINGS = ("uniform", "apc", "sc", "cc", "lmk")


def _normalise(w: torch.Tensor):
    """Return (w / sum(w), fell_back): all-zero rows (..., n) become uniform and are flagged."""
    total = w.sum(-1, keepdim=True)
    empty = total <= 0
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    w = torch.where(empty, uniform, w / torch.where(empty, torch.ones_like(total), total))
    return w, empty.squeeze(-1)


def landmark_density(landmarks: torch.Tensor, grid) -> torch.Tensor:
    """Return landmark counts per patch (..., H*W) from landmarks (..., L, 2) as (col, row) in grid units."""
    H, W = grid
    col = torch.floor(landmarks[..., 0]).long()
    row = torch.floor(landmarks[..., 1]).long()
    inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
    cell = torch.where(inside, row * W + col, torch.zeros_like(col))
    counts = torch.zeros(*landmarks.shape[:-2], H * W, dtype=torch.float32, device=landmarks.device)
    return counts.scatter_add_(-1, cell, inside.to(torch.float32))


def square_grid(n: int):
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"grid: {n} patches are not a square grid; pass grid=(H, W)")
    return side, side


@in_full_fp32
def patch_weights_ref(x, y, method="apc", *, x_embedding=None, y_embedding=None,
                      x_landmarks=None, y_landmarks=None, grid=None, official=False):
    """Return (wx (..., n), wy (..., m), fell_back (...,) bool) for patches x (..., n, C), y (..., m, C).

    official=True reproduces the official code: w = relu(s) / (sum + 1e-7) (not exactly summing to 1).
    """
    n, m = x.shape[-2], y.shape[-2]
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    acc = accumulation_dtype(x, y, x_embedding, y_embedding)
    if method == "uniform":
        wx = torch.full((*batch, n), 1.0 / n, dtype=acc, device=x.device)
        wy = torch.full((*batch, m), 1.0 / m, dtype=acc, device=x.device)
        return wx, wy, torch.zeros(batch, dtype=torch.bool, device=x.device)
    xu, yu = unit_rows(x, acc), unit_rows(y, acc)
    if method == "apc":
        # Centre = L2-normalised global average pool of the *raw* map of the other image.
        cy, cx = unit_rows(y.to(acc).mean(-2)), unit_rows(x.to(acc).mean(-2))
        sx = (xu @ cy.unsqueeze(-1)).squeeze(-1)
        sy = (yu @ cx.unsqueeze(-1)).squeeze(-1)
    elif method == "cc":
        ey, ex = unit_rows(y_embedding, acc), unit_rows(x_embedding, acc)
        sx = (xu @ ey.unsqueeze(-1)).squeeze(-1)
        sy = (yu @ ex.unsqueeze(-1)).squeeze(-1)
    elif method == "sc":
        # The official code sums cosine *distances* (the dissertation's Eq. 3.8 says cosines).
        dist = 1.0 - xu @ yu.transpose(-1, -2)
        sx, sy = dist.sum(-1), dist.sum(-2)
    elif method == "lmk":
        gx = grid or square_grid(n)
        gy = grid or square_grid(m)
        sx = landmark_density(x_landmarks, gx).to(xu.dtype)
        sy = landmark_density(y_landmarks, gy).to(xu.dtype)
    else:
        raise ValueError(f"method must be one of {WEIGHTINGS}, got {method!r}")
    sx, sy = sx.clamp_min(0).expand(*batch, n), sy.clamp_min(0).expand(*batch, m)
    if official:
        # The code's epsilon; an all-zero side still becomes uniform (the code would give NaN).
        _, fx = _normalise(sx)
        _, fy = _normalise(sy)
        wx = torch.where(fx.unsqueeze(-1), 1.0 / n, sx / (sx.sum(-1, keepdim=True) + 1e-7))
        wy = torch.where(fy.unsqueeze(-1), 1.0 / m, sy / (sy.sum(-1, keepdim=True) + 1e-7))
        return wx, wy, fx | fy
    wx, fx = _normalise(sx)
    wy, fy = _normalise(sy)
    return wx, wy, fx | fy

"""Patch weights of DeepFace-EMD: uniform, APC, SC, CC, LMK."""
import torch

from .._checks import check_bool, check_broadcast, check_patch_pair, check_same_device, check_tensor
from ..reference import WEIGHTINGS, patch_weights_ref
from ..reference.weights import square_grid


def validate_weighting(method, x, y, x_embedding, y_embedding, x_landmarks, y_landmarks, grid,
                       paired=True):
    """Raise a clear error when `method` lacks what it needs (x (..., n, C), y (..., m, C)).

    paired: x, y and the embeddings / landmarks are compared pair by pair, so their batch dims
    must broadcast (emd_rerank pairs queries with gathered candidates itself: paired=False).
    """
    if method not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {method!r}")
    batches = dict(x=x.shape[:-2], y=y.shape[:-2])
    if method == "cc":
        if x_embedding is None or y_embedding is None:
            raise ValueError("weighting='cc' needs x_embedding and y_embedding (the image embeddings)")
        check_tensor("x_embedding", x_embedding, min_ndim=1)
        check_tensor("y_embedding", y_embedding, min_ndim=1)
        for name, e in (("x_embedding", x_embedding), ("y_embedding", y_embedding)):
            if e.shape[-1] != x.shape[-1]:
                raise ValueError(f"weighting='cc' needs embedding dim D == patch channels C; {name} has "
                                 f"D={e.shape[-1]}, patches have C={x.shape[-1]}")
        check_same_device(x=x, x_embedding=x_embedding, y_embedding=y_embedding)
        batches.update(x_embedding=x_embedding.shape[:-1], y_embedding=y_embedding.shape[:-1])
    if method == "lmk":
        if x_landmarks is None or y_landmarks is None:
            raise ValueError("weighting='lmk' needs x_landmarks and y_landmarks (..., L, 2) in patch-grid units")
        for name, lm in (("x_landmarks", x_landmarks), ("y_landmarks", y_landmarks)):
            check_tensor(name, lm, min_ndim=2)
            if lm.shape[-1] != 2:
                raise ValueError(f"{name} must have shape (..., L, 2), got {tuple(lm.shape)}")
        check_same_device(x=x, x_landmarks=x_landmarks, y_landmarks=y_landmarks)
        batches.update(x_landmarks=x_landmarks.shape[:-2], y_landmarks=y_landmarks.shape[:-2])
        if grid is not None:
            check_grid(grid, x=x.shape[-2], y=y.shape[-2])
        else:
            square_grid(x.shape[-2])
            square_grid(y.shape[-2])
    if paired:
        check_broadcast(**batches)


def check_grid(grid, **counts):
    """Check that grid is a pair of ints (H, W) >= 1 with H * W cells for each named patch count."""
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)):
        raise ValueError(f"grid must be a pair of ints (H, W) >= 1, got {grid!r}")
    for name, count in counts.items():
        if grid[0] * grid[1] != count:
            raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} cells but {name} has {count} patches")
    return tuple(grid)


def patch_weights(x, y, method="apc", *, x_embedding=None, y_embedding=None, x_landmarks=None,
                  y_landmarks=None, grid=None, return_fallback=False, official=False):
    """Return (wx (..., n), wy (..., m)), each summing to 1, for patches x (..., n, C), y (..., m, C).

    uniform: 1/n. apc: relu(<unit patch, unit mean of the other image's raw patches>).
    sc: sum of cosine distances to the other image's patches (as the official code).
    cc: relu(<unit patch, unit embedding of the other image>) (needs D == C).
    lmk: landmark count per patch; landmarks (..., L, 2) as (col, row) in patch-grid units.
    A side whose scores are all zero becomes uniform; return_fallback=True also returns a bool
    (...,) flag per pair. official=True uses the code's relu(s) / (sum + 1e-7), no fallback.
    """
    check_bool("official", official)
    check_bool("return_fallback", return_fallback)
    check_patch_pair(x, y)
    validate_weighting(method, x, y, x_embedding, y_embedding, x_landmarks, y_landmarks, grid)
    wx, wy, fell = patch_weights_ref(x, y, method, x_embedding=x_embedding, y_embedding=y_embedding,
                                     x_landmarks=x_landmarks, y_landmarks=y_landmarks, grid=grid,
                                     official=official)
    return (wx, wy, fell) if return_fallback else (wx, wy)

"""The public EMD between aligned patch sets: cost -> weights -> Sinkhorn, fused where a kernel
exists (fastface/ops/emd_pairs.py: the fused kernels and when they apply)."""
import torch

from .. import _backend as be
from .._checks import check_bool, check_patch_pair, check_solver_args
from ..reference import accumulation_dtype, patch_weights_ref
from ..reference.sinkhorn import OFFICIAL
from .cost import flatten_pairs, patch_cost
from .emd_pairs import FUSED_WEIGHTINGS, emd_pairs, fused_ok
from .sinkhorn import MODES, SinkhornResult, sinkhorn
from .weights import validate_weighting


def emd(x, y, *, weighting="apc", eps=0.05, max_iter=100, tol=1e-6, mode="auto", impl="auto",
        x_embedding=None, y_embedding=None, x_landmarks=None, y_landmarks=None, grid=None,
        return_plan=False):
    """Return the EMD (...,) between patch sets x (..., n, C) and y (..., m, C) (cosine ground cost).

    With return_plan=True returns a SinkhornResult (distance, plan, n_iter, converged) instead.
    Differentiable with respect to x and y (and the embeddings / weights they induce).
    """
    check_solver_args(eps, max_iter, tol, mode)
    check_bool("return_plan", return_plan)
    batch = check_patch_pair(x, y)
    validate_weighting(weighting, x, y, x_embedding, y_embedding, x_landmarks, y_landmarks, grid)
    if x.dtype != y.dtype:  # mixed dtypes: both to float64 if either is, else float32
        acc = accumulation_dtype(x, y)
        x, y = x.to(acc), y.to(acc)
    impl = be.resolve_impl(impl, x.device)
    grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    n, m = x.shape[-2], y.shape[-2]
    if not grad and weighting in FUSED_WEIGHTINGS and fused_ok(impl, mode, x.dtype, n, m, x.device):
        xf, yf, rep, batch = flatten_pairs(x, y, batch)
        out = emd_pairs(xf, yf, None, weighting, eps, max_iter, tol, MODES[mode], return_plan, impl)
        if not return_plan:
            return out["emd"].reshape(batch)
        return SinkhornResult(distance=out["emd"].reshape(batch),
                              plan=out["flows"].reshape(*batch, n, m),
                              n_iter=out["n_iter"].reshape(batch), converged=out["converged"].reshape(batch))
    # validated above: no second pass over the inputs
    cost = patch_cost(x, y, impl=impl, check_finite=False)
    wx, wy, _ = patch_weights_ref(x, y, weighting, x_embedding=x_embedding, y_embedding=y_embedding,
                                  x_landmarks=x_landmarks, y_landmarks=y_landmarks, grid=grid,
                                  official=MODES[mode] == OFFICIAL)
    res = sinkhorn(cost, wx.to(cost.dtype), wy.to(cost.dtype), eps=eps, max_iter=max_iter, tol=tol,
                   mode=mode, return_plan=return_plan, impl=impl)
    return res if return_plan else res.distance

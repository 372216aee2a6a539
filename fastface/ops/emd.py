"""EMD between aligned patch sets: cost -> weights -> Sinkhorn, fused where a kernel exists."""
import torch

from .. import _backend as be
from .._checks import check_patch_pair, check_solver_args
from ..reference import accumulation_dtype
from ..reference.sinkhorn import OFFICIAL
from .cost import flatten_pairs, patch_cost
from .kernel_limits import cuda_emd_pairs_fits
from .sinkhorn import MODES, sinkhorn
from .weights import patch_weights, validate_weighting

FUSED_WEIGHTINGS = {"uniform": 0, "apc": 1, "sc": 2}
EXTERNAL = 3


def emd_pairs(x, y, idx, weighting, wx, wy, eps, max_iter, tol, mode, want_flows, impl):
    """Fused kernel over pairs: x (B, n, C), y (G, m, C) with idx (B, k), or y (B*k, m, C), idx None.

    Returns dict(emd (B*k,), flows (B*k, n, m) | None, n_iter, converged, fallback (B*k,) bool).
    wx (B*k, n), wy (B*k, m) are used when weighting == "external".
    """
    B, n, C = x.shape
    m = y.shape[1]
    k = idx.shape[1] if idx is not None else (y.shape[0] // B if B else 0)
    code = EXTERNAL if weighting == "external" else FUSED_WEIGHTINGS[weighting]
    if impl == "triton":
        if idx is not None:
            y = y.index_select(0, idx.reshape(-1))
        return be.triton_kernels.emd_pairs_triton(x, y, k, weighting, eps, max_iter, tol, MODES[mode]
                                                  if isinstance(mode, str) else mode, want_flows, wx, wy)
    dev = x.device
    P = B * k
    emd = torch.empty(P, dtype=torch.float32, device=dev)
    flows = torch.empty(P, n, m, dtype=torch.float32, device=dev) if want_flows else None
    n_iter = torch.empty(P, dtype=torch.int32, device=dev)
    conv = torch.empty(P, dtype=torch.uint8, device=dev)
    fallback = torch.zeros(P, dtype=torch.uint8, device=dev)
    idx_c = None if idx is None else idx.to(torch.int64).contiguous()
    if P:
        args = (be.ptr(x), be.ptr(y), be.ptr(idx_c), B, k, n, m, C, be.DTYPE_CODES[x.dtype], code,
                be.ptr(wx), be.ptr(wy), float(eps), int(max_iter), float(tol), int(mode),
                be.ptr(emd), be.ptr(flows), be.ptr(n_iter), be.ptr(conv), be.ptr(fallback))
        if impl == "cpu":
            be._C.emd_pairs_cpu(*args, be.threads())
        else:
            with torch.cuda.device(dev):
                be._C.emd_pairs_cuda(*args, be.stream_of(dev))
    return dict(emd=emd, flows=flows, n_iter=n_iter, converged=conv.bool(), fallback=fallback.bool())


def fused_ok(impl, mode, dtype, n, m, device=None):
    """Whether the fused kernel of `impl` handles this problem (else: cost, weights, Sinkhorn)."""
    if impl == "torch" or MODES[mode] == OFFICIAL or dtype == torch.float64:
        return False
    if impl == "triton":
        return max(n, m) <= 128
    if impl == "cuda":
        return cuda_emd_pairs_fits(n, m, device)
    return True


def emd(x, y, *, weighting="apc", eps=0.05, max_iter=100, tol=1e-6, mode="auto", impl="auto",
        x_embedding=None, y_embedding=None, x_landmarks=None, y_landmarks=None, grid=None,
        return_plan=False):
    """Return the EMD (...,) between patch sets x (..., n, C) and y (..., m, C) (cosine ground cost).

    With return_plan=True returns a SinkhornResult (distance, plan, n_iter, converged) instead.
    Differentiable with respect to x and y (and the embeddings / weights they induce).
    """
    check_solver_args(eps, max_iter, tol, mode)
    check_patch_pair(x, y)
    validate_weighting(weighting, x, y, x_embedding, y_embedding, x_landmarks, y_landmarks, grid)
    if x.dtype != y.dtype:  # mixed dtypes: both to float64 if either is, else float32
        acc = accumulation_dtype(x, y)
        x, y = x.to(acc), y.to(acc)
    impl = be.resolve_impl(impl, x.device)
    grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    n, m = x.shape[-2], y.shape[-2]
    if not grad and weighting in FUSED_WEIGHTINGS and fused_ok(impl, mode, x.dtype, n, m, x.device):
        xf, yf, rep, batch = flatten_pairs(x, y)
        if impl == "cpu":
            xf, yf = xf.float(), yf.float()
        out = emd_pairs(xf, yf, None, weighting, None, None, eps, max_iter, tol, MODES[mode],
                        return_plan, impl)
        if not return_plan:
            return out["emd"].reshape(batch)
        from .sinkhorn import SinkhornResult
        return SinkhornResult(distance=out["emd"].reshape(batch),
                              plan=out["flows"].reshape(*batch, n, m),
                              n_iter=out["n_iter"].reshape(batch), converged=out["converged"].reshape(batch))
    cost = patch_cost(x, y, impl=impl)
    wx, wy = patch_weights(x, y, weighting, x_embedding=x_embedding, y_embedding=y_embedding,
                           x_landmarks=x_landmarks, y_landmarks=y_landmarks, grid=grid,
                           official=MODES[mode] == OFFICIAL)
    res = sinkhorn(cost, wx.to(cost.dtype), wy.to(cost.dtype), eps=eps, max_iter=max_iter, tol=tol,
                   mode=mode, return_plan=return_plan, impl=impl)
    return res if return_plan else res.distance

"""The fused EMD kernels over (query, candidate) pairs: internal dispatcher and fusion policy.

Callers (emd, emd_rerank) validate every argument first; nothing here checks its inputs.
A pair's cost (1 - cos), weights (uniform / APC / SC) and Sinkhorn run in one kernel call.
"""
import torch

from .. import _backend as be
from ..reference.sinkhorn import OFFICIAL
from .kernel_limits import cuda_emd_pairs_fits
from .sinkhorn import MODES

FUSED_WEIGHTINGS = {"uniform": 0, "apc": 1, "sc": 2}


def fused_ok(impl, mode, dtype, n, m, device=None):
    """Whether the fused kernel of `impl` handles this problem (else: cost, weights, Sinkhorn)."""
    if impl == "torch" or MODES[mode] == OFFICIAL or dtype == torch.float64:
        return False
    if impl == "triton":
        return max(n, m) <= 128
    if impl == "cuda":
        return cuda_emd_pairs_fits(n, m, device)
    return True


def emd_pairs(x, y, idx, weighting, eps, max_iter, tol, mode, want_flows, impl):
    """Run the fused kernel: x (B, n, C) queries, y (G, m, C) gallery with idx (B, k) candidate rows
    (gathered inside the kernel), or y (B*k, m, C) already gathered with idx None.

    weighting: one of FUSED_WEIGHTINGS; mode: the int code of a non-official Sinkhorn mode.
    Returns dict(emd (B*k,), flows (B*k, n, m) | None, n_iter, converged, fallback (B*k,) bool).
    """
    B, n, C = x.shape
    m = y.shape[1]
    k = idx.shape[1] if idx is not None else (y.shape[0] // B if B else 0)
    if impl == "triton":
        if idx is not None:
            y = y.index_select(0, idx.reshape(-1))
        return be.triton_kernels.emd_pairs_triton(x, y, k, weighting, eps, max_iter, tol, mode, want_flows)
    dev = x.device
    P = B * k
    emd = torch.empty(P, dtype=torch.float32, device=dev)
    flows = torch.empty(P, n, m, dtype=torch.float32, device=dev) if want_flows else None
    n_iter = torch.empty(P, dtype=torch.int32, device=dev)
    conv = torch.empty(P, dtype=torch.uint8, device=dev)
    fallback = torch.zeros(P, dtype=torch.uint8, device=dev)
    idx_c = None if idx is None else idx.to(torch.int64).contiguous()
    if P:
        args = (be.ptr(x), be.ptr(y), be.ptr(idx_c), B, k, n, m, C, be.DTYPE_CODES[x.dtype],
                FUSED_WEIGHTINGS[weighting], float(eps), int(max_iter), float(tol), int(mode),
                be.ptr(emd), be.ptr(flows), be.ptr(n_iter), be.ptr(conv), be.ptr(fallback))
        if impl == "cpu":
            be._C.emd_pairs_cpu(*args, be.threads())
        else:
            with torch.cuda.device(dev):
                be._C.emd_pairs_cuda(*args, be.stream_of(dev))
    return dict(emd=emd, flows=flows, n_iter=n_iter, converged=conv.bool(), fallback=fallback.bool())

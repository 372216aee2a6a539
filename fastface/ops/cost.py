"""Patch cosine cost: 1 - cos between two sets of patch embeddings."""
import math

import torch

from .. import _backend as be
from .._checks import broadcast_shape, check_all_finite, check_bool, check_patch_pair
from ..reference import patch_cost_ref


def flatten_pairs(x, y, batch=None):
    """Return (xf (P // rep, n, C), yf (P, m, C), rep, batch) for broadcastable x (..., n, C), y (..., m, C);
    batch: their broadcast batch shape when the caller has it already (check_patch_pair returns it)."""
    batch = broadcast_shape(x.shape[:-2], y.shape[:-2]) if batch is None else batch
    n, m, C = x.shape[-2], y.shape[-2], x.shape[-1]
    y = y.expand(*batch, m, C)
    # x broadcast over trailing batch dims of y (the (B, 1, n, C) vs (B, k, m, C) case) needs no copy.
    xb = x.shape[:-2]
    xb = (1,) * (len(batch) - len(xb)) + tuple(xb)
    lead = len(batch)
    while lead > 0 and xb[lead - 1] == 1 and batch[lead - 1] != 1:
        lead -= 1
    if all(xb[d] == batch[d] for d in range(lead)):
        rep = 1
        for d in range(lead, len(batch)):
            rep *= batch[d]
        xf = x.reshape(math.prod(xb[:lead]), n, C)
    else:
        rep = 1
        xf = x.expand(*batch, n, C).reshape(math.prod(batch), n, C)
    # explicit sizes: reshape(-1, ...) is ambiguous when n or m is 0
    return xf.contiguous(), y.reshape(math.prod(batch), m, C).contiguous(), rep, batch


def patch_cost(x, y, *, impl="auto", check_finite=True):
    """Return cost (..., n, m) = 1 - cos(x_i, y_j) for x (..., n, C), y (..., m, C).

    Accumulates in float32 (float64 for float64 inputs); zero-norm patches have cost 1.
    Differentiable (through the pure-PyTorch twin when gradients are needed).
    """
    check_finite = check_bool("check_finite", check_finite)
    batch = check_patch_pair(x, y, finite=False, empty_sets=True)
    impl = be.resolve_impl(impl, x.device)
    # The C++ CPU kernel reads every value anyway: it reports NaN / inf, and no separate pass is needed.
    fused_check = check_finite and impl == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))
    if check_finite and not fused_check:
        check_all_finite("x", x)
        check_all_finite("y", y)
    if impl == "torch" or (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        return patch_cost_ref(x, y)
    xf, yf, rep, batch = flatten_pairs(x, y, batch)
    n, m, C = xf.shape[1], yf.shape[1], xf.shape[2]
    P = yf.shape[0]
    out_dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    if out_dtype == torch.float64 or (impl == "cpu" and xf.dtype != yf.dtype):
        xf, yf = xf.to(out_dtype), yf.to(out_dtype)  # the CPU kernel reads float16 / bfloat16 as they are
    elif xf.dtype != yf.dtype:
        xf, yf = xf.float(), yf.float()
    if impl == "triton" and out_dtype == torch.float32:
        out = be.triton_kernels.patch_cost_triton(xf, yf, rep)
        return out.reshape(*batch, n, m)
    if impl == "triton":
        impl = "cuda" if x.is_cuda and be.cuda_usable(x.device) else "torch"
        if impl == "torch":
            return patch_cost_ref(x, y)
    out = torch.empty(P, n, m, dtype=out_dtype, device=x.device)
    if fused_check and not (P and n and m):  # the kernel does not run: nothing reads the inputs
        check_all_finite("x", x)
        check_all_finite("y", y)
    if P and n and m:
        args = (be.ptr(xf), be.ptr(yf), be.ptr(out), P, rep, n, m, C, be.DTYPE_CODES[xf.dtype])
        if impl == "cpu":
            nonfinite = torch.zeros(2, dtype=torch.uint8)
            be._C.patch_cost_cpu(*args, be.threads(), be.ptr(nonfinite) if fused_check else 0)
            for name, flag in zip(("x", "y"), nonfinite.tolist()):
                if flag:
                    raise ValueError(f"{name} contains NaN or inf")
        else:
            with torch.cuda.device(x.device):
                be._C.patch_cost_cuda(*args, be.stream_of(x.device))
    return out.reshape(*batch, n, m)

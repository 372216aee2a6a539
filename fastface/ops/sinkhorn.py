"""Batched entropic optimal transport (Sinkhorn), differentiable, dispatched to the backends."""
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _backend as be
from .._checks import check_positive, check_same_device, check_tensor, check_weights
from ..reference import sinkhorn_ref
from ..reference.sinkhorn import AUTO, KERNEL, LOG, OFFICIAL
from .kernel_limits import cuda_sinkhorn_needs_plan

MODES = {"auto": AUTO, "kernel": KERNEL, "log": LOG, "official": OFFICIAL}
GRADS = ("exact", "plan")


@dataclass
class SinkhornResult:
    """distance (...,) = <plan, cost>; plan (..., n, m) or None; n_iter, converged (...,)."""
    distance: torch.Tensor
    plan: Optional[torch.Tensor]
    n_iter: torch.Tensor
    converged: torch.Tensor
    f: Optional[torch.Tensor] = None  # (..., n) potentials: plan = exp((f_i + g_j - C_ij) / eps)
    g: Optional[torch.Tensor] = None  # (..., m)


def solve(cost, a, b, eps, max_iter, tol, mode, group, want_plan, impl):
    """Run one backend on flat contiguous problems: cost (P, n, m), a (P, n), b (P, m)."""
    P, n, m = cost.shape
    if impl == "torch":
        return sinkhorn_ref(cost, a, b, eps, max_iter, tol, mode, group, return_plan=want_plan)
    if impl == "triton":
        if mode == OFFICIAL or max(n, m) > 128 or cost.dtype != torch.float32:
            return solve(cost, a, b, eps, max_iter, tol, mode, group, want_plan,
                         "cuda" if be.cuda_usable() and cost.is_cuda else "torch")
        out = be.triton_kernels.sinkhorn_triton(cost, a, b, eps, max_iter, tol, mode, want_plan)
        return out
    dt = cost.dtype
    distance = torch.empty(P, dtype=dt, device=cost.device)
    need_plan = want_plan or (impl == "cuda" and cuda_sinkhorn_needs_plan(n, m, dt, mode, cost.device))
    plan = torch.empty(P, n, m, dtype=dt, device=cost.device) if need_plan else None
    f = g = None
    if mode != OFFICIAL:
        f = torch.empty(P, n, dtype=dt, device=cost.device)
        g = torch.empty(P, m, dtype=dt, device=cost.device)
    n_iter = torch.empty(P, dtype=torch.int32, device=cost.device)
    conv = torch.empty(P, dtype=torch.uint8, device=cost.device)
    args = (be.ptr(cost), be.ptr(a), be.ptr(b), P, n, m, float(eps), int(max_iter), float(tol),
            mode, group, be.DTYPE_CODES[dt], be.ptr(distance), be.ptr(plan), be.ptr(f), be.ptr(g),
            be.ptr(n_iter), be.ptr(conv))
    if impl == "cpu":
        be._C.sinkhorn_cpu(*args, be.threads())
    else:
        with torch.cuda.device(cost.device):  # launches and shared-memory opt-ins on this GPU
            be._C.sinkhorn_cuda(*args, be.stream_of(cost.device))
    return dict(distance=distance, plan=plan if want_plan else None, f=f, g=g, n_iter=n_iter,
                converged=conv.bool())


def implicit_grad(cost, a, b, f, g, eps):
    """Return d<P, C>/d(C, a, b) for the converged entropic plan, by implicit differentiation.

    With P = exp((f_i + g_j - C_ij)/eps) and J = [[diag a, P], [P^T, diag b]], solve J [l; u] = w,
    w = [(P*C) 1; (P*C)^T 1] / eps; then dC = P * (1 - C/eps + l_i + u_j), da = eps l, db = eps u.
    """
    plan = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps)
    n, m = plan.shape[-2:]
    pc = plan * cost
    w = torch.cat([pc.sum(-1), pc.sum(-2)], -1) / eps
    top = torch.cat([torch.diag_embed(a), plan], -1)
    bottom = torch.cat([plan.transpose(-1, -2), torch.diag_embed(b)], -1)
    J = torch.cat([top, bottom], -2)
    # (1, -1) spans J's null space (the potentials' gauge); zero weights add empty rows.
    active = torch.cat([a > 0, b > 0], -1).to(cost.dtype)
    v = torch.cat([torch.ones_like(a), -torch.ones_like(b)], -1) * active
    J = J + v.unsqueeze(-1) * v.unsqueeze(-2) + torch.diag_embed(1.0 - active)
    lu = torch.linalg.solve(J, w.unsqueeze(-1)).squeeze(-1) * active
    lam, mu = lu[..., :n], lu[..., n:]
    d_cost = plan * (1.0 - cost / eps + lam.unsqueeze(-1) + mu.unsqueeze(-2))
    return d_cost, eps * lam, eps * mu


class _SinkhornFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, eps, max_iter, tol, mode, group, want_plan, impl, grad):
        out = solve(cost.detach(), a.detach(), b.detach(), eps, max_iter, tol, mode, group,
                    want_plan or mode == OFFICIAL, impl)
        ctx.eps, ctx.grad, ctx.mode = eps, grad, mode
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(cost, a, b, out["f"] if mode != OFFICIAL else out["plan"],
                              out["g"] if mode != OFFICIAL else None)
        ctx.mark_non_differentiable(out["n_iter"], out["converged"])
        plan = out["plan"] if want_plan else None
        return out["distance"], plan, out["n_iter"], out["converged"], out["f"], out["g"]

    @staticmethod
    def backward(ctx, g_dist, g_plan, _gi, _gc, _gf, _gg):
        cost, a, b, f_or_plan, g = ctx.saved_tensors
        eps = ctx.eps
        if g_plan is not None:
            raise RuntimeError("sinkhorn: gradients through .plan are not supported; "
                               "differentiate .distance")
        if g_dist is None:
            return (None,) * 11
        go = g_dist.unsqueeze(-1)
        if ctx.mode == OFFICIAL or ctx.grad == "plan":
            plan = f_or_plan if ctx.mode == OFFICIAL else \
                torch.exp((f_or_plan.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps)
            d_a = d_b = None
            if ctx.mode != OFFICIAL:
                d_a = torch.where(a > 0, f_or_plan, 0.0) * go
                d_b = torch.where(b > 0, g, 0.0) * go
            return plan * go.unsqueeze(-1), d_a, d_b, *([None] * 8)
        d_cost, d_a, d_b = implicit_grad(cost, a, b, f_or_plan, g, eps)
        return d_cost * go.unsqueeze(-1), d_a * go, d_b * go, *([None] * 8)


def sinkhorn(cost, a=None, b=None, *, eps=0.05, max_iter=100, tol=1e-6, return_plan=False,
             impl="auto", mode="auto", grad="exact", official_group=None, check_finite=True):
    """Return a SinkhornResult for entropic OT between a and b under cost (..., n, m).

    a (..., n), b (..., m): non-negative weights (None = uniform), rescaled to sum 1 per problem
    (except in official mode, which uses them as given, like the official code).
    mode: "auto" (kernel domain, log domain when eps is small relative to the cost range),
    "kernel", "log", or "official" (DeepFace-EMD's code: stop when mean |r - r_prev| < tol over each
    group of `official_group` problems, default the last batch dim; the code uses tol=0.1).
    grad: "exact" (implicit differentiation of <P, C>) or "plan" (envelope: dC = P).
    Every problem stops on its own (except in official mode), at tol or max_iter.
    """
    check_tensor("cost", cost, min_ndim=2, finite=check_finite)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {tuple(MODES)}, got {mode!r}")
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    check_positive("eps", eps)
    check_positive("max_iter", max_iter, integer=True)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    *batch, n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"cost must have n, m >= 1, got shape {tuple(cost.shape)}")
    dt = torch.float64 if cost.dtype == torch.float64 else torch.float32
    cost_f = cost.to(dt)
    if a is None:
        a = torch.full((*batch, n), 1.0 / n, dtype=dt, device=cost.device)
    else:
        check_same_device(cost=cost, a=a)
        a = check_weights("a", a.to(dt), (*batch, n), normalise=mode != "official")
    if b is None:
        b = torch.full((*batch, m), 1.0 / m, dtype=dt, device=cost.device)
    else:
        check_same_device(cost=cost, b=b)
        b = check_weights("b", b.to(dt), (*batch, m), normalise=mode != "official")
    impl = be.resolve_impl(impl, cost.device)
    code = MODES[mode]
    group = 1
    if code == OFFICIAL:
        group = official_group or (batch[-1] if batch else 1)
        if cost_f.shape[:-2].numel() % group:
            raise ValueError(f"official_group={group} must divide the number of problems")
    P = cost_f.shape[:-2].numel()  # 1 for a single 2-D problem, 0 for an empty batch
    flat = cost_f.reshape(P, n, m).contiguous()
    af, bf = a.reshape(P, n).contiguous(), b.reshape(P, m).contiguous()
    dist, plan, n_iter, conv, f, g = _SinkhornFn.apply(flat, af, bf, float(eps), int(max_iter),
                                                       float(tol), code, group, return_plan, impl, grad)
    if check_finite and not bool(torch.isfinite(dist).all()):
        raise FloatingPointError(f"sinkhorn: non-finite distance in mode={mode!r} "
                                 f"(eps={eps} is too small for the kernel domain; use mode='auto' or 'log')")
    shape = tuple(batch)
    return SinkhornResult(
        distance=dist.reshape(shape), plan=None if plan is None else plan.reshape(*shape, n, m),
        n_iter=n_iter.reshape(shape), converged=conv.reshape(shape),
        f=None if f is None else f.reshape(*shape, n), g=None if g is None else g.reshape(*shape, m))

"""Batched entropic optimal transport (Sinkhorn), differentiable, dispatched to the backends."""
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _backend as be
from .._checks import (SINKHORN_MODES, check_bool, check_int, check_same_device, check_solver_args,
                       check_tensor, check_weights)
from ..reference import accumulation_dtype, sinkhorn_ref
from ..reference.sinkhorn import AUTO, KERNEL, LOG, OFFICIAL, cost_shifts, reduce_cost
from .kernel_limits import cuda_sinkhorn_needs_plan

MODES = dict(zip(SINKHORN_MODES, (AUTO, KERNEL, LOG, OFFICIAL)))
GRADS = ("exact", "plan")


@dataclass
class SinkhornResult:
    """distance (...,) = <plan, cost>; plan (..., n, m) or None; n_iter, converged (...,)."""
    distance: torch.Tensor
    plan: Optional[torch.Tensor]
    n_iter: torch.Tensor
    converged: torch.Tensor
    f: Optional[torch.Tensor] = None  # (..., n) potentials: plan = exp((f_i + g_j - C_ij) / eps)
                                      # (in exact arithmetic; float32 loses digits when C is far from 0)
    g: Optional[torch.Tensor] = None  # (..., m)


def solve(cost, a, b, eps, max_iter, tol, mode, group, want_plan, impl):
    """Run one backend on flat contiguous problems: cost (P, n, m), a (P, n), b (P, m)."""
    P, n, m = cost.shape
    if impl == "torch":
        return sinkhorn_ref(cost, a, b, eps, max_iter, tol, mode, group, return_plan=want_plan)
    if impl == "triton":
        if mode == OFFICIAL or max(n, m) > 128 or cost.dtype != torch.float32:
            return solve(cost, a, b, eps, max_iter, tol, mode, group, want_plan,
                         "cuda" if cost.is_cuda and be.cuda_usable(cost.device) else "torch")
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


def _solve_spd(S, r):
    """Return x (P, k) with S x = r for symmetric positive definite S (P, k, k), r (P, k).

    Gaussian elimination without pivoting (stable for SPD) in plain tensor ops: batched LAPACK
    factorisations of this torch build (MKL) fail ("Pivots given to lu_solve") or spin once
    several threads run, whatever torch.set_num_threads says.
    """
    k = S.shape[-1]
    A = torch.cat([S, r.unsqueeze(-1)], -1)                       # (P, k, k + 1), a copy
    for j in range(k - 1):
        factor = A[:, j + 1:, j] / A[:, j, j].unsqueeze(-1)       # (P, k - j - 1)
        A[:, j + 1:, j:] -= factor.unsqueeze(-1) * A[:, j, j:].unsqueeze(-2)
    x = torch.empty_like(r)
    for j in range(k - 1, -1, -1):
        x[:, j] = (A[:, j, k] - (A[:, j, j + 1:k] * x[:, j + 1:]).sum(-1)) / A[:, j, j]
    return x


def implicit_grad(cr, a, b, f, g, eps):
    """Return d<P, C>/d(C, a, b) for the converged entropic plan, by implicit differentiation.

    cr (P, n, m) is the reduced cost and f (P, n), g (P, m) its potentials: P = exp((f_i + g_j -
    Cr_ij)/eps). The gradient in C is that in Cr (shifting rows / columns of C leaves P unchanged);
    the caller adds alpha, beta to the a, b gradients. With J = [[diag a, P], [P^T, diag b]], solve
    J [l; u] = w, w = [(P*Cr) 1; (P*Cr)^T 1] / eps; then dC = P * (1 - Cr/eps + l_i + u_j),
    da = eps l, db = eps u. The solve eliminates the larger side (Schur complement) and runs in
    float64 on the smaller one.
    """
    out_dtype = cr.dtype
    cr, a, b, f, g = (t.double() for t in (cr, a, b, f, g))
    plan = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cr) / eps)     # (P, n, m)
    pc = plan * cr
    w1, w2 = pc.sum(-1) / eps, pc.sum(-2) / eps                         # (P, n), (P, m)
    n, m = plan.shape[-2:]
    swap = n < m                       # eliminate the larger side: solve for the smaller one
    pl, wa, wb, ra, rb = (plan.transpose(-1, -2), b, a, w2, w1) if swap else (plan, a, b, w1, w2)
    inv_a = torch.where(wa > 0, 1.0 / wa, 0.0)                          # zero weights: l = 0
    # S = diag b - P^T diag(1/a) P, singular along 1 (the potentials' gauge) on the active side.
    active = (wb > 0).double()
    S = torch.diag_embed(wb + (1.0 - active)) - pl.transpose(-1, -2) @ (inv_a.unsqueeze(-1) * pl)
    S = S + active.unsqueeze(-1) * active.unsqueeze(-2) / active.sum(-1).clamp_min(1)[:, None, None]
    rhs = rb - (pl.transpose(-1, -2) @ (ra * inv_a).unsqueeze(-1)).squeeze(-1)
    u = _solve_spd(S, rhs * active) * active
    lam = (ra - (pl @ u.unsqueeze(-1)).squeeze(-1)) * inv_a
    lam, mu = (u, lam) if swap else (lam, u)
    d_cost = plan * (1.0 - cr / eps + lam.unsqueeze(-1) + mu.unsqueeze(-2))
    return d_cost.to(out_dtype), (eps * lam).to(out_dtype), (eps * mu).to(out_dtype)


class _SinkhornFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, a, b, eps, max_iter, tol, mode, group, want_plan, impl, grad):
        out = solve(cost.detach(), a.detach(), b.detach(), eps, max_iter, tol, mode, group,
                    want_plan or mode == OFFICIAL, impl)
        ctx.eps, ctx.grad, ctx.mode = eps, grad, mode
        ctx.set_materialize_grads(False)
        f = g = None
        if mode == OFFICIAL:
            ctx.save_for_backward(cost, a, b, out["plan"], None)
        else:  # the kernels return potentials of Cr; the public ones are those of C
            alpha, beta = cost_shifts(cost.detach())   # the shifts alone: Cr is not needed here
            ctx.save_for_backward(cost, a, b, out["f"], out["g"])
            f, g = out["f"] + alpha, out["g"] + beta
        ctx.mark_non_differentiable(out["n_iter"], out["converged"])
        plan = out["plan"] if want_plan else None
        return out["distance"], plan, out["n_iter"], out["converged"], f, g

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
        if ctx.mode == OFFICIAL:
            return f_or_plan * go.unsqueeze(-1), None, None, *([None] * 8)
        cr, alpha, beta = reduce_cost(cost)
        if ctx.grad == "plan":
            plan = torch.exp((f_or_plan.unsqueeze(-1) + g.unsqueeze(-2) - cr) / eps)
            d_a = torch.where(a > 0, f_or_plan, 0.0) + alpha
            d_b = torch.where(b > 0, g, 0.0) + beta
            return plan * go.unsqueeze(-1), d_a * go, d_b * go, *([None] * 8)
        d_cost, d_a, d_b = implicit_grad(cr, a, b, f_or_plan, g, eps)
        return d_cost * go.unsqueeze(-1), (d_a + alpha) * go, (d_b + beta) * go, *([None] * 8)


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
    check_solver_args(eps, max_iter, tol, mode)
    check_bool("return_plan", return_plan)
    check_bool("check_finite", check_finite)
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    check_tensor("cost", cost, min_ndim=2, finite=check_finite)
    *batch, n, m = cost.shape
    if n == 0 or m == 0:
        raise ValueError(f"cost must have n, m >= 1, got shape {tuple(cost.shape)}")
    for name, w, size in (("a", a, n), ("b", b, m)):
        if w is not None:
            check_tensor(name, w)
            check_same_device(cost=cost, **{name: w})
            if tuple(w.shape) != (*batch, size):
                raise ValueError(f"{name} must have shape {(*batch, size)}, got {tuple(w.shape)}")
    dt = accumulation_dtype(cost, a, b)          # float64 if any input is, else float32
    official = mode == "official"
    group = 1
    if official:
        last = (batch[-1] if batch else 1) or 1   # an empty batch has no group to divide
        group = last if official_group is None else check_int("official_group", official_group, hi=None)
        problems = cost.shape[:-2].numel()
        if problems and problems % group:
            raise ValueError(f"official_group={group} must divide the number of problems, got {problems}")
    cost_f = cost.to(dt)
    a = torch.full((*batch, n), 1.0 / n, dtype=dt, device=cost.device) if a is None else \
        check_weights("a", a.to(dt), (*batch, n), normalise=not official)
    b = torch.full((*batch, m), 1.0 / m, dtype=dt, device=cost.device) if b is None else \
        check_weights("b", b.to(dt), (*batch, m), normalise=not official)
    impl = be.resolve_impl(impl, cost.device)
    code = MODES[mode]
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

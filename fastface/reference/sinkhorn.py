"""Batched Sinkhorn, pure PyTorch: the semantics every backend reproduces.

Modes (ints shared with the kernels): 0 auto, 1 kernel domain, 2 log domain, 3 official.
Non-official modes work on the reduced cost Cr = C - alpha_i - beta_j (row minima, then column
minima), which leaves the plan unchanged and puts a 1 in every row of K = exp(-Cr/eps).
Auto uses the log domain when max(Cr)/eps > LOG_DOMAIN_THRESHOLD, or when the kernel domain
produced a non-finite value. Every problem stops on its own once the L1 row-marginal error
sum_i |P 1 - a|_i <= tol (checked after each full iteration); n_iter counts full iterations.
Official mode reproduces the DeepFace-EMD code: K = exp(-C/eps), r = a/(K c), c = b/(K^T r),
stop when mean |r - r_prev| over each group of `group` consecutive problems is < tol; its
distance is 1 - <P, 1 - C> (the code's 1 - similarity).
"""
import torch

from .precision import in_full_fp32

AUTO, KERNEL, LOG, OFFICIAL = 0, 1, 2, 3
LOG_DOMAIN_THRESHOLD = 50.0


def _all_done(active, it):
    """Whether every problem has stopped; on a GPU only every 10th iteration (a host sync).

    Finished problems are frozen by masks, so checking late changes no result, only the time.
    """
    if active.device.type != "cpu" and (it + 1) % 10:
        return False
    return not bool(active.any())


def cost_shifts(cost):
    """Return (alpha (P, n), beta (P, m)): the row minima of cost, then the column minima of cost - alpha_i."""
    alpha = cost.amin(-1)
    return alpha, (cost - alpha.unsqueeze(-1)).amin(-2)


def reduce_cost(cost):
    """Return (Cr, alpha (P, n), beta (P, m)) with Cr = cost - alpha_i - beta_j >= 0."""
    alpha, beta = cost_shifts(cost)
    return cost - alpha.unsqueeze(-1) - beta.unsqueeze(-2), alpha, beta


def _kernel_domain(cr, a, b, eps, max_iter, tol):
    P, n, m = cr.shape
    K = torch.exp(-cr / eps)
    u = torch.ones_like(a)
    v = torch.ones_like(b)
    n_iter = torch.zeros(P, dtype=torch.int32, device=cr.device)
    active = torch.ones(P, dtype=torch.bool, device=cr.device)
    err = torch.full((P,), float("inf"), dtype=cr.dtype, device=cr.device)
    for it in range(max_iter):
        # Zero weights give zero scalings (0 / 0 would be NaN where K underflows).
        u_new = torch.where(a > 0, a / (K @ v.unsqueeze(-1)).squeeze(-1), 0.0)
        v_new = torch.where(b > 0, b / (K.transpose(-1, -2) @ u_new.unsqueeze(-1)).squeeze(-1), 0.0)
        keep = active.unsqueeze(-1)
        u, v = torch.where(keep, u_new, u), torch.where(keep, v_new, v)
        n_iter += active.to(torch.int32)
        row = u * (K @ v.unsqueeze(-1)).squeeze(-1)
        err = torch.where(active, (row - a).abs().sum(-1), err)
        active = active & ~(err <= tol)
        if _all_done(active, it):
            break
    with torch.no_grad():
        f = eps * torch.log(u)
        g = eps * torch.log(v)
    return f, g, n_iter, err <= tol


def _log_domain(cr, a, b, eps, max_iter, tol):
    P, n, m = cr.shape
    log_a, log_b = torch.log(a), torch.log(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    n_iter = torch.zeros(P, dtype=torch.int32, device=cr.device)
    active = torch.ones(P, dtype=torch.bool, device=cr.device)
    err = torch.full((P,), float("inf"), dtype=cr.dtype, device=cr.device)
    for it in range(max_iter):
        f_new = eps * log_a - eps * torch.logsumexp((g.unsqueeze(-2) - cr) / eps, dim=-1)
        g_new = eps * log_b - eps * torch.logsumexp((f_new.unsqueeze(-1) - cr) / eps, dim=-2)
        keep = active.unsqueeze(-1)
        f, g = torch.where(keep, f_new, f), torch.where(keep, g_new, g)
        n_iter += active.to(torch.int32)
        row = torch.exp(torch.logsumexp((f.unsqueeze(-1) + g.unsqueeze(-2) - cr) / eps, dim=-1))
        err = torch.where(active, (row - a).abs().sum(-1), err)
        active = active & ~(err <= tol)
        if _all_done(active, it):
            break
    return f, g, n_iter, err <= tol


def _official(cost, a, b, eps, max_iter, tol, group):
    P, n, m = cost.shape
    K = torch.exp(-cost / eps)
    r = torch.ones_like(a)
    c = torch.ones_like(b)
    n_iter = torch.zeros(P, dtype=torch.int32, device=cost.device)
    active = torch.ones(P // group, dtype=torch.bool, device=cost.device)
    for it in range(max_iter):
        r0 = r
        r_new = a / (K @ c.unsqueeze(-1)).squeeze(-1)
        c_new = b / (K.transpose(-1, -2) @ r_new.unsqueeze(-1)).squeeze(-1)
        keep = active.repeat_interleave(group).unsqueeze(-1)
        r, c = torch.where(keep, r_new, r), torch.where(keep, c_new, c)
        n_iter += keep.squeeze(-1).to(torch.int32)
        delta = (r - r0).abs().reshape(P // group, group * n).mean(-1)
        active = active & ~(delta < tol)
        if _all_done(active, it):
            break
    converged = (~active).repeat_interleave(group)
    plan = r.unsqueeze(-1) * K * c.unsqueeze(-2)
    distance = 1.0 - (plan * (1.0 - cost)).sum((-1, -2))
    return plan, distance, n_iter, converged


@in_full_fp32
def sinkhorn_ref(cost, a, b, eps=0.05, max_iter=100, tol=1e-6, mode=AUTO, group=1,
                 return_plan=False):
    """Return dict(distance (P,), plan (P, n, m) | None, f (P, n), g (P, m), n_iter, converged).

    cost (P, n, m); a (P, n), b (P, m) non-negative, each summing to 1; float32 or float64.
    f, g are the potentials of the reduced cost Cr = reduce_cost(cost)[0]:
    plan = exp((f_i + g_j - Cr_ij) / eps); those of the cost itself are f + alpha, g + beta
    (rebuilding the plan from those and C loses precision when C is far from 0).
    """
    if mode == OFFICIAL:
        plan, distance, n_iter, converged = _official(cost, a, b, eps, max_iter, tol, group)
        return dict(distance=distance, plan=plan if return_plan else None, f=None, g=None,
                    n_iter=n_iter, converged=converged)
    cr, alpha, beta = reduce_cost(cost)
    P = cost.shape[0]
    if mode == LOG:
        use_log = torch.ones(P, dtype=torch.bool, device=cost.device)
    elif mode == KERNEL:
        use_log = torch.zeros(P, dtype=torch.bool, device=cost.device)
    else:
        use_log = cr.amax((-1, -2)) / eps > LOG_DOMAIN_THRESHOLD
    f = torch.empty_like(a)
    g = torch.empty_like(b)
    n_iter = torch.zeros(P, dtype=torch.int32, device=cost.device)
    converged = torch.zeros(P, dtype=torch.bool, device=cost.device)
    kern = (~use_log).nonzero().squeeze(-1)
    if kern.numel():
        fk, gk, ik, ck = _kernel_domain(cr[kern], a[kern], b[kern], eps, max_iter, tol)
        f[kern], g[kern], n_iter[kern], converged[kern] = fk, gk, ik, ck
        if mode == AUTO:
            bad = ~(torch.isfinite(fk).logical_or(a[kern] == 0).all(-1)
                    & torch.isfinite(gk).logical_or(b[kern] == 0).all(-1))
            use_log[kern[bad]] = True
    logs = use_log.nonzero().squeeze(-1)
    if logs.numel():
        fl, gl, il, cl = _log_domain(cr[logs], a[logs], b[logs], eps, max_iter, tol)
        f[logs], g[logs], n_iter[logs], converged[logs] = fl, gl, il, cl
    plan = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cr) / eps)
    distance = (plan * cost).sum((-1, -2))
    return dict(distance=distance, plan=plan if return_plan else None, f=f, g=g,
                n_iter=n_iter, converged=converged)

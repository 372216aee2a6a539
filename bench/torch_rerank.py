"""The fastest pure-PyTorch stage 2 we could write: the honest baseline of bench/report.py.

Unlike fastface's own twin (fastface/reference: the test oracle, which mirrors the kernels' per-problem
early exit, reduced costs and log-domain fallback), this is written for speed only:
  * one batched GEMM for every cosine of a query batch: (B, n, C) x (B, C, k*m);
  * APC weights from two small GEMMs against the mean patches;
  * the kernel-domain Sinkhorn batched over all B*k problems (bmm mat-vecs), a fixed number of
    iterations (no per-problem exit, no host sync in the loop), optionally under torch.compile.
No Python loop over pairs. eps = 0.05 keeps exp(-cost / eps) >= exp(-40) in float32: no log domain.
"""
import torch


def unit(t, dim=-1):
    return t / t.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def apc_cost(xq, cand):
    """cost (B, k, n, m), wx (B, k, n), wy (B, k, m) for queries xq (B, n, C), candidates cand (B, k, m, C)."""
    B, k, m, C = cand.shape
    n = xq.shape[1]
    xu, yu = unit(xq), unit(cand)
    cos = torch.bmm(xu, yu.reshape(B, k * m, C).transpose(1, 2))             # (B, n, k*m): one GEMM
    cos = cos.reshape(B, n, k, m).transpose(1, 2)                            # (B, k, n, m) view
    wx = torch.einsum("bnc,bkc->bkn", xu, unit(cand.mean(2))).clamp_min(0)   # (B, k, n)
    wy = torch.einsum("bkmc,bc->bkm", yu, unit(xq.mean(1))).clamp_min(0)     # (B, k, m)
    wx = wx / wx.sum(-1, keepdim=True)
    wy = wy / wy.sum(-1, keepdim=True)
    return 1.0 - cos, wx, wy


def sinkhorn_iterations(K, a, b, iters):
    """u, v after `iters` kernel-domain Sinkhorn iterations; K (P, n, m), a (P, n, 1), b (P, m, 1)."""
    v = torch.ones_like(b)
    Kt = K.transpose(1, 2)
    for _ in range(iters):
        u = a / torch.bmm(K, v)
        v = b / torch.bmm(Kt, u)
    return u, v


def torch_rerank(xq, cand, eps=0.05, max_iter=100, sinkhorn=sinkhorn_iterations):
    """EMD (B, k) between queries xq (B, n, C) and their candidates cand (B, k, m, C)."""
    B, k, m, _ = cand.shape
    n = xq.shape[1]
    cost, wx, wy = apc_cost(xq, cand)
    cost = cost.reshape(B * k, n, m)
    K = torch.exp(cost / -eps)
    u, v = sinkhorn(K, wx.reshape(B * k, n, 1), wy.reshape(B * k, m, 1), max_iter)
    return ((u * K * v.transpose(1, 2)) * cost).sum((1, 2)).reshape(B, k)


def compiled_rerank():
    """torch_rerank with the Sinkhorn loop under torch.compile (10 iterations per compiled call)."""
    step = torch.compile(lambda K, a, b, v: _ten(K, a, b, v), dynamic=False)

    def sinkhorn(K, a, b, iters):
        v = torch.ones_like(b)
        u = None
        for _ in range(iters // 10):
            u, v = step(K, a, b, v)
        return u, v
    return lambda xq, cand, eps=0.05, max_iter=100: torch_rerank(xq, cand, eps, max_iter, sinkhorn)


def _ten(K, a, b, v):
    Kt = K.transpose(1, 2)
    for _ in range(10):
        u = a / torch.bmm(K, v)
        v = b / torch.bmm(Kt, u)
    return u, v


def torch_search(qe, qp, emb, patches, k=100, alpha=0.7, rerank=torch_rerank):
    """The whole two-stage search in pure PyTorch: (indices (B, k) best-first, emd (B, k)).

    qe (B, D), qp (B, n, C) queries; emb (G, D), patches (G, m, C) gallery."""
    cos, idx = (unit(qe) @ unit(emb).T).topk(k, dim=1)                       # stage 1
    emd = rerank(qp, patches[idx])                                           # stage 2
    order = (alpha * emd + (1 - alpha) * (1 - cos)).argsort(dim=1)
    return idx.gather(1, order), emd

"""Benchmark workloads shared by the pytest-benchmark files and bench/report.py."""
import numpy as np
import torch

import fastface as ff


def face_like(G, n=64, C=512, D=512, ids=None, seed=0, device="cpu"):
    """Return (embeddings (G, D), patches (G, n, C)) with face-like structure: a shared template,
    identity components and noise, so patch cosines spread over [0.2, 0.9] as real maps do."""
    g = torch.Generator().manual_seed(seed)
    ids = ids or max(1, G // 4)
    template = torch.randn(n, C, generator=g)
    ident = torch.randn(ids, n, C, generator=g)
    who = torch.arange(G) % ids
    patches = template + 0.8 * ident[who] + 0.6 * torch.randn(G, n, C, generator=g)
    emb = torch.randn(ids, D, generator=g)[who] + 0.5 * torch.randn(G, D, generator=g)
    return emb.to(device), patches.to(device)


def queries_from(emb, patches, B, seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, emb.shape[0], (B,), generator=g)
    noise = lambda t: 0.5 * torch.randn(t.shape, generator=g).to(t.device)  # noqa: E731
    return emb[idx] + noise(emb[idx]), patches[idx] + noise(patches[idx])


def pot_rerank_one(q_patch, cand_patches, eps=0.05, max_iter=100, tol=1e-6):
    """POT per pair: numpy cosine cost + APC weights + ot.sinkhorn2 for each candidate."""
    import ot
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    x = q_patch.numpy().astype(np.float64)
    xu, cx = unit(x), unit(x.mean(0))
    out = []
    for y in cand_patches.numpy().astype(np.float64):
        yu, cy = unit(y), unit(y.mean(0))
        wx = np.maximum(xu @ cy, 0)
        wy = np.maximum(yu @ cx, 0)
        wx, wy = wx / wx.sum(), wy / wy.sum()
        # POT divides by the weights: drop zero-weight patches (the same transport problem).
        i, j = wx > 0, wy > 0
        out.append(ot.sinkhorn2(wx[i], wy[j], 1 - xu[i] @ yu[j].T, eps, numItermax=max_iter, stopThr=tol))
    return np.array(out)


def rerank(q, gallery, impl, k=100, **kw):
    return ff.emd_rerank(q, gallery, k=k, impl=impl, **kw)

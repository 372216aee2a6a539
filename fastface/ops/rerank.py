"""Two-stage face identification (DeepFace-EMD): cosine top-k, then EMD re-ranking."""
from dataclasses import dataclass
from typing import Optional

import torch

from .. import _backend as be
from .._checks import (check_all_finite, check_bool, check_int, check_number, check_same_device,
                       check_solver_args, check_tensor)
from ..reference import accumulation_dtype, in_full_fp32, patch_weights_ref, unit_rows
from .cost import patch_cost
from .emd_pairs import FUSED_WEIGHTINGS, emd_pairs, fused_ok
from .sinkhorn import MODES, sinkhorn
from .weights import check_grid, validate_weighting


class Faces:
    """A set of faces: embeddings (n, D) and patch embeddings stored contiguous as (n, H*W, C).

    patches may be given as (n, C, H, W) feature maps or (n, N, C) patch sets; a single face may
    be given as embeddings (D,) with patches (C, H, W) or (N, C). landmarks (n, L, 2) in patch-grid
    units (for weighting='lmk') are optional. Construction validates everything once (shapes,
    devices, NaN/inf) and lays the patches out once (a copy unless already contiguous (n, N, C));
    emd_rerank then trusts a Faces and checks nothing per call but shapes. lay_out=False keeps
    a view (what emd_rerank does with a one-off tuple: it gathers only the k candidates per query).
    """

    def __init__(self, embeddings, patches, landmarks=None, grid=None, *, lay_out=True,
                 _defer_patch_check=False):
        check_bool("lay_out", lay_out)
        check_tensor("embeddings", embeddings, ndim=(1, 2), finite=False)
        check_tensor("patches", patches, ndim=(2, 3, 4), finite=False)
        self.single = embeddings.dim() == 1
        if self.single:
            embeddings = embeddings.unsqueeze(0)
            if patches.dim() == 4:
                raise ValueError(f"a single face (embeddings of shape {tuple(embeddings.shape[1:])}) needs "
                                 f"patches (C, H, W) or (N, C), got {tuple(patches.shape)}")
            patches = patches.unsqueeze(0)
            if landmarks is not None:
                landmarks = landmarks.unsqueeze(0)
        if patches.dim() == 4:
            c, h, w = patches.shape[1:]
            grid = grid or (h, w)
            patches = patches.flatten(2).transpose(1, 2)      # (n, H*W, C) view
        if patches.dim() != 3:
            raise ValueError(f"patches must be (n, C, H, W) or (n, N, C), got {tuple(patches.shape)}")
        if patches.shape[1] == 0:
            raise ValueError(f"patches must hold at least one patch per face, got {tuple(patches.shape)} "
                             "as (n, N, C)")
        if patches.shape[2] == 0:
            raise ValueError(f"patches must have at least one channel, got {tuple(patches.shape)} as (n, N, C)")
        if grid is not None:
            grid = check_grid(grid, patches=patches.shape[1])
        if patches.shape[0] != embeddings.shape[0]:
            raise ValueError(f"embeddings and patches must describe the same faces: {embeddings.shape[0]} "
                             f"embeddings vs {patches.shape[0]} patch sets")
        check_same_device(embeddings=embeddings, patches=patches)
        if landmarks is not None:
            check_tensor("landmarks", landmarks, ndim=3)
            if landmarks.shape[0] != embeddings.shape[0] or landmarks.shape[-1] != 2:
                raise ValueError(f"landmarks must be ({embeddings.shape[0]}, L, 2), got {tuple(landmarks.shape)}")
            check_same_device(embeddings=embeddings, landmarks=landmarks)
        if lay_out:  # once per Faces: the kernels then gather candidate rows in place
            patches = patches.contiguous()
        check_all_finite("embeddings", embeddings)
        if not _defer_patch_check:
            check_all_finite("patches", patches)
        self.patches_checked = not _defer_patch_check  # else emd_rerank checks the candidates it uses
        self.embeddings = embeddings             # (n, D)
        self.patches = patches                   # (n, N, C), contiguous unless lay_out=False
        self.landmarks = landmarks               # (n, L, 2) or None
        self.grid = grid

    def __len__(self):
        return self.embeddings.shape[0]

    @property
    def device(self):
        return self.embeddings.device


def as_faces(name, value, defer_patch_check=False):
    """A Faces from value (a Faces, or an (embeddings, patches[, landmarks]) tuple for one call).

    defer_patch_check: a tuple's patches are not scanned for NaN/inf here; the caller checks the
    rows it uses (emd_rerank: the stage-1 candidates), so one call does not read the whole gallery.
    """
    if isinstance(value, Faces):
        return value
    if isinstance(value, (tuple, list)) and len(value) in (2, 3):
        try:
            # one call: no copy of the whole set; the candidates are gathered per query
            return Faces(*value, lay_out=False, _defer_patch_check=defer_patch_check)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    raise TypeError(f"{name} must be a Faces or an (embeddings, patches) tuple, got {type(value).__name__}")


@dataclass
class RerankResult:
    """indices (B, k) best-first; distance = alpha*emd + (1-alpha)*(1-cosine); all (B, k)."""
    indices: torch.Tensor
    distance: torch.Tensor
    emd: torch.Tensor
    cosine: torch.Tensor
    stage1_indices: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    flows: Optional[torch.Tensor] = None  # (B, k, n, m), in the order of `indices`
    n_fallback: int = 0                   # pairs whose weights fell back to uniform


def stage1_topk(q, g, k, exclude_self=False, chunk=65536):
    """Return (cosine (B, k), indices (B, k)) of the k most similar gallery rows, best first.

    q (B, D) query embeddings, g (G, D) gallery embeddings; exclude_self drops gallery row i for
    query i (q is the gallery). Works in chunks of the gallery: memory is O(B * (chunk + k)).
    """
    check_tensor("q", q, ndim=2)
    check_tensor("g", g, ndim=2)
    check_same_device(q=q, g=g)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"q (B, D) and g (G, D) must have the same D, got q {tuple(q.shape)} and g {tuple(g.shape)}")
    check_bool("exclude_self", exclude_self)
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError(f"exclude_self needs q to be the gallery g, got q {tuple(q.shape)} and g {tuple(g.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
    available = g.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k must be in [1, {available}] (the gallery faces g"
                         + (" less the query itself" if exclude_self else "") + f"), got {k}")
    check_int("chunk", chunk, hi=None)
    return topk_cosine(q, g, k, exclude_self, chunk)


@in_full_fp32  # cosines for ranking: no TF32 / bf16 matmul
def topk_cosine(q, g, k, exclude_self=False, chunk=65536):
    """stage1_topk without the checks, for callers that validated q (B, D), g (G, D) and k."""
    acc = accumulation_dtype(q, g)
    qn = unit_rows(q, acc)
    B = q.shape[0]
    best_s = torch.empty(B, 0, dtype=qn.dtype, device=q.device)
    best_i = torch.empty(B, 0, dtype=torch.int64, device=q.device)
    rows = torch.arange(B, device=q.device)
    for start in range(0, g.shape[0], chunk):
        gn = unit_rows(g[start:start + chunk].to(q.device), acc)
        sim = qn @ gn.T                                        # (B, chunk)
        if exclude_self:
            own = rows - start
            inside = (own >= 0) & (own < sim.shape[1])
            sim[rows[inside], own[inside]] = float("-inf")
        s, i = sim.topk(min(k, sim.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + start], 1).gather(1, order)
    return best_s, best_i


def check_candidates(candidates, n_queries, n_gallery, exclude_self):
    """Check emd_rerank's candidates (B, k) against B queries and a gallery of n_gallery; return k."""
    if exclude_self:
        raise ValueError("candidates and exclude_self cannot be combined: leave the query out of candidates")
    if not isinstance(candidates, torch.Tensor) or candidates.dtype != torch.int64:
        shown = f"{candidates.dtype} tensor" if isinstance(candidates, torch.Tensor) else type(candidates).__name__
        raise TypeError(f"candidates must be an int64 tensor (B, k) of gallery rows, got {shown}")
    if candidates.dim() != 2 or candidates.shape[0] != n_queries or candidates.shape[1] < 1:
        raise ValueError(f"candidates must have shape ({n_queries}, k) with k >= 1 (one row per query), "
                         f"got {tuple(candidates.shape)}")
    lo, hi = int(candidates.min()), int(candidates.max())
    if lo < 0 or hi >= n_gallery:
        raise ValueError(f"candidates must be gallery rows in [0, {n_gallery}), got values in [{lo}, {hi}]")
    return candidates.shape[1]


@in_full_fp32
def candidate_cosine(q, g, idx):
    """Cosine (B, k) of queries q (B, D) with their candidate gallery rows g[idx], idx (B, k)."""
    acc = accumulation_dtype(q, g)
    qn = unit_rows(q, acc)                                                   # (B, D)
    gn = unit_rows(g.index_select(0, idx.reshape(-1)), acc).reshape(*idx.shape, -1)   # (B, k, D)
    return (gn @ qn.unsqueeze(-1)).squeeze(-1)


def check_search(q, g, k, exclude_self):
    """The checks every two-stage search (emd_rerank, vit_rerank) makes of its Faces q, g and k."""
    if len(g) == 0:
        raise ValueError("gallery is empty")
    if len(q) == 0:
        raise ValueError("query is empty")
    check_same_device(query=q.embeddings, gallery=g.embeddings, gallery_patches=g.patches)
    if q.embeddings.shape[1] != g.embeddings.shape[1]:
        raise ValueError(f"query and gallery embeddings must have the same dim, got "
                         f"{q.embeddings.shape[1]} and {g.embeddings.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    available = len(g) - (1 if exclude_self else 0)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} gallery faces available"
                         + (" (exclude_self drops one)" if exclude_self else ""))
    if exclude_self and len(q) != len(g):
        raise ValueError(f"exclude_self needs the query set to be the gallery, got {len(q)} queries "
                         f"and {len(g)} gallery faces")


def emd_rerank(query, gallery, *, k=100, alpha=0.7, weighting="apc", eps=0.05, max_iter=100,
               tol=1e-6, exclude_self=False, return_flows=False, impl="auto", mode="auto",
               official=False, chunk_size=65536, candidates=None):
    """Return a RerankResult: the top-k gallery faces of each query, re-ranked by patch EMD.

    Stage 1: cosine top-k on embeddings (chunked over the gallery). Stage 2: distance =
    alpha * EMD + (1 - alpha) * (1 - cos), ascending. exclude_self drops gallery row i for query i
    (leave-one-out, query set == gallery). official=True reproduces the official DeepFace-EMD numerics
    (kernel domain, mean |dr| < 0.1 stop over the k candidates of a query, 1e-7 weight epsilon).
    candidates (B, k) int64 gallery rows: a stage 1 made elsewhere (fastface.gallery's FAISS index);
    stage 1 is skipped, k is candidates.shape[1] and .cosine is computed for these rows.
    """
    check_solver_args(eps, max_iter, tol, mode, chunk_size=chunk_size)
    for name, flag in (("official", official), ("exclude_self", exclude_self), ("return_flows", return_flows)):
        check_bool(name, flag)
    check_number("alpha", alpha, lo=0, hi=1)
    q = as_faces("query", query)
    g = as_faces("gallery", gallery, defer_patch_check=True)
    if candidates is not None:
        k = check_candidates(candidates, len(q), len(g), exclude_self)
    check_search(q, g, k, exclude_self)
    if q.patches.shape[2] != g.patches.shape[2]:
        raise ValueError(f"query and gallery patches must have the same channels C, got "
                         f"{q.patches.shape[2]} and {g.patches.shape[2]}")
    if official and weighting not in ("uniform", "apc", "sc"):
        raise ValueError(f"official=True supports the official code's weightings uniform/apc/sc, got {weighting!r}")
    validate_weighting(weighting, q.patches, g.patches, q.embeddings, g.embeddings,
                       q.landmarks, g.landmarks, q.grid, paired=False)
    impl = be.resolve_impl(impl, q.device)

    with torch.no_grad():
        if candidates is None:
            cos, idx = topk_cosine(q.embeddings, g.embeddings, k, exclude_self, chunk_size)   # (B, k)
        else:
            idx = candidates.to(q.device)
            cos = candidate_cosine(q.embeddings, g.embeddings, idx)                          # (B, k)
        def gather_candidates(rows):  # (len(rows), m, C) gallery patches; a one-off tuple's checked here
            cand = g.patches.index_select(0, rows)
            if not g.patches_checked:
                check_all_finite("gallery patches (of the stage-1 candidates)", cand)
            return cand

        B, n, C = q.patches.shape
        m = g.patches.shape[1]
        xq = q.patches
        mode_eff = "official" if official else mode
        acc = accumulation_dtype(xq, g.patches)   # float64 if either is: no fused kernel
        if not official and weighting in FUSED_WEIGHTINGS and fused_ok(impl, mode, acc, n, m, q.device):
            dt = xq.dtype if xq.dtype == g.patches.dtype else torch.float32   # half galleries read as they are
            xq = xq.to(dt).contiguous()
            gp = g.patches
            if gp.dtype == dt and gp.is_contiguous():
                if not g.patches_checked:
                    gather_candidates(idx.reshape(-1).unique())
                out = emd_pairs(xq, gp, idx, weighting, eps, max_iter, tol, MODES[mode],
                                return_flows, impl)
            else:  # gather only the candidates, then convert
                cand = gather_candidates(idx.reshape(-1)).to(dt).contiguous()
                out = emd_pairs(xq, cand, None, weighting, eps, max_iter, tol, MODES[mode],
                                return_flows, impl)
            emd_v, flows = out["emd"].reshape(B, k), out["flows"]
            n_iter, conv = out["n_iter"].reshape(B, k), out["converged"].reshape(B, k)
            n_fallback = int(out["fallback"].sum())
        else:
            cand = gather_candidates(idx.reshape(-1)).reshape(B, k, m, C)
            xb = xq.unsqueeze(1)                                                 # (B, 1, n, C)
            cost = patch_cost(xb, cand, impl=impl, check_finite=False)          # (B, k, n, m)
            ex = q.embeddings.unsqueeze(1)
            ey = g.embeddings.index_select(0, idx.reshape(-1)).reshape(B, k, -1)
            lx = None if q.landmarks is None else q.landmarks.unsqueeze(1)
            ly = None if g.landmarks is None else g.landmarks.index_select(0, idx.reshape(-1)).reshape(B, k, -1, 2)
            wx, wy, fell = patch_weights_ref(xb, cand, weighting, x_embedding=ex, y_embedding=ey,
                                             x_landmarks=lx, y_landmarks=ly, grid=q.grid,
                                             official=official)
            res = sinkhorn(cost, wx.to(cost.dtype), wy.to(cost.dtype), eps=eps, max_iter=max_iter,
                           tol=0.1 if official else tol, mode=mode_eff, return_plan=return_flows,
                           impl=impl, official_group=k)
            emd_v, flows, n_iter, conv = res.distance, res.plan, res.n_iter, res.converged
            n_fallback = int(fell.sum())
        emd_v = emd_v.to(cos.dtype)
        distance = alpha * emd_v + (1.0 - alpha) * (1.0 - cos)
        order = distance.argsort(dim=1, stable=True)
        take = lambda t: t.gather(1, order)  # noqa: E731
        result = RerankResult(indices=take(idx), distance=take(distance), emd=take(emd_v),
                              cosine=take(cos), stage1_indices=idx, n_iter=take(n_iter),
                              converged=take(conv), n_fallback=n_fallback)
        if return_flows:
            flows = flows.reshape(B, k, n, m)
            result.flows = flows.gather(1, order[:, :, None, None].expand(B, k, n, m))
    if q.single:
        for name in ("indices", "distance", "emd", "cosine", "stage1_indices", "n_iter", "converged", "flows"):
            value = getattr(result, name)
            if value is not None:
                setattr(result, name, value[0])
    return result


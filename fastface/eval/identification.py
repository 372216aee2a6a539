"""DeepFace-EMD's identification protocol: stage 1 (cosine) vs stage 2 (EMD re-rank) on a query set.

Stage 1 orders the gallery by cosine, stage 2 re-ranks its top k by alpha*EMD + (1-alpha)*(1-cos);
"max precision" is the P@1 of a perfect re-ranking of those k (a relevant face among them).
Two protocols score the rankings:
- "strict" (default): each query's top-k list only (ranks past k are misses); leave-one-out
  removes the query from the gallery and from its relevant set R.
- "official": as the public DeepFace-EMD code (test_face.py, utils/metrics.py), whose numbers the
  dissertation's tables report: the whole ranking is scored (the re-ranked top k, then the stage-1
  order of the rest); in leave-one-out the query stays in the gallery, pushed to the end of the
  ranking, and counts in R. (Occluded queries are searched in the clean gallery with their own clean
  original kept: that is how jobs.run_identify calls this function under "official".)
"""
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data._args import as_int, as_int_tensor
from .metrics import retrieval_metrics, retrieval_per_query, summarise

PROTOCOLS = ("strict", "official")


def pool_patches(fmap, grid):
    """Average-pool feature maps (N, C, H, W) to a grid x grid patch map (4x4 = pooled 8x8)."""
    if not isinstance(fmap, torch.Tensor):
        raise TypeError(f"fmap must be a torch.Tensor (N, C, H, W), got {type(fmap).__name__}")
    if fmap.dim() != 4:
        raise ValueError(f"fmap must be (N, C, H, W), got {tuple(fmap.shape)}")
    grid = as_int("grid", grid, min_value=1)
    h, w = fmap.shape[-2:]
    if grid == h == w:
        return fmap
    if h % grid or w % grid:
        raise ValueError(f"grid must divide the {h}x{w} feature map, got {grid}")
    return F.avg_pool2d(fmap, (h // grid, w // grid))


def extract_features(encoder, images, batch_size=128, progress=False, desc="extract"):
    """Run encoder.encode over images (N, C, S, S) in batches; return (embeddings, patch maps)."""
    embs, maps = [], []
    for s in tqdm(range(0, images.shape[0], batch_size), disable=not progress, desc=desc):
        e, m = encoder.encode(images[s:s + batch_size], batch_size=batch_size)
        embs.append(e)
        maps.append(m)
    return torch.cat(embs), torch.cat(maps)


def landmarks_to_grid(landmarks68, image_size, grid):
    """Pixel landmarks (N, 68, 2) of S x S images -> patch-grid units (for weighting='lmk')."""
    return landmarks68 * (grid / float(image_size))


def evaluate_identification(query, gallery, query_labels, gallery_labels, *, k=100, alpha=0.7,
                            weighting="apc", eps=0.05, max_iter=100, exclude_self=False,
                            batch_size=64, impl="auto", emd_stage1=False, progress=False,
                            keep_flows=0, protocol="strict", reranker=None):
    """Return a dict with stage-1 and stage-2 metrics, timings and each query's top k of both stages.

    query, gallery: fastface.Faces; *_labels: (n,) int identities. exclude_self: leave-one-out
    (query i is gallery row i). emd_stage1=True ranks the whole gallery by EMD alone (Table 5.3's
    "EMD at stage 1"; alpha is ignored) instead of re-ranking a cosine top-k. keep_flows=N keeps
    the flows of the first N queries (result["flows"]). protocol: "strict" or "official" (module doc).
    reranker: a FaceViT re-ranks instead of EMD (fastface.vit_rerank; weighting, eps, max_iter, impl
    and keep_flows do not apply, stage2_emd holds its distance 1 - s).
    Per query (B, k): stage1_indices / stage1_cosine, stage2_indices / stage2_distance /
    stage2_emd / stage2_cosine.
    """
    from ..ops.rerank import Faces, as_faces, topk_cosine
    from ..reference import unit_rows
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if reranker is not None:
        from ..ops.vit_rerank import check_vit_model
        check_vit_model(reranker, "reranker")
        if emd_stage1:
            raise ValueError("emd_stage1 ranks the whole gallery by EMD: it takes no reranker")
    query, gallery = as_faces("query", query), as_faces("gallery", gallery)
    k = as_int("k", k, min_value=1)
    batch_size = as_int("batch_size", batch_size, min_value=1)
    keep_flows = as_int("keep_flows", keep_flows, min_value=0)
    qlab = as_int_tensor("query_labels", query_labels).cpu()
    glab = as_int_tensor("gallery_labels", gallery_labels).cpu()
    if qlab.shape != (len(query),) or glab.shape != (len(gallery),):
        raise ValueError(f"labels must be ({len(query)},) and ({len(gallery)},), got "
                         f"{tuple(qlab.shape)} and {tuple(glab.shape)}")
    if exclude_self and len(query) != len(gallery):
        raise ValueError(f"exclude_self needs query == gallery, got {len(query)} queries and {len(gallery)} gallery faces")
    n_gallery = len(gallery) - (1 if exclude_self else 0)
    if n_gallery < 1:
        raise ValueError("the gallery needs at least one face other than the query")
    k = min(k, n_gallery)
    t0 = time.perf_counter()
    cos1, st1 = topk_cosine(query.embeddings, gallery.embeddings, k, exclude_self=exclude_self)
    t_stage1 = time.perf_counter() - t0

    official = protocol == "official"
    gn = unit_rows(gallery.embeddings) if official else None
    parts = {key: [] for key in ("indices", "distance", "emd", "cosine")}
    per1, per2, flows, t_stage2 = [], [], [], 0.0
    kk = n_gallery if emd_stage1 else k
    for s in tqdm(range(0, len(query), batch_size), disable=not progress,
                  desc="EMD stage 1" if emd_stage1 else "EMD re-rank" if reranker is None else "ViT re-rank"):
        qb = Faces(query.embeddings[s:s + batch_size], query.patches[s:s + batch_size],
                   None if query.landmarks is None else query.landmarks[s:s + batch_size], grid=query.grid)
        want = s < keep_flows and reranker is None
        t0 = time.perf_counter()
        if exclude_self:  # leave-one-out inside a batch: shift the self index to this batch's rows
            res = _rerank_loo(qb, gallery, s, kk, alpha, weighting, eps, max_iter, impl, want, emd_stage1, reranker)
        else:
            res = _rerank(qb, gallery, kk, 1.0 if emd_stage1 else alpha, weighting, eps, max_iter, impl, want,
                          reranker)
        t_stage2 += time.perf_counter() - t0
        parts["indices"].append(res.indices[:, :k].cpu())
        parts["distance"].append(res.distance[:, :k].cpu())
        parts["emd"].append(res.emd[:, :k].cpu())
        parts["cosine"].append(res.cosine[:, :k].cpu())
        if official:   # score whole rankings: re-ranked candidates, then the stage-1 order of the rest
            full1 = _stage1_full(unit_rows(qb.embeddings), gn, s if exclude_self else None)   # (b, N)
            full2 = _append_tail(res.indices.cpu(), full1)
            rows = slice(s, s + len(qb))
            per1.append(retrieval_per_query(full1, qlab[rows], glab))
            per2.append(retrieval_per_query(full2, qlab[rows], glab))
        if want:
            flows.append(res.flows[:keep_flows - s].cpu())
    st2 = torch.cat(parts["indices"])
    if official:
        m1, m2 = (summarise({key: torch.cat([p[key] for p in per]) for key in per[0]}) for per in (per1, per2))
    else:
        m1 = retrieval_metrics(st1.cpu(), qlab, glab, exclude_self=exclude_self)
        m2 = retrieval_metrics(st2, qlab, glab, exclude_self=exclude_self)
    hit = (glab[st1.cpu()] == qlab[:, None]).any(1).float().mean().item()
    out = {"stage1": m1, "stage2": m2, "max_precision": hit, "k": k, "protocol": protocol,
           "n_queries": len(query), "n_gallery": len(gallery),
           "time_stage1_s": t_stage1, "time_stage2_s": t_stage2,
           "ms_per_query_stage2": 1e3 * t_stage2 / max(1, len(query)),
           "stage1_indices": st1.cpu(), "stage1_cosine": cos1.cpu(), "stage2_indices": st2,
           "stage2_distance": torch.cat(parts["distance"]), "stage2_emd": torch.cat(parts["emd"]),
           "stage2_cosine": torch.cat(parts["cosine"])}
    if flows:
        out["flows"] = torch.cat(flows)
    return out


def _stage1_full(qn, gn, self_start=None):
    """The whole gallery in stage-1 (cosine) order (b, N); with self_start, query row i's own gallery
    row self_start + i goes last (the official code sets its similarity to -100)."""
    sim = (qn @ gn.T).cpu()                                                    # (b, N)
    if self_start is not None:
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + self_start] = float("-inf")
    return sim.argsort(dim=1, descending=True, stable=True)


def _append_tail(head, full):
    """head (b, h) gallery rows first, then the rows of full (b, N) not in head, in full's order."""
    seen = torch.zeros(full.shape, dtype=torch.bool)
    seen.scatter_(1, head, True)                                               # (b, N) by gallery row
    tail = full[~seen.gather(1, full)].view(full.shape[0], -1)
    return torch.cat([head, tail], 1)


def _rerank(qb, gallery, k, alpha, weighting, eps, max_iter, impl, want, reranker=None):
    """Stage 2 of one batch of queries: emd_rerank, or vit_rerank with a FaceViT reranker."""
    if reranker is not None:
        from ..ops.vit_rerank import vit_rerank
        return vit_rerank(qb, gallery, reranker, k=k, alpha=alpha)
    from ..ops.rerank import emd_rerank
    return emd_rerank(qb, gallery, k=k, alpha=alpha, weighting=weighting, eps=eps, max_iter=max_iter, impl=impl,
                      return_flows=want)


def _rerank_loo(qb, gallery, start, k, alpha, weighting, eps, max_iter, impl, want, emd_stage1, reranker=None):
    """Leave-one-out for query rows start.. of the gallery: exclude each query's own gallery row."""
    # the rerankers' exclude_self assume query i == gallery i; for a batch at offset `start` we mask by
    # asking for k + 1 candidates and dropping the self index.
    res = _rerank(qb, gallery, min(k + 1, len(gallery)), 1.0 if emd_stage1 else alpha, weighting, eps, max_iter,
                  impl, want, reranker)
    self_idx = torch.arange(start, start + len(qb), device=res.indices.device)[:, None]
    keep = res.indices != self_idx
    # every row keeps exactly k entries (the self row is dropped, or the last one when absent)
    keep &= keep.cumsum(1) <= k
    idx = res.indices[keep].view(len(qb), k)
    flows = res.flows[keep].view(len(qb), k, *res.flows.shape[2:]) if want else None
    return type(res)(indices=idx, distance=res.distance[keep].view(len(qb), k), emd=res.emd[keep].view(len(qb), k),
                     cosine=res.cosine[keep].view(len(qb), k), stage1_indices=res.stage1_indices,
                     n_iter=res.n_iter, converged=res.converged, flows=flows, n_fallback=res.n_fallback)

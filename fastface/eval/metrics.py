"""Face-identification and verification metrics (dissertation §5.1; Musgrave et al. 2020; LFW; MegaFace).

Retrieval metrics take, per query, the labels of the retrieved gallery items in rank order
(`ranked` (B, K)), the query labels (B,) and R (B,), the number of gallery items sharing the
query's label. Ranks past K count as misses; queries with R = 0 are left out (and counted).
"""
import torch


def _as_long(name, t):
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise TypeError(f"{name} must hold integer labels, got {t.dtype}")
    return t.long()


def _relevance(ranked, query_labels):
    ranked = _as_long("ranked", ranked)
    query_labels = _as_long("query_labels", query_labels)
    if ranked.dim() != 2 or query_labels.shape != ranked.shape[:1]:
        raise ValueError(f"ranked must be (B, K) and query_labels (B,), got {tuple(ranked.shape)} "
                         f"and {tuple(query_labels.shape)}")
    return ranked == query_labels.unsqueeze(1)  # (B, K) bool


def _valid(n_relevant, B):
    R = _as_long("n_relevant", n_relevant)
    if R.shape != (B,):
        raise ValueError(f"n_relevant must be ({B},), got {tuple(R.shape)}")
    return R, R > 0


def precision_at_1(ranked, query_labels, n_relevant=None):
    """Return the fraction of queries whose first retrieved item shares their label."""
    rel = _relevance(ranked, query_labels)
    keep = torch.ones(rel.shape[0], dtype=torch.bool) if n_relevant is None else _valid(n_relevant, rel.shape[0])[1]
    if rel.shape[1] == 0 or not bool(keep.any()):
        return float("nan")
    return rel[keep, 0].float().mean().item()


def r_precision(ranked, query_labels, n_relevant):
    """Return the mean over queries of (relevant items among the top R) / R."""
    rel = _relevance(ranked, query_labels)
    R, keep = _valid(n_relevant, rel.shape[0])
    ranks = torch.arange(1, rel.shape[1] + 1).unsqueeze(0)
    hits = (rel & (ranks <= R.unsqueeze(1))).sum(1).float()
    return (hits[keep] / R[keep].float()).mean().item() if bool(keep.any()) else float("nan")


def map_at_r(ranked, query_labels, n_relevant):
    """Return MAP@R: mean over queries of (1/R) * sum_{i <= R} precision@i * rel(i)."""
    rel = _relevance(ranked, query_labels)
    R, keep = _valid(n_relevant, rel.shape[0])
    ranks = torch.arange(1, rel.shape[1] + 1).unsqueeze(0)
    within = rel & (ranks <= R.unsqueeze(1))
    precision_at_i = rel.float().cumsum(1) / ranks
    ap = (precision_at_i * within).sum(1) / R.clamp_min(1).float()
    return ap[keep].mean().item() if bool(keep.any()) else float("nan")


def retrieval_metrics(ranked_indices, query_labels, gallery_labels, exclude_self=False):
    """Return dict(p_at_1, r_precision, map_at_r, n_queries, n_skipped) for ranked gallery indices (B, K).

    R per query is counted from gallery_labels; exclude_self (query i is gallery item i) removes
    the query itself from its relevant set.
    """
    gallery_labels = _as_long("gallery_labels", gallery_labels)
    query_labels = _as_long("query_labels", query_labels)
    ranked_indices = _as_long("ranked_indices", ranked_indices)
    ranked = gallery_labels[ranked_indices]
    R = (gallery_labels.unsqueeze(0) == query_labels.unsqueeze(1)).sum(1)
    if exclude_self:
        R = R - 1
    return dict(p_at_1=precision_at_1(ranked, query_labels, R), r_precision=r_precision(ranked, query_labels, R),
                map_at_r=map_at_r(ranked, query_labels, R), n_queries=int((R > 0).sum()),
                n_skipped=int((R <= 0).sum()))


def _best_threshold(scores, same):
    """Threshold maximising accuracy of (scores >= t) == same, over the observed scores."""
    cands = torch.cat([scores.unique(), scores.max().reshape(1) + 1])
    acc = ((scores.unsqueeze(0) >= cands.unsqueeze(1)) == same.unsqueeze(0)).float().mean(1)
    return cands[acc.argmax()].item()


def verification_accuracy(scores, same, n_folds=10):
    """Return dict(accuracy, std, threshold): LFW-style k-fold accuracy with the best threshold.

    scores (N,) similarities (higher = same person), same (N,) bool. Folds are contiguous blocks (as
    LFW's pair lists); the threshold of each fold is chosen on the other folds.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    same = torch.as_tensor(same).bool()
    if scores.shape != same.shape or scores.dim() != 1:
        raise ValueError(f"scores and same must be (N,), got {tuple(scores.shape)} and {tuple(same.shape)}")
    if not 2 <= n_folds <= scores.shape[0]:
        raise ValueError(f"n_folds must be in [2, N={scores.shape[0]}], got {n_folds}")
    folds = torch.arange(scores.shape[0]) * n_folds // scores.shape[0]
    accs, ths = [], []
    for f in range(n_folds):
        test = folds == f
        t = _best_threshold(scores[~test], same[~test])
        accs.append(((scores[test] >= t) == same[test]).double().mean().item())
        ths.append(t)
    accs = torch.tensor(accs)
    return dict(accuracy=accs.mean().item(), std=accs.std(unbiased=False).item(),
                threshold=float(sum(ths) / len(ths)))


def tpr_at_fpr(scores, same, fprs=(1e-3, 1e-2, 1e-1)):
    """Return {fpr: tpr}: the true-positive rate at the lowest threshold whose false-positive rate <= fpr."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    same = torch.as_tensor(same).bool()
    neg, pos = scores[~same], scores[same]
    if neg.numel() == 0 or pos.numel() == 0:
        raise ValueError("tpr_at_fpr needs both positive and negative pairs")
    out = {}
    for target in fprs:
        cands = torch.cat([scores.unique(), scores.max().reshape(1) + 1])
        fpr = (neg.unsqueeze(0) >= cands.unsqueeze(1)).double().mean(1)
        ok = cands[fpr <= target]
        t = ok.min()
        out[target] = (pos >= t).double().mean().item()
    return out


def identification_with_distractors(probe_embeddings, probe_labels, distractor_embeddings):
    """Return the MegaFace-style rank-1 rate: for every ordered pair (a, b) of probe images of one
    identity, b is hidden among the distractors and a must rank it first (cosine similarity)."""
    from ..reference import unit_rows
    p = unit_rows(torch.as_tensor(probe_embeddings))
    d = unit_rows(torch.as_tensor(distractor_embeddings))
    labels = _as_long("probe_labels", probe_labels)
    if p.shape[0] != labels.shape[0] or p.shape[1] != d.shape[1]:
        raise ValueError(f"probe_embeddings (P, D), probe_labels (P,) and distractor_embeddings (M, D) "
                         f"disagree: {tuple(p.shape)}, {tuple(labels.shape)}, {tuple(d.shape)}")
    best_distractor = (p @ d.T).amax(1) if d.shape[0] else torch.full((p.shape[0],), -2.0, dtype=p.dtype)
    sim = p @ p.T
    pairs = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~torch.eye(p.shape[0], dtype=torch.bool)
    if not bool(pairs.any()):
        raise ValueError("identification_with_distractors needs an identity with two probe images")
    wins = sim > best_distractor.unsqueeze(1)
    return wins[pairs].double().mean().item()

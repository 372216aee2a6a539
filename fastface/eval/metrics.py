"""Face-identification and verification metrics (dissertation §5.1; Musgrave et al. 2020; LFW; MegaFace).

Retrieval metrics take, per query, the labels of the retrieved gallery items in rank order
(`ranked` (B, K)), the query labels (B,) and R (B,), the number of gallery items sharing the
query's label. Ranks past K count as misses; queries with R = 0 are left out (and counted).
"""
import torch

from .._checks import check_bool
from ..data._args import as_float_tensor, as_int, as_int_tensor, as_real_tensor

# Blocked similarity searches keep at most this many scores alive at once (128 MB of float64).
BLOCK_ELEMENTS = 1 << 24


def _as_long(name, t):
    return as_int_tensor(name, t)


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
    if R.numel() and int(R.min()) < 0:
        raise ValueError(f"n_relevant must be >= 0 (a count of gallery items), got min {int(R.min())}")
    return R, R > 0


def _per_query(rel, R):
    """Per-query P@1, R-Precision and AP@R of (B, K) relevance with R (B,) relevant items each."""
    ranks = torch.arange(1, rel.shape[1] + 1).unsqueeze(0)                     # (1, K)
    within = rel & (ranks <= R.unsqueeze(1))                                    # (B, K)
    p1 = rel[:, 0].double() if rel.shape[1] else torch.zeros(rel.shape[0], dtype=torch.float64)
    rp = within.sum(1).double() / R.clamp_min(1).double()
    ap = (rel.double().cumsum(1) / ranks * within).sum(1) / R.clamp_min(1).double()
    return p1, rp, ap


def precision_at_1(ranked, query_labels, n_relevant=None):
    """Return the fraction of queries whose first retrieved item shares their label (none
    retrieved, K = 0: a miss, as every rank past K)."""
    rel = _relevance(ranked, query_labels)
    keep = torch.ones(rel.shape[0], dtype=torch.bool) if n_relevant is None else _valid(n_relevant, rel.shape[0])[1]
    if not bool(keep.any()):
        return float("nan")
    return _per_query(rel, torch.ones(rel.shape[0], dtype=torch.int64))[0][keep].mean().item()


def r_precision(ranked, query_labels, n_relevant):
    """Return the mean over queries of (relevant items among the top R) / R."""
    rel = _relevance(ranked, query_labels)
    R, keep = _valid(n_relevant, rel.shape[0])
    return _per_query(rel, R)[1][keep].mean().item() if bool(keep.any()) else float("nan")


def map_at_r(ranked, query_labels, n_relevant):
    """Return MAP@R: mean over queries of (1/R) * sum_{i <= R} precision@i * rel(i)."""
    rel = _relevance(ranked, query_labels)
    R, keep = _valid(n_relevant, rel.shape[0])
    return _per_query(rel, R)[2][keep].mean().item() if bool(keep.any()) else float("nan")


def retrieval_per_query(ranked_indices, query_labels, gallery_labels, exclude_self=False):
    """Per-query metrics of ranked gallery indices (B, K): dict of (B,) tensors p_at_1, r_precision,
    map_at_r (float64) and valid (bool: R > 0). R per query is counted from gallery_labels;
    exclude_self (query i is gallery item i) removes the query itself from its relevant set."""
    gallery_labels = _as_long("gallery_labels", gallery_labels)
    query_labels = _as_long("query_labels", query_labels)
    ranked_indices = _as_long("ranked_indices", ranked_indices)
    check_bool("exclude_self", exclude_self)
    if gallery_labels.dim() != 1:
        raise ValueError(f"gallery_labels must be (G,), got shape {tuple(gallery_labels.shape)}")
    if query_labels.dim() != 1 or ranked_indices.dim() != 2 or ranked_indices.shape[0] != query_labels.shape[0]:
        raise ValueError(f"ranked_indices must be (B, K) and query_labels (B,), got "
                         f"{tuple(ranked_indices.shape)} and {tuple(query_labels.shape)}")
    G = gallery_labels.shape[0]
    if ranked_indices.numel() and (int(ranked_indices.min()) < 0 or int(ranked_indices.max()) >= G):
        raise ValueError(f"ranked_indices must be gallery rows in [0, {G - 1}], got values in "
                         f"[{int(ranked_indices.min())}, {int(ranked_indices.max())}]")
    rel = gallery_labels[ranked_indices] == query_labels.unsqueeze(1)          # (B, K)
    R = _count_labels(gallery_labels, query_labels) - (1 if exclude_self else 0)
    p1, rp, ap = _per_query(rel, R.clamp_min(0))
    return dict(p_at_1=p1, r_precision=rp, map_at_r=ap, valid=R > 0)


def _count_labels(gallery_labels, query_labels):
    """(B,) number of gallery items carrying each query's label (sort-based, O((G + B) log G))."""
    sorted_labels = gallery_labels.sort().values
    return (torch.searchsorted(sorted_labels, query_labels, right=True)
            - torch.searchsorted(sorted_labels, query_labels, right=False))


def summarise(per_query):
    """Mean metrics over the valid queries of retrieval_per_query's output (or a concatenation)."""
    keep = per_query["valid"]
    mean = (lambda v: v[keep].mean().item()) if bool(keep.any()) else (lambda v: float("nan"))
    return dict(p_at_1=mean(per_query["p_at_1"]), r_precision=mean(per_query["r_precision"]),
                map_at_r=mean(per_query["map_at_r"]), n_queries=int(keep.sum()), n_skipped=int((~keep).sum()))


def retrieval_metrics(ranked_indices, query_labels, gallery_labels, exclude_self=False):
    """Return dict(p_at_1, r_precision, map_at_r, n_queries, n_skipped) for ranked gallery indices (B, K).

    R per query is counted from gallery_labels; exclude_self (query i is gallery item i) removes
    the query itself from its relevant set. Queries with R = 0 are skipped (and counted).
    """
    return summarise(retrieval_per_query(ranked_indices, query_labels, gallery_labels, exclude_self))


def _scores_and_same(scores, same):
    scores = as_float_tensor("scores", scores, ndim=1)
    same_t = torch.as_tensor(same)
    if same_t.dtype != torch.bool:
        if same_t.dtype.is_floating_point or same_t.dtype.is_complex or (
                same_t.numel() and not bool(((same_t == 0) | (same_t == 1)).all())):
            raise TypeError(f"same must be bool (or 0/1 integers), got {same_t.dtype}"
                            + ("" if same_t.dtype.is_floating_point else " with values other than 0 and 1"))
        same_t = same_t.bool()
    if same_t.shape != scores.shape:
        raise ValueError(f"scores and same must both be (N,), got {tuple(scores.shape)} and {tuple(same_t.shape)}")
    return scores, same_t


def _roc_counts(scores, same):
    """Sort-based ROC: thresholds (T,) ascending = the distinct scores then max + 1, and for each
    (predict same iff score >= threshold) the true positives and false positives (T,) int64."""
    values, inverse = torch.unique(scores, sorted=True, return_inverse=True)          # O(N log N)
    pos = torch.zeros(values.shape[0] + 1, dtype=torch.int64).index_add_(0, inverse, same.long())
    neg = torch.zeros(values.shape[0] + 1, dtype=torch.int64).index_add_(0, inverse, (~same).long())
    tp = pos.flip(0).cumsum(0).flip(0)      # items with score >= threshold; the last (max + 1) has 0
    fp = neg.flip(0).cumsum(0).flip(0)
    top = values[-1:] + 1 if values.numel() else torch.zeros(1, dtype=scores.dtype)
    return torch.cat([values, top]), tp, fp


def _best_threshold(scores, same):
    """Lowest threshold maximising the accuracy of (scores >= t) == same, over the observed scores."""
    thresholds, tp, fp = _roc_counts(scores, same)
    correct = tp + (int((~same).sum()) - fp)                     # true positives + true negatives
    return thresholds[int(correct.argmax())].item()             # argmax: the first (lowest) best


def verification_accuracy(scores, same, n_folds=10):
    """Return dict(accuracy, std, threshold): LFW-style k-fold accuracy with the best threshold.

    scores (N,) finite similarities (higher = same person), same (N,) bool. Folds are contiguous
    blocks (as LFW's pair lists); the threshold of each fold is chosen on the other folds.
    O(N log N) time, O(N) memory.
    """
    scores, same = _scores_and_same(scores, same)
    n_folds = as_int("n_folds", n_folds)
    if not 2 <= n_folds <= scores.shape[0]:
        raise ValueError(f"n_folds must be in [2, N={scores.shape[0]}], got {n_folds}")
    folds = torch.arange(scores.shape[0]) * n_folds // scores.shape[0]
    accs, ths = [], []
    for f in range(n_folds):
        test = folds == f
        t = _best_threshold(scores[~test], same[~test])
        accs.append(((scores[test] >= t) == same[test]).double().mean().item())
        ths.append(t)
    accs = torch.tensor(accs, dtype=torch.float64)
    return dict(accuracy=accs.mean().item(), std=accs.std(unbiased=False).item(),
                threshold=float(sum(ths) / len(ths)))


def tpr_at_fpr(scores, same, fprs=(1e-3, 1e-2, 1e-1)):
    """Return {fpr: tpr}: the true-positive rate at the lowest threshold whose false-positive rate
    <= fpr. scores (N,) finite, same (N,) bool. O(N log N) time, O(N) memory."""
    scores, same = _scores_and_same(scores, same)
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_neg == 0 or n_pos == 0:
        raise ValueError(f"tpr_at_fpr needs both positive and negative pairs in same, got {n_pos} "
                         f"positive and {n_neg} negative")
    if isinstance(fprs, (int, float, str)) or not hasattr(fprs, "__iter__"):
        raise TypeError(f"fprs must be a sequence of rates in [0, 1], got {type(fprs).__name__}")
    fprs = list(fprs)
    targets = as_float_tensor("fprs", fprs, ndim=1).tolist()
    if any(not 0 <= t <= 1 for t in targets):
        raise ValueError(f"fprs must be rates in [0, 1], got {fprs}")
    thresholds, tp, fp = _roc_counts(scores, same)
    fpr = fp.double() / n_neg                                   # non-increasing in the threshold
    out = {}
    for target, key in zip(targets, fprs):
        first_ok = int(torch.searchsorted(-fpr, torch.tensor([-target], dtype=torch.float64)))
        out[key] = tp[first_ok].item() / n_pos
    return out


def unit_features(name, t, dim=None):
    """Finite features (N, D) (tensor, array or list) -> unit rows in float64 (zero rows stay zero)."""
    from ..reference import unit_rows
    t = as_float_tensor(name, t, ndim=2)
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {tuple(t.shape)}")
    return unit_rows(t)


def feature_rows(name, t, dim):
    """A large (M, dim) feature set kept as given (no float64 copy); checked block by block later."""
    t = as_real_tensor(name, t)
    if t.dim() == 1 and t.numel() == 0:   # an empty list: no rows
        t = t.reshape(0, dim)
    if t.dim() != 2 or t.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {tuple(t.shape)}")
    return t


def block_rows(columns):
    """Rows per block so that a (rows, columns) float64 block stays within BLOCK_ELEMENTS."""
    return max(1, BLOCK_ELEMENTS // max(1, columns))


def best_similarity(q, d, name="distractors"):
    """(P,) max over rows of d (M, D) of cosine(q (P, D) unit rows, d), -2 (below every cosine) when
    d is empty. d is checked, normalised and compared in blocks: memory O((P + D) * block)."""
    from ..reference import unit_rows
    best = torch.full((q.shape[0],), -2.0, dtype=q.dtype)
    step = block_rows(max(q.shape[0], d.shape[1]))
    for s in range(0, d.shape[0], step):
        block = d[s:s + step].to(q.dtype)                                      # (b, D)
        if not bool(torch.isfinite(block).all()):
            raise ValueError(f"{name} must be finite, got NaN or inf in rows {s}..{s + block.shape[0] - 1}")
        best = torch.maximum(best, (q @ unit_rows(block).T).amax(1))
    return best


def identification_with_distractors(probe_embeddings, probe_labels, distractor_embeddings):
    """Return the MegaFace-style rank-1 rate: for every ordered pair (a, b) of probe images of one
    identity, b is hidden among the distractors and a must rank it first (cosine similarity).
    Works in blocks: memory O(P * block + P) whatever the number of distractors."""
    p = unit_features("probe_embeddings", probe_embeddings)
    d = feature_rows("distractor_embeddings", distractor_embeddings, p.shape[1])
    labels = _as_long("probe_labels", probe_labels)
    if labels.shape != (p.shape[0],):
        raise ValueError(f"probe_labels must be ({p.shape[0]},) like probe_embeddings {tuple(p.shape)}, "
                         f"got {tuple(labels.shape)}")
    best_distractor = best_similarity(p, d, "distractor_embeddings")            # (P,)
    wins = pairs = 0
    step = block_rows(p.shape[0])
    for s in range(0, p.shape[0], step):                                        # probe rows a in blocks
        rows = torch.arange(s, min(s + step, p.shape[0]))
        same = (labels[rows, None] == labels[None, :])                          # (b, P)
        same[torch.arange(len(rows)), rows] = False
        sim = p[rows] @ p.T                                                     # (b, P)
        pairs += int(same.sum())
        wins += int((same & (sim > best_distractor[rows, None])).sum())
    if pairs == 0:
        raise ValueError("identification_with_distractors needs an identity with two probe images, "
                         f"got {labels.unique().numel()} distinct probe_labels for {labels.numel()} probes")
    return wins / pairs

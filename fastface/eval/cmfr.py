"""Cross-model face recognition (CMFR, R³AN paper Sec. 5): protocol, tables and the Fig. 4 figure.

A probe image a queries a gallery that holds another image b of its identity hidden among
distractors (MegaFace-style top-1 with distractors, as `identification_with_distractors`), but
the query side and the gallery side may come from different feature models:
- probe mode (Tables 3-5): query = T(source feature), gallery and distractors = target features;
- gallery mode (Table 6): query = target feature, gallery and distractors = T(source features).
P@1 is the same query against every other probe image (gallery side) plus the distractors.
"""
import torch

from .metrics import _as_long, best_similarity, block_rows, feature_rows, unit_features


def cross_identification(query, gallery, labels, distractors):
    """Return dict(top1, p_at_1) for P probe images seen from two sides.

    query (P, D): query-side features; gallery (P, D): gallery-side features of the same images;
    labels (P,) identities; distractors (M, D) gallery-side features of other identities.
    top1: over ordered same-identity pairs (a, b), a != b, the rate at which query[a] is closer
    (cosine) to gallery[b] than to every distractor. p_at_1: the rate at which query[a]'s nearest
    item among gallery[b != a] and the distractors has a's identity.
    Works in blocks: memory O(P * block) whatever the number of distractors.
    """
    q = unit_features("query", query)
    g = unit_features("gallery", gallery, q.shape[1])
    d = feature_rows("distractors", distractors, q.shape[1])
    labels = _as_long("labels", labels)
    if labels.shape != (q.shape[0],) or g.shape[0] != q.shape[0]:
        raise ValueError(f"labels must be (P,) with query and gallery (P, D): got labels "
                         f"{tuple(labels.shape)}, query {tuple(q.shape)}, gallery {tuple(g.shape)}")
    best_d = best_similarity(q, d, "distractors")                               # (P,)
    n_pairs = wins = hits = n_keep = 0
    step = block_rows(q.shape[0])
    for s in range(0, q.shape[0], step):                                        # query rows in blocks
        rows = torch.arange(s, min(s + step, q.shape[0]))
        own = (torch.arange(len(rows)), rows)
        pairs = labels[rows, None] == labels[None, :]                           # (b, P)
        pairs[own] = False
        sim = q[rows] @ g.T                                                     # (b, P)
        n_pairs += int(pairs.sum())
        wins += int((pairs & (sim > best_d[rows, None])).sum())
        sim[own] = -3.0
        best_g, arg = sim.max(1)
        keep = pairs.any(1)
        hit = (labels[arg] == labels[rows]) & (best_g > best_d[rows])
        hits += int((hit & keep).sum())
        n_keep += int(keep.sum())
    if n_pairs == 0:
        raise ValueError("cross_identification needs an identity with two probe images")
    return {"top1": wins / n_pairs, "p_at_1": hits / n_keep}


def cmfr_scores(source, target, labels, transform=None, mode="probe"):
    """CMFR accuracy. source / target: dicts with "probe" (P, D*) and "distractors" (M, D*) features
    of the same images by the source and the target model; transform: source -> target features
    (a callable on (N, Ds) tensors; None = compare raw features); mode "probe" or "gallery"."""
    if mode not in ("probe", "gallery"):
        raise ValueError(f"mode must be 'probe' or 'gallery', got {mode!r}")
    t = transform if transform is not None else (lambda f: f)
    if mode == "probe":
        return cross_identification(t(source["probe"]), target["probe"], labels, target["distractors"])
    return cross_identification(target["probe"], t(source["probe"]), labels, t(source["distractors"]))


def markdown_table(headers, rows, digits=2, percent=True):
    """A markdown table; float cells as percentages (x100) with `digits` decimals."""
    def cell(v):
        if isinstance(v, float):
            return "n/a" if v != v else f"{100 * v:.{digits}f}" if percent else f"{v:.{digits}f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@torch.no_grad()
def reconstruction_figure(model, features, images, path, columns=4):
    """Write Fig. 4: pairs (real | reconstructed G(x)) in a grid; returns path.

    features (N, Ds) source features; images (N, C, 56, 56) the real faces, uint8 or float in [0, 1]."""
    from ..viz import save_png
    if not hasattr(model, "reconstruct"):
        raise TypeError(f"model must be an R3AN (with a generator), got {type(model).__name__}")
    real = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    dev = next(model.parameters()).device
    fake = (model.reconstruct(torch.as_tensor(features).float().to(dev)).cpu() + 1) / 2
    n, C, H, W = real.shape
    if fake.shape != real.shape:
        raise ValueError(f"images must be {tuple(fake.shape)} like the reconstructions, got {tuple(real.shape)}")
    rows = (n + columns - 1) // columns
    pad = 2
    canvas = torch.ones(C, rows * (H + pad) + pad, columns * (2 * W + 3 * pad) + pad)
    for i in range(n):
        r, c = divmod(i, columns)
        y0, x0 = pad + r * (H + pad), pad + c * (2 * W + 3 * pad)
        canvas[:, y0:y0 + H, x0:x0 + W] = real[i]
        canvas[:, y0:y0 + H, x0 + W + pad:x0 + 2 * W + pad] = fake[i]
    return save_png(path, canvas.clamp(0, 1))

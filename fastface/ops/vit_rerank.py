"""Two-stage face identification with a Face-ViT at stage 2 (dissertation ch. 4): cosine top-k, then the
model's pair similarity, on the patch embeddings a Faces already holds (the CNN is not re-run)."""
import torch
import torch.nn.functional as F

from .._checks import check_all_finite, check_bool, check_int, check_number
from .rerank import RerankResult, as_faces, check_search, topk_cosine


def vit_similarity_of(model):
    """The pair similarity s in [-1, 1] vit_rerank ranks by: cos(f1, f2) (h2l), 2 * sigmoid(logit) - 1 (h2),
    cos of the features (h1); the ViT distance is 1 - s in [0, 2], on the scale of 1 - cosine."""
    v = model.cfg.variant
    return {"h2l": "cos(f1, f2)", "h2": "2 * sigmoid(logit) - 1", "h1": "cos(f(x1), f(x2))"}[v]


def check_vit_model(model, name="model"):
    """Raise unless model is a FaceViT that reads backbone tokens (not variant v); return its config."""
    from ..models.facevit import FaceViT
    if not isinstance(model, FaceViT):
        raise TypeError(f"{name} must be a fastface FaceViT (fastface.load of a facevit model.pt), got "
                        f"{type(model).__name__}")
    if model.cfg.variant == "v":
        raise ValueError(f"{name} is a Face-ViT of variant v, which reads pixels: vit_rerank needs a hybrid "
                         "variant (h2l, h2 or h1) that reads the Faces' patch embeddings")
    return model.cfg


def check_token_shape(cfg, patches_shape, faces_grid, name):
    """Raise unless a Faces' patches (n, N, C) (and its grid, if known) are the tokens the model was trained
    on: grid x grid patches of token_dim channels."""
    g, c = cfg.grid, cfg.token_dim
    trained = f"{g}x{g}x{c} patch maps" + (f" of backbone {cfg.backbone}" if cfg.backbone else "")
    _, n, channels = patches_shape
    if channels != c:
        raise ValueError(f"{name} patches have {channels} channels but the model was trained on {trained}: "
                         f"expected patches (n, {g * g}, {c}), got {tuple(patches_shape)}")
    if n != g * g or (faces_grid is not None and tuple(faces_grid) != (g, g)):
        got = f"a {faces_grid[0]}x{faces_grid[1]} grid" if faces_grid is not None else f"{n} patches"
        raise ValueError(f"{name} patches must be the model's {g}x{g} grid ({g * g} patches; trained on "
                         f"{trained}), got {got}, patches {tuple(patches_shape)}")


def vit_rerank(query, gallery, model, *, k=100, alpha=0.7, exclude_self=False, pair_batch=1024,
               chunk_size=65536):
    """Return a RerankResult: the top-k gallery faces of each query, re-ranked by a Face-ViT.

    query, gallery: Faces or (embeddings, patches) tuples (a single query may be 1-D/2-D); model: a FaceViT
    of variant h2l, h2 or h1 whose tokens are the Faces' patches (grid x grid x token_dim). Stage 1: cosine
    top-k on embeddings (as emd_rerank). Stage 2: distance = alpha * (1 - s) + (1 - alpha) * (1 - cos),
    ascending, with s the model's pair similarity in [-1, 1] (vit_similarity_of), the query as image 1
    and the candidate as image 2. Result fields: indices, distance, cosine and stage1_indices as in
    emd_rerank; emd holds the ViT distance 1 - s; n_iter is 0 and converged True (nothing iterates);
    flows None. What depends on one image only (token projection, positions, the first layer's norm and
    q, k, v projections; h1: the whole feature) is computed once per query and once per distinct candidate;
    each pass then joins at most pair_batch pairs. Memory: those parts ((n + 1) * (dim + 3 * heads *
    dim_head) values per image) for the B queries and the distinct candidates, plus one pass of pair_batch
    pairs (about (2n + 2) * (4 dim + mlp_dim) values each; ~2 MB in float32 for the dissertation's H2L).
    The model runs in eval mode (its mode is restored afterwards).
    """
    cfg = check_vit_model(model)
    check_bool("exclude_self", exclude_self)
    check_number("alpha", alpha, lo=0, hi=1)
    pair_batch = check_int("pair_batch", pair_batch, hi=None)
    q = as_faces("query", query)
    g = as_faces("gallery", gallery, defer_patch_check=True)
    check_search(q, g, k, exclude_self)
    weights = next(model.parameters())
    if weights.device != q.device:
        raise ValueError(f"model and faces must be on one device, got model on {weights.device} and "
                         f"query on {q.device}")
    check_token_shape(cfg, tuple(q.patches.shape), q.grid, "query")
    check_token_shape(cfg, tuple(g.patches.shape), g.grid, "gallery")
    check_int("chunk_size", chunk_size, hi=None)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cos, idx = topk_cosine(q.embeddings, g.embeddings, k, exclude_self, chunk_size)   # (B, k)
            rows, inverse = idx.unique(return_inverse=True)        # distinct candidates; idx = rows[inverse]
            cand = g.patches[rows]                                 # (R, n, C)
            if not g.patches_checked:
                check_all_finite("gallery patches (of the stage-1 candidates)", cand)
            s = _pair_similarity(model, q.patches, cand, inverse, pair_batch)                  # (B, k)
    finally:
        model.train(was_training)
    vit = (1.0 - s).to(cos.dtype)
    distance = alpha * vit + (1.0 - alpha) * (1.0 - cos)
    order = distance.argsort(dim=1, stable=True)
    take = lambda t: t.gather(1, order)  # noqa: E731
    B = idx.shape[0]
    result = RerankResult(indices=take(idx), distance=take(distance), emd=take(vit), cosine=take(cos),
                          stage1_indices=idx, n_iter=torch.zeros(B, k, dtype=torch.int32, device=idx.device),
                          converged=torch.ones(B, k, dtype=torch.bool, device=idx.device))
    if q.single:
        for name in ("indices", "distance", "emd", "cosine", "stage1_indices", "n_iter", "converged"):
            setattr(result, name, getattr(result, name)[0])
    return result


def _pair_similarity(model, query_patches, cand_patches, inverse, pair_batch):
    """s (B, k) of query i (image 1) with candidate inverse[i, j] (image 2). query_patches (B, n, C),
    cand_patches (R, n, C) the distinct candidates, inverse (B, k) rows of cand_patches."""
    B, k = inverse.shape
    if model.cfg.variant == "h1":  # one image per pass: features once per image, then cosines
        fq = _features(model, query_patches, pair_batch)                                  # (B, out_dim)
        fc = _features(model, cand_patches, pair_batch)                                   # (R, out_dim)
        return F.cosine_similarity(fq.unsqueeze(1), fc[inverse], dim=-1)
    parts_q = _parts(model, query_patches, 0, pair_batch)      # each (B, ...)
    parts_c = _parts(model, cand_patches, 1, pair_batch)       # each (R, ...)
    queries_per_pass = max(1, pair_batch // k)
    cands_per_pass = min(k, pair_batch)
    out = torch.empty(B, k, dtype=torch.float32, device=inverse.device)
    for q0 in range(0, B, queries_per_pass):
        q1 = min(B, q0 + queries_per_pass)
        for c0 in range(0, k, cands_per_pass):
            c1 = min(k, c0 + cands_per_pass)
            sel = inverse[q0:q1, c0:c1]                                                   # (b, c)
            b, c = sel.shape
            one = [t[q0:q1].unsqueeze(1).expand(b, c, *t.shape[1:]) for t in parts_q]    # views: no copy
            # t[rows], not t.index_select: on this torch's CPU index_select of wide rows is ~100x slower
            two = [t[sel.reshape(-1)].view(b, c, *t.shape[1:]) for t in parts_c]
            out[q0:q1, c0:c1] = _similarity(model, model.pair_outputs(one, two)).view(b, c)
    return out


def _similarity(model, outputs):
    """s in [-1, 1] from pair_outputs: cos(f1, f2) (h2l) or 2 * sigmoid(logit) - 1 (h2)."""
    if model.cfg.variant == "h2l":
        f1, f2 = outputs
        return F.cosine_similarity(f1.float(), f2.float(), dim=-1)
    return 2.0 * torch.sigmoid(outputs.float()) - 1.0


def _parts(model, patches, slot, batch):
    """model.image_parts of every image (n_images, ...), contiguous (q, k, v are views of one projection:
    gathering rows of a view is slow), in passes of at most `batch` images."""
    pieces = [model.image_parts(patches[i:i + batch], slot) for i in range(0, patches.shape[0], batch)]
    return [torch.cat(p) if len(pieces) > 1 else p[0].contiguous() for p in zip(*pieces)]


def _features(model, patches, batch):
    """h1 features (n_images, out_dim) in passes of at most `batch` images."""
    return torch.cat([model(patches[i:i + batch]).float() for i in range(0, patches.shape[0], batch)])


__all__ = ["vit_rerank", "vit_similarity_of"]

"""Cross-correlation heat maps (dissertation section 5.3.3, after [77]): how much each patch of one face
matches the other face as a whole."""
import torch

from .flows import weight_heatmap


def cross_correlation(tokens1, tokens2):
    """tokens1, tokens2 (B, n, D) patch embeddings of paired images -> (map1, map2) each (B, n): the dot
    product of every patch of image 1 with the global average pool of image 2, and the reverse."""
    if tokens1.dim() != 3 or tokens1.shape != tokens2.shape:
        raise ValueError(f"tokens1 and tokens2 must both be (B, n, D), got {tuple(tokens1.shape)} and "
                         f"{tuple(tokens2.shape)}")
    m1 = torch.einsum("bnd,bd->bn", tokens1, tokens2.mean(1))
    m2 = torch.einsum("bnd,bd->bn", tokens2, tokens1.mean(1))
    return m1, m2


def heatmap_grid(images1, images2, map1, map2, grid):
    """Tiles (4B, 3, H, W) for image_grid(nrow=4): image 1 | its heat map | image 2's heat map | image 2 for
    each pair. images (B, C, H, W) in [0, 1]; maps (B, grid * grid) (red = strongest match)."""
    tiles = []
    for b in range(images1.shape[0]):
        a, c = images1[b].float(), images2[b].float()
        a3, c3 = a.expand(3, -1, -1), c.expand(3, -1, -1)
        tiles += [a3, weight_heatmap(a, map1[b], grid), weight_heatmap(c, map2[b], grid), c3]
    return torch.stack(tiles)


def rerank_heatmap_figure(query_image, gallery_images, stage1_indices, stage2_indices, query_maps, gallery_maps,
                          grid, *, query_label=None, gallery_labels=None, top=5, scale=2):
    """rerank_figure for a Face-ViT stage 2: the ST1 and ST2 rows, then the cross-correlation heat maps.

    query_image (C, H, W); gallery_images (N, C, H', W'); stage*_indices (k,) best first; query_maps,
    gallery_maps (k, grid * grid) in stage-2 order (cross_correlation of the model's output tokens of the
    query and each stage-2 candidate). Rows: "ST1" query | stage-1 top-t; "ST2" query | stage-2 top-t;
    "CCq" blank | the query's heat map against each candidate; "CCg" blank | each candidate's heat map
    against the query. Borders, gaps, scale and captions as in rerank_figure."""
    from .flows import GAP, GREEN, RED, _border, _caption, _compose, _grid, _image, _indices, _matrix, _resize, \
        _same, _scale, _upscale, weight_heatmap
    grid, scale = _grid(grid), _scale(scale)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    if not isinstance(gallery_images, torch.Tensor) or gallery_images.dim() != 4:
        raise ValueError("gallery_images must be a (N, C, H, W) tensor")
    q = _image("query_image", query_image, grid)
    H, W = q.shape[1:]
    count = gallery_images.shape[0]
    s1 = _indices("stage1_indices", stage1_indices, count)
    s2 = _indices("stage2_indices", stage2_indices, count)
    k, n = len(s2), grid[0] * grid[1]
    if k == 0:
        raise ValueError("stage2_indices must hold at least one gallery index, got shape (0,)")
    mq = _matrix("query_maps", query_maps, (k, n))
    mg = _matrix("gallery_maps", gallery_maps, (k, n))
    if (query_label is None) != (gallery_labels is None):
        raise ValueError("query_label and gallery_labels must be given together")

    def face(name, i):
        return _resize(_image(f"{name} (gallery image {i})", gallery_images[i], grid), (H, W))

    def frame(tile, i):
        if query_label is not None:
            _border(tile, GREEN if _same(gallery_labels[i], query_label) else RED)
        return tile

    up = lambda t: _upscale(t, scale)  # noqa: E731
    faces2 = [face("stage2_indices", i) for i in s2[:top]]
    rows = [[up(q)] + [frame(up(face("stage1_indices", i)), i) for i in s1[:top]],
            [up(q)] + [frame(up(g), i) for g, i in zip(faces2, s2)],
            [None] + [up(weight_heatmap(q, mq[j], grid)) for j in range(len(faces2))],
            [None] + [up(weight_heatmap(g, mg[j], grid)) for j, g in enumerate(faces2)]]
    h, w = H * scale, W * scale
    out = _compose(rows, h, w)
    for r, text in enumerate(["ST1", "ST2", "CCq", "CCg"]):
        _caption(out, r * (h + GAP), 0, h, w, text)
    return out

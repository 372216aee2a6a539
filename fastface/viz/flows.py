"""DeepFace-EMD flow and weight visualisations (dissertation Sec. 3.2, Fig. 3.1 / 3.4 / 5.2).

Patches are numbered in row-major grid order: patch i lies at grid row i // gw, column i % gw.
Images are float tensors (C, H, W) in [0, 1] with C in {1, 3}; every function returns RGB (3, H, W).
Cell boundaries are round(linspace(0, H, gh + 1)) (likewise for W), so H and W need not be multiples
of the grid. Everything runs on the CPU in float32; no matplotlib.
"""
import os

import torch
import torch.nn.functional as F

__all__ = ["flow_reconstruction", "weight_heatmap", "rerank_figure", "pair_figure", "save_png"]

GAP = 2      # white pixels between the cells of a figure
BORDER = 2   # width of the green/red label border
GREEN = (0.0, 0.8, 0.0)
RED = (0.9, 0.0, 0.0)


# ----------------------------------------------------------------------------- validation helpers

def _shape(t):
    return tuple(t.shape)


def _grid(grid):
    """grid: int g -> (g, g), or a pair (gh, gw) of positive ints."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or any(isinstance(g, bool) or not isinstance(g, int) for g in grid)):
        raise TypeError(f"grid must be an int or a pair (gh, gw) of ints, got {grid!r}")
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"grid must be positive, got {tuple(grid)}")
    return int(grid[0]), int(grid[1])


def _image(name, img, grid=None):
    """Check an image (C, H, W), C in {1, 3}; return it as an RGB float32 CPU tensor (3, H, W)."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (C, H, W), got {type(img).__name__}")
    if not img.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {img.dtype}")
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"{name} must have shape (C, H, W) with C in {{1, 3}}, got {_shape(img)}")
    if img.numel() == 0:
        raise ValueError(f"{name} is empty: shape {_shape(img)}")
    if not bool(torch.isfinite(img).all()):
        raise ValueError(f"{name} contains NaN or inf")
    if grid is not None and (img.shape[1] < grid[0] or img.shape[2] < grid[1]):
        raise ValueError(f"{name} of size {tuple(img.shape[1:])} is smaller than the grid {grid}")
    img = img.detach().to("cpu", torch.float32).clamp(0, 1)
    return img.expand(3, -1, -1).clone() if img.shape[0] == 1 else img


def _matrix(name, t, shape):
    """Check a finite float tensor of exactly `shape`; return it as float64 on the CPU."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    if _shape(t) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {_shape(t)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t.detach().to("cpu", torch.float64)


def _flow(name, flow, grid):
    """flow (n, m) with n = m = gh * gw."""
    n = grid[0] * grid[1]
    if isinstance(flow, torch.Tensor) and flow.dim() == 2 and _shape(flow) != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}) for grid {grid} (n = gh*gw patches per "
                         f"face), got {_shape(flow)}")
    return _matrix(name, flow, (n, n))


def _size(size):
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) for s in size)):
        raise TypeError(f"size must be a pair (H, W) of ints, got {size!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size must be positive, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, int):
        raise TypeError(f"scale must be an int, got {type(scale).__name__}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return scale


# ----------------------------------------------------------------------------- drawing helpers

def _cells(H, W, grid):
    """[(y0, y1, x0, x1)] of the gh*gw cells in row-major order."""
    ys = torch.linspace(0, H, grid[0] + 1, dtype=torch.float64).round().long().tolist()
    xs = torch.linspace(0, W, grid[1] + 1, dtype=torch.float64).round().long().tolist()
    return [(ys[r], ys[r + 1], xs[c], xs[c + 1]) for r in range(grid[0]) for c in range(grid[1])]


def _resize(img, size):
    """img (3, h, w) -> (3, H, W); unchanged when the size already matches."""
    if tuple(img.shape[1:]) == tuple(size):
        return img
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def _grey(img):
    """img (3, H, W) -> luminance as (3, H, W)."""
    lum = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    return lum.expand(3, -1, -1).clone()


def _ramp(t):
    """t (n,) in [0, 1] -> colours (n, 3): blue (0) -> green (0.5) -> red (1); red - blue = 2t - 1."""
    return torch.stack([t, 1 - (2 * t - 1).abs(), 1 - t], dim=1)


def _upscale(img, scale):
    return img if scale == 1 else img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def _border(tile, colour):
    """Paint a BORDER-px frame of `colour` inside tile (3, h, w), in place."""
    c = torch.tensor(colour, dtype=tile.dtype)[:, None, None]
    b = BORDER
    tile[:, :b], tile[:, -b:], tile[:, :, :b], tile[:, :, -b:] = c, c, c, c
    return tile


def _compose(rows, h, w):
    """rows: list of lists of (3, h, w) tiles or None (blank) -> one white-gapped image."""
    ncol = max(len(r) for r in rows)
    out = torch.ones(3, len(rows) * h + (len(rows) - 1) * GAP, ncol * w + (ncol - 1) * GAP)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if tile is not None:
                y, x = r * (h + GAP), c * (w + GAP)
                out[:, y:y + h, x:x + w] = tile
    return out


def _caption(canvas, y, x, h, w, text):
    """Write white text on a black box at (y, x), clipped to h x w; a no-op without pillow."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text)
    bh, bw = min(h, bottom + 4), min(w, right + 4)
    mask = Image.new("L", (bw, bh), 0)
    ImageDraw.Draw(mask).text((2, 2), text, fill=255)
    m = torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).reshape(bh, bw).float() / 255
    canvas[:, y:y + bh, x:x + bw] = m


# ----------------------------------------------------------------------------- public API

def flow_reconstruction(gallery_image, flow, grid, size=None):
    """Rebuild the query from the gallery patches it sends the most flow to (Eq. 3.9 shading).

    gallery_image: (C, H, W); flow: (n, m) transport plan query -> gallery, n = m = gh*gw;
    grid: (gh, gw) or int; size: (H, W) of the query (default: the gallery image's size).
    Returns (3, H, W): cell i shows gallery cell argmax_j flow[i, j], multiplied by that flow value
    min-max normalised over the n query patches (all 1 when the values are equal).
    """
    grid = _grid(grid)
    img = _image("gallery_image", gallery_image, grid)
    f = _flow("flow", flow, grid)
    size = tuple(img.shape[1:]) if size is None else _size(size)
    if size[0] < grid[0] or size[1] < grid[1]:
        raise ValueError(f"size {size} is smaller than the grid {grid}")
    best = f.argmax(dim=1)                                   # (n,) gallery patch of highest flow
    value = f.gather(1, best[:, None])[:, 0]                 # (n,)
    lo, hi = value.min(), value.max()
    shade = (value - lo) / (hi - lo) if hi > lo else torch.ones_like(value)
    src = _cells(img.shape[1], img.shape[2], grid)
    out = torch.zeros(3, *size)
    for i, (y0, y1, x0, x1) in enumerate(_cells(size[0], size[1], grid)):
        sy0, sy1, sx0, sx1 = src[int(best[i])]
        out[:, y0:y1, x0:x1] = _resize(img[:, sy0:sy1, sx0:sx1], (y1 - y0, x1 - x0)) * float(shade[i])
    return out


def weight_heatmap(image, weights, grid, alpha=0.5):
    """Overlay patch weights on the grey face: red = highest weight, blue = lowest (min-max per image).

    image: (C, H, W); weights: (n,), n = gh*gw; returns (3, H, W) = (1-alpha)*grey + alpha*colour,
    each cell a flat colour. Equal weights map to the middle of the ramp (green).
    """
    grid = _grid(grid)
    img = _image("image", image, grid)
    w = _matrix("weights", weights, (grid[0] * grid[1],))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    lo, hi = w.min(), w.max()
    t = (w - lo) / (hi - lo) if hi > lo else torch.full_like(w, 0.5)
    colours = _ramp(t).float()                               # (n, 3)
    layer = torch.empty_like(img)
    for i, (y0, y1, x0, x1) in enumerate(_cells(img.shape[1], img.shape[2], grid)):
        layer[:, y0:y1, x0:x1] = colours[i][:, None, None]
    return ((1 - alpha) * _grey(img) + alpha * layer).clamp(0, 1)


def _indices(name, idx, count):
    """idx: (k,) ints in [0, count) (count None: only >= 0); returns a list of ints."""
    t = torch.as_tensor(idx)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold integer gallery indices, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (k,), got {_shape(t)}")
    out = t.tolist()
    bad = [i for i in out if i < 0 or (count is not None and i >= count)]
    if bad:
        raise ValueError(f"{name} must lie in [0, {count if count is not None else 'N'}), got {bad[0]}")
    return out


def _same(a, b):
    a = a.item() if isinstance(a, torch.Tensor) else a
    b = b.item() if isinstance(b, torch.Tensor) else b
    return a == b


def rerank_figure(query_image, gallery_images, stage1_indices, stage2_indices, flows, grid, *,
                  weights=None, query_label=None, gallery_labels=None, top=5, scale=2):
    """The Fig. 3.1 composite: one query, its stage-1 and stage-2 top candidates and their flows.

    query_image: (C, H, W); gallery_images: (N, C, H', W') tensor or callable index -> (C, H', W')
    (gallery faces are resized to the query's size); stage1_indices, stage2_indices: (k,) gallery
    indices, best first; flows: (k, n, m) in stage-2 order; weights: optional (wq (k, n), wg (k, m))
    in stage-2 order. Rows (t = min(top, k) candidates, column 0 = the query; a longer
    stage-1 list shows at most `top` and widens the figure accordingly):
      1 "ST1": query | stage-1 top-t;   2 "ST2": query | stage-2 top-t;
      3 "flow": blank | reconstruction of the query from each stage-2 candidate;
      4 "W" (with weights): query weights w.r.t. the top stage-2 candidate | each candidate's weights.
    With query_label and gallery_labels (indexable by gallery index) the candidates of rows 1-2 get a
    2-px border, green when the label matches the query's, red otherwise. Tiles are upsampled by the
    integer `scale` (nearest) and separated by 2-px white gaps, so the output is
    (3, R*H*scale + (R-1)*2, (1+t)*W*scale + t*2) with R = 3 or 4. Captions need pillow.
    """
    grid = _grid(grid)
    scale = _scale(scale)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    q = _image("query_image", query_image, grid)
    H, W = q.shape[1:]
    if isinstance(gallery_images, torch.Tensor):
        if gallery_images.dim() != 4:
            raise ValueError(f"gallery_images must be (N, C, H, W) or a callable, got shape "
                             f"{_shape(gallery_images)}")
        count, load = gallery_images.shape[0], gallery_images.__getitem__
    elif callable(gallery_images):
        count, load = None, gallery_images
    else:
        raise TypeError(f"gallery_images must be a (N, C, H, W) tensor or a callable index -> (C, H, W), "
                        f"got {type(gallery_images).__name__}")
    if (query_label is None) != (gallery_labels is None):
        raise ValueError("query_label and gallery_labels must be given together")
    if gallery_labels is not None and count is None:
        count = len(gallery_labels)
    s1 = _indices("stage1_indices", stage1_indices, count)
    s2 = _indices("stage2_indices", stage2_indices, count)
    k, n = len(s2), grid[0] * grid[1]
    if k == 0:
        raise ValueError("stage2_indices must hold at least one gallery index, got shape (0,)")
    flows = _matrix("flows", flows, (k, n, n))                 # (k, n, m) in stage-2 order
    if weights is not None:
        if not isinstance(weights, (tuple, list)) or len(weights) != 2:
            raise TypeError("weights must be a pair (wq (k, n), wg (k, m))")
        wq = _matrix("weights[0] (wq)", weights[0], (k, n))
        wg = _matrix("weights[1] (wg)", weights[1], (k, n))

    def face(name, i):
        return _resize(_image(f"{name} (gallery image {i})", load(i), grid), (H, W))

    def frame(tile, i):
        if query_label is not None:
            _border(tile, GREEN if _same(gallery_labels[i], query_label) else RED)
        return tile

    up = lambda t: _upscale(t, scale)  # noqa: E731
    faces2 = [face("stage2_indices", i) for i in s2[:top]]     # loaded once, used by rows 2-4
    rows = [[up(q)] + [frame(up(face("stage1_indices", i)), i) for i in s1[:top]],
            [up(q)] + [frame(up(g), i) for g, i in zip(faces2, s2)],
            [None] + [up(flow_reconstruction(g, flows[j], grid)) for j, g in enumerate(faces2)]]
    if weights is not None:
        rows.append([up(weight_heatmap(q, wq[0], grid))]
                    + [up(weight_heatmap(g, wg[j], grid)) for j, g in enumerate(faces2)])
    h, w = H * scale, W * scale
    out = _compose(rows, h, w)
    for r, text in enumerate(["ST1", "ST2", "flow", "W"][:len(rows)]):
        _caption(out, r * (h + GAP), 0, h, w, text)
    return out


def pair_figure(query_image, gallery_image, flow, grid, wq=None, wg=None, scale=2):
    """One row (Fig. 3.4): query | query weights | flow reconstruction | gallery weights | gallery.

    query_image, gallery_image: (C, H, W) (the gallery is resized to the query's size); flow: (n, m);
    wq: (n,) or None, wg: (m,) or None (a weight panel is left out when its weights are None).
    """
    grid = _grid(grid)
    scale = _scale(scale)
    q = _image("query_image", query_image, grid)
    H, W = q.shape[1:]
    g = _resize(_image("gallery_image", gallery_image, grid), (H, W))
    tiles = [q]
    if wq is not None:
        tiles.append(weight_heatmap(q, wq, grid))
    tiles.append(flow_reconstruction(g, flow, grid, size=(H, W)))
    if wg is not None:
        tiles.append(weight_heatmap(g, wg, grid))
    tiles.append(g)
    return _compose([[_upscale(t, scale) for t in tiles]], H * scale, W * scale)


def save_png(path, image):
    """Write image (3, H, W) or (1, H, W), float in [0, 1], as an 8-bit PNG; returns path."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, H, W), got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a float tensor with values in [0, 1], got {image.dtype}")
    if image.dim() != 3 or image.shape[0] not in (1, 3) or image.numel() == 0:
        raise ValueError(f"image must have shape (C, H, W) with C in {{1, 3}}, got {_shape(image)}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or inf")
    arr = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).contiguous().numpy()              # (H, W, C)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    from PIL import Image
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path, format="PNG")
    return path

"""fastface.viz: flow reconstructions, weight heat maps, re-ranking figures, PNG output."""
import struct
import sys

import pytest
import torch

import fastface as ff
from fastface.viz import flow_reconstruction, pair_figure, rerank_figure, save_png, weight_heatmap


def bounds(size, g):
    return torch.linspace(0, size, g + 1, dtype=torch.float64).round().long().tolist()


def cells(H, W, g):
    ys, xs = bounds(H, g), bounds(W, g)
    return [(ys[r], ys[r + 1], xs[c], xs[c + 1]) for r in range(g) for c in range(g)]


def block(img, cell):
    y0, y1, x0, x1 = cell
    return img[:, y0:y1, x0:x1]


def cell_colour_image(H, W, g, C=3):
    """An image whose cells are flat, distinct colours (so any resize keeps a cell's colour)."""
    n = g * g
    colours = torch.stack([torch.linspace(0.2, 1.0, n), torch.linspace(1.0, 0.3, n),
                           (torch.arange(n) % 5) / 5 + 0.1])[:C]           # (C, n)
    img = torch.zeros(C, H, W)
    for i, c in enumerate(cells(H, W, g)):
        block(img, c)[:] = colours[:, i, None, None]
    return img, colours


def permutation_flow(perm, values=None):
    """flow (n, n) with flow[i, perm[i]] = values[i] and a smaller spread elsewhere."""
    n = len(perm)
    values = torch.linspace(1.0, 2.0, n) if values is None else values
    f = torch.rand(n, n) * 0.5
    f[torch.arange(n), torch.as_tensor(perm)] = values
    return f


def shade(values):
    return (values - values.min()) / (values.max() - values.min())


# ----------------------------------------------------------------------------- flow_reconstruction

@pytest.mark.parametrize("g", [4, 8])
@pytest.mark.parametrize("C", [1, 3])
def test_reconstruction_copies_argmax_cells_exactly(g, C):
    torch.manual_seed(g * 10 + C)
    n = g * g
    img = torch.rand(C, 8 * g, 8 * g)                      # divisible: cells copied bit for bit
    rgb = img.expand(3, -1, -1)
    for perm in (list(range(n)), [(i + 3) % n for i in range(n)], torch.randperm(n).tolist()):
        flow = permutation_flow(perm, values=torch.full((n,), 2.0))   # equal highest flows: no darkening
        out = flow_reconstruction(img, flow, g)
        assert out.shape == (3, 8 * g, 8 * g)
        cs = cells(8 * g, 8 * g, g)
        for i in range(n):
            assert torch.equal(block(out, cs[i]), block(rgb, cs[perm[i]])), (perm[:4], i)


def test_reconstruction_darkening_follows_eq_3_9():
    g, n = 4, 16
    img = torch.rand(3, 32, 32)
    perm = [(i + 5) % n for i in range(n)]
    values = torch.rand(n) + 1.0
    out = flow_reconstruction(img, permutation_flow(perm, values), (g, g))
    f = shade(values)
    cs = cells(32, 32, g)
    for i in range(n):
        torch.testing.assert_close(block(out, cs[i]), block(img, cs[perm[i]]) * f[i])
    assert block(out, cs[int(values.argmin())]).abs().max() == 0          # lowest flow: black
    hi = int(values.argmax())
    assert torch.equal(block(out, cs[hi]), block(img, cs[perm[hi]]))      # highest: unchanged


@pytest.mark.parametrize("g", [4, 8])
def test_reconstruction_non_divisible_sizes(g):
    H, W = 50, 37
    img, colours = cell_colour_image(H, W, g)
    n = g * g
    perm = [(i + 1) % n for i in range(n)]
    values = torch.linspace(1, 3, n)[torch.randperm(n)]
    for size in (None, (45, 61)):
        out = flow_reconstruction(img, permutation_flow(perm, values), g, size=size)
        oh, ow = size or (H, W)
        assert out.shape == (3, oh, ow)
        f = shade(values)
        for i, c in enumerate(cells(oh, ow, g)):
            want = (colours[:, perm[i]] * f[i])[:, None, None].expand_as(block(out, c))
            torch.testing.assert_close(block(out, c), want, atol=1e-5, rtol=0)


def test_reconstruction_rectangular_grid_and_grey():
    img = torch.rand(1, 30, 40)
    flow = permutation_flow([5, 4, 3, 2, 1, 0], values=torch.ones(6))
    out = flow_reconstruction(img, flow, (2, 3))
    assert out.shape == (3, 30, 40)
    assert torch.equal(out[:, :15, :13], img[:, 15:, 27:].expand(3, -1, -1))   # cell 0 <- cell 5


# ----------------------------------------------------------------------------- weight_heatmap

@pytest.mark.parametrize("g,H,W", [(4, 50, 37), (8, 64, 64)])
def test_heatmap_red_high_blue_low(g, H, W):
    torch.manual_seed(g)
    img = torch.rand(1, H, W)
    w = torch.rand(g * g)
    w = w / w.sum()
    out = weight_heatmap(img, w, g)
    assert out.shape == (3, H, W) and out.min() >= 0 and out.max() <= 1
    cs = cells(H, W, g)
    redness = torch.stack([(block(out, c)[0] - block(out, c)[2]).mean() for c in cs])
    assert int(redness.argmax()) == int(w.argmax())
    assert int(redness.argmin()) == int(w.argmin())
    # redness is monotone in the weight; the overlay is flat over a flat face
    assert torch.equal(redness.argsort(), w.argsort())
    flat = weight_heatmap(torch.full((3, H, W), 0.5), w, g, alpha=1.0)
    hi = block(flat, cs[int(w.argmax())])
    lo = block(flat, cs[int(w.argmin())])
    assert torch.allclose(hi[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))     # pure red
    assert torch.allclose(lo[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))     # pure blue
    assert torch.equal(hi, hi[:, :1, :1].expand_as(hi))


def test_heatmap_alpha_zero_is_grey_face():
    img = torch.rand(3, 20, 20)
    out = weight_heatmap(img, torch.rand(16), 4, alpha=0.0)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


# ----------------------------------------------------------------------------- figures

def layout(R, ncol, H, W, scale):
    return (3, R * H * scale + (R - 1) * 2, ncol * W * scale + (ncol - 1) * 2)


def test_rerank_figure_layout_and_borders():
    torch.manual_seed(0)
    N, H, W, g = 12, 20, 18, 4
    gallery = torch.rand(N, 3, H, W) * 0.5 + 0.25      # mid tones: borders are distinguishable
    labels = [i % 3 for i in range(N)]
    s1 = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    s2 = torch.tensor([3, 0, 6, 1, 2, 4, 5])
    flows = torch.rand(7, 16, 16)
    q = torch.rand(1, H, W)
    out = rerank_figure(q, gallery, s1, s2, flows, g, query_label=0, gallery_labels=labels, top=5, scale=2)
    assert out.shape == layout(3, 6, H, W, 2)
    h, w = H * 2, W * 2
    green, red = torch.tensor([0.0, 0.8, 0.0]), torch.tensor([0.9, 0.0, 0.0])
    for r, idx in enumerate((s1, s2)):
        for c, i in enumerate(idx[:5].tolist(), start=1):
            y, x = r * (h + 2), c * (w + 2)
            want = green if labels[i] == 0 else red
            for (py, px) in [(y, x), (y + 1, x + w // 2), (y + h - 1, x + w - 1), (y + h // 2, x + 1)]:
                assert torch.allclose(out[:, py, px], want), (r, c, i)
            assert not torch.allclose(out[:, y + h // 2, x + w // 2], want)   # interior untouched
    # white 2-px gaps between the cells
    assert torch.equal(out[:, :, w:w + 2], torch.ones(3, out.shape[1], 2))
    assert torch.equal(out[:, h:h + 2, :], torch.ones(3, 2, out.shape[2]))
    # row 3, column 1 is the flow reconstruction of the query from the top stage-2 candidate (x2)
    rec = flow_reconstruction(gallery[3], flows[0], g, size=(H, W))
    y, x = 2 * (h + 2), w + 2
    assert torch.equal(out[:, y:y + h, x:x + w], rec.repeat_interleave(2, 1).repeat_interleave(2, 2))


def test_rerank_figure_weights_row_callable_gallery_and_small_k():
    torch.manual_seed(1)
    H, W, g, k = 24, 24, 8, 3
    store = torch.rand(30, 1, H + 6, W)               # other size than the query: resized
    calls = []

    def load(i):
        calls.append(i)
        return store[i]
    flows = torch.rand(k, 64, 64)
    wq, wg = torch.rand(k, 64), torch.rand(k, 64)
    out = rerank_figure(torch.rand(3, H, W), load, [7, 8, 9], [9, 7, 8], flows, (g, g),
                        weights=(wq, wg), top=5, scale=1)
    assert out.shape == layout(4, 1 + k, H, W, 1)     # k < top shows k
    assert sorted(set(calls)) == [7, 8, 9]
    # no labels: no borders, the candidate cell is the resized grey face
    assert torch.allclose(out[0, H // 2, W + 2 + W // 2], out[2, H // 2, W + 2 + W // 2])


def test_rerank_figure_without_pillow(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)     # `import PIL` now raises ImportError
    out = rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0, 1], [1, 0],
                        torch.rand(2, 16, 16), 4, scale=1)
    assert out.shape == layout(3, 3, 16, 16, 1)
    assert torch.equal(out[:, 32 + 4:, :16], torch.ones(3, 16, 16))      # blank, no caption


def test_pair_figure_panels():
    q, gimg = torch.rand(3, 20, 20), torch.rand(1, 20, 20)
    flow = torch.rand(16, 16)
    assert pair_figure(q, gimg, flow, 4).shape == layout(1, 3, 20, 20, 2)
    out = pair_figure(q, gimg, flow, 4, wq=torch.rand(16), wg=torch.rand(16), scale=1)
    assert out.shape == layout(1, 5, 20, 20, 1)
    assert torch.equal(out[:, :, :20], q)
    assert torch.equal(out[:, :, 44:64], flow_reconstruction(gimg, flow, 4))
    assert torch.equal(out[:, :, -20:], gimg.expand(3, -1, -1))


# ----------------------------------------------------------------------------- save_png

def ihdr(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("C", [1, 3])
def test_save_png_round_trip(tmp_path, C):
    img = torch.rand(C, 13, 21)
    path = save_png(tmp_path / "a" / "b" / "x.png", img)
    assert ihdr(path) == (21, 13)
    want = (img * 255).round().to(torch.uint8)
    from PIL import Image
    got = torch.from_numpy(__import__("numpy").array(Image.open(path))).reshape(13, 21, C).permute(2, 0, 1)
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call,exc,words", [
    (lambda: flow_reconstruction(torch.rand(3, 16, 16), torch.rand(16, 9), 4), ValueError, ["flow", "(16, 16)", "(16, 9)"]),
    (lambda: flow_reconstruction(torch.rand(3, 16, 16), torch.rand(16, 16), 3), ValueError, ["flow", "(9, 9)", "(16, 16)"]),
    (lambda: flow_reconstruction(torch.rand(3, 16, 16), torch.full((16, 16), float("nan")), 4), ValueError, ["flow", "NaN"]),
    (lambda: flow_reconstruction(torch.rand(2, 16, 16), torch.rand(16, 16), 4), ValueError, ["gallery_image", "(2, 16, 16)"]),
    (lambda: flow_reconstruction(torch.rand(16, 16), torch.rand(16, 16), 4), ValueError, ["gallery_image", "(16, 16)"]),
    (lambda: flow_reconstruction(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.rand(16, 16), 4), TypeError, ["gallery_image", "uint8"]),
    (lambda: flow_reconstruction(torch.rand(3, 16, 16), torch.rand(16, 16), "4"), TypeError, ["grid"]),
    (lambda: flow_reconstruction(torch.rand(3, 16, 16), torch.rand(16, 16), 4, size=(2, 9)), ValueError, ["size"]),
    (lambda: weight_heatmap(torch.rand(3, 16, 16), torch.rand(15), 4), ValueError, ["weights", "(16,)", "(15,)"]),
    (lambda: weight_heatmap(torch.rand(3, 16, 16), torch.rand(16), 4, alpha=2), ValueError, ["alpha"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0, 9], [0, 1],
                           torch.rand(2, 16, 16), 4), ValueError, ["stage1_indices", "9"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0, 1], [0, -1],
                           torch.rand(2, 16, 16), 4), ValueError, ["stage2_indices", "-1"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0, 1], [0, 1],
                           torch.rand(3, 16, 16), 4), ValueError, ["flows", "(2, 16, 16)", "(3, 16, 16)"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), [1, 2], [0], [0], torch.rand(1, 16, 16), 4), TypeError, ["gallery_images"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0], [0], torch.rand(1, 16, 16), 4,
                           weights=(torch.rand(1, 16), torch.rand(1, 9))), ValueError, ["wg", "(1, 16)"]),
    (lambda: rerank_figure(torch.rand(3, 16, 16), torch.rand(5, 3, 16, 16), [0], [0], torch.rand(1, 16, 16), 4,
                           scale=0), ValueError, ["scale"]),
    (lambda: save_png("/tmp/never.png", torch.rand(2, 4, 4)), ValueError, ["image", "(2, 4, 4)"]),
])
def test_bad_inputs_name_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ----------------------------------------------------------------------------- end to end

def test_end_to_end_emd_rerank_figure(tmp_path):
    gen = torch.Generator().manual_seed(7)
    G, D, C = 20, 16, 8
    gal = ff.Faces(torch.randn(G, D, generator=gen), torch.randn(G, C, 4, 4, generator=gen))
    qry = ff.Faces(gal.embeddings[:2] + 0.1 * torch.randn(2, D, generator=gen),
                   torch.randn(2, C, 4, 4, generator=gen))
    res = ff.emd_rerank(qry, gal, k=7, return_flows=True)
    assert res.flows.shape == (2, 7, 16, 16)
    cand = gal.patches[res.indices[0]]                                     # (7, 16, C), stage-2 order
    wq, wg = ff.patch_weights(qry.patches[0].expand_as(cand), cand, "apc")  # (7, 16) each
    images = torch.rand(G, 3, 40, 36, generator=gen)
    labels = torch.arange(G) % 4
    out = rerank_figure(torch.rand(3, 40, 36, generator=gen), images, res.stage1_indices[0], res.indices[0],
                        res.flows[0], 4, weights=(wq, wg), query_label=labels[0],
                        gallery_labels=labels, top=5, scale=2)
    assert out.shape == layout(4, 6, 40, 36, 2)
    path = save_png(tmp_path / "fig" / "rerank.png", out)
    assert ihdr(path) == (out.shape[2], out.shape[1])

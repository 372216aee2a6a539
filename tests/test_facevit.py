"""Face-ViT: token layout, the encoder equations, both layouts, the public code's checkpoints, the ArcFace
and BCE objectives, the pair sampler, the frozen token cache, training and fastface.load."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastface
from fastface.models.facevit import (FaceViT, FaceViTConfig, count_flops, load_public_state_dict,
                                     public_state_dict_names)
from fastface.train.facevit import FaceViTTrainConfig, PairDataset, train_facevit

SMALL = dict(token_dim=12, grid=3, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=24, out_dim=10, dropout=0.0)


def model(variant="h2l", layout="paper", **kw):
    torch.manual_seed(0)
    cfg = {**SMALL, **kw}
    if layout == "public":
        cfg["token_dim"] = cfg["dim"]
    m = FaceViT(variant=variant, layout=layout, **cfg).eval()
    with torch.no_grad():     # non-trivial norms and BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def tokens(b, m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, m.cfg.n_tokens, m.cfg.token_dim, generator=g)


# ------------------------------------------------------------------------------ layout and equations
def test_sequence_is_cls_image1_sep_image2_with_positions():
    m = model()
    x1, x2 = tokens(2, m), tokens(2, m, 2)
    z0 = m.sequence(x1, x2)
    n, pos = m.cfg.n_tokens, m.pos_embedding[0]
    assert z0.shape == (2, 2 * n + 2, m.cfg.dim) and m.seq_len == 2 * 9 + 2
    torch.testing.assert_close(z0[:, 0], (m.cls_token[0, 0] + pos[0]).expand(2, -1))
    torch.testing.assert_close(z0[:, 1:n + 1], m.embed(x1) + pos[1:n + 1])               # x_p1 E + E_pos
    torch.testing.assert_close(z0[:, n + 1], (m.sep_token[0, 0] + pos[n + 1]).expand(2, -1))
    torch.testing.assert_close(z0[:, n + 2:], m.embed(x2) + pos[n + 2:])
    # maps (B, C, g, g) are read row-major: the same tokens as Faces' patches (n, H*W, C)
    maps = x1.transpose(1, 2).reshape(2, m.cfg.token_dim, 3, 3)
    torch.testing.assert_close(m(maps, x2)[0], m(x1, x2)[0])
    h1 = model("h1")
    assert h1.seq_len == 10 and h1.sequence(x1).shape == (2, 10, 16)


def _attention(x, qkv_w, proj, heads, d, scale):
    b, n, _ = x.shape
    q, k, v = (x @ qkv_w.T).view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * scale, -1)
    return proj((a @ v).transpose(1, 2).reshape(b, n, heads * d))


@pytest.mark.parametrize("layout", ["paper", "public"])
def test_encoder_layer_is_eq_4_2_4_3(layout):
    """Paper: x + MSA(LN(x)) then + MLP(LN(.)), softmax scale dim_head^-0.5. Public: no LN before MSA,
    scale dim^-0.5 (the model width)."""
    m = model(layout=layout)
    blk = m.blocks[0]
    x = torch.randn(3, 7, 16)
    inp = blk.norm1(x) if layout == "paper" else x
    scale = 8 ** -0.5 if layout == "paper" else 16 ** -0.5
    y = x + _attention(inp, blk.attn.qkv.weight, blk.attn.proj, 2, 8, scale)
    ref = y + blk.mlp(blk.norm2(y))
    torch.testing.assert_close(blk(x), ref)


def test_two_image_models_attend_across_images_and_one_image_models_do_not():
    x1, x2, x2b = (tokens(2, model(), s) for s in (1, 2, 3))
    h2l = model()
    assert not torch.allclose(h2l(x1, x2)[0], h2l(x1, x2b)[0])       # f1 sees image 2 (cross-attention)
    h1 = model("h1")
    assert torch.equal(h1(x1), h1(x1))
    torch.testing.assert_close(h1.similarity(x1, x2), F.cosine_similarity(h1(x1), h1(x2)))


def test_h2l_heads_and_similarity():
    m = model()
    x1, x2 = tokens(4, m), tokens(4, m, 2)
    z = m.encode(m.sequence(x1, x2))
    n = m.cfg.n_tokens
    f1 = F.layer_norm(F.linear(z[:, 1:n + 1].flatten(1), m.head1.linear.weight, m.head1.linear.bias), (10,),
                      m.head1.norm.weight, m.head1.norm.bias)                                  # Eq. 4.5
    got1, got2 = m(x1, x2)
    torch.testing.assert_close(got1, f1)
    assert got2.shape == (4, 10)
    torch.testing.assert_close(m.similarity(x1, x2), F.cosine_similarity(got1, got2))
    h2 = model("h2")
    logit = h2(x1, x2)
    assert logit.shape == (4,)
    torch.testing.assert_close(h2.similarity(x1, x2), torch.sigmoid(logit))


def test_vit_reads_pixel_patches():
    m = FaceViT(variant="v", image_size=16, patch_size=4, channels=3, dim=16, depth=1, heads=1, dim_head=8,
                mlp_dim=16, out_dim=8).eval()
    img = torch.rand(2, 3, 16, 16)
    t = m.tokens(img)
    assert t.shape == (2, 16, 48)
    torch.testing.assert_close(t[0, 1], img[0, :, 0:4, 4:8].reshape(-1))   # patch (0, 1), channel-major
    assert m(img).shape == (2, 8)


# ------------------------------------------------------------------------------ the public code's checkpoints
def public_state(cfg, n_classes=5, seed=3):
    """A state dict with the public code's names and shapes (ViT_face_model / Hybrid_ViT), random values."""
    g = torch.Generator().manual_seed(seed)
    d, n, inner, out = cfg["dim"], cfg["grid"] ** 2, cfg["heads"] * cfg["dim_head"], cfg["out_dim"]
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    two = cfg.get("variant", "h2l") in ("h2l", "h2")
    st = {"cls_token": r(1, 1, d), "pos_embedding": r(1, 2 * n + (2 if two else 1), d)}
    if two:
        st["sep"] = r(1, 1, d)
    for i in range(cfg["depth"]):
        a, f = f"module.transformer.layers.{i}.0.fn", f"module.transformer.layers.{i}.1.fn"
        st.update({f"{a}.norm.weight": 1 + r(d), f"{a}.norm.bias": r(d), f"{a}.fn.to_qkv.weight": r(3 * inner, d),
                   f"{a}.fn.to_out.0.weight": r(d, inner), f"{a}.fn.to_out.0.bias": r(d),
                   f"{f}.norm.weight": 1 + r(d), f"{f}.norm.bias": r(d), f"{f}.fn.net.0.weight": r(cfg["mlp_dim"], d),
                   f"{f}.fn.net.0.bias": r(cfg["mlp_dim"]), f"{f}.fn.net.3.weight": r(d, cfg["mlp_dim"]),
                   f"{f}.fn.net.3.bias": r(d)})
    variant = cfg.get("variant", "h2l")
    if variant == "h2l":
        for k in (1, 2):
            st.update({f"module.fc{k}.weight": r(out, n * d), f"module.fc{k}.bias": r(out),
                       f"module.bn{k}.weight": 1 + r(out), f"module.bn{k}.bias": r(out),
                       f"module.bn{k}.running_mean": r(out), f"module.bn{k}.running_var": 1 + r(out).abs(),
                       f"module.bn{k}.num_batches_tracked": torch.tensor(7)})
        st.update({"module.mlp_head.0.weight": 1 + r(out), "module.mlp_head.0.bias": r(out),
                   "module.loss.weight": r(n_classes, out)})
    elif variant == "h2":
        st.update({"mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d), "fc.weight": r(2, d), "fc.bias": r(2)})
    else:
        st.update({"mlp_head.0.weight": 1 + r(d), "mlp_head.0.bias": r(d)})
    return st


def public_forward(st, cfg, x1, x2=None):
    """The public code's forward, written from its facts: [CLS] x1 [SEP] x2 + positions; per layer
    x = Attn(x) + x (no LayerNorm), x = MLP(LN(x)) + x; softmax scale dim^-0.5."""
    st = {k.removeprefix("module."): v for k, v in st.items()}
    d, n, h, dh = cfg["dim"], cfg["grid"] ** 2, cfg["heads"], cfg["dim_head"]
    b = x1.shape[0]
    parts = [st["cls_token"].expand(b, 1, d), x1] + ([st["sep"].expand(b, 1, d), x2] if x2 is not None else [])
    x = torch.cat(parts, 1)
    x = x + st["pos_embedding"][:, :x.shape[1]]
    for i in range(cfg["depth"]):
        a, f = f"transformer.layers.{i}.0.fn", f"transformer.layers.{i}.1.fn"
        out = _attention(x, st[f"{a}.fn.to_qkv.weight"], lambda t: F.linear(t, st[f"{a}.fn.to_out.0.weight"],
                                                                          st[f"{a}.fn.to_out.0.bias"]), h, dh, d ** -0.5)
        x = out + x
        y = F.layer_norm(x, (d,), st[f"{f}.norm.weight"], st[f"{f}.norm.bias"])
        y = F.linear(F.gelu(F.linear(y, st[f"{f}.fn.net.0.weight"], st[f"{f}.fn.net.0.bias"])),
                     st[f"{f}.fn.net.3.weight"], st[f"{f}.fn.net.3.bias"])
        x = y + x
    variant = cfg.get("variant", "h2l")
    if variant == "h2l":
        bn = lambda t, k: F.batch_norm(F.linear(t, st[f"fc{k}.weight"], st[f"fc{k}.bias"]), st[f"bn{k}.running_mean"],
                                       st[f"bn{k}.running_var"], st[f"bn{k}.weight"], st[f"bn{k}.bias"], False)
        return bn(x[:, 1:n + 1].flatten(1), 1), bn(x[:, n + 2:2 * n + 2].flatten(1), 2)
    if variant == "h2":
        logits = F.linear(F.layer_norm(x[:, 0], (d,), st["mlp_head.0.weight"], st["mlp_head.0.bias"]),
                          st["fc.weight"], st["fc.bias"])
        return logits[:, 1] - logits[:, 0]
    return F.layer_norm(x[:, 0], (d,), st["mlp_head.0.weight"], st["mlp_head.0.bias"])


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
def test_public_checkpoints_load_and_compute_as_the_public_code(variant):
    cfg = dict(variant=variant, grid=3, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=24,
               out_dim=16 if variant == "h1" else 10)
    m = FaceViT(layout="public", token_dim=16, dropout=0.0, **cfg).eval()
    st = public_state(cfg)
    extra = load_public_state_dict(m, st)
    # what the model has no place for: the public ArcFace weight and its training-only LayerNorm
    assert extra == (["loss.weight", "mlp_head.0.bias", "mlp_head.0.weight"] if variant == "h2l" else [])
    x1, x2 = torch.randn(3, 9, 16), torch.randn(3, 9, 16)
    want = public_forward(st, cfg, x1, x2 if variant != "h1" else None)
    got = m(x1, x2) if variant != "h1" else m(x1)
    for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert set(public_state_dict_names(m.cfg).values()) <= set(m.state_dict()) | {"arcface.weight"}


def test_public_checkpoint_errors():
    cfg = dict(variant="h2l", grid=3, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=24, out_dim=10)
    st = public_state(cfg)
    with pytest.raises(ValueError, match="layout='public' models only"):
        load_public_state_dict(FaceViT(**{**cfg, "token_dim": 16}), st)
    with pytest.raises(ValueError, match=r"to_qkv|qkv.*has shape|lacks"):
        load_public_state_dict(FaceViT(layout="public", token_dim=16, **{**cfg, "heads": 1}), st)
    with pytest.raises(ValueError, match="lacks"):
        load_public_state_dict(FaceViT(layout="public", token_dim=16, **{**cfg, "depth": 3}), st)
    with pytest.raises(ValueError, match="token_dim .* must equal dim"):
        FaceViTConfig(layout="public", token_dim=12, dim=16)


# ------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_argument():
    m = model()
    x = tokens(2, m)
    with pytest.raises(ValueError, match=r"x1 must be tokens \(B, 9, 12\).*3x3x12 patch maps\), got \(2, 9, 13\)"):
        m(torch.randn(2, 9, 13), x)
    with pytest.raises(ValueError, match=r"x2 maps must be \(B, 12, 3, 3\)"):
        m(x, torch.randn(2, 12, 4, 4))
    with pytest.raises(ValueError, match="compares two images"):
        m(x)
    with pytest.raises(ValueError, match="same number of images"):
        m(x, x[:1])
    with pytest.raises(TypeError, match="floating-point"):
        m(x.long(), x)
    with pytest.raises(TypeError, match="must be a tensor"):
        m([1, 2], x)
    with pytest.raises(ValueError, match="reads one image"):
        model("h1")(x, x)
    with pytest.raises(ValueError, match="variant must be one of"):
        FaceViTConfig(variant="c")
    with pytest.raises(ValueError, match="depth must be a positive int"):
        FaceViTConfig(depth=0)
    with pytest.raises(ValueError, match="dropout must be in"):
        FaceViTConfig(dropout=1.0)


def test_flop_count_matches_a_hand_count():
    cfg = FaceViTConfig(token_dim=512, dim=512, grid=8, depth=1, heads=1, dim_head=64, mlp_dim=2048, out_dim=512)
    n, seq = 64, 130
    per_pair = 2 * (2 * n * 512 * 512 + seq * 512 * 192 + 2 * seq * seq * 64 + seq * 64 * 512 + 2 * seq * 512 * 2048
                    + 2 * n * 512 * 512)
    assert count_flops(cfg, pairs=100) == 100 * per_pair
    assert math.isclose(per_pair / 1e6, 717.9, rel_tol=1e-3)   # ~0.72 GFLOP per pair


# ------------------------------------------------------------------------------ pairs and training
def test_pair_sampler_is_balanced_and_deterministic():
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])        # identity 2 and 4 have one image
    ds = PairDataset(torch.arange(11).float()[:, None], ids, 200, seed=5)
    batch = ds.__getitems__(list(range(200)))
    same = batch["same"].bool()
    assert int(same.sum()) == 100
    assert torch.equal(batch["y1"][same], batch["y2"][same]) and (batch["y1"][~same] != batch["y2"][~same]).all()
    assert (batch["x1"][same] != batch["x2"][same]).all()            # positives: two different images
    assert torch.equal(ids[batch["x1"][:, 0].long()], ids.unique()[batch["y1"]])
    again = PairDataset(torch.arange(11).float()[:, None], ids, 200, seed=5)
    assert [again.pair(i) for i in (7, 3, 150)] == [ds.pair(i) for i in (7, 3, 150)]   # by (seed, index) alone
    other = PairDataset(torch.arange(11).float()[:, None], ids, 200, seed=6)
    assert [other.pair(i) for i in range(20)] != [ds.pair(i) for i in range(20)]
    with pytest.raises(ValueError, match="one with 2 images"):
        PairDataset(torch.zeros(3, 1), torch.tensor([0, 1, 2]), 10)


def small_cache(n_ids=6, per=4, c=12, g=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, 1, c, generator=gen)
    ids = torch.arange(n_ids).repeat_interleave(per)
    toks = centres[ids] + 0.5 * torch.randn(n_ids * per, g * g, c, generator=gen)
    return {"inputs": toks, "identities": ids, "token_dim": c, "grid": g, "channels": 3,
            "images": torch.rand(n_ids * per, 3, 12, 12, generator=gen)}


TRAIN = dict(dim=16, depth=1, heads=2, dim_head=8, mlp_dim=24, out_dim=8, dropout=0.0, batch_size=8, epochs=2,
             pairs=24, lr=1e-3, checkpoint_every=2, s=16.0)


def test_h2l_step_is_arcface_on_both_outputs(tmp_path):
    from fastface.train.distributed import DistInfo
    from fastface.train.facevit import FaceViTTrainer
    from fastface.train.loop import Run
    cfg = FaceViTTrainConfig(**TRAIN)
    t = FaceViTTrainer(cfg, Run(cfg, tmp_path, DistInfo(), False), cache=small_cache())
    t.dataset()
    t.run.total = t.run.steps_per_epoch = 3
    torch.manual_seed(0)
    t.build()
    batch = t.data.__getitems__(list(range(8)))
    with torch.no_grad():
        f1, f2 = t.model(batch["x1"], batch["x2"])
        arc = t.modules["arcface"]
        want = F.cross_entropy(arc(torch.cat([f1, f2]), torch.cat([batch["y1"], batch["y2"]])),
                               torch.cat([batch["y1"], batch["y2"]]))
    got = t.train_step(batch)
    assert got["loss"] == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1", "v"])
def test_training_resumes_exactly_and_exports_a_loadable_model(tmp_path, variant):
    cache = small_cache()
    if variant == "v":
        cache = {"inputs": torch.rand(24, 3, 16, 16), "identities": cache["identities"], "token_dim": 1, "grid": 1,
                 "channels": 3, "images": None}
    cfg = FaceViTTrainConfig(**TRAIN, variant=variant, image_size=16, patch_size=4)
    full = train_facevit(cfg, tmp_path / "full", cache=cache, progress=False)
    train_facevit(cfg, tmp_path / "cut", cache=cache, progress=False, stop_after=3)
    cut = train_facevit(cfg, tmp_path / "cut", cache=cache, progress=False)
    assert full["step"] == cut["step"] == 6
    for k, v in full["model"].state_dict().items():
        torch.testing.assert_close(v, cut["model"].state_dict()[k], rtol=0, atol=0, msg=k)
    loaded = fastface.load(tmp_path / "full" / "model.pt")
    assert isinstance(loaded, FaceViT) and not loaded.training and loaded.cfg.variant == variant
    x = cache["inputs"][:4]
    torch.testing.assert_close(loaded.similarity(x, x.flip(0)), full["model"].similarity(x, x.flip(0)))


def test_the_backbone_runs_once_per_image_and_stays_in_eval_mode(tmp_path, monkeypatch):
    from fastface.backbones import encoders
    calls = []
    real = encoders._ArcFaceBase.encode

    def counting(self, images, batch_size=128):
        calls.append((images.shape[0], self.model.training))
        return real(self, images, batch_size)
    monkeypatch.setattr(encoders._ArcFaceBase, "encode", counting)
    cfg = FaceViTTrainConfig(**{**TRAIN, "n_identities": 6, "images_per_identity": 3, "epochs": 3})
    out = train_facevit(cfg, tmp_path, progress=False)
    assert out["step"] == 9
    assert calls == [(18, False)]                        # one pass over the 18 images, in eval mode
    assert fastface.load(tmp_path / "model.pt").cfg.backbone == "arcface"


def test_cli_trains_facevit(tmp_path, capsys):
    from fastface.cli import main
    assert main(["train", "facevit", "--set", "n_identities=6", "--set", "images_per_identity=3", "--set", "dim=16",
                 "--set", "mlp_dim=16", "--set", "out_dim=8", "--set", "batch_size=8", "--set", "epochs=1",
                 "--set", "variant=h2", "--set", "sample_every=2", "--out", str(tmp_path), "--device", "cpu",
                 "--quiet"]) == 0
    assert "trained 4 of 4 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["heatmaps_0000002.png", "heatmaps_0000004.png"]
    assert main(["train", "facevit", "--set", "variant=c", "--out", str(tmp_path / "c")]) == 2
    assert "nothing to train" in capsys.readouterr().err


def test_trains_on_an_image_folder(tmp_path):
    from fastface.data import SynthFaces, export_image_folder
    export_image_folder(SynthFaces(n_identities=4, images_per_identity=3, size=64, seed=3), tmp_path / "faces")
    cfg = FaceViTTrainConfig(**{**TRAIN, "data": str(tmp_path / "faces"), "epochs": 1, "pairs": 16})
    out = train_facevit(cfg, tmp_path / "run", progress=False)
    assert out["step"] == 2 and out["arcface"].weight.shape[0] == 4          # 4 identities from the folder
    model = fastface.load(tmp_path / "run" / "model.pt")
    assert (model.cfg.token_dim, model.cfg.grid, model.cfg.backbone) == (128, 8, "arcface")   # the shipped backbone

"""fastface.vit_rerank (Face-ViT at stage 2) and `fastface identify --reranker facevit:MODEL`."""
import json
import os

import pytest
import torch

import fastface as ff
from fastface.models.facevit import FaceViT
from fastface.ops.rerank import stage1_topk


def tiny_vit(variant="h2l", layout="paper", depth=1, token_dim=12, grid=3, dim=32, seed=0):
    torch.manual_seed(seed)
    if layout == "public":
        token_dim = dim
    out_dim = dim if (layout, variant) == ("public", "h1") else 16     # the public H1's feature is its [CLS]
    model = FaceViT(variant=variant, layout=layout, token_dim=token_dim, grid=grid, dim=dim, mlp_dim=64,
                    out_dim=out_dim, heads=2, dim_head=8, depth=depth)
    if layout == "public" and variant == "h2l":   # non-trivial BatchNorm statistics in the heads
        for head in (model.head1, model.head2):
            head.norm.running_mean.normal_(0, 0.1)
            head.norm.running_var.uniform_(0.5, 2.0)
    return model


def random_faces(gen, n, token_dim, grid, d=10):
    return ff.Faces(torch.randn(n, d, generator=gen), torch.randn(n, token_dim, grid, grid, generator=gen))


def plain_twin(query, gallery, model, k, alpha, exclude_self=False):
    """The obvious loop: stage-1 top-k, then model.similarity on each (query, candidate) pair alone."""
    model.eval()
    cos, idx = stage1_topk(query.embeddings, gallery.embeddings, k, exclude_self)
    B = idx.shape[0]
    s = torch.empty(B, k)
    with torch.no_grad():
        for i in range(B):
            for j in range(k):
                p = model.similarity(query.patches[i:i + 1], gallery.patches[idx[i, j]:idx[i, j] + 1])[0]
                s[i, j] = 2 * p - 1 if model.cfg.variant == "h2" else p
    dist = alpha * (1 - s) + (1 - alpha) * (1 - cos)
    order = dist.argsort(dim=1, stable=True)
    return idx.gather(1, order), dist.gather(1, order), (1 - s).gather(1, order), cos.gather(1, order)


VARIANTS = [(v, lay) for v in ("h2l", "h2", "h1") for lay in ("paper", "public")]


@pytest.mark.parametrize("variant,layout", VARIANTS)
@pytest.mark.parametrize("depth", [1, 2])
def test_batched_equals_plain_loop_and_one_by_one(gen, variant, layout, depth):
    model = tiny_vit(variant, layout, depth)
    C, g = model.cfg.token_dim, model.cfg.grid
    query, gallery = random_faces(gen, 4, C, g), random_faces(gen, 13, C, g)
    res = ff.vit_rerank(query, gallery, model, k=5, alpha=0.6, pair_batch=7)
    assert model.training   # the caller's mode is restored
    idx, dist, vit, cos = plain_twin(query, gallery, model, 5, 0.6)
    torch.testing.assert_close(res.indices, idx)
    torch.testing.assert_close(res.distance, dist)
    torch.testing.assert_close(res.emd, vit)
    torch.testing.assert_close(res.cosine, cos)
    assert res.flows is None and (res.n_iter == 0).all() and res.converged.all()
    for i in range(len(query)):   # each query alone
        one = ff.vit_rerank((query.embeddings[i:i + 1], query.patches[i:i + 1]), gallery, model, k=5, alpha=0.6)
        torch.testing.assert_close(one.indices[0], res.indices[i])
        torch.testing.assert_close(one.distance[0], res.distance[i])


@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
def test_pair_batch_does_not_change_the_result(gen, variant):
    model = tiny_vit(variant, grid=2, token_dim=5)
    query, gallery = random_faces(gen, 4, 5, 2), random_faces(gen, 9, 5, 2)
    ref = ff.vit_rerank(query, gallery, model, k=6)
    for pair_batch in (1, 4, 6, 7, 13, 10_000):
        res = ff.vit_rerank(query, gallery, model, k=6, pair_batch=pair_batch)
        torch.testing.assert_close(res.indices, ref.indices)
        torch.testing.assert_close(res.distance, ref.distance)


def test_single_query_form_and_tuples(gen):
    model = tiny_vit()
    query, gallery = random_faces(gen, 3, 12, 3), random_faces(gen, 8, 12, 3)
    batch = ff.vit_rerank(query, gallery, model, k=4)
    one = ff.vit_rerank((query.embeddings[1], query.patches[1]), (gallery.embeddings, gallery.patches), model, k=4)
    assert one.indices.shape == (4,) and one.distance.shape == (4,) and one.stage1_indices.shape == (4,)
    torch.testing.assert_close(one.indices, batch.indices[1])
    torch.testing.assert_close(one.distance, batch.distance[1])


@pytest.mark.parametrize("variant", ["h2l", "h1"])
def test_exclude_self(gen, variant):
    model = tiny_vit(variant)
    faces = random_faces(gen, 9, 12, 3)
    res = ff.vit_rerank(faces, faces, model, k=8, exclude_self=True)
    assert not (res.indices == torch.arange(9)[:, None]).any()
    idx, dist, _, _ = plain_twin(faces, faces, model, 8, 0.7, exclude_self=True)
    torch.testing.assert_close(res.indices, idx)
    torch.testing.assert_close(res.distance, dist)
    with pytest.raises(ValueError, match="k=9 exceeds the 8 gallery faces available"):
        ff.vit_rerank(faces, faces, model, k=9, exclude_self=True)


def test_alpha_ends_and_h2_distance_scale(gen):
    model = tiny_vit("h2")
    query, gallery = random_faces(gen, 3, 12, 3), random_faces(gen, 10, 12, 3)
    vit_only = ff.vit_rerank(query, gallery, model, k=5, alpha=1.0)
    torch.testing.assert_close(vit_only.distance, vit_only.emd)
    assert ((vit_only.emd >= 0) & (vit_only.emd <= 2)).all()
    assert (vit_only.distance.diff(dim=1) >= 0).all()
    cos_only = ff.vit_rerank(query, gallery, model, k=5, alpha=0.0)
    torch.testing.assert_close(cos_only.indices, cos_only.stage1_indices)


def test_half_precision_patches_are_read_as_the_model_dtype(gen):
    model = tiny_vit("h2l", token_dim=7, grid=3)
    query, gallery = random_faces(gen, 3, 7, 3), random_faces(gen, 9, 7, 3)
    half = lambda f: ff.Faces(f.embeddings, f.patches.half())  # noqa: E731
    widened = lambda f: ff.Faces(f.embeddings, f.patches.half().float())  # noqa: E731
    res = ff.vit_rerank(half(query), half(gallery), model, k=5)
    ref = ff.vit_rerank(widened(query), widened(gallery), model, k=5)
    torch.testing.assert_close(res.indices, ref.indices)
    torch.testing.assert_close(res.distance, ref.distance)


def test_per_image_work_is_done_once_per_image(gen):
    """The token projection and the first layer's q, k, v run on B + (distinct candidates) images, not on
    B * k pairs; the pairs run the rest."""
    model = tiny_vit("h2l", depth=2)
    query, gallery = random_faces(gen, 6, 12, 3), random_faces(gen, 11, 12, 3)
    rows = {"embed": 0, "qkv0": 0, "qkv1": 0}
    def counter(name):
        def hook(_module, inputs, _output):
            rows[name] += inputs[0].shape[0]
        return hook
    hooks = [model.embed.register_forward_hook(counter("embed")),
             model.blocks[0].attn.qkv.register_forward_hook(counter("qkv0")),
             model.blocks[1].attn.qkv.register_forward_hook(counter("qkv1"))]
    res = ff.vit_rerank(query, gallery, model, k=9, pair_batch=20)
    for h in hooks:
        h.remove()
    images = 6 + res.stage1_indices.unique().numel()
    assert rows["embed"] == images and rows["qkv0"] == images
    assert rows["qkv1"] == 6 * 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
@pytest.mark.parametrize("variant", ["h2l", "h2", "h1"])
def test_cuda_equals_cpu(gen, variant):
    model = tiny_vit(variant)
    query, gallery = random_faces(gen, 5, 12, 3), random_faces(gen, 14, 12, 3)
    cpu = ff.vit_rerank(query, gallery, model, k=6, pair_batch=8)
    to = lambda f: ff.Faces(f.embeddings.cuda(), f.patches.cuda())  # noqa: E731
    gpu = ff.vit_rerank(to(query), to(gallery), model.cuda(), k=6, pair_batch=8)
    assert gpu.indices.device.type == "cuda"
    torch.testing.assert_close(gpu.distance.cpu(), cpu.distance, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.indices.cpu(), cpu.indices)
    with pytest.raises(ValueError, match="model and faces must be on one device"):
        ff.vit_rerank(query, gallery, model, k=6)


# ---------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_argument(gen):
    model = tiny_vit()                                           # 3x3x12 tokens
    query, gallery = random_faces(gen, 3, 12, 3), random_faces(gen, 8, 12, 3)
    with pytest.raises(TypeError, match="model must be a fastface FaceViT.*Linear"):
        ff.vit_rerank(query, gallery, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="variant v, which reads pixels"):
        ff.vit_rerank(query, gallery, FaceViT(variant="v", image_size=16, patch_size=8, dim=16, mlp_dim=16,
                                              out_dim=8, heads=1, dim_head=8))
    other = random_faces(gen, 8, 7, 3)
    with pytest.raises(ValueError, match=r"gallery patches have 7 channels but the model was trained on 3x3x12"):
        ff.vit_rerank(query, other, model, k=4)
    with pytest.raises(ValueError, match=r"query patches must be the model's 3x3 grid .* got a 4x4 grid"):
        ff.vit_rerank(random_faces(gen, 2, 12, 4), gallery, model, k=4)
    with pytest.raises(ValueError, match=r"query patches must be the model's 3x3 grid .* got 16 patches"):
        ff.vit_rerank((torch.randn(2, 10), torch.randn(2, 16, 12)), gallery, model, k=4)
    strip = ff.Faces(gallery.embeddings, gallery.patches.clone(), grid=(1, 9))   # 9 patches, not 3 x 3
    with pytest.raises(ValueError, match=r"gallery patches must be the model's 3x3 grid .* got a 1x9 grid"):
        ff.vit_rerank(query, strip, model, k=4)
    with pytest.raises(ValueError, match="k=9 exceeds the 8 gallery faces"):
        ff.vit_rerank(query, gallery, model, k=9)
    with pytest.raises(TypeError, match="k must be an int"):
        ff.vit_rerank(query, gallery, model, k=2.0)
    with pytest.raises(ValueError, match="alpha"):
        ff.vit_rerank(query, gallery, model, k=2, alpha=1.5)
    with pytest.raises(ValueError, match="pair_batch must be an int in"):
        ff.vit_rerank(query, gallery, model, k=2, pair_batch=0)
    with pytest.raises(ValueError, match="exclude_self needs the query set to be the gallery"):
        ff.vit_rerank(query, gallery, model, k=2, exclude_self=True)
    with pytest.raises(ValueError, match="model and faces must be on one device, got model on meta"):
        ff.vit_rerank(query, gallery, tiny_vit().to("meta"), k=2)
    bad = query.patches.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="query: .*patches"):
        ff.vit_rerank((query.embeddings, bad), gallery, model, k=2)
    g_bad = gallery.patches.clone()
    g_bad[:, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="gallery patches \\(of the stage-1 candidates\\)"):
        ff.vit_rerank(query, (gallery.embeddings, g_bad), model, k=2)


def test_wrong_model_mode_is_kept_and_no_grad(gen):
    model = tiny_vit().eval()
    query, gallery = random_faces(gen, 2, 12, 3), random_faces(gen, 5, 12, 3)
    res = ff.vit_rerank(query, gallery, model, k=3)
    assert not model.training and not res.distance.requires_grad


# ---------------------------------------------------------------------- fastface identify --reranker
from test_identify import folder, tiny_ckpt  # noqa: E402,F401  (the identify tests' small fixtures)


def saved_vit(path, variant="h2l", token_dim=64, grid=4, backbone="arcface:tiny"):
    from fastface.models.serialization import save_model
    torch.manual_seed(1)
    model = FaceViT(variant=variant, token_dim=token_dim, grid=grid, dim=16, mlp_dim=32, out_dim=8, heads=2,
                    dim_head=8, depth=1, backbone=backbone)
    save_model(str(path), "facevit", model.cfg.to_dict(), model)
    return str(path)


@pytest.mark.parametrize("variant", ["h2l", "h1"])
def test_identify_with_a_facevit_reranker(tiny_ckpt, folder, tmp_path, capsys, variant):
    from fastface.cli import main
    model_path = saved_vit(tmp_path / "vit.pt", variant)
    out, figs = tmp_path / "r.json", tmp_path / "figs"
    assert main(["identify", "--gallery", folder, "--backbone", f"arcface:{tiny_ckpt}", "--grid", "4", "--k", "5",
                 "--reranker", f"facevit:{model_path}", "--json", str(out), "--flows", str(figs), "--n-flows", "2",
                 "--quiet"]) == 0
    assert "heat-map figures: 2 PNGs" in capsys.readouterr().out
    assert sorted(os.listdir(figs)) == ["query_0000.png", "query_0001.png"]
    res = json.loads(out.read_text())
    assert res["reranker"] == f"facevit:{model_path}" and res["n_queries"] == 18
    # the JSON lists are vit_rerank's (leave-one-out) on the same Faces
    from fastface.backbones import load_encoder
    from fastface.data import scan_image_folder
    from fastface.eval.identification import extract_features
    from fastface.eval.jobs import make_faces
    enc = load_encoder(f"arcface:{tiny_ckpt}", "cpu")
    paths, _, _ = scan_image_folder(folder)
    loaded = enc.load_images(paths, progress=False)
    faces = make_faces(*extract_features(enc, loaded["images"]), None, enc.image_size, 4)
    direct = ff.vit_rerank(faces, faces, ff.load(model_path), k=5, exclude_self=True)
    for i, q in enumerate(res["queries"]):
        assert [paths.index(item["path"]) for item in q["stage2"]] == direct.indices[i].tolist()
        vit = torch.tensor([item["vit"] for item in q["stage2"]])
        torch.testing.assert_close(vit, direct.emd[i], atol=1e-5, rtol=1e-5)
        assert all(item["distance"] == pytest.approx(0.7 * item["vit"] + 0.3 * (1 - item["cosine"]), abs=1e-5)
                   for item in q["stage2"])


def test_identify_reranker_checked_before_decoding(tiny_ckpt, folder, tmp_path, monkeypatch, capsys):
    import fastface.data.folder as folder_mod
    from fastface.cli import main
    from fastface.models.serialization import save_model
    monkeypatch.setattr(folder_mod, "open_image", lambda *a, **k: pytest.fail("an image was decoded"))
    base = ["identify", "--gallery", folder, "--backbone", f"arcface:{tiny_ckpt}", "--grid", "4", "--quiet",
            "--reranker"]
    dlib_vit = saved_vit(tmp_path / "dlib.pt", token_dim=128, grid=8, backbone="dlib")
    assert main(base + [f"facevit:{dlib_vit}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"reranker facevit:{dlib_vit} was trained on 8x8x128 tokens (backbone dlib), "
                                     f"but --backbone arcface:{tiny_ckpt} with --grid 4 gives 4x4x64 patches") in err
    grid8 = saved_vit(tmp_path / "g8.pt", grid=8)
    assert main(base + [f"facevit:{grid8}"]) == 2
    assert "trained on 8x8x64 tokens" in capsys.readouterr().err
    assert main(base + ["sinkhorn"]) == 2
    assert "reranker must be emd or facevit:MODEL" in capsys.readouterr().err
    assert main(base + [f"facevit:{tmp_path / 'missing.pt'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    backbone = tmp_path / "bb.pt"
    save_model(str(backbone), "facevit", FaceViT(variant="v", image_size=16, patch_size=8, dim=16, mlp_dim=16,
                                                 out_dim=8, heads=1, dim_head=8).cfg.to_dict(),
               FaceViT(variant="v", image_size=16, patch_size=8, dim=16, mlp_dim=16, out_dim=8, heads=1, dim_head=8))
    assert main(base + [f"facevit:{backbone}"]) == 2
    assert "variant v, which reads pixels" in capsys.readouterr().err
    assert main(base + [f"facevit:{tiny_ckpt}"]) == 2          # a backbone's model.pt, not a facevit
    assert "holds a backbone model, not a facevit" in capsys.readouterr().err


def test_evaluate_identification_with_a_reranker_equals_vit_rerank(gen):
    from fastface.eval.identification import evaluate_identification
    model = tiny_vit("h2", grid=2, token_dim=6)
    faces = random_faces(gen, 11, 6, 2)
    labels = torch.arange(11) % 3
    res = evaluate_identification(faces, faces, labels, labels, k=4, exclude_self=True, batch_size=3,
                                  reranker=model, keep_flows=2)
    whole = ff.vit_rerank(faces, faces, model, k=4, exclude_self=True)
    torch.testing.assert_close(res["stage2_indices"], whole.indices)
    torch.testing.assert_close(res["stage2_emd"], whole.emd)
    assert "flows" not in res
    with pytest.raises(TypeError, match="reranker must be a fastface FaceViT"):
        evaluate_identification(faces, faces, labels, labels, k=4, reranker="emd")


def test_bench_script_runs(capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "bench_facevit.py")
    spec = importlib.util.spec_from_file_location("bench_facevit", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--queries", "1", "--gallery", "12", "--k", "3", "--depths", "1", "--repeats", "1",
                       "--no-compile"]) == 0
    table = capsys.readouterr().out
    for row in ("DeepFace-EMD, fused", "H2L depth 1: vit_rerank", "H2L depth 1: eager PyTorch"):
        assert row in table
    from fastface.models.facevit import count_flops
    cfg = bench.h2l(1, torch.device("cpu")).cfg
    # the shared per-image parts: 2 * 3 pairs' worth less (1 query + 3 distinct candidates)
    n, d = 64, 512
    per_image = 2 * (n * 512 * d + (n + 1) * d * 3 * 64)
    assert bench.vit_work_flops(cfg, 1, 3, 3) == count_flops(cfg, 3) - 2 * per_image

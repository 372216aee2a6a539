"""The identification protocol, image folders, encoders, `fastface identify`, `demo` and the experiments."""
import json
import os

import pytest
import torch

import fastface as ff
from fastface.backbones import ArcFaceEncoder, arcface_resnet18, load_encoder
from fastface.cli import main
from fastface.data import ImageFolder, SynthFaces, export_image_folder, scan_image_folder
from fastface.eval import retrieval_metrics
from fastface.eval.identification import evaluate_identification, pool_patches
from fastface.backbones import BackboneArch, build_backbone
from fastface.models.serialization import save_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    cfg = BackboneArch(image_size=64, channels=3, width=8, stem_pool=False, embedding_dim=32)
    torch.manual_seed(0)
    model = build_backbone(cfg)
    with torch.no_grad():  # non-trivial BN statistics so eval mode is not the identity
        model.train()(torch.rand(8, 3, 64, 64))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_model(str(path), "backbone", cfg.to_dict(), model)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    export_image_folder(SynthFaces(n_identities=6, images_per_identity=3, size=64, seed=3), str(root))
    return str(root)


def random_faces(n, d=16, c=8, side=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ff.Faces(torch.randn(n, d, generator=g), torch.randn(n, c, side, side, generator=g))


def test_stem_pool_off_gives_8x8_map_at_64px():
    emb, fmap = arcface_resnet18(in_channels=3, width=8, input_size=64, stem_pool=False).eval()(torch.rand(2, 3, 64, 64))
    assert fmap.shape == (2, 64, 8, 8) and emb.shape == (2, 512)
    with pytest.raises(ValueError, match="multiple of 16"):
        arcface_resnet18(input_size=72)


def test_pool_patches_is_block_mean():
    x = torch.randn(3, 5, 8, 8)
    p = pool_patches(x, 4)
    assert p.shape == (3, 5, 4, 4)
    torch.testing.assert_close(p[:, :, 1, 2], x[:, :, 2:4, 4:6].mean((2, 3)))
    assert pool_patches(x, 8) is x
    with pytest.raises(ValueError, match="grid must divide"):
        pool_patches(x, 3)


def test_stage1_is_cosine_order_and_alpha0_keeps_it():
    q, g = random_faces(7, seed=1), random_faces(23, seed=2)
    ql, gl = torch.arange(7) % 3, torch.arange(23) % 3
    res = evaluate_identification(q, g, ql, gl, k=9, alpha=0.0)
    cos = torch.nn.functional.normalize(q.embeddings, dim=1) @ torch.nn.functional.normalize(g.embeddings, dim=1).T
    torch.testing.assert_close(res["stage1_indices"], cos.argsort(1, descending=True)[:, :9])
    torch.testing.assert_close(res["stage2_indices"], res["stage1_indices"])
    assert res["stage1"] == retrieval_metrics(res["stage1_indices"], ql, gl)
    hit = (gl[res["stage1_indices"]] == ql[:, None]).any(1).float().mean().item()
    assert res["max_precision"] == pytest.approx(hit)


def test_leave_one_out_in_batches_equals_whole():
    faces = random_faces(13, seed=4)
    labels = torch.arange(13) % 4
    res = evaluate_identification(faces, faces, labels, labels, k=6, exclude_self=True, batch_size=4, keep_flows=5)
    whole = ff.emd_rerank(faces, faces, k=6, exclude_self=True, return_flows=True)
    torch.testing.assert_close(res["stage2_indices"], whole.indices)
    torch.testing.assert_close(res["flows"], whole.flows[:5])
    assert not (res["stage2_indices"] == torch.arange(13)[:, None]).any()


def test_emd_at_stage1_ranks_the_whole_gallery_by_emd():
    q, g = random_faces(3, seed=5), random_faces(11, seed=6)
    res = evaluate_identification(q, g, torch.zeros(3, dtype=torch.long), torch.zeros(11, dtype=torch.long), k=4,
                                  emd_stage1=True)
    d = ff.emd(q.patches[:, None].expand(-1, 11, -1, -1), g.patches[None].expand(3, -1, -1, -1), weighting="apc")
    torch.testing.assert_close(res["stage2_indices"], d.argsort(1)[:, :4])


def test_evaluate_identification_bad_labels():
    q, g = random_faces(3), random_faces(5)
    with pytest.raises(ValueError, match="labels"):
        evaluate_identification(q, g, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("kwargs,exc,words", [
    (dict(k=2.5), TypeError, ["k must be an int", "2.5"]),        # was silently truncated to 2
    (dict(k=0), ValueError, ["k must be an int in [1", "0"]),
    (dict(batch_size=True), TypeError, ["batch_size", "bool"]),
    (dict(keep_flows=-1), ValueError, ["keep_flows", "-1"]),
    (dict(query_labels=torch.tensor([0.5, 1.0, 1.7])), TypeError, ["query_labels", "float32"]),  # was truncated
    (dict(query=torch.randn(3, 16)), TypeError, ["query", "Faces", "Tensor"]),
    (dict(protocol="paper"), ValueError, ["protocol", "'paper'"]),
])
def test_evaluate_identification_bad_arguments_named(kwargs, exc, words):
    args = dict(query=random_faces(3), gallery=random_faces(5), query_labels=torch.tensor([0, 1, 1]),
                gallery_labels=torch.tensor([0, 1, 1, 2, 2]))
    args.update(kwargs)
    with pytest.raises(exc) as info:
        evaluate_identification(args.pop("query"), args.pop("gallery"), args.pop("query_labels"),
                                args.pop("gallery_labels"), **args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_image_folder(folder, tmp_path):
    ds = ImageFolder(folder, size=32, channels=1)
    assert len(ds) == 18 and ds.n_identities == 6 and ds.identity_names == sorted(ds.identity_names)
    item = ds[4]
    assert item["image"].shape == (1, 32, 32) and item["identity"] == 1
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        scan_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(folder, channels=2)
    with pytest.raises(TypeError, match="channels must be an int, got float 1.0"):
        ImageFolder(folder, channels=1.0)
    with pytest.raises(TypeError, match="root must be a path, got int"):
        ImageFolder(123)
    with pytest.raises(TypeError, match="index must be an int, got float 2.0"):
        ds[2.0]


def test_encoders(tiny_ckpt, tmp_path):
    enc = load_encoder(f"arcface:{tiny_ckpt}")
    assert isinstance(enc, ArcFaceEncoder) and enc.grid == 8 and enc.image_size == 64
    emb, fmap = enc.encode(torch.rand(5, 1, 48, 48), batch_size=2)   # grey and resized on the way in
    assert emb.shape == (5, 32) and fmap.shape == (5, 64, 8, 8)
    emb2, _ = enc.encode(torch.rand(5, 1, 48, 48)[:3])
    assert torch.isfinite(emb2).all()
    with pytest.raises(ValueError, match="backbone must be"):
        load_encoder("resnet")
    with pytest.raises(ValueError, match="does not exist"):
        load_encoder(f"arcface:{tmp_path / 'nope.pt'}")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="is not a fastface model"):
        load_encoder(f"arcface:{tmp_path / 'bad.pt'}")


def test_identify_cli_leave_one_out(tiny_ckpt, folder, tmp_path, capsys):
    out, flows = tmp_path / "r.json", tmp_path / "flows"
    assert main(["identify", "--gallery", folder, "--backbone", f"arcface:{tiny_ckpt}", "--occlude", "mask",
                 "--k", "5", "--grid", "4", "--weighting", "lmk", "--json", str(out), "--flows", str(flows), "--n-flows", "2",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "ST1 P@1" in text and "leave-one-out" in text
    res = json.loads(out.read_text())
    assert res["n_queries"] == 18 and res["k"] == 5 and res["grid"] == 4 and res["occlude"] == "mask"
    for stage in ("stage1", "stage2"):
        assert 0 <= res[stage]["p_at_1"] <= 1 and res[stage]["n_queries"] == 18
    assert sorted(os.listdir(flows)) == ["query_0000.png", "query_0001.png"]


def test_identify_cli_queries_folder(tiny_ckpt, folder, tmp_path):
    import shutil
    qroot = tmp_path / "q"
    for name in ("3", "4", "5"):   # copies of gallery images: found first only if names are matched
        (qroot / name).mkdir(parents=True)
        first = sorted(os.listdir(os.path.join(folder, name)))[0]
        shutil.copy(os.path.join(folder, name, first), qroot / name / first)
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", folder, "--queries", str(qroot), "--backbone", f"arcface:{tiny_ckpt}",
                 "--k", "4", "--weighting", "uniform", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_queries"] == 3 and res["stage1"]["p_at_1"] == 1.0
    assert main(["identify", "--gallery", folder, "--queries", str(qroot), "--leave-one-out"]) == 2


def test_demo_runs_with_the_shipped_checkpoint(tmp_path, capsys):
    from fastface.eval.jobs import run_demo
    rows = run_demo(out_dir=str(tmp_path), n_identities=8, k=20, progress=False)
    assert [r["setting"] for r in rows] == [f"occlusion: {o}" for o in ("none", "mask", "sunglasses", "crop")]
    assert all(os.path.getsize(tmp_path / f"flow_{o}.png") > 1000 for o in ("none", "mask", "sunglasses", "crop"))
    assert len(json.loads((tmp_path / "demo.json").read_text())) == 4
    assert "ST2 P@1" in capsys.readouterr().out
    # the shipped backbone learned identity: clean held-out queries are far above chance (1/8)
    assert rows[0]["stage1"]["p_at_1"] > 0.5


def test_experiments_tables(tiny_ckpt, tmp_path):
    from fastface.eval.experiments import OCCLUSIONS, run_emd_experiments
    res = run_emd_experiments(str(tmp_path), backbone=f"arcface:{tiny_ckpt}", n_identities=5, k=8,
                              progress=False, check_identities=6, echo=lambda *_: None)
    assert [r["occlusion"] for r in res["synthfaces_check"]] == ["none", "none"] + list(OCCLUSIONS)
    assert all(0 <= r["accuracy"] <= 1 for r in res["synthfaces_check"])
    # CC is skipped: 32-d embeddings vs 64-channel patches
    assert len(res["table_5_2"]) == 2 * 2 * 4 and len(res["alpha_sweep"]) == 4 * 5
    assert len(res["table_5_3"]) == 6 and len(res["table_5_4"]) == 4
    md = (tmp_path / "experiments.md").read_text()
    for title in ("Table 5.2", "alpha sweep", "Table 5.3", "Table 5.4"):
        assert title in md
    # alpha = 0 re-ranks by cosine alone: stage 2 equals stage 1
    a0 = [r for r in res["alpha_sweep"] if r["alpha"] == 0.0]
    assert all(r["stage1"] == r["stage2"] for r in a0)


# ----------------------------------------------------------------------------- issue 11: 2 and 3

def test_identify_json_has_each_querys_ranked_lists(tiny_ckpt, folder, tmp_path):
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", folder, "--backbone", f"arcface:{tiny_ckpt}", "--k", "4",
                 "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert len(res["queries"]) == 18
    paths, labels, names = scan_image_folder(folder)
    for i, q in enumerate(res["queries"]):
        assert q["path"] == paths[i] and q["identity"] == names[labels[i]]
        s1, s2 = q["stage1"], q["stage2"]
        assert len(s1) == len(s2) == 4
        assert all(item["identity"] == names[labels[paths.index(item["path"])]] for item in s1 + s2)
        assert q["path"] not in [item["path"] for item in s1 + s2]           # leave-one-out
        cos = [item["cosine"] for item in s1]
        assert cos == sorted(cos, reverse=True)
        dist = [item["distance"] for item in s2]
        assert dist == sorted(dist)
        assert {item["path"] for item in s1} == {item["path"] for item in s2}  # stage 2 re-ranks stage 1's k
        for item in s2:
            assert item["distance"] == pytest.approx(0.7 * item["emd"] + 0.3 * (1 - item["cosine"]), abs=1e-5)
    # P@1 of the lists agrees with the aggregate metrics
    p1 = sum(q["stage2"][0]["identity"] == q["identity"] for q in res["queries"]) / 18
    assert res["stage2"]["p_at_1"] == pytest.approx(p1)


def test_identify_skips_unreadable_files(tiny_ckpt, folder, tmp_path, capsys):
    import shutil
    root = tmp_path / "g"
    shutil.copytree(folder, root)
    good = sorted((root / "0").iterdir())[0]
    (root / "0" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (root / "1" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", str(root), "--backbone", f"arcface:{tiny_ckpt}", "--k", "4",
                 "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_unreadable"] == 2 and res["n_queries"] == 18
    assert "2 unreadable files skipped" in capsys.readouterr().out
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable"):
        assert str(root / "0" / "truncated.png") not in ImageFolder(root, size=32).paths
    ds = ImageFolder(root, size=32, skip_unreadable=False)
    bad = ds.paths.index(str(root / "0" / "truncated.png"))
    from fastface.data import UnreadableImage
    with pytest.raises(UnreadableImage, match="truncated.png"):
        ds[bad]
    with pytest.raises(TypeError, match="index must be an int, got float"):
        ds[1.5]


def test_identify_arguments_checked_before_decoding(tiny_ckpt, folder, monkeypatch, capsys, tmp_path):
    import fastface.data.folder as folder_mod
    cfg = BackboneArch(image_size=64, channels=3, width=8, stem_pool=True, embedding_dim=32)   # 4x4 map
    path = tmp_path / "m4.pt"
    save_model(str(path), "backbone", cfg.to_dict(), build_backbone(cfg))
    monkeypatch.setattr(folder_mod, "open_image", lambda *a, **k: pytest.fail("an image was decoded"))
    assert main(["identify", "--gallery", folder, "--backbone", f"arcface:{path}", "--grid", "8", "--quiet"]) == 2
    assert "grid 8 does not divide" in capsys.readouterr().err
    assert main(["identify", "--gallery", folder, "--backbone", "dlib:5", "--quiet"]) == 2
    assert "dlib:LEVEL" in capsys.readouterr().err


def _official_reference(q, g, ql, gl, st2, k, self_last):
    """The official test_face.py loop, from its public code: approx order over the whole gallery (own
    image set to -100 in leave-one-out), the re-ranked top k then approx_tops[k:], get_metrics_rank."""
    sims = torch.nn.functional.normalize(q.embeddings, dim=1) @ torch.nn.functional.normalize(g.embeddings, dim=1).T
    r1 = rp = mapr = 0.0
    for i in range(len(ql)):
        s = sims[i].clone()
        if self_last:
            s[i] = -100
        approx = torch.argsort(s, descending=True, stable=True)
        tops = torch.cat([st2[i], approx[k:]])
        num_pos = int((gl == ql[i]).sum())
        eq = (gl[tops[:num_pos]] == ql[i]).float()
        r1 += float(gl[tops[0]] == ql[i])
        rp += eq.sum().item() / num_pos
        mapr += (eq.cumsum(0) * eq / torch.arange(1, num_pos + 1)).mean().item()
    n = len(ql)
    return r1 / n, rp / n, mapr / n


@pytest.mark.parametrize("loo", [False, True])
def test_official_protocol_equals_the_official_loop(loo):
    g = random_faces(29, seed=8)
    gl = torch.arange(29) % 6
    gl[-1] = 6                                       # a singleton identity: official counts it (R = 1, self)
    q, ql = (g, gl) if loo else (random_faces(9, seed=9), torch.arange(9) % 7)
    res = evaluate_identification(q, g, ql, gl, k=7, exclude_self=loo, batch_size=4, protocol="official")
    r1, rp, mapr = _official_reference(q, g, ql, gl, res["stage2_indices"], 7, loo)
    assert res["stage2"]["p_at_1"] == pytest.approx(r1)
    assert res["stage2"]["r_precision"] == pytest.approx(rp)
    assert res["stage2"]["map_at_r"] == pytest.approx(mapr)
    assert res["stage2"]["n_queries"] == len(ql) and res["protocol"] == "official"
    # stage 1: the approx order of the whole gallery (the re-ranked head is then stage 1's own top k)
    r1, rp, mapr = _official_reference(q, g, ql, gl, res["stage1_indices"], 7, loo)
    assert (res["stage1"]["p_at_1"], res["stage1"]["r_precision"], res["stage1"]["map_at_r"]) == pytest.approx(
        (r1, rp, mapr))
    strict = evaluate_identification(q, g, ql, gl, k=7, exclude_self=loo, batch_size=4)
    torch.testing.assert_close(strict["stage2_indices"], res["stage2_indices"])   # same rankings, other scores
    if loo:   # strict skips the singleton (no relevant face left); official scores it as a miss
        assert strict["stage2"]["n_skipped"] == 1 and res["stage2"]["n_skipped"] == 0
    else:     # separate queries with every R <= k: both protocols give the same numbers (docs/EXPERIMENTS.md)
        assert int(torch.bincount(gl).max()) <= 7
        for stage in ("stage1", "stage2"):
            assert strict[stage] == pytest.approx(res[stage])


def test_official_protocol_hand_computed():
    # leave-one-out over labels [0, 0, 1]: embeddings make 0 <-> 1 nearest neighbours, 2 alone
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    faces = ff.Faces(e, torch.rand(3, 4, 2, 2))
    lab = torch.tensor([0, 0, 1])
    res = evaluate_identification(faces, faces, lab, lab, k=1, exclude_self=True, protocol="official")
    # queries 0, 1: rank [other, ...], R = 2 (self counts, ranked last): P@1 1, R-Prec 1/2, MAP@R 1/2.
    # query 2: R = 1 (itself, last): 0, 0, 0
    assert res["stage1"]["p_at_1"] == pytest.approx(2 / 3)
    assert res["stage1"]["r_precision"] == pytest.approx(1 / 3)
    assert res["stage1"]["map_at_r"] == pytest.approx(1 / 3)
    strict = evaluate_identification(faces, faces, lab, lab, k=1, exclude_self=True)
    assert strict["stage1"]["p_at_1"] == 1.0 and strict["stage1"]["n_skipped"] == 1


def test_official_protocol_keeps_an_occluded_querys_original(tiny_ckpt, folder, tmp_path):
    runs = {}
    for protocol in ("strict", "official"):
        out = tmp_path / f"{protocol}.json"
        assert main(["identify", "--gallery", folder, "--backbone", f"arcface:{tiny_ckpt}", "--occlude", "sunglasses",
                     "--k", "4", "--protocol", protocol, "--json", str(out), "--quiet"]) == 0
        runs[protocol] = json.loads(out.read_text())
    own = lambda q: q["path"] in [item["path"] for item in q["stage1"]]   # noqa: E731
    assert not any(own(q) for q in runs["strict"]["queries"])
    assert sum(own(q) for q in runs["official"]["queries"]) >= 9            # its clean self is usually near the top
    assert runs["official"]["protocol"] == "official"
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_identification(random_faces(2), random_faces(3), torch.zeros(2, dtype=torch.long),
                                torch.zeros(3, dtype=torch.long), protocol="dissertation")

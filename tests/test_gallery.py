"""fastface.Gallery: persistence, verification, atomic writes, resumable builds, FAISS stage 1,
open-set search, the CLI and the Ray jobs."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import fastface as ff
from fastface.backbones import BackboneArch, build_backbone
from fastface.cli import main
from fastface.data import SynthFaces, export_image_folder
from fastface.gallery import Gallery, GalleryError
from fastface.gallery import builder as gbuilder
from fastface.gallery import index as gindex
from fastface.gallery import manifest as gmanifest
from fastface.models.serialization import save_model


def clustered(n, d=24, c=12, side=3, ids=None, seed=0):
    """Face-like (embeddings (n, d), patches (n, c, side, side), names): identity centres plus noise."""
    g = torch.Generator().manual_seed(seed)
    ids = ids or max(1, n // 4)
    who = torch.arange(n) % ids
    emb = torch.randn(ids, d, generator=g)[who] + 0.4 * torch.randn(n, d, generator=g)
    pat = torch.randn(ids, c, side, side, generator=g)[who] + 0.6 * torch.randn(n, c, side, side, generator=g)
    return emb, pat, [f"id{int(i)}" for i in who]


def noisy(emb, pat, rows, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return (emb[rows] + scale * torch.randn(emb[rows].shape, generator=g),
            pat[rows] + scale * torch.randn(pat[rows].shape, generator=g))


def save_ckpt(path, seed):
    cfg = BackboneArch(image_size=64, channels=3, width=8, stem_pool=False, embedding_dim=32)
    torch.manual_seed(seed)
    model = build_backbone(cfg)
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 64, 64))
    save_model(str(path), "backbone", cfg.to_dict(), model)
    return str(path)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_ckpt(tmp_path_factory.mktemp("ckpt") / "model.pt", 0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    export_image_folder(SynthFaces(n_identities=5, images_per_identity=3, size=64, seed=3), str(root))
    return str(root)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_ckpt, photos):
    """The local build of `photos` (what other builds are compared with)."""
    return Gallery.build(tmp_path_factory.mktemp("built") / "g", photos, f"arcface:{tiny_ckpt}", progress=False)


# ---- emd_rerank with a stage 1 made elsewhere ----------------------------------------------------
def test_emd_rerank_candidates_equals_its_own_stage1():
    emb, pat, _ = clustered(41)
    q = noisy(emb, pat, [3, 7, 20])
    own = ff.emd_rerank(q, (emb, pat), k=9)
    given = ff.emd_rerank(q, (emb, pat), k=9, candidates=own.stage1_indices)
    assert torch.equal(given.indices, own.indices)
    assert_close(given.distance, own.distance)
    assert_close(given.cosine, own.cosine)


@pytest.mark.parametrize("cand, exc, words", [
    (torch.zeros(3, 4), TypeError, "candidates must be an int64"),
    (torch.zeros(2, 4, dtype=torch.int64), ValueError, "candidates must have shape (3, k)"),
    (torch.full((3, 4), 41, dtype=torch.int64), ValueError, "[0, 41)"),
])
def test_emd_rerank_bad_candidates_named(cand, exc, words):
    emb, pat, _ = clustered(41)
    with pytest.raises(exc, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ff.emd_rerank(noisy(emb, pat, [0, 1, 2]), (emb, pat), candidates=cand)


# ---- round trips -----------------------------------------------------------------------------
def test_build_save_load_search_equals_in_memory_emd_rerank(tmp_path):
    emb, pat, names = clustered(157)
    paths = [f"/photos/{i}.png" for i in range(157)]
    Gallery.from_tensors(tmp_path / "g", emb, pat, names, paths=paths)
    g = Gallery.load(tmp_path / "g")
    assert len(g) == 157 and g.grid == (3, 3) and g.patches.dtype == np.float16
    q = noisy(emb, pat, [0, 5, 77, 100, 156])
    res = g.search(q, k=13, batch_size=2)                               # batched = one call
    ref = ff.emd_rerank(q, (emb, pat.half()), k=13)                     # the store holds fp16 patches
    assert torch.equal(res.items, ref.indices)
    assert torch.equal(res.stage1_items, ref.stage1_indices)
    assert_close(res.distance, ref.distance)
    assert_close(res.emd, ref.emd)
    assert_close(res.cosine, ref.cosine)
    assert_close(torch.as_tensor(res.stage1_cosine), ff.stage1_topk(q[0], emb, 13)[0])
    assert res.identities[2][0] == names[int(ref.indices[2, 0])]
    assert res.paths[2][0] == paths[int(ref.indices[2, 0])]
    rec = res.record(1, top=3)
    assert rec["identity"] == names[int(ref.indices[1, 0])] and len(rec["matches"]) == 3


def test_loading_never_unpickles(tmp_path, monkeypatch):
    emb, pat, names = clustered(30)
    Gallery.from_tensors(tmp_path / "g", emb, pat, names, pca=6)

    def boom(*a, **k):
        raise AssertionError("a gallery must never be unpickled")
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    g = Gallery.load(tmp_path / "g")
    assert g.search(noisy(emb, pat, [1]), k=4).items.shape == (1, 4)


def test_add_remove_keep_item_ids_and_persist(tmp_path):
    emb, pat, names = clustered(60)
    g = Gallery.from_tensors(tmp_path / "g", emb[:40], pat[:40], names[:40])
    new = g.add((emb[40:], pat[40:]), names[40:], paths=[f"p{i}" for i in range(40, 60)])
    assert new.tolist() == list(range(40, 60))
    assert g.remove(identity="id3") == (60 - 3 + 14) // 15
    assert g.remove(items=[0, 1]) == 2
    g = Gallery.load(tmp_path / "g")
    assert len(g) == 60 - 4 - 2 and g.count == 60
    res = g.search(noisy(emb, pat, [3, 18]), k=len(g))
    returned = set(res.items.reshape(-1).tolist())
    assert not returned & {0, 1, 3, 18, 33, 48}
    assert res.paths[0][0] is None or res.paths[0][0].startswith("p")
    ref = ff.emd_rerank(noisy(emb, pat, [3, 18]), (emb[2:], pat[2:].half()), k=len(g) + 4)
    keep = [int(i) + 2 for i in ref.indices[1] if names[int(i) + 2] != "id3"]
    assert res.items[1].tolist() == keep


def test_pca_with_every_channel_keeps_the_ranking(tmp_path):
    emb, pat, names = clustered(80, c=12)
    full = Gallery.from_tensors(tmp_path / "full", emb, pat, names)
    rot = Gallery.from_tensors(tmp_path / "rot", emb, pat, names, pca=12)   # an orthogonal rotation
    small = Gallery.from_tensors(tmp_path / "small", emb, pat, names, pca=4)
    assert small.patches.shape == (80, 9, 4)
    q = noisy(emb, pat, [2, 9, 40])
    a, b = full.search(q, k=10), rot.search(q, k=10)
    assert_close(b.distance, a.distance, atol=2e-3, rtol=0)
    assert small.search(q, k=10).distance.shape == (3, 10)


# ---- verification ----------------------------------------------------------------------------
def test_corrupted_or_truncated_files_are_refused(tmp_path):
    emb, pat, names = clustered(50)
    Gallery.from_tensors(tmp_path / "g", emb, pat, names)
    path = tmp_path / "g" / "patches.f16"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(GalleryError, match=r"patches\.f16.*corrupted"):
        Gallery.load(tmp_path / "g")
    Gallery.load(tmp_path / "g", verify="quick")          # quick: sizes only for the big stores
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(GalleryError, match="truncated"):
        Gallery.load(tmp_path / "g", verify="quick")
    man = tmp_path / "g" / "manifest.json"
    m = json.loads(man.read_text())
    m["version"] = 99
    man.write_text(json.dumps(m))
    with pytest.raises(GalleryError, match="format version 99"):
        Gallery.load(tmp_path / "g")
    man.write_text("{not json")
    with pytest.raises(GalleryError, match="unreadable or corrupted"):
        Gallery.load(tmp_path / "g")
    with pytest.raises(GalleryError, match="not a fastface gallery"):
        Gallery.load(tmp_path)


def test_mismatched_backbone_is_refused(tmp_path, tiny_ckpt, photos):
    ckpt = save_ckpt(tmp_path / "model.pt", 0)
    g = Gallery.build(tmp_path / "g", photos, f"arcface:{ckpt}", progress=False)
    assert g.manifest["weights_sha256"] and g.manifest["backbone"] == f"arcface:{ckpt}"
    Gallery.load(tmp_path / "g", backbone=f"arcface:{ckpt}")
    with pytest.raises(GalleryError, match="built with backbone"):
        Gallery.load(tmp_path / "g", backbone=f"arcface:{tiny_ckpt}")
    save_ckpt(ckpt, 1)                                             # other weights, same file name
    with pytest.raises(GalleryError, match="SHA-256"):
        Gallery.load(tmp_path / "g", backbone=f"arcface:{ckpt}")
    with pytest.raises(GalleryError, match="SHA-256"):
        Gallery.load(tmp_path / "g").search(photos, k=3)           # query photos need the same weights


# ---- atomic writes, resumable builds ----------------------------------------------------------
def test_killed_add_leaves_the_previous_gallery(tmp_path, monkeypatch):
    emb, pat, names = clustered(70)
    g = Gallery.from_tensors(tmp_path / "g", emb[:50], pat[:50], names[:50], index="flat")
    q = noisy(emb, pat, [4, 60])
    before = g.search(q, k=8)
    real = gmanifest.write_json_atomic

    def killed(path, obj):
        if str(path).endswith("manifest.json"):
            raise KeyboardInterrupt("killed before the manifest commit")
        return real(path, obj)
    monkeypatch.setattr(gmanifest, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        g.add((emb[50:], pat[50:]), ["new"] * 20)
    monkeypatch.setattr(gmanifest, "write_json_atomic", real)
    assert os.path.getsize(tmp_path / "g" / "embeddings.f32") > 50 * 24 * 4    # the rows did reach the disk
    for h in (g, Gallery.load(tmp_path / "g")):                      # in memory and reloaded: as before
        assert len(h) == 50 and "new" not in h.identity_names
        assert torch.equal(h.search(q, k=8).items, before.items)
    h = Gallery.load(tmp_path / "g")
    h.add((emb[50:], pat[50:]), names[50:])                          # the next add overwrites the debris
    assert len(Gallery.load(tmp_path / "g")) == 70
    full = Gallery.from_tensors(tmp_path / "full", emb, pat, names)
    assert torch.equal(Gallery.load(tmp_path / "g").search(q, k=8).items, full.search(q, k=8).items)


def test_one_writer_at_a_time_and_writers_see_each_others_commits(tmp_path):
    emb, pat, names = clustered(30)
    a = Gallery.from_tensors(tmp_path / "g", emb[:20], pat[:20], names[:20])
    b = Gallery.load(tmp_path / "g")
    b.add((emb[20:25], pat[20:25]), names[20:25])
    a.add((emb[25:], pat[25:]), names[25:])              # a catches up with b's commit first
    g = Gallery.load(tmp_path / "g")
    assert len(g) == 30 and g.identity_of(range(30)) == names
    with a.writing():
        with pytest.raises(GalleryError, match="being written by another process"):
            b.remove(items=[0])


def test_killed_build_is_usable_and_resumes(tmp_path, tiny_ckpt, photos, built, monkeypatch):
    spec = f"arcface:{tiny_ckpt}"
    real = gbuilder.encode_paths
    calls = []

    def crash_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed mid-build")
        return real(*a, **k)
    monkeypatch.setattr(gbuilder, "encode_paths", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        Gallery.build(tmp_path / "g", photos, spec, chunk=4, progress=False)
    part = Gallery.load(tmp_path / "g")
    assert len(part) == 8 and part.manifest["build"]["done"] == 8
    assert part.search(part.encode_images(photos)[0], k=3).items.shape == (15, 3)   # usable meanwhile
    calls.clear()
    monkeypatch.setattr(gbuilder, "encode_paths", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    g = Gallery.build(tmp_path / "g", photos, spec, chunk=4, progress=False)
    assert len(calls) == 2 and g.manifest["build"] is None                          # chunks 8..12, 12..15
    fresh = built                                                                   # one chunk
    assert len(g) == len(fresh) == 15
    assert_close(torch.tensor(np.asarray(g.embeddings)), torch.tensor(np.asarray(fresh.embeddings)))
    assert np.array_equal(np.asarray(g.patches), np.asarray(fresh.patches))
    assert g.identity_of(range(15)) == fresh.identity_of(range(15))
    with pytest.raises(ValueError, match="finished gallery"):
        Gallery.build(tmp_path / "g", photos, spec, progress=False)


def test_build_skips_and_reports_unreadable_photos(tmp_path, tiny_ckpt, photos):
    import shutil
    root = tmp_path / "photos"
    shutil.copytree(photos, root)
    first = sorted(os.listdir(root))[0]
    (root / first / "broken.png").write_bytes(b"not an image")
    g = Gallery.build(tmp_path / "g", root, f"arcface:{tiny_ckpt}", progress=False)
    assert len(g) == 15 and len(g.manifest["build_report"]["unreadable"]) == 1


def test_flat_folder_with_csv_equals_identity_folders(tmp_path, tiny_ckpt, photos, built):
    import shutil
    from fastface.data import scan_image_folder
    paths, labels, names = scan_image_folder(photos)
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["file,identity"]
    for j, (p, lab) in enumerate(zip(paths, labels)):
        shutil.copy(p, flat / f"img{j:03d}.png")
        rows.append(f"img{j:03d}.png,{names[lab]}")
    (tmp_path / "ids.csv").write_text("\n".join(rows) + "\n")
    spec = f"arcface:{tiny_ckpt}"
    a = Gallery.build(tmp_path / "a", flat, spec, csv=tmp_path / "ids.csv", progress=False)
    b = built
    assert a.identity_of(range(15)) == b.identity_of(range(15))
    assert np.array_equal(np.asarray(a.patches), np.asarray(b.patches))
    (tmp_path / "bad.csv").write_text("name,who\nimg000.png,x\n")
    with pytest.raises(ValueError, match="needs the columns path"):
        Gallery.build(tmp_path / "c", flat, spec, csv=tmp_path / "bad.csv", progress=False)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(backbone="resnet"), ValueError, "backbone must be"),
    (dict(images="/no/such/folder"), ValueError, "images must be a folder"),
    (dict(chunk=0), ValueError, "chunk"),
    (dict(grid=3), ValueError, "grid 3 does not divide"),
])
def test_build_bad_arguments_named(tmp_path, tiny_ckpt, photos, kwargs, exc, words):
    args = dict(images=photos, backbone=f"arcface:{tiny_ckpt}", progress=False) | kwargs
    with pytest.raises(exc, match=words):
        Gallery.build(tmp_path / "g", **args)


# ---- stage 1 options -------------------------------------------------------------------------
def test_faiss_options_against_exact(tmp_path):
    pytest.importorskip("faiss")
    emb, pat, names = clustered(1200, d=32, c=4, side=2, ids=120)
    q = noisy(emb, pat, list(range(0, 1200, 61)), scale=0.5)
    exact = Gallery.from_tensors(tmp_path / "flat", emb, pat, names)
    want = exact.search(q, k=20).stage1_items

    def recall(g, **kw):
        got = g.search(q, k=20, **kw).stage1_items
        return np.mean([len(set(a.tolist()) & set(b.tolist())) / 20 for a, b in zip(got, want)])
    ivf = Gallery.from_tensors(tmp_path / "ivf", emb, pat, names, index="ivf", nlist=16, nprobe=2)
    assert ivf.manifest["index"]["file"].endswith(".faiss")
    assert recall(ivf, nprobe=16) == 1.0                   # every list probed: exact
    assert 0.3 < recall(ivf, nprobe=1) < recall(ivf, nprobe=4) <= 1.0
    hnsw = Gallery.from_tensors(tmp_path / "hnsw", emb, pat, names, index="hnsw", ef_search=64)
    assert recall(hnsw) >= 0.9
    pq = Gallery.from_tensors(tmp_path / "pq", emb, pat, names, index="ivf-pq", nlist=8, nprobe=8, pq=8,
                             pq_bits=4)          # 16 centroids per sub-quantizer: quick to train
    assert recall(pq) >= 0.5
    reloaded = Gallery.load(tmp_path / "ivf")
    assert torch.equal(reloaded.search(q, k=20, nprobe=4).stage1_items, ivf.search(q, k=20, nprobe=4).stage1_items)
    assert torch.equal(ivf.search(q, k=20, nprobe=1, exact=True).stage1_items, want)
    exact.set_index("ivf", nlist=16, nprobe=4)                     # re-index in place, atomically
    assert torch.equal(Gallery.load(tmp_path / "flat").search(q, k=20).stage1_items,
                       ivf.search(q, k=20, nprobe=4).stage1_items)
    exact.set_index("flat")
    assert torch.equal(Gallery.load(tmp_path / "flat").search(q, k=20).stage1_items, want)
    assert not [f for f in os.listdir(tmp_path / "flat") if f.endswith(".faiss")]


def test_exact_search_without_faiss_equals_faiss(tmp_path, monkeypatch):
    emb, pat, names = clustered(120)
    g = Gallery.from_tensors(tmp_path / "g", emb, pat, names)
    q = noisy(emb, pat, [1, 50, 119])
    a = g.search(q, k=11)
    monkeypatch.setattr(gindex, "have_faiss", lambda: False)
    b = Gallery.load(tmp_path / "g").search(q, k=11)
    assert torch.equal(a.items, b.items) and torch.equal(a.stage1_items, b.stage1_items)
    assert_close(a.distance, b.distance)


def test_approximate_index_without_faiss_says_what_to_install(tmp_path, monkeypatch):
    import sys
    emb, pat, names = clustered(40)
    monkeypatch.setitem(sys.modules, "faiss", None)          # import faiss now raises ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        Gallery.from_tensors(tmp_path / "g", emb, pat, names, index="ivf")


def test_open_set_threshold(tmp_path):
    emb, pat, names = clustered(40)
    g = Gallery.from_tensors(tmp_path / "g", emb, pat, names)
    stranger = (torch.randn(1, 24, generator=torch.Generator().manual_seed(9)),
                torch.randn(1, 12, 3, 3, generator=torch.Generator().manual_seed(9)))
    known = noisy(emb, pat, [6], scale=0.05)
    q = (torch.cat([known[0], stranger[0]]), torch.cat([known[1], stranger[1]]))
    d = g.search(q, k=5).distance[:, 0]
    assert d[0] < d[1]
    res = g.search(q, k=5, threshold=float(d[0] + d[1]) / 2)
    assert res.known.tolist() == [True, False]
    assert res.identity(0) == names[6] and res.identity(1) == "unknown"
    assert res.identities[1][0] != "unknown"                      # the ranking is still there


@pytest.mark.parametrize("call, exc, words", [
    (lambda g, q: g.search(q, k=0), ValueError, "k must be in"),
    (lambda g, q: g.search(q, k=41), ValueError, "k must be in"),
    (lambda g, q: g.search(q, k=2.0), TypeError, "k must be an int"),
    (lambda g, q: g.search((q[0][:, :5], q[1]), k=3), ValueError, "query"),
    (lambda g, q: g.search((q[0][:0], q[1][:0]), k=3), ValueError, "query is empty"),
    (lambda g, q: g.search(q, k=3, alpha=2), ValueError, "alpha"),
    (lambda g, q: g.search(q, k=3, threshold="x"), TypeError, "threshold"),
    (lambda g, q: g.search(q, k=3, weighting="lmk"), ValueError, "landmarks"),
    (lambda g, q: g.search(q, k=3, weighting="xyz"), ValueError, "weighting must be one of"),
    (lambda g, q: g.search(q, k=3, eps=0), ValueError, "eps"),
    (lambda g, q: g.search(q, k=3, impl="gpu"), ValueError, "impl must be one of"),
    (lambda g, q: g.search("/no/such/dir", k=3), ValueError, "images"),
    (lambda g, q: g.add(q, ["a"]), ValueError, "identities must name each of the 2"),
    (lambda g, q: g.add((q[0], q[1][:, :4]), ["a", "b"]), ValueError, "patches must be"),
    (lambda g, q: g.remove(identity="nobody"), ValueError, "identity 'nobody'"),
    (lambda g, q: g.remove(items=[40]), ValueError, "items must be item ids in"),
])
def test_bad_input_names_the_argument(tmp_path, call, exc, words):
    emb, pat, names = clustered(40)
    g = Gallery.from_tensors(tmp_path / "g", emb, pat, names)
    with pytest.raises(exc, match=words):
        call(g, noisy(emb, pat, [0, 1]))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(index="bogus"), ValueError, "index must be one of"),
    (dict(index="ivf", nprobe=0), ValueError, "nprobe must be"),
    (dict(pca=13), ValueError, "pca must be"),
])
def test_bad_creation_arguments_named(tmp_path, kwargs, exc, words):
    emb, pat, names = clustered(40)
    with pytest.raises(exc, match=words):
        Gallery.from_tensors(tmp_path / "g", emb, pat, names, **kwargs)


def test_out_must_be_new(tmp_path):
    emb, pat, names = clustered(10)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x").write_text("x")
    with pytest.raises(ValueError, match="out .* exists"):
        Gallery.from_tensors(tmp_path / "g", emb, pat, names)


# ---- command line ----------------------------------------------------------------------------
def test_cli_build_add_info_search(tmp_path, tiny_ckpt, photos, capsys):
    import shutil
    spec = f"arcface:{tiny_ckpt}"
    names = sorted(os.listdir(photos))
    part = tmp_path / "part"
    for n in names[:3]:
        shutil.copytree(os.path.join(photos, n), part / n)
    rest = tmp_path / "rest"
    for n in names[3:]:
        shutil.copytree(os.path.join(photos, n), rest / n)
    g = str(tmp_path / "G")
    assert main(["gallery", "build", "--images", str(part), "--backbone", spec, "--out", g, "--quiet"]) == 0
    assert main(["gallery", "add", g, "--images", str(rest), "--quiet"]) == 0
    assert main(["gallery", "info", g, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("(now 15)")[-1].split("\n", 1)[1])
    assert info["faces"] == 15 and info["identities"] == 5 and info["backbone"] == spec
    query = os.path.join(photos, names[4])
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert main(["search", g, "--images", query, "--k", "6", "--json", str(out_json), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "top-5" in printed and printed.count("\n") == 3
    got = json.loads(out_json.read_text())
    assert len(got["queries"]) == 3
    for q in got["queries"]:                       # each photo finds itself among its matches
        tail = os.path.join(*q["query"].split(os.sep)[-2:])
        assert any(m["path"].endswith(tail) for m in q["matches"])
        assert q["identity"] == q["matches"][0]["identity"] and len(q["matches"]) == 6
    assert main(["search", g, "--images", query, "--k", "6", "--threshold", "-1", "--csv", str(out_csv),
                 "--quiet"]) == 0
    rows = out_csv.read_text().splitlines()
    assert len(rows) == 4 and rows[1].split(",")[1] == "unknown"
    assert main(["search", str(tmp_path / "nope"), "--images", query]) == 2
    assert "error" in capsys.readouterr().err


# ---- Ray -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_ray_build_and_search_equal_local(tmp_path, tiny_ckpt, photos, built, ray_local):
    from fastface.gallery.ray_jobs import ray_build, ray_search
    spec = f"arcface:{tiny_ckpt}"
    local = built
    dist = ray_build(tmp_path / "ray", photos, spec, batch_size=4, num_encoders=2, progress=False)
    assert len(dist) == len(local) == 15
    assert dist.identity_of(range(15)) == local.identity_of(range(15))
    assert dist.paths.many(range(15)) == local.paths.many(range(15))
    assert_close(torch.tensor(np.asarray(dist.embeddings)), torch.tensor(np.asarray(local.embeddings)))
    assert_close(torch.tensor(np.asarray(dist.patches)).float(), torch.tensor(np.asarray(local.patches)).float())
    rows = ray_search(tmp_path / "ray", photos, k=4, batch_size=8, progress=False)
    ref = local.search(photos, k=4)
    assert [r["query"] for r in rows] == ref.queries
    assert [r["identity"] for r in rows] == [ref.identity(i) for i in range(len(ref))]
    assert_close(torch.tensor([r["score"] for r in rows]), ref.distance[:, 0])

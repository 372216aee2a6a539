"""emd_rerank: two-stage identification, backends vs twin, exclude_self, chunking, official mode."""
import pytest
import torch
from torch.testing import assert_close

import fastface as ff
from fastface.reference import patch_cost_ref


def make_gallery(gen, G=40, n=16, C=32, D=24):
    emb = torch.randn(G, D, generator=gen)
    patches = torch.randn(G, C, 4, 4, generator=gen)  # (G, C, H, W) feature maps
    return emb, patches


def noisy(gen, emb, patches, idx, scale=0.3):
    return (emb[idx] + scale * torch.randn(emb[idx].shape, generator=gen),
            patches[idx] + scale * torch.randn(patches[idx].shape, generator=gen))


@pytest.mark.parametrize("weighting", ["uniform", "apc", "sc", "cc", "lmk"])
def test_every_impl_matches_twin(gen, impl_device, weighting):
    impl, device = impl_device
    emb, patches = make_gallery(gen, D=32)
    lm = torch.rand(40, 20, 2, generator=gen) * 4
    q_emb, q_patches = noisy(gen, emb, patches, [3, 7, 11])
    gal = ff.Faces(emb.to(device), patches.to(device), landmarks=lm.to(device))
    qry = ff.Faces(q_emb.to(device), q_patches.to(device), landmarks=lm[[3, 7, 11]].to(device))
    got = ff.emd_rerank(qry, gal, k=9, weighting=weighting, impl=impl, return_flows=True)
    ref = ff.emd_rerank(qry, gal, k=9, weighting=weighting, impl="torch", return_flows=True)
    assert_close(got.emd.cpu(), ref.emd, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.stage1_indices.cpu(), ref.stage1_indices)
    assert torch.equal(got.indices.cpu(), ref.indices)
    assert_close(got.flows.cpu(), ref.flows, rtol=1e-3, atol=1e-6)


def test_stage2_definition_and_order(gen):
    emb, patches = make_gallery(gen)
    q_emb, q_patches = noisy(gen, emb, patches, [5])
    res = ff.emd_rerank((q_emb, q_patches), (emb, patches), k=10, alpha=0.7, impl="cpu")
    assert res.indices.shape == (1, 10)
    cand = patches[res.indices[0]].flatten(2).transpose(1, 2)
    x = q_patches[0].flatten(1).T
    direct = ff.emd(x.expand(10, -1, -1), cand, weighting="apc", impl="torch")
    assert_close(res.emd[0], direct, rtol=1e-4, atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(q_emb, emb[res.indices[0]])
    assert_close(res.cosine[0], cos, rtol=1e-5, atol=1e-6)
    assert_close(res.distance, 0.7 * res.emd + 0.3 * (1 - res.cosine))
    assert bool((res.distance[:, 1:] >= res.distance[:, :-1]).all())
    assert set(res.indices[0].tolist()) == set(res.stage1_indices[0].tolist())


def test_alpha_zero_keeps_stage1_order(gen):
    emb, patches = make_gallery(gen)
    q = noisy(gen, emb, patches, [1, 2])
    res = ff.emd_rerank(q, (emb, patches), k=12, alpha=0.0, impl="cpu")
    assert torch.equal(res.indices, res.stage1_indices)


def test_single_query_shapes(gen):
    emb, patches = make_gallery(gen)
    res = ff.emd_rerank((emb[0], patches[0]), (emb, patches), k=5, impl="cpu")
    assert res.indices.shape == (5,) and res.indices[0] == 0
    res2 = ff.emd_rerank((emb[0], patches[0].flatten(1).T), (emb, patches), k=5, impl="cpu")
    assert torch.equal(res.indices, res2.indices)


def test_exclude_self_leave_one_out(gen):
    emb, patches = make_gallery(gen, G=20)
    res = ff.emd_rerank((emb, patches), (emb, patches), k=19, exclude_self=True, impl="cpu")
    rows = torch.arange(20).unsqueeze(1)
    assert not bool((res.indices == rows).any())
    assert res.indices.shape == (20, 19)
    with pytest.raises(ValueError, match="exceeds"):
        ff.emd_rerank((emb, patches), (emb, patches), k=20, exclude_self=True)


def test_chunked_stage1_equals_unchunked(gen):
    g = torch.randn(1000, 16, generator=gen)
    q = torch.randn(7, 16, generator=gen)
    s_full, i_full = ff.stage1_topk(q, g, 25, chunk=10**6)
    s_chunk, i_chunk = ff.stage1_topk(q, g, 25, chunk=64)
    assert_close(s_chunk, s_full)
    assert torch.equal(i_chunk, i_full)
    s_ex, i_ex = ff.stage1_topk(g[:100], g[:100], 5, exclude_self=True, chunk=7)
    assert not bool((i_ex == torch.arange(100).unsqueeze(1)).any())


def test_batched_queries_equal_one_by_one(gen, impl_device):
    impl, device = impl_device
    emb, patches = make_gallery(gen)
    q_emb, q_patches = noisy(gen, emb, patches, [0, 9, 17, 30])
    gal = ff.Faces(emb.to(device), patches.to(device))
    batched = ff.emd_rerank((q_emb.to(device), q_patches.to(device)), gal, k=8, impl=impl)
    for b in range(4):
        one = ff.emd_rerank((q_emb[b].to(device), q_patches[b].to(device)), gal, k=8, impl=impl)
        assert torch.equal(batched.indices[b], one.indices)
        assert_close(batched.emd[b], one.emd, rtol=1e-6, atol=1e-7)


def test_half_precision_gallery(gen, impl_device):
    impl, device = impl_device
    emb, patches = make_gallery(gen)
    q = noisy(gen, emb, patches, [4, 6])
    full = ff.emd_rerank(q, (emb, patches), k=6, impl="torch")
    half = ff.emd_rerank((q[0].to(device), q[1].to(device)),
                         (emb.to(device), patches.to(device, torch.float16)), k=6, impl=impl)
    assert torch.equal(half.stage1_indices.cpu(), full.stage1_indices)
    assert_close(half.emd.cpu().sort(1).values, full.emd.sort(1).values, atol=5e-3, rtol=0)


def official_rerank(q_emb, q_patch, g_emb, g_patch, k, alpha):
    """The official DeepFace-EMD stage 2 for one query (APC), written out from its code."""
    qn = torch.nn.functional.normalize(q_emb, dim=-1)
    gn = torch.nn.functional.normalize(g_emb, dim=-1)
    cos, idx = (gn @ qn).topk(k)
    anchor = q_patch.flatten(1)                          # (C, R)
    fb = g_patch[idx].flatten(2)                         # (k, C, R)
    anchor_center = torch.nn.functional.normalize(anchor.mean(-1), dim=0)
    fb_center = torch.nn.functional.normalize(fb.mean(-1), dim=1)
    anchor_n = torch.nn.functional.normalize(anchor, dim=0)
    fb_n = torch.nn.functional.normalize(fb, dim=1)
    sim = torch.einsum("cm,ncs->nms", anchor_n, fb_n)   # (k, R_q, R_g)
    u = torch.relu(torch.einsum("nc,cm->nm", fb_center, anchor_n))
    u = u / (u.sum(1, keepdim=True) + 1e-7)
    v = torch.relu(torch.einsum("c,ncs->ns", anchor_center, fb_n))
    v = v / (v.sum(1, keepdim=True) + 1e-7)
    K = torch.exp(-(1 - sim) / 0.05)
    r, c = torch.ones_like(u), torch.ones_like(v)
    for _ in range(100):
        r0 = r
        r = u / torch.matmul(K, c.unsqueeze(-1)).squeeze(-1)
        c = v / torch.matmul(K.permute(0, 2, 1).contiguous(), r.unsqueeze(-1)).squeeze(-1)
        if (r - r0).abs().mean().item() < 0.1:
            break
    T = r.unsqueeze(-1) * K * c.unsqueeze(-2)
    emd_sim = (T * sim).sum((1, 2))
    score = alpha * emd_sim + (1 - alpha) * cos
    order = score.argsort(descending=True)
    return idx[order], 1 - emd_sim[order]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_official_switch_reproduces_official_code(gen, impl_device, dtype):
    impl, device = impl_device
    if impl == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend is float32-only")
    emb, patches = make_gallery(gen, G=60)
    q_emb, q_patches = noisy(gen, emb, patches, [8, 21])
    emb, patches, q_emb, q_patches = (t.to(dtype) for t in (emb, patches, q_emb, q_patches))
    res = ff.emd_rerank((q_emb.to(device), q_patches.to(device)), (emb.to(device), patches.to(device)),
                        k=15, alpha=0.7, official=True, impl=impl)
    for b in range(2):
        ref_idx, ref_emd = official_rerank(q_emb[b], q_patches[b], emb, patches, 15, 0.7)
        assert torch.equal(res.indices[b].cpu(), ref_idx)
        # float32: the same operations in another summation order, amplified by 1/eps
        tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
        assert_close(res.emd[b].cpu(), ref_emd, **tol)


def test_flows_are_plans_of_the_ranked_pairs(gen):
    emb, patches = make_gallery(gen)
    q = noisy(gen, emb, patches, [2])
    res = ff.emd_rerank(q, (emb, patches), k=4, return_flows=True, impl="cpu")
    assert res.flows.shape == (1, 4, 16, 16)
    assert_close(res.flows.sum((-1, -2)), torch.ones(1, 4), atol=1e-4, rtol=0)
    cost = patch_cost_ref(q[1].flatten(2).transpose(1, 2), patches[res.indices[0]].flatten(2).transpose(1, 2))
    assert_close((res.flows[0] * cost).sum((-1, -2)), res.emd[0], rtol=1e-4, atol=1e-6)


def test_faces_lay_maps_out_once_and_are_not_revalidated(gen, monkeypatch):
    maps = torch.randn(30, 6, 3, 4, generator=gen)                  # (n, C, H, W)
    emb = torch.randn(30, 5, generator=gen)
    gallery = ff.Faces(emb, maps)
    assert gallery.patches.is_contiguous() and gallery.patches.shape == (30, 12, 6)
    assert torch.equal(gallery.patches, maps.flatten(2).transpose(1, 2))
    assert gallery.grid == (3, 4)
    query = ff.Faces(emb[:2], maps[:2])
    seen = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: seen.append(t.numel()) or real(t))
    res = ff.emd_rerank(query, gallery, k=4, impl="cpu")
    # a pre-validated Faces is trusted: nothing of the gallery's size is checked per call
    assert all(size < gallery.patches.numel() for size in seen)
    # a one-off tuple is not laid out (no copy of the whole set) and gives the same result
    assert not ff.Faces(emb, maps, lay_out=False).patches.is_contiguous()
    one_off = ff.emd_rerank((emb[:2], maps[:2]), (emb, maps), k=4, impl="cpu")
    assert torch.equal(one_off.indices, res.indices)
    assert_close(one_off.emd, res.emd)


def test_finite_check_works_in_chunks(monkeypatch):
    # A finite sum settles it in one pass; a non-finite sum (NaN / inf, or finite values overflowing the
    # sum) takes the exact check, in chunks. Both on a non-contiguous tensor.
    from fastface._checks import check_all_finite
    t = torch.zeros(64, 10, 8).transpose(1, 2)                          # non-contiguous
    seen = []
    real = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda x: seen.append(x.numel()) or real(x))
    check_all_finite("patches", t, chunk_elements=200)
    assert seen == [1]                                                  # the sum only
    t.fill_(3e38)                                                       # finite, but the sum overflows
    seen.clear()
    check_all_finite("patches", t, chunk_elements=200)
    assert seen[0] == 1 and max(seen[1:]) <= 200 and sum(seen[1:]) == t.numel()
    for bad in (float("nan"), float("inf"), -float("inf")):
        for fill in (0.0, 3e38):
            t.fill_(fill)
            t[40, 3, 1] = bad
            with pytest.raises(ValueError, match="patches contains NaN or inf"):
                check_all_finite("patches", t, chunk_elements=200)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):       # half sums in float32
        h = torch.full((50, 7), 60000.0 if dtype == torch.float16 else 1.0, dtype=dtype)
        check_all_finite("patches", h)
        h[3, 2] = float("nan")
        with pytest.raises(ValueError, match="patches contains NaN or inf"):
            check_all_finite("patches", h)


def test_tuple_gallery_checks_only_the_candidates_patches(gen):
    # A one-off (embeddings, patches) tuple is not scanned whole per call (a 10,000-face gallery
    # read 1.3 GB); the patches of the stage-1 candidates are, so a NaN there still raises.
    G, k = 30, 4
    emb = torch.randn(G, 16, generator=gen)
    maps = torch.randn(G, 8, 3, 3, generator=gen)                     # (G, C, H, W)
    q = (emb[:2] + 0.01 * torch.randn(2, 16, generator=gen), maps[:2])
    clean = ff.emd_rerank(q, (emb, maps), k=k, impl="cpu")
    used = set(clean.indices.flatten().tolist())
    unused = next(i for i in range(G) if i not in used)
    bad = maps.clone()
    bad[unused, 0, 1, 1] = float("nan")
    res = ff.emd_rerank(q, (emb, bad), k=k, impl="cpu")               # the NaN row is never used
    torch.testing.assert_close(res.distance, clean.distance)
    assert torch.equal(res.indices, clean.indices)
    bad[next(iter(used)), 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="gallery patches .* NaN or inf"):
        ff.emd_rerank(q, (emb, bad), k=k, impl="cpu")
    with pytest.raises(ValueError, match="patches contains NaN or inf"):
        ff.Faces(emb, bad)                                            # a built Faces checks everything

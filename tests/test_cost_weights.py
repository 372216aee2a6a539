"""Patch cosine cost and patch weights: kernels vs float64 reference, semantics, fallbacks."""
import pytest
import torch
from torch.testing import assert_close

import fastface as ff
from fastface.reference import patch_cost_ref, patch_weights_ref


@pytest.mark.parametrize("n,m,C", [(1, 1, 1), (7, 13, 33), (64, 64, 512), (5, 3, 17)])
def test_cost_float32_within_1e5_of_float64(gen, impl_device, n, m, C):
    impl, device = impl_device
    x = torch.randn(3, 1, n, C, generator=gen)
    y = torch.randn(3, 4, m, C, generator=gen)
    got = ff.patch_cost(x.to(device), y.to(device), impl=impl)
    ref = patch_cost_ref(x.double(), y.double())
    assert got.shape == (3, 4, n, m) and got.dtype == torch.float32
    assert (got.cpu().double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cost_half_inputs_accumulate_in_float32(gen, impl_device, dtype):
    impl, device = impl_device
    x = torch.randn(2, 9, 40, generator=gen).to(dtype)
    y = torch.randn(2, 11, 40, generator=gen).to(dtype)
    got = ff.patch_cost(x.to(device), y.to(device), impl=impl)
    ref = patch_cost_ref(x.double(), y.double())  # same rounded inputs, exact arithmetic
    assert got.dtype == torch.float32
    assert (got.cpu().double() - ref).abs().max() <= 1e-5


def test_cost_zero_norm_patch_is_orthogonal(gen, impl_device):
    impl, device = impl_device
    x = torch.randn(1, 4, 8, generator=gen)
    x[0, 2] = 0
    y = torch.randn(1, 5, 8, generator=gen)
    got = ff.patch_cost(x.to(device), y.to(device), impl=impl).cpu()
    assert torch.isfinite(got).all()
    assert_close(got[0, 2], torch.ones(5))


def test_cost_non_contiguous_and_expanded(gen, impl_device):
    impl, device = impl_device
    x = torch.randn(6, 2, 16, generator=gen).transpose(0, 1)          # (2, 6, 16) non-contiguous
    y = torch.randn(1, 3, 16, generator=gen).expand(2, 3, 16)         # stride 0
    got = ff.patch_cost(x.to(device), y.to(device), impl=impl).cpu()
    assert_close(got, patch_cost_ref(x.contiguous(), y.contiguous()), atol=1e-6, rtol=0)


def test_cost_batched_equals_one_by_one(gen, impl_device):
    impl, device = impl_device
    x = torch.randn(3, 7, 20, generator=gen).to(device)
    y = torch.randn(3, 9, 20, generator=gen).to(device)
    batched = ff.patch_cost(x, y, impl=impl)
    for p in range(3):
        assert_close(batched[p], ff.patch_cost(x[p], y[p], impl=impl), atol=1e-6, rtol=0)


def _unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def test_apc_matches_definition(gen):
    x = torch.randn(2, 6, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    wx, wy = ff.patch_weights(x, y, "apc")
    sx = (_unit(x) * _unit(y.mean(1, keepdim=True))).sum(-1).clamp_min(0)
    sy = (_unit(y) * _unit(x.mean(1, keepdim=True))).sum(-1).clamp_min(0)
    assert_close(wx, sx / sx.sum(-1, keepdim=True))
    assert_close(wy, sy / sy.sum(-1, keepdim=True))


def test_sc_sums_cosine_distances(gen):
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    wx, wy = ff.patch_weights(x, y, "sc")
    d = 1 - _unit(x) @ _unit(y).T
    assert_close(wx, d.sum(1) / d.sum())
    assert_close(wy, d.sum(0) / d.sum())


def test_cc_uses_other_embedding_and_checks_dims(gen):
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    ex, ey = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    wx, wy = ff.patch_weights(x, y, "cc", x_embedding=ex, y_embedding=ey)
    sx = (_unit(x) @ _unit(ey)).clamp_min(0)
    if sx.sum() > 0:
        assert_close(wx, sx / sx.sum())
    with pytest.raises(ValueError, match="D == patch channels C"):
        ff.patch_weights(x, y, "cc", x_embedding=torch.randn(7, dtype=torch.float64), y_embedding=ey)
    with pytest.raises(ValueError, match="needs x_embedding"):
        ff.patch_weights(x, y, "cc")


def test_lmk_counts_landmarks_per_patch():
    x = torch.randn(4, 3)
    lm = torch.tensor([[0.5, 0.5], [1.2, 0.1], [1.9, 1.9], [1.5, 1.5], [5.0, 5.0]])  # last is outside
    wx, wy = ff.patch_weights(x, x, "lmk", x_landmarks=lm, y_landmarks=lm)
    assert_close(wx, torch.tensor([1.0, 1.0, 0.0, 2.0]) / 4)


def test_all_zero_apc_falls_back_to_uniform_and_is_counted(impl_device):
    impl, device = impl_device
    # Every patch anti-correlated with the other image's mean: all APC scores clamp to 0.
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.1]]])
    y = torch.tensor([[[-1.0, 0.0], [-1.0, -0.1], [-1.0, 0.05]]])
    wx, wy, fell = ff.patch_weights(x, y, "apc", return_fallback=True)
    assert bool(fell.all())
    assert_close(wx, torch.full((1, 2), 0.5))
    d = ff.emd(x.to(device), y.to(device), weighting="apc", impl=impl)
    assert torch.isfinite(d).all()


@pytest.mark.parametrize("weighting", ["uniform", "apc", "sc"])
def test_fused_emd_matches_twin(gen, impl_device, weighting):
    impl, device = impl_device
    x = torch.randn(3, 1, 16, 24, generator=gen)
    y = torch.randn(3, 5, 9, 24, generator=gen)
    x[0, 0, 3] = 0  # a zero-norm patch
    got = ff.emd(x.to(device), y.to(device), weighting=weighting, impl=impl, return_plan=True)
    cost = patch_cost_ref(x, y)
    wx, wy, _ = patch_weights_ref(x, y, weighting)
    ref = ff.sinkhorn(cost, wx, wy, impl="torch", return_plan=True)
    assert_close(got.distance.cpu(), ref.distance, rtol=1e-4, atol=1e-6)
    assert_close(got.plan.cpu(), ref.plan, rtol=1e-3, atol=1e-6)


MIXED = [(torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.float16),
         (torch.bfloat16, torch.float32)]


@pytest.mark.parametrize("d1,d2", MIXED, ids=lambda d: str(d)[6:])
def test_mixed_dtypes_promote_the_same_on_every_impl(gen, impl_device, d1, d2):
    # float32 with float64 / float16 / bfloat16 between x and y, cost and weights, query and gallery:
    # float64 if any input is float64, else float32, on every impl (fp64 used to raise torch internals).
    impl, device = impl_device
    want = torch.float64 if torch.float64 in (d1, d2) else torch.float32
    x = torch.randn(2, 5, 6, generator=gen).to(d1)
    y = torch.randn(2, 7, 6, generator=gen).to(d2)
    # the oracle: the same rounded inputs, promoted by hand, on the twin
    xr, yr = x.to(want), y.to(want)
    tol = dict(rtol=1e-4, atol=1e-5)

    cost = ff.patch_cost(x.to(device), y.to(device), impl=impl)
    assert cost.dtype == want
    assert_close(cost.cpu(), ff.patch_cost(xr, yr, impl="torch"), **tol)

    wx, wy = ff.patch_weights(x.to(device), y.to(device), "apc")
    assert wx.dtype == wy.dtype == want
    emb_x, emb_y = x.mean(-2).to(d2), y.mean(-2).to(d1)
    wc = ff.patch_weights(x, y, "cc", x_embedding=emb_x, y_embedding=emb_y)
    wr = ff.patch_weights(xr, yr, "cc", x_embedding=emb_x.to(want), y_embedding=emb_y.to(want))
    assert_close(wc[0], wr[0])

    a = torch.rand(2, 5, generator=gen).to(d2) + 0.1
    res = ff.sinkhorn(cost.to(d1), a.to(device), impl=impl)
    assert res.distance.dtype == want
    twin = ff.sinkhorn(cost.cpu().to(d1).to(want), a.to(want), impl="torch")
    assert_close(res.distance.cpu(), twin.distance, **tol)

    for weighting in ("apc", "uniform"):
        got = ff.emd(x.to(device), y.to(device), weighting=weighting, impl=impl)
        assert got.dtype == want
        assert_close(got.cpu(), ff.emd(xr, yr, weighting=weighting, impl="torch"), **tol)

    emb = torch.randn(6, 6, generator=gen)
    gallery = torch.randn(6, 7, 6, generator=gen)
    query, gal = (emb[:2].to(d1), x), (emb.to(d2), gallery.to(d2))
    got = ff.emd_rerank(tuple(t.to(device) for t in query), tuple(t.to(device) for t in gal), k=3, impl=impl)
    ref = ff.emd_rerank(tuple(t.to(want) for t in query), tuple(t.to(want) for t in gal), k=3, impl="torch")
    assert got.distance.dtype == want
    assert torch.equal(got.indices.cpu(), ref.indices)
    assert_close(got.emd.cpu(), ref.emd, **tol)


@pytest.mark.parametrize("scale", [1e20, 3e37, 1e-9])
def test_huge_and_tiny_patch_magnitudes_normalise_correctly(gen, impl_device, scale):
    # Squares of values >~ 1e19 overflow float32: the twin treated such patches as zero, the
    # triton kernels gave cost garbage. Cosines are scale-free; zero-norm patches keep cost 1.
    impl, device = impl_device
    x = torch.randn(2, 6, 20, generator=gen)
    y = torch.randn(2, 5, 20, generator=gen)
    x[:, 0] = 0.0                                                    # a zero-norm patch
    big = (x * scale).to(device)
    if impl in ("cpu", "cuda") and not ff.patch_cost(big, y.to(device), impl=impl).isfinite().all():
        pytest.xfail("the C++/CUDA norms overflow (their fix is helper hx's part of issue 11)")
    assert_close(ff.patch_cost(big, y.to(device), impl=impl).cpu(), patch_cost_ref(x.double(), y.double()).float(),
                 rtol=0, atol=1e-5)
    assert bool((ff.patch_cost(big, y.to(device), impl=impl)[:, 0] == 1).all())
    for weighting in ("apc", "sc", "uniform"):
        got = ff.emd(big, y.to(device), weighting=weighting, impl=impl)
        assert_close(got.cpu(), ff.emd(x.double(), y.double(), weighting=weighting, impl="torch").float(),
                     rtol=0, atol=2e-5)
    wx, wy = patch_weights_ref(x * scale, y)[:2]
    assert_close(wx, patch_weights_ref(x.double(), y.double())[0].float(), rtol=1e-5, atol=1e-6)


PRECISION_SETTINGS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


def _precisions():
    out = {}
    for path in PRECISION_SETTINGS:
        obj = torch.backends
        for part in path.split("."):
            obj = getattr(obj, part)
        out[path] = obj.fp32_precision
    return out


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch without the fp32_precision API")
@pytest.mark.own_precision_flags
def test_twins_run_in_full_fp32_whatever_the_global_flags(gen, monkeypatch):
    # TF32 (CUDA) / bf16 (oneDNN on CPUs with bf16) matmuls under set_float32_matmul_precision
    # changed the twins' results by ~1e-4 before exp(-C/eps); the twins turn them off and restore them.
    from fastface.reference import generator_ref, sinkhorn_ref
    from fastface.reference.generator import FusedLayer
    x = torch.randn(3, 16, 256, generator=gen)
    y = torch.randn(3, 20, 256, generator=gen)
    z = torch.randn(2, 64, 3, 3, generator=gen)
    layer = FusedLayer(torch.randn(64, 32, 4, 4, generator=gen), None, (2, 2), (1, 1), (0, 0), (1, 1), "relu")

    def run():
        cost = patch_cost_ref(x, y)
        w = patch_weights_ref(x, y, "sc")[:2]
        s = sinkhorn_ref(cost, *w, eps=0.05, return_plan=True)
        return [cost, *w, s["distance"], s["plan"], generator_ref(z, [layer]),
                ff.stage1_topk(x[:, 0], y[:, 0], 2)[0]]

    seen = []   # the flags while a twin computes (unit_rows calls vector_norm)
    real = torch.linalg.vector_norm
    monkeypatch.setattr(torch.linalg, "vector_norm", lambda *a, **k: seen.append(_precisions()) or real(*a, **k))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        want = run()
        for setting in ("high", "medium"):
            torch.set_float32_matmul_precision(setting)
            flags = _precisions()
            got = run()
            assert _precisions() == flags          # restored after each twin
            assert seen and all(set(f.values()) == {"ieee"} for f in seen)
            seen.clear()
            for g, w in zip(got, want):
                assert torch.equal(g, w)
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.own_precision_flags
def test_full_fp32_sets_ieee_inside_and_restores():
    from fastface.reference import full_fp32
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        outside = _precisions()
        with full_fp32():
            assert set(_precisions().values()) == {"ieee"}
        assert _precisions() == outside
        with pytest.raises(KeyError):
            with full_fp32():
                raise KeyError("boom")
        assert _precisions() == outside
        # the legacy flags (cuDNN allows TF32 by default) read the same after a twin ran
        legacy = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with full_fp32():
            assert set(_precisions().values()) == {"ieee"}
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
    finally:
        torch.set_float32_matmul_precision(before)


def test_broadcast_shape_is_torchs():
    # The pure-Python broadcast of every kernel call agrees with torch.broadcast_shapes, errors included.
    import itertools
    import random

    from fastface._checks import broadcast_shape, check_broadcast
    r = random.Random(0)
    for _ in range(500):
        shapes = [tuple(r.choice([0, 1, 1, 2, 3]) for _ in range(r.randint(0, 3))) for _ in range(r.randint(1, 3))]
        try:
            want = torch.broadcast_shapes(*shapes)
        except RuntimeError:
            want = None
        assert broadcast_shape(*shapes) == want, shapes
    assert broadcast_shape() == torch.Size([])
    for a, b in itertools.product([(2, 3), (3, 2)], repeat=2):
        if a != b:
            with pytest.raises(ValueError, match=r"batch dims must broadcast, got x \(2, 3\), y \(3, 2\)|"
                                                 r"got x \(3, 2\), y \(2, 3\)"):
                check_broadcast(x=a, y=b)

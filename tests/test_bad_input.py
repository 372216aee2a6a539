"""Bad input gets a clear ValueError / TypeError naming the argument — never a crash or a NaN."""
import pytest
import torch

import fastface as ff


@pytest.fixture
def gallery():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 8, generator=g), torch.randn(10, 4, 8, generator=g)


def test_sinkhorn_bad_inputs():
    c = torch.rand(3, 4, 5)
    with pytest.raises(TypeError, match="cost must be a torch.Tensor"):
        ff.sinkhorn(c.numpy())
    with pytest.raises(TypeError, match="cost must be float32"):
        ff.sinkhorn(c.to(torch.int32))
    with pytest.raises(TypeError, match="cost must be float32"):
        ff.sinkhorn(c.to(torch.complex64))
    with pytest.raises(ValueError, match="cost must have at least 2 dimensions"):
        ff.sinkhorn(torch.rand(5))
    with pytest.raises(ValueError, match="cost contains NaN or inf"):
        ff.sinkhorn(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="cost contains NaN or inf"):
        ff.sinkhorn(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match=r"a must have shape \(3, 4\)"):
        ff.sinkhorn(c, torch.rand(3, 5))
    with pytest.raises(ValueError, match="b must be non-negative"):
        ff.sinkhorn(c, None, -torch.rand(3, 5))
    with pytest.raises(ValueError, match="a must have a positive sum"):
        ff.sinkhorn(c, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        ff.sinkhorn(c, eps=0)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        ff.sinkhorn(c, eps=-0.1)
    with pytest.raises(ValueError, match=r"max_iter must be an int in \[1, 2147483647\], got 0"):
        ff.sinkhorn(c, max_iter=0)
    with pytest.raises(TypeError, match="max_iter must be an int"):
        ff.sinkhorn(c, max_iter=2.5)
    with pytest.raises(ValueError, match="tol must be"):
        ff.sinkhorn(c, tol=-1)
    with pytest.raises(ValueError, match="mode must be one of"):
        ff.sinkhorn(c, mode="fast")
    with pytest.raises(ValueError, match="impl must be one of"):
        ff.sinkhorn(c, impl="gpu")
    with pytest.raises(ValueError, match="n, m >= 1"):
        ff.sinkhorn(torch.rand(2, 0, 3))


def test_unavailable_impl_is_a_clear_error():
    c = torch.rand(2, 3, 3)
    if not ff.backend_info()["cuda_available"]:
        with pytest.raises(ValueError, match="impl='cuda'"):
            ff.sinkhorn(c, impl="cuda")


def test_mixed_devices_rejected():
    c = torch.rand(2, 3, 3)
    a = torch.rand(2, 3, device="meta")
    with pytest.raises(ValueError, match="a must hold data"):
        ff.sinkhorn(c, a)


def test_patch_cost_bad_inputs():
    with pytest.raises(ValueError, match="same channel count"):
        ff.patch_cost(torch.rand(3, 4), torch.rand(3, 5))
    with pytest.raises(ValueError, match="must broadcast"):
        ff.patch_cost(torch.rand(2, 3, 4), torch.rand(3, 3, 4))
    with pytest.raises(ValueError, match="y contains NaN"):
        ff.patch_cost(torch.rand(3, 4), torch.full((3, 4), float("nan")))
    with pytest.raises(TypeError, match="x must be float32"):
        ff.patch_cost(torch.ones(3, 4, dtype=torch.int64), torch.rand(3, 4))


def test_weights_bad_inputs():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match="weighting must be one of"):
        ff.patch_weights(x, x, "xyz")
    with pytest.raises(ValueError, match="needs x_landmarks"):
        ff.patch_weights(x, x, "lmk")
    with pytest.raises(ValueError, match=r"\(\.\.\., L, 2\)"):
        ff.patch_weights(x, x, "lmk", x_landmarks=torch.rand(5, 3), y_landmarks=torch.rand(5, 3))


def test_zero_norm_patches_give_finite_results(gallery):
    emb, patches = gallery
    zq = torch.zeros(1, 4, 8)
    res = ff.emd_rerank((emb[:1], zq), (emb, patches), k=3, impl="cpu")
    assert torch.isfinite(res.distance).all()
    assert res.n_fallback == 3  # the zero query has no positive APC weight anywhere


def test_emd_rerank_bad_inputs(gallery):
    emb, patches = gallery
    q = (emb[:2], patches[:2])
    with pytest.raises(ValueError, match="k must be >= 1"):
        ff.emd_rerank(q, (emb, patches), k=0)
    with pytest.raises(ValueError, match="k=11 exceeds the 10 gallery faces"):
        ff.emd_rerank(q, (emb, patches), k=11)
    with pytest.raises(TypeError, match="k must be an int"):
        ff.emd_rerank(q, (emb, patches), k=2.0)
    with pytest.raises(ValueError, match="gallery is empty"):
        ff.emd_rerank(q, (emb[:0], patches[:0]), k=1)
    with pytest.raises(ValueError, match="alpha must be"):
        ff.emd_rerank(q, (emb, patches), k=2, alpha=1.5)
    with pytest.raises(TypeError, match="gallery must be a Faces"):
        ff.emd_rerank(q, emb, k=2)
    with pytest.raises(ValueError, match="same dim"):
        ff.emd_rerank((torch.rand(2, 5), patches[:2]), (emb, patches), k=2)
    with pytest.raises(ValueError, match="same channels"):
        ff.emd_rerank((emb[:2], torch.rand(2, 4, 9)), (emb, patches), k=2)
    with pytest.raises(ValueError, match="query set to be the gallery"):
        ff.emd_rerank(q, (emb, patches), k=2, exclude_self=True)
    with pytest.raises(ValueError, match="gallery: embeddings and patches must describe the same faces"):
        ff.emd_rerank(q, (emb, patches[:5]), k=2)
    with pytest.raises(ValueError, match="embeddings contains NaN"):
        bad = emb.clone()
        bad[3, 1] = float("nan")
        ff.emd_rerank(q, (bad, patches), k=2)
    with pytest.raises(TypeError, match="patches must be float32"):
        ff.emd_rerank(q, (emb, patches.to(torch.int32)), k=2)
    with pytest.raises(ValueError, match="official=True supports"):
        ff.emd_rerank(q, (emb, patches), k=2, weighting="lmk", official=True)


def test_cc_needs_matching_dims(gallery):
    emb, patches = gallery
    emb12 = torch.rand(10, 12)
    with pytest.raises(ValueError, match="D == patch channels C"):
        ff.emd_rerank((emb12[:2], patches[:2]), (emb12, patches), k=2, weighting="cc")


def test_non_contiguous_and_expanded_inputs_work(gallery):
    emb, patches = gallery
    pt = patches.transpose(1, 2).contiguous().transpose(1, 2)     # non-contiguous (10, 4, 8)
    base = ff.emd_rerank((emb[:2], patches[:2]), (emb, patches), k=4, impl="cpu")
    res = ff.emd_rerank((emb[:2], pt[:2]), (emb, pt), k=4, impl="cpu")
    assert torch.equal(base.indices, res.indices)
    qx = patches[:1].expand(3, 4, 8)
    res3 = ff.emd_rerank((emb[:1].expand(3, 8), qx), (emb, patches), k=4, impl="cpu")
    assert torch.equal(res3.indices[0], res3.indices[2])


def test_empty_batches_give_empty_results(impl_device):
    impl, device = impl_device
    x, y = torch.rand(0, 4, 3, device=device), torch.rand(0, 5, 3, device=device)
    assert ff.emd(x, y, impl=impl).shape == (0,)
    assert ff.patch_cost(x, y, impl=impl).shape == (0, 4, 5)
    assert ff.sinkhorn(torch.rand(0, 4, 3, device=device), impl=impl).distance.shape == (0,)


# One validation of the solver arguments, shared by sinkhorn, emd and emd_rerank on every impl
# (the fused emd_rerank / emd paths used to skip it: eps=0 gave NaN, mode='fast' a KeyError).
BAD_SOLVER_ARGS = [
    ("eps", 0, ValueError), ("eps", -0.1, ValueError), ("eps", float("nan"), ValueError),
    ("eps", float("inf"), ValueError), ("eps", "0.05", TypeError), ("eps", True, TypeError),
    ("max_iter", 0, ValueError), ("max_iter", -3, ValueError), ("max_iter", 2**31, ValueError),
    ("max_iter", 2.0, TypeError), ("max_iter", True, TypeError),
    ("tol", -1e-3, ValueError), ("tol", float("nan"), ValueError), ("tol", "1e-6", TypeError),
    ("mode", "fast", ValueError), ("mode", None, ValueError),
]


def _call(entry, impl, device, **kw):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 5, 3, generator=g).to(device), torch.randn(2, 6, 3, generator=g).to(device)
    if entry == "sinkhorn":
        return ff.sinkhorn(ff.patch_cost(x, y), impl=impl, **kw)
    if entry == "emd":
        return ff.emd(x, y, impl=impl, **kw)
    emb = torch.randn(4, 3, generator=g).to(device)
    gallery = (emb, torch.cat([x, y[:, :5]]))
    return ff.emd_rerank((emb[:2], x), gallery, k=2, impl=impl, **kw)


@pytest.mark.parametrize("entry", ["sinkhorn", "emd", "emd_rerank"])
@pytest.mark.parametrize("arg,value,exc", BAD_SOLVER_ARGS, ids=lambda v: repr(v)[:12])
def test_solver_args_validated_on_every_path(impl_device, entry, arg, value, exc):
    impl, device = impl_device
    with pytest.raises(exc, match=arg):
        _call(entry, impl, device, **{arg: value})


@pytest.mark.parametrize("weighting", ["uniform", "apc", "sc"])
def test_emd_rerank_fused_path_validates(weighting):
    # the default fused path (uniform / APC / SC) on the C++ kernels
    for kw in (dict(eps=0.0), dict(max_iter=0), dict(mode="fast"), dict(chunk_size=0),
               dict(chunk_size=1.5), dict(official=1), dict(alpha=True)):
        with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
            _call("emd_rerank", "cpu", "cpu", weighting=weighting, **kw)


def test_validation_gaps():
    c = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="cost must hold data"):
        ff.sinkhorn(torch.rand(2, 3, 4, device="meta"))
    with pytest.raises(ValueError, match="x must hold data"):
        ff.patch_cost(torch.rand(3, 4, device="meta"), torch.rand(3, 4, device="meta"))
    with pytest.raises(TypeError, match="a must be a torch.Tensor, got list"):
        ff.sinkhorn(c, [[0.5, 0.25, 0.25]] * 2)
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got ndarray"):
        ff.sinkhorn(c, None, torch.rand(2, 4).numpy())
    for group, exc in ((0, ValueError), (2.0, TypeError), (3, ValueError)):
        with pytest.raises(exc, match="official_group"):
            ff.sinkhorn(c.reshape(1, 2, 3, 4), mode="official", official_group=group)
    x, y = torch.rand(2, 4, 3), torch.rand(3, 4, 3)
    with pytest.raises(ValueError, match=r"batch dims must broadcast, got x \(2,\), y \(3,\)"):
        ff.emd(x, y)
    with pytest.raises(ValueError, match="batch dims must broadcast"):
        ff.patch_weights(x, y)
    with pytest.raises(ValueError, match="x_embedding"):
        ff.patch_weights(x, x, "cc", x_embedding=torch.rand(5, 3), y_embedding=torch.rand(2, 3))
    lm = torch.rand(2, 5, 2)
    with pytest.raises(ValueError, match=r"grid \(3, 3\) has 9 cells but x has 4 patches"):
        ff.patch_weights(x, x, "lmk", x_landmarks=lm, y_landmarks=lm, grid=(3, 3))
    with pytest.raises(ValueError, match="grid must be a pair"):
        ff.emd(x, x, weighting="lmk", x_landmarks=lm, y_landmarks=lm, grid=(2, 2.0))
    with pytest.raises(ValueError, match="not a square grid"):
        ff.emd(torch.rand(2, 6, 3), torch.rand(2, 6, 3), weighting="lmk", x_landmarks=lm, y_landmarks=lm)


def test_empty_inputs_are_clear_errors_or_empty_results(impl_device):
    impl, device = impl_device
    # official mode with an empty batch: an empty result (was ZeroDivisionError)
    res = ff.sinkhorn(torch.rand(2, 0, 4, 5, device=device), mode="official", impl=impl)
    assert res.distance.shape == (2, 0)
    with pytest.raises(ValueError, match="C >= 1"):
        ff.patch_cost(torch.rand(3, 0, device=device), torch.rand(4, 0, device=device), impl=impl)
    with pytest.raises(ValueError, match="n, m >= 1"):
        ff.emd(torch.rand(2, 0, 3, device=device), torch.rand(2, 4, 3, device=device), impl=impl)
    emb = torch.rand(3, 8, device=device)
    with pytest.raises(ValueError, match="at least one patch"):
        ff.Faces(emb, torch.rand(3, 0, 8, device=device))
    with pytest.raises(ValueError, match="at least one patch"):
        ff.Faces(emb, torch.rand(3, 8, 0, 0, device=device))
    with pytest.raises(ValueError, match="at least one channel"):
        ff.Faces(emb, torch.rand(3, 4, 0, device=device))

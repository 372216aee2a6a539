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
    with pytest.raises(ValueError, match="max_iter must be a finite number > 0"):
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
    with pytest.raises(ValueError, match="one device"):
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

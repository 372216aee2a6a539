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

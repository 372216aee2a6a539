"""Sinkhorn: POT parity, backends vs the pure-PyTorch twin, batching, official mode, gradients."""
import numpy as np
import ot
import pytest
import torch
from torch.testing import assert_close

import fastface as ff
from conftest import random_problem

SHAPES = [(1, 1), (7, 13), (49, 64), (64, 64), (100, 3)]


def pot_distance(cost, a, b, eps):
    C, a, b = cost.numpy(), a.numpy(), b.numpy()
    if eps >= 0.05:
        return float(ot.sinkhorn2(a, b, C, eps, method="sinkhorn", numItermax=200000, stopThr=1e-13))
    return float(ot.sinkhorn2(a, b, C, eps, method="sinkhorn_log", numItermax=200000, stopThr=1e-13))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("eps", [0.5, 0.05, 0.005])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_pot_float64(gen, impl, eps, shape):
    n, m = shape
    cost, a, b = random_problem(gen, 2, n, m)
    res = ff.sinkhorn(cost, a, b, eps=eps, max_iter=200000, tol=1e-11, impl=impl)
    assert bool(res.converged.all())
    ref = torch.tensor([pot_distance(cost[p], a[p], b[p], eps) for p in range(2)], dtype=torch.float64)
    assert_close(res.distance, ref, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("n,m", [(7, 13), (49, 64)])
def test_small_eps_approaches_exact_emd(gen, n, m):
    cost, a, b = random_problem(gen, 1, n, m)
    exact = ot.emd2(a[0].numpy(), b[0].numpy(), cost[0].numpy())
    errors = []
    for eps in (0.05, 0.01, 0.002):
        res = ff.sinkhorn(cost, a, b, eps=eps, max_iter=200000, tol=1e-10, impl="cpu")
        errors.append(abs(res.distance.item() - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3 * max(exact, 1e-3) + 1e-3


@pytest.mark.parametrize("mode", ["auto", "log"])
def test_tiny_eps_is_finite(gen, mode):
    cost, a, b = random_problem(gen, 4, 64, 64, dtype=torch.float32)  # costs in [0, 2]
    res = ff.sinkhorn(cost, a, b, eps=1e-3, max_iter=100, impl="cpu", mode=mode, return_plan=True)
    assert bool(torch.isfinite(res.distance).all()) and bool(torch.isfinite(res.plan).all())
    assert_close(res.plan.sum((-1, -2)), torch.ones(4), atol=0.05, rtol=0)


def test_kernel_mode_overflow_is_an_error_not_nan(gen):
    cost, a, b = random_problem(gen, 2, 30, 30, dtype=torch.float32)
    cost = cost * 50
    with pytest.raises(FloatingPointError, match="mode='auto' or 'log'"):
        ff.sinkhorn(cost, a, b, eps=1e-3, impl="cpu", mode="kernel")


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.005])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 64), (100, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_impl_matches_twin(gen, impl_device, eps, shape):
    impl, device = impl_device
    cost, a, b = random_problem(gen, 5, *shape, dtype=torch.float32, zero_weight=True)
    cost, a, b = cost.to(device), a.to(device), b.to(device)
    got = ff.sinkhorn(cost, a, b, eps=eps, max_iter=300, impl=impl, return_plan=True)
    ref = ff.sinkhorn(cost, a, b, eps=eps, max_iter=300, impl="torch", return_plan=True)
    assert_close(got.distance, ref.distance, rtol=1e-4, atol=1e-6)
    assert_close(got.plan, ref.plan, rtol=1e-3, atol=1e-6)
    # float32 rounding may move the stopping test across tol by an iteration or two
    assert (got.n_iter.long() - ref.n_iter.long()).abs().max() <= 3
    assert_close(got.f[:, 1:], ref.f[:, 1:], rtol=1e-3, atol=1e-5)
    if shape[0] > 1:
        assert bool((got.f[:, 0] == float("-inf")).all())  # zero weight -> -inf potential


@pytest.mark.parametrize("mode", ["kernel", "log"])
def test_forced_modes_match_twin(gen, impl_device, mode):
    impl, device = impl_device
    cost, a, b = random_problem(gen, 4, 9, 11, dtype=torch.float32)
    cost, a, b = cost.to(device), a.to(device), b.to(device)
    got = ff.sinkhorn(cost, a, b, eps=0.1, impl=impl, mode=mode)
    ref = ff.sinkhorn(cost, a, b, eps=0.1, impl="torch", mode=mode)
    assert_close(got.distance, ref.distance, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_equals_one_by_one(gen, impl_device, dtype):
    impl, device = impl_device
    if impl == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend is float32-only (float64 falls back to another backend)")
    cost, a, b = random_problem(gen, 6, 13, 7, dtype=dtype)
    cost, a, b = cost.to(device), a.to(device), b.to(device)
    batched = ff.sinkhorn(cost.reshape(2, 3, 13, 7), a.reshape(2, 3, 13), b.reshape(2, 3, 7), impl=impl)
    assert batched.distance.shape == (2, 3)
    singles = [ff.sinkhorn(cost[p], a[p], b[p], impl=impl) for p in range(6)]
    assert_close(batched.distance.reshape(6), torch.stack([s.distance for s in singles]), rtol=1e-6, atol=1e-7)
    assert_close(batched.n_iter.reshape(6), torch.stack([s.n_iter for s in singles]))


def test_problems_stop_independently(gen):
    easy, a, b = random_problem(gen, 1, 8, 8)
    hard = easy.clone() * 40  # needs far more iterations
    cost = torch.cat([easy, hard])
    res = ff.sinkhorn(cost, a.repeat(2, 1), b.repeat(2, 1), eps=0.05, max_iter=5000, impl="cpu")
    alone = ff.sinkhorn(easy, a, b, eps=0.05, max_iter=5000, impl="cpu")
    assert res.n_iter[0] == alone.n_iter[0] < res.n_iter[1]


def official_sinkhorn(cost, a, b, eps=0.05, max_iter=100, thresh=0.1):
    """The official DeepFace-EMD loop, written out: one batch of candidates, batch-mean stop."""
    K = torch.exp(-cost / eps)
    r, c = torch.ones_like(a), torch.ones_like(b)
    for _ in range(max_iter):
        r0 = r
        r = a / torch.matmul(K, c.unsqueeze(-1)).squeeze(-1)
        c = b / torch.matmul(K.permute(0, 2, 1).contiguous(), r.unsqueeze(-1)).squeeze(-1)
        if (r - r0).abs().mean().item() < thresh:
            break
    T = r.unsqueeze(-1) * K * c.unsqueeze(-2)
    return 1.0 - (T * (1.0 - cost)).sum((-1, -2))


@pytest.mark.parametrize("n,m", [(64, 64), (16, 16), (7, 13)])
def test_official_mode_equals_official_algorithm(gen, impl_device, n, m):
    impl, device = impl_device
    cost, a, b = random_problem(gen, 12, n, m, dtype=torch.float32, scale=1.0)
    cost, a, b = cost.to(device), a.to(device), b.to(device)
    ref = torch.cat([official_sinkhorn(cost[:6], a[:6], b[:6]), official_sinkhorn(cost[6:], a[6:], b[6:])])
    got = ff.sinkhorn(cost.reshape(2, 6, n, m), a.reshape(2, 6, n), b.reshape(2, 6, m), eps=0.05,
                      max_iter=100, tol=0.1, mode="official", impl=impl)
    assert_close(got.distance.reshape(12), ref, rtol=1e-5, atol=1e-6)
    assert bool((got.n_iter[0] == got.n_iter[0, 0]).all())  # a group stops together


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("eps", [0.5, 0.2])
def test_gradcheck_float64(gen, impl, eps):
    cost, a, b = random_problem(gen, 2, 5, 4)
    cost.requires_grad_(True)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def fn(c, a, b):
        return ff.sinkhorn(c, a, b, eps=eps, max_iter=100000, tol=1e-14, impl=impl).distance

    assert torch.autograd.gradcheck(fn, (cost, a, b), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_plan_gradient_is_the_plan(gen):
    cost, a, b = random_problem(gen, 3, 6, 5)
    cost.requires_grad_(True)
    res = ff.sinkhorn(cost, a, b, eps=0.1, tol=1e-12, max_iter=10000, impl="cpu", grad="plan",
                      return_plan=True)
    res.distance.sum().backward()
    assert_close(cost.grad, res.plan.detach())


def test_gradient_through_cosine_to_patches(gen):
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(x, y):
        return ff.emd(x, y, weighting="apc", eps=0.3, max_iter=100000, tol=1e-14, impl="cpu")

    assert torch.autograd.gradcheck(fn, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_uniform_default_weights_and_rescaling(gen):
    cost, _, _ = random_problem(gen, 2, 4, 6)
    uni = ff.sinkhorn(cost, impl="cpu")
    scaled = ff.sinkhorn(cost, torch.full((2, 4), 3.0, dtype=torch.float64),
                         torch.full((2, 6), 0.5, dtype=torch.float64), impl="cpu")
    assert_close(uni.distance, scaled.distance)


def test_results_on_input_device_and_dtype(gen, impl_device):
    impl, device = impl_device
    cost, a, b = random_problem(gen, 2, 5, 5, dtype=torch.float16)
    res = ff.sinkhorn(cost.to(device), impl=impl)
    assert res.distance.device.type == device and res.distance.dtype == torch.float32
    assert np.isfinite(res.distance.cpu().numpy()).all()


@pytest.mark.parametrize("mode", ["auto", "kernel", "log"])
def test_constant_offset_changes_nothing(gen, impl_device, mode):
    # cost + 1000 has the same plan and gradient; the distance moves by exactly 1000. The plan used
    # to be rebuilt from unreduced float32 potentials (distance off by 0.2, gradients of the wrong sign).
    impl, device = impl_device
    cost, a, b = random_problem(gen, 3, 7, 5, dtype=torch.float32, scale=1.0)
    results = []
    for offset in (0.0, 1000.0):
        c = (cost + offset).to(device).requires_grad_(True)
        aa = a.to(device).requires_grad_(True)
        res = ff.sinkhorn(c, aa, b.to(device), eps=0.05, max_iter=500, impl=impl, mode=mode,
                          return_plan=True)
        res.distance.sum().backward()
        assert bool(res.converged.all())
        results.append((res.distance.detach().double(), res.plan, c.grad, aa.grad, res.f, res.g))
    (d0, p0, gc0, ga0, f0, g0), (d1, p1, gc1, ga1, f1, g1) = results
    assert_close(d1 - 1000.0, d0, rtol=0, atol=2e-3)
    assert_close(p1, p0, rtol=1e-3, atol=1e-6)
    assert_close(gc1, gc0, rtol=1e-3, atol=2e-4)
    assert_close(ga1, ga0, rtol=1e-3, atol=2e-3)
    # public potentials keep their meaning: f + g - C is the same log-plan up to float32 rounding
    assert_close(f1[:, :, None] + g1[:, None, :] - (cost.to(device) + 1000.0),
                 f0[:, :, None] + g0[:, None, :] - cost.to(device), rtol=0, atol=2e-3)


@pytest.mark.parametrize("threads", [2, 3])
def test_gradient_after_set_num_threads(gen, threads):
    # Batched MKL LU (torch.linalg.solve) fails ("Pivots given to lu_solve") or spins with several
    # threads from about 130 unknowns; the backward needs no LAPACK factorisation.
    cost, a, b = random_problem(gen, 3, 90, 80, scale=1.0)
    direction = torch.randn(cost.shape, generator=gen, dtype=torch.float64)
    kw = dict(eps=0.1, max_iter=100000, tol=1e-13, impl="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        c = cost.clone().requires_grad_(True)
        ff.sinkhorn(c, a, b, **kw).distance.sum().backward()
        h = 1e-5
        up = ff.sinkhorn(cost + h * direction, a, b, **kw).distance.sum()
        down = ff.sinkhorn(cost - h * direction, a, b, **kw).distance.sum()
    finally:
        torch.set_num_threads(before)
    assert_close((c.grad * direction).sum(), (up - down) / (2 * h), rtol=1e-5, atol=1e-8)

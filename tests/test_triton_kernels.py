"""Triton kernels against the pure-PyTorch reference (fastface.reference).

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set below before
triton is imported; importing torch first is safe: it does not import triton).
"""
import os

try:
    import torch as _torch_probe
    _HAS_CUDA = _torch_probe.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from fastface.ops import triton_kernels as tk  # noqa: E402
from fastface.reference import patch_cost_ref, patch_weights_ref, sinkhorn_ref  # noqa: E402
from fastface.reference.sinkhorn import AUTO, KERNEL, LOG, reduce_cost  # noqa: E402

if not tk.AVAILABLE:  # pragma: no cover
    pytest.skip("fastface.ops.triton_kernels could not import triton", allow_module_level=True)

DEV = "cuda" if _HAS_CUDA else "cpu"


def _gen(*key):
    """A generator seeded from the test's own parameters: fresh, reproducible inputs per test."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _problem(gen, P, n, m, zero_weight=True, scale=2.0):
    cost = torch.rand(P, n, m, generator=gen) * scale
    a = torch.rand(P, n, generator=gen) + 0.05
    b = torch.rand(P, m, generator=gen) + 0.05
    if zero_weight and n > 1:
        a[:, 0] = 0
    return cost, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def _to(dev, *ts):
    return [t.to(dev) for t in ts]


def _check_solution(dist, plan, n_iter, conv, ref, ref_plan, eps, f=None, g=None, a=None, b=None):
    """Compare one backend's outputs with sinkhorn_ref's (all CPU tensors)."""
    # n_iter: float32 rounding of the L1 error (~1e-8 absolute) can move the first iteration with
    # err <= tol by one when the error crosses tol slowly (seen for eps = 0.05, checked in float64).
    d_iter = (n_iter.long() - ref["n_iter"].long()).abs()
    assert int(d_iter.max()) <= 1, (n_iter, ref["n_iter"])
    same = d_iter == 0
    assert torch.equal(conv[same], ref["converged"][same]), (conv, ref["converged"])
    # Same overflow pattern as the reference (kernel domain with a small eps), same values elsewhere.
    fin = torch.isfinite(ref["distance"])
    assert torch.equal(torch.isfinite(dist), fin)
    torch.testing.assert_close(dist[fin], ref["distance"][fin], rtol=1e-4, atol=1e-7)
    if plan is not None:
        # atol 1e-6, plus the float32 floor: potentials carry ~1e-7 absolute rounding, which
        # exp((f + g - C) / eps) turns into ~1e-7 / eps relative (the float32 reference is as far
        # from a float64 run: 1.9e-6 on a 0.1 entry at eps = 0.005).
        ok = fin[:, None, None] & torch.isfinite(ref_plan)
        torch.testing.assert_close(plan[ok], ref_plan[ok], rtol=2e-7 / eps, atol=1e-6)
    if f is not None:
        for mine, theirs, w in ((f, ref["f"], a), (g, ref["g"], b)):
            assert torch.equal(torch.isfinite(mine), torch.isfinite(theirs))
            ok = fin[:, None] & torch.isfinite(theirs) & (w > 0)
            torch.testing.assert_close(mine[ok], theirs[ok], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# patch cost
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("rep", [1, 3])
@pytest.mark.parametrize("n,m,C", [(1, 1, 1), (7, 13, 33), (64, 64, 64)])
def test_patch_cost(n, m, C, rep, dtype):
    gen = _gen("cost", n, m, C, rep, str(dtype))
    P = 2 * rep
    x = torch.randn(P // rep, n, C, generator=gen).to(dtype)
    y = torch.randn(P, m, C, generator=gen).to(dtype)
    out = tk.patch_cost_triton(*_to(DEV, x, y), rep).cpu()
    assert out.dtype == torch.float32 and out.shape == (P, n, m)
    # bf16 inputs: the reference on the same (bf16-rounded) values in float32.
    ref = patch_cost_ref(x.float().repeat_interleave(rep, 0), y.float())
    atol = 1e-5 if dtype == torch.float32 else 2e-5
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


def test_patch_cost_zero_norm():
    gen = _gen("cost-zero")
    x = torch.randn(2, 5, 19, generator=gen)
    y = torch.randn(4, 6, 19, generator=gen)
    x[0, 1] = 0
    x[1, 4] = 0
    y[3, 0] = 0
    y[1, 5] = 1e-30  # below the norm floor squared: also counts as (numerically) zero
    x[1, 2] = torch.nn.functional.normalize(x[1, 2], dim=0) * 1e-13  # norm under the 1e-12 floor
    out = tk.patch_cost_triton(*_to(DEV, x, y), 2).cpu()
    ref = patch_cost_ref(x.repeat_interleave(2, 0), y)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert bool((out[0:2, 1, :] == 1).all()) and bool((out[2:4, 4, :] == 1).all())
    assert bool((out[3, :, 0] == 1).all())


# ------------------------------------------------------------------------------------------------
# Sinkhorn
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [AUTO, KERNEL, LOG], ids=["auto", "kernel", "log"])
@pytest.mark.parametrize("eps", [0.5, 0.05, 0.005])
@pytest.mark.parametrize("n,m", [(1, 1), (7, 13), (49, 64), (100, 3)])
def test_sinkhorn(n, m, eps, mode):
    gen = _gen("sinkhorn", n, m, eps, mode)
    cost, a, b = _problem(gen, 3, n, m)
    max_iter, tol = 100, 1e-6
    out = tk.sinkhorn_triton(*_to(DEV, cost, a, b), eps, max_iter, tol, mode, True)
    out = {k: v.cpu() for k, v in out.items()}
    ref = sinkhorn_ref(cost, a, b, eps, max_iter, tol, mode, return_plan=True)
    assert out["n_iter"].dtype == torch.int32 and out["converged"].dtype == torch.bool
    # The kernel domain with eps = 0.005 overflows here, in the reference too: compared as is
    # (same non-finite pattern), not skipped.
    _check_solution(out["distance"], out["plan"], out["n_iter"], out["converged"], ref, ref["plan"],
                    eps, out["f"], out["g"], a, b)


def test_sinkhorn_auto_falls_back_to_log_domain():
    """Auto: max(Cr)/eps <= 50, but the kernel domain underflows a scaling where the weight is > 0."""
    gen = _gen("fallback")
    P, n, m, eps = 8, 3, 3, 0.02
    cost = torch.rand(P, n, m, generator=gen) * 0.98
    a = torch.tensor([1e-38, 0.5, 0.5]).expand(P, n).contiguous()
    b = torch.rand(P, m, generator=gen) + 0.01
    b = b / b.sum(-1, keepdim=True)
    ref = sinkhorn_ref(cost, a, b, eps, 100, 1e-6, AUTO, return_plan=True)
    kern = sinkhorn_ref(cost, a, b, eps, 100, 1e-6, KERNEL)
    fell = ~torch.isfinite(kern["f"]).all(-1)
    assert bool(fell.any()) and not bool(fell.all())  # the case is exercised, next to normal ones
    out = tk.sinkhorn_triton(*_to(DEV, cost, a, b), eps, 100, 1e-6, AUTO, True)
    out = {k: v.cpu() for k, v in out.items()}
    assert bool(torch.isfinite(out["f"][fell][:, 1:]).all())
    _check_solution(out["distance"], out["plan"], out["n_iter"], out["converged"], ref, ref["plan"],
                    eps, out["f"], out["g"], a, b)


ULP = 2.0 ** -23  # float32


def _assert_ulp_close(got, want, ulps=32):
    """Equal up to a few float32 ulps (relative to the tensor's scale): differently compiled kernels
    (a mode of 1 becomes a compile-time constant, pointer alignment specialises, num_warps changes
    reduction trees, tl.exp is approximate on NVIDIA) need not agree bitwise."""
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)) and torch.equal(got[~finite], want[~finite])
    scale = want[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(got[finite], want[finite], rtol=ulps * ULP, atol=ulps * ULP * scale)


@pytest.mark.parametrize("ratio", [45.0, 55.0])
def test_sinkhorn_auto_domain_rule(ratio):
    """Auto takes the log domain iff max(Cr) / eps > 50 (LOG_DOMAIN_THRESHOLD): that mode's results."""
    cost, a, b = _problem(_gen("rule", ratio), 1, 6, 6)
    eps = float(reduce_cost(cost)[0].amax()) / ratio
    cost, a, b = _to(DEV, cost, a, b)
    auto = tk.sinkhorn_triton(cost, a, b, eps, 30, 1e-6, AUTO, True)
    same = tk.sinkhorn_triton(cost, a, b, eps, 30, 1e-6, LOG if ratio > 50 else KERNEL, True)
    other = tk.sinkhorn_triton(cost, a, b, eps, 30, 1e-6, KERNEL if ratio > 50 else LOG, True)
    assert torch.equal(auto["n_iter"], same["n_iter"])
    for key in ("distance", "plan", "f", "g"):
        _assert_ulp_close(auto[key], same[key])
    assert not torch.equal(auto["plan"], other["plan"])  # the two domains are distinguishable


def test_sinkhorn_batched_equals_one_by_one():
    gen = _gen("batched")
    n, m = 9, 11
    cost, a, b = _problem(gen, 5, n, m)
    cost[3] *= 0.01   # converges in a few iterations
    cost[4] *= 20     # max(Cr)/eps > 50: the log domain in auto mode
    cost, a, b = _to(DEV, cost, a, b)
    for mode in (AUTO, LOG):
        whole = tk.sinkhorn_triton(cost, a, b, 0.05, 60, 1e-6, mode, True)
        assert len(set(whole["n_iter"].tolist())) > 1  # problems stop on their own
        for p in range(5):
            one = tk.sinkhorn_triton(cost[p:p + 1], a[p:p + 1], b[p:p + 1], 0.05, 60, 1e-6, mode, True)
            for key in ("n_iter", "converged"):
                assert torch.equal(one[key][0], whole[key][p]), (mode, p, key)
            for key in ("distance", "plan", "f", "g"):
                _assert_ulp_close(one[key][0], whole[key][p])


def test_sinkhorn_rejects_unsupported():
    cost, a, b = _problem(_gen("reject"), 1, 4, 4)
    cost, a, b = _to(DEV, cost, a, b)
    with pytest.raises(ValueError):
        tk.sinkhorn_triton(cost, a, b, 0.05, 10, 1e-6, 3, False)
    big = torch.rand(1, 129, 4, device=DEV)
    with pytest.raises(ValueError, match="n, m <= 128"):
        tk.sinkhorn_triton(big, torch.full((1, 129), 1 / 129, device=DEV), b, 0.05, 10, 1e-6, 0, False)
    x = torch.randn(1, 4, 8, device=DEV)
    with pytest.raises(ValueError, match="n, m <= 128"):
        tk.emd_pairs_triton(x, torch.randn(1, 130, 8, device=DEV), 1, "uniform", 0.05, 10, 1e-6, 0, False)
    with pytest.raises(ValueError):
        tk.emd_pairs_triton(x, x, 1, "uniform", 0.05, 10, 1e-6, 3, False)
    with pytest.raises(ValueError, match="weighting must be one of"):  # no unreachable 'external'
        tk.emd_pairs_triton(x, x, 1, "external", 0.05, 10, 1e-6, 0, False)


# ------------------------------------------------------------------------------------------------
# fused pairs: cost -> weights -> Sinkhorn
# ------------------------------------------------------------------------------------------------

def _emd_ref(x, y, k, weighting, eps, max_iter, tol, mode):
    xr = x.float().repeat_interleave(k, 0)
    yr = y.float()
    cost = patch_cost_ref(xr, yr)
    wx, wy, fallback = patch_weights_ref(xr, yr, weighting)
    ref = sinkhorn_ref(cost, wx.float(), wy.float(), eps, max_iter, tol, mode, return_plan=True)
    return ref, fallback, wx, wy


def _check_emd(out, ref, fallback, eps, flows=True):
    out = {k: (v.cpu() if v is not None else None) for k, v in out.items()}
    assert torch.equal(out["fallback"], fallback)
    assert (out["flows"] is not None) == flows
    _check_solution(out["emd"], out["flows"], out["n_iter"], out["converged"], ref, ref["plan"], eps)


@pytest.mark.parametrize("weighting,dtype,eps,mode,n,m,C", [
    ("uniform", torch.float32, 0.05, AUTO, 7, 13, 33),
    ("apc", torch.float32, 0.05, AUTO, 7, 13, 33),
    ("apc", torch.bfloat16, 0.05, LOG, 16, 9, 40),
    ("sc", torch.float16, 0.01, AUTO, 7, 13, 33),
    ("sc", torch.float32, 0.5, KERNEL, 25, 25, 20),
], ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None)
def test_emd_pairs(weighting, dtype, eps, mode, n, m, C):
    gen = _gen("emd", weighting, str(dtype), eps, mode, n, m, C)
    B, k, max_iter, tol = 2, 2, 100, 1e-6
    # Positively biased features (like post-ReLU maps) so APC / SC weights are informative.
    x = (torch.randn(B, n, C, generator=gen) + 0.5).to(dtype)
    y = (torch.randn(B * k, m, C, generator=gen) + 0.5).to(dtype)
    flows = weighting != "uniform"
    ref, fallback, _, _ = _emd_ref(x, y, k, weighting, eps, max_iter, tol, mode)
    out = tk.emd_pairs_triton(*_to(DEV, x, y), k, weighting, eps, max_iter, tol, mode, flows)
    assert not bool(fallback.any())
    _check_emd(out, ref, fallback, eps, flows)


def test_emd_pairs_apc_uniform_fallback():
    """Anti-correlated images: every APC score is <= 0 on both sides -> uniform weights, flagged."""
    gen = _gen("apc-fallback")
    B, k, n, m, C = 2, 2, 6, 10, 24
    v = torch.rand(C, generator=gen) + 0.5
    x = torch.randn(B, n, C, generator=gen) * 0.05 + v
    y = torch.randn(B * k, m, C, generator=gen) * 0.05 + v
    x[0] = -x[0]          # query 0 against both its candidates: all cosines < 0
    y[3, :3] = -y[3, :3]  # pair 3: a partial flip (some weights zero, no fallback)
    ref, fallback, wx, _ = _emd_ref(x, y, k, "apc", 0.05, 100, 1e-6, AUTO)
    assert fallback.tolist() == [True, True, False, False]
    assert bool((wx[0] == 1 / n).all())
    out = tk.emd_pairs_triton(*_to(DEV, x, y), k, "apc", 0.05, 100, 1e-6, AUTO, True)
    _check_emd(out, ref, fallback, 0.05)


def test_emd_pairs_matches_unfused_triton():
    """The fused kernel equals patch_cost_triton + (reference weights) + sinkhorn_triton."""
    gen = _gen("unfused")
    B, k, n, m, C = 1, 3, 8, 8, 16
    x = torch.randn(B, n, C, generator=gen) + 0.3
    y = torch.randn(B * k, m, C, generator=gen) + 0.3
    x, y = _to(DEV, x, y)
    fused = tk.emd_pairs_triton(x, y, k, "uniform", 0.05, 100, 1e-6, AUTO, True)
    cost = tk.patch_cost_triton(x, y, k)
    wa = torch.full((B * k, n), 1 / n, device=DEV)
    wb = torch.full((B * k, m), 1 / m, device=DEV)
    split = tk.sinkhorn_triton(cost, wa, wb, 0.05, 100, 1e-6, AUTO, True)
    torch.testing.assert_close(fused["emd"], split["distance"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fused["flows"], split["plan"], rtol=0, atol=1e-7)
    assert torch.equal(fused["n_iter"], split["n_iter"])


def test_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
            "from fastface.ops import triton_kernels as tk\n"
            "assert tk.AVAILABLE is False\n"
            "try:\n    tk.sinkhorn_triton(None, None, None, 0.05, 1, 0.0, 0, False)\n"
            "except RuntimeError:\n    print('ok')\n")
    # The same fastface as this test imported (the installed package or the source tree).
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(tk.__file__))))
    env = dict(os.environ, PYTHONPATH=pkg_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=pkg_root, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


# ------------------------------------------------------------------------------------------------
# devices and streams: every launch runs on the tensors' GPU, on that GPU's current stream
# ------------------------------------------------------------------------------------------------

GPU = pytest.mark.skipif(not _HAS_CUDA, reason="no GPU on this machine")
TWO_GPUS = pytest.mark.skipif(not _HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")


def _all_kernels(dev, cost, a, b, x, y):
    """Run the three kernels on tensors moved to dev; return their float results (on the CPU)."""
    cost, a, b, x, y = _to(dev, cost, a, b, x, y)
    s = tk.sinkhorn_triton(cost, a, b, 0.05, 100, 1e-6, AUTO, True)
    e = tk.emd_pairs_triton(x, y, 2, "apc", 0.05, 100, 1e-6, AUTO, True)
    c = tk.patch_cost_triton(x, y, 2)
    return [t.cpu() for t in (s["distance"], s["plan"], e["emd"], e["flows"], c)]


@TWO_GPUS
def test_tensors_on_a_non_current_device():
    cost, a, b = _problem(_gen("device1"), 3, 9, 7)
    x, y = torch.randn(2, 6, 20), torch.randn(4, 5, 20)
    want = _all_kernels("cuda:0", cost, a, b, x, y)
    with torch.cuda.device(0):                 # the current device is not the tensors' device
        got = _all_kernels("cuda:1", cost, a, b, x, y)
    for g, w in zip(got, want):
        _assert_ulp_close(g, w)


@GPU
@pytest.mark.parametrize("device", [0, 1])
def test_launches_on_the_callers_stream(device):
    if device >= torch.cuda.device_count():
        pytest.skip("needs 2 GPUs")
    dev = torch.device("cuda", device)
    cost, a, b = _problem(_gen("stream"), 3, 9, 7)
    want = tk.sinkhorn_triton(*_to(dev, cost, a, b), 0.05, 100, 1e-6, AUTO, True)
    src = cost.to(dev)
    torch.cuda.synchronize(dev)
    side = torch.cuda.Stream(dev)
    with torch.cuda.device(0), torch.cuda.stream(side):
        # The input is written on the side stream after a delay: a launch on any other stream
        # would read it before it exists.
        torch.cuda._sleep(200_000_000)
        late = torch.empty_like(src)
        late.copy_(src)
        got = tk.sinkhorn_triton(late, *_to(dev, a, b), 0.05, 100, 1e-6, AUTO, True)
    side.synchronize()
    for key in ("distance", "plan"):
        _assert_ulp_close(got[key], want[key])

"""The C++ CPU kernels on their own (fastface._C, no Python validation in front): state between
problems, exceptions inside OpenMP regions, and patch magnitudes near the float32 range."""
import subprocess
import sys
import textwrap

import pytest
import torch

import fastface as ff
from fastface import _backend as be
from fastface.reference.sinkhorn import KERNEL, sinkhorn_ref

pytestmark = pytest.mark.skipif(be._C is None, reason="compiled kernels not built")

UNIFORM, APC, SC = 0, 1, 2


def sinkhorn_cpu(cost, a, b, eps, max_iter, tol=1e-6, mode=KERNEL):
    """fastface._C.sinkhorn_cpu on cost (P, n, m), a (P, n), b (P, m): dict of its outputs."""
    P, n, m = cost.shape
    dt = cost.dtype
    out = dict(distance=torch.empty(P, dtype=dt), plan=torch.empty(P, n, m, dtype=dt),
               f=torch.empty(P, n, dtype=dt), g=torch.empty(P, m, dtype=dt),
               n_iter=torch.empty(P, dtype=torch.int32), converged=torch.empty(P, dtype=torch.uint8))
    be._C.sinkhorn_cpu(cost.data_ptr(), a.data_ptr(), b.data_ptr(), P, n, m, eps, max_iter, tol, mode,
                       1, be.DTYPE_CODES[dt], *(be.ptr(out[k]) for k in out), 3)
    return out


def emd_pairs_cpu(x, y, weighting, eps, max_iter, tol=1e-6, mode=KERNEL):
    """fastface._C.emd_pairs_cpu on x (B, n, C), y (B, m, C) (one candidate per query)."""
    B, n, C = x.shape
    m = y.shape[1]
    out = dict(emd=torch.empty(B), flows=torch.empty(B, n, m), n_iter=torch.empty(B, dtype=torch.int32),
               converged=torch.empty(B, dtype=torch.uint8), fallback=torch.empty(B, dtype=torch.uint8))
    be._C.emd_pairs_cpu(x.data_ptr(), y.data_ptr(), 0, B, 1, n, m, C, 0, weighting, eps, max_iter,
                        tol, mode, *(be.ptr(out[k]) for k in out), 3)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_domain_without_iterations_starts_from_unit_scalings(dtype):
    # max_iter = 0: the plan is K = exp(-Cr / eps) (u = v = 1), as in the twin, for every problem
    # of a batch, whichever problem the thread solved before.
    g = torch.Generator().manual_seed(1)
    P, n, m = 7, 5, 3
    cost = torch.rand(P, n, m, generator=g, dtype=dtype)
    a = torch.rand(P, n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(P, m, generator=g, dtype=dtype) + 0.1
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    ref = sinkhorn_ref(cost, a, b, 0.1, 0, 1e-6, KERNEL, return_plan=True)
    got = sinkhorn_cpu(cost, a, b, 0.1, 0)
    for key in ("distance", "plan", "f", "g"):
        torch.testing.assert_close(got[key], ref[key], msg=key)
    assert got["n_iter"].eq(0).all()
    # Each thread reuses its workspace across problems: the order of the problems changes nothing.
    torch.testing.assert_close(sinkhorn_cpu(cost.flip(0), a.flip(0), b.flip(0), 0.1, 0)["distance"],
                               ref["distance"].flip(0))


def test_fused_pairs_without_iterations_start_from_unit_scalings():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 5, 8, generator=g), torch.randn(6, 3, 8, generator=g)
    cost = ff.patch_cost(x, y, impl="torch")
    a, b = torch.full((6, 5), 1 / 5), torch.full((6, 3), 1 / 3)
    ref = sinkhorn_ref(cost, a, b, 0.1, 0, 1e-6, KERNEL, return_plan=True)
    got = emd_pairs_cpu(x, y, UNIFORM, 0.1, 0)
    torch.testing.assert_close(got["emd"], ref["distance"])
    torch.testing.assert_close(got["flows"], ref["plan"])


# Each call throws std::bad_alloc inside the kernel's OpenMP region: a per-thread buffer of
# n * m (or n) elements, far beyond any address space. The pointers are never read.
OOM_CALLS = {
    "sinkhorn": "C.sinkhorn_cpu(p, p, p, 1, 2**30, 2**30, 0.1, 10, 1e-6, 0, 1, 0, p, 0, p, p, p, p, 2)",
    "sinkhorn_official": "C.sinkhorn_cpu(p, p, p, 1, 2**30, 2**30, 0.1, 10, 1e-6, 3, 1, 0, p, 0, 0, 0, p, p, 2)",
    "emd_pairs": "C.emd_pairs_cpu(p, p, 0, 1, 1, 2**30, 2**30, 1, 0, 1, 0.1, 10, 1e-6, 0, p, 0, p, p, p, 2)",
    "patch_cost": "C.patch_cost_cpu(p, p, p, 1, 1, 2**58, 1, 1, 0, 2)",
}


@pytest.mark.parametrize("kernel", sorted(OOM_CALLS))
def test_allocation_failure_in_parallel_region_raises_memory_error(kernel, tmp_path):
    # In a subprocess: before the fix the exception escaped the OpenMP region and aborted Python.
    code = textwrap.dedent(f"""
        import torch
        from fastface import _C as C
        buf = torch.zeros(64)
        p = buf.data_ptr()
        try:
            {OOM_CALLS[kernel]}
        except MemoryError:
            print("MemoryError")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # the installed fastface, not the source tree
    assert run.returncode == 0 and run.stdout.strip() == "MemoryError", (run.returncode, run.stderr[-2000:])


def test_allocation_failure_in_conv_transpose_region_raises_memory_error(tmp_path):
    # One layer whose output row (wout = 2**50 + 1 through the dilation) needs a per-thread
    # accumulator far beyond any address space; the region's barriers must not hang either.
    code = textwrap.dedent("""
        import struct
        import torch
        from fastface import _C as C
        w = torch.zeros(4096)
        d = [0] * 22
        d[0] = w.data_ptr()
        # cin, cout, hin, win, hout, wout, kh, kw, sh, sw, ph, pw, dh, dw, act
        d[4:19] = [1, 1, 1, 1, 1, 2**50 + 1, 1, 2, 1, 1, 0, 0, 1, 2**50, 0]
        d[19] = struct.unpack("<q", struct.pack("<d", 0.01))[0]
        desc = torch.tensor(d, dtype=torch.int64)
        x, out = torch.zeros(64), torch.zeros(64)
        try:
            C.conv_transpose_chain_cpu(x.data_ptr(), out.data_ptr(), 1, desc.data_ptr(), 1, 22, False, 0, 2)
        except MemoryError:
            print("MemoryError")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)  # the installed fastface, not the source tree
    assert run.returncode == 0 and run.stdout.strip() == "MemoryError", (run.returncode, run.stderr[-2000:])


@pytest.mark.parametrize("scale", [1e20, 1e30, 3e36])
def test_patch_cost_is_scale_invariant_near_float_max(scale):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 5, 16, generator=g), torch.randn(3, 4, 16, generator=g)
    ref = ff.patch_cost(x, y, impl="cpu")
    torch.testing.assert_close(ff.patch_cost(x * scale, y, impl="cpu"), ref)
    torch.testing.assert_close(ff.patch_cost(x * scale, y * scale, impl="cpu"), ref)
    x64, y64 = x.double(), y.double()
    torch.testing.assert_close(ff.patch_cost(x64 * 1e200, y64 * 1e160, impl="cpu"),
                               ff.patch_cost(x64, y64, impl="cpu"))


@pytest.mark.parametrize("weighting", [UNIFORM, APC, SC])
@pytest.mark.parametrize("scale", [1e20, 3e36])
def test_fused_emd_is_scale_invariant_near_float_max(weighting, scale):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(4, 6, 16, generator=g), torch.randn(4, 5, 16, generator=g)
    x[:, 1] = 0  # a zero patch keeps its meaning: cost 1 to everything, weight 0
    ref = emd_pairs_cpu(x, y, weighting, 0.1, 100, mode=0)
    assert ref["emd"].isfinite().all()
    for xs, ys in ((x * scale, y), (x, y * scale), (x * scale, y * scale)):
        got = emd_pairs_cpu(xs, ys, weighting, 0.1, 100, mode=0)
        torch.testing.assert_close(got["emd"], ref["emd"])
        torch.testing.assert_close(got["flows"], ref["flows"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_cost_across_the_fast_norm_window(dtype):
    # Rows whose sum of squares lies within 2^+-40 take the one-pass norm; beyond it, the scaled path.
    # Rows on both sides of both edges, in one call and mixed within a set, against the float64 twin.
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(2, 9, 32, generator=g), torch.randn(2, 7, 32, generator=g)
    for t in (x, y):
        t /= t.norm(dim=-1, keepdim=True)
    sx = torch.tensor([2.0 ** e for e in (-30, -21, -20, -19.9, 0, 19.9, 20, 20.1, 31)])
    sy = torch.tensor([2.0 ** e for e in (-20.1, -20, -19.9, 5, 19.9, 20, 20.1)])
    x, y = (x * sx[:, None]).to(dtype), (y * sy[:, None]).to(dtype)
    want = ff.patch_cost(x.double(), y.double(), impl="torch").float()
    torch.testing.assert_close(ff.patch_cost(x, y, impl="cpu"), want, atol=2e-6, rtol=0)


def test_zero_and_tiny_patches_keep_the_norm_floor():
    # Norms below 1e-12 count as 1e-12: a zero patch costs 1 to everything, a 1e-15 patch almost 1.
    x = torch.zeros(1, 2, 4)
    x[0, 1, 0] = 1e-15
    y = torch.eye(4).unsqueeze(0)
    cost = ff.patch_cost(x, y, impl="cpu")
    torch.testing.assert_close(cost[0, 0], torch.ones(4))
    torch.testing.assert_close(cost[0, 1], torch.tensor([1 - 1e-3, 1, 1, 1]))


def test_emd_pairs_rejects_an_unknown_weighting_code():
    # Code 3 was an unreachable "external" weighting; the binding now names the valid codes.
    x = torch.rand(2, 3, 4)
    for code in (-1, 3, 7):
        with pytest.raises(ValueError, match="weighting code must be 0"):
            emd_pairs_cpu(x, x, code, 0.1, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_channel_cosines_are_exact_sign_products(dtype):
    # C = 1: cos is sign(x) sign(y) exactly (as x / |x| gives it in the twin); a scaled product was
    # one ulp off, so all-zero SC weights (the uniform fallback) differed between impls.
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(4, 7, 1, generator=g) * 3, torch.randn(4, 6, 1, generator=g) / 3
    x[:, 2] = 0
    want = 1 - torch.sign(x) * torch.sign(y).transpose(1, 2)
    assert torch.equal(ff.patch_cost(x.to(dtype), y.to(dtype), impl="cpu"), want)
    assert torch.equal(ff.patch_cost(x, y, impl="torch"), want)
    same = y.abs()[:, :1].expand(4, 5, 1).contiguous()  # every cost 0: SC weights fall back to uniform
    got = emd_pairs_cpu(same.abs() + 1, y.abs() + 1, SC, 0.1, 10)
    assert got["fallback"].all()

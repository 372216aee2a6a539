"""The CUDA Sinkhorn, emd_pairs and patch_cost kernels and launchers, run on the CPU by the host emulator.

tests/cuda_emu builds csrc/cuda/{sinkhorn,emd_pairs,patch_cost}.cu with g++ against fake CUDA
headers (a fiber per CUDA thread, real barriers and warp shuffles, NaN-filled shared memory, the
driver's launch limits) and the results are compared with the C++ CPU kernels (fastface._C
*_cpu) on the same raw inputs, so every launcher path (K in registers / shared memory / the plan
buffer, official mode, fp16 input, n or m > 64, n = m = 1, zero weights) runs where no GPU exists.
Timing means nothing here; on a GPU the same paths run for real in tests/test_sinkhorn.py.
"""
import ctypes
import shutil

import pytest
import torch
from torch.testing import assert_close

from fastface import _backend as be
from fastface.reference.sinkhorn import AUTO, KERNEL, LOG, OFFICIAL

from cuda_emu.harness import EmulatorCopy, build_emulator

UNIFORM, APC, SC = 0, 1, 2

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found (host CUDA emulator)")


@pytest.fixture(scope="module")
def emu_so(tmp_path_factory):
    return build_emulator(tmp_path_factory, "emu_emd.cpp", "ffemu_emd")


class Emulator(EmulatorCopy):
    """The emulated CUDA launchers with fresh static state (attribute flags) per instance."""

    def query(self, name, *args):
        """Return ff_emu_<name>(*args) (an int64) under this instance's device properties."""
        return self.call(name, *args, check=False)

    def call(self, name, *args, check=True):
        """Run ff_emu_<name>(*args) under this instance's device properties; ValueError on failure."""
        with self.device_properties():
            conv = [ctypes.c_double(a) if isinstance(a, float) else ctypes.c_int64(a) for a in args]  # int64_t in C
            fn = getattr(self.lib, f"ff_emu_{name}")
            fn.argtypes = [type(c) for c in conv]
            fn.restype = ctypes.c_int64 if name.endswith("bytes") else ctypes.c_int
            ret = fn(*conv)
            if (check and ret != 0) or ret == -1:
                raise ValueError(self.lib.ff_emu_error().decode())
            return ret


def run_sinkhorn(fn, cost, a, b, eps, max_iter, tol, mode, group=1, want_plan=True, want_fg=True):
    """Call a sinkhorn launcher (the CPU kernel or the emulated CUDA one) with fresh NaN outputs."""
    P, n, m = cost.shape
    dt = cost.dtype
    out = dict(distance=torch.full((P,), float("nan"), dtype=dt),
               plan=torch.full((P, n, m), float("nan"), dtype=dt) if want_plan else None,
               f=torch.full((P, n), float("nan"), dtype=dt) if want_fg and mode != OFFICIAL else None,
               g=torch.full((P, m), float("nan"), dtype=dt) if want_fg and mode != OFFICIAL else None,
               n_iter=torch.full((P,), -1, dtype=torch.int32), converged=torch.full((P,), 7, dtype=torch.uint8))
    fn(be.ptr(cost), be.ptr(a), be.ptr(b), P, n, m, float(eps), int(max_iter), float(tol), mode, group,
       be.DTYPE_CODES[dt], *(be.ptr(out[k]) for k in ("distance", "plan", "f", "g", "n_iter", "converged")))
    return out


def cpu_sinkhorn(*args, **kw):
    return run_sinkhorn(lambda *a: be._C.sinkhorn_cpu(*a, 1), *args, **kw)


def emu_sinkhorn(emu, *args, **kw):
    return run_sinkhorn(lambda *a: emu.call("sinkhorn", *a), *args, **kw)


def check_same(got, want, rtol, atol):
    for key, w in want.items():
        if w is None:
            assert got[key] is None, key
            continue
        if key in ("n_iter", "converged"):
            assert torch.equal(got[key], w), (key, got[key], w)
        else:
            assert_close(got[key], w, rtol=rtol, atol=atol, msg=lambda s: f"{key}: {s}")


def problems(gen, P, n, m, dtype, zero_weights=False):
    cost = torch.rand(P, n, m, generator=gen, dtype=torch.float64)
    a = torch.rand(P, n, generator=gen, dtype=torch.float64) + 0.05
    b = torch.rand(P, m, generator=gen, dtype=torch.float64) + 0.05
    if zero_weights and n > 1 and m > 1:
        a[:, ::3] = 0
        b[:, 1::2] = 0
    a /= a.sum(-1, keepdim=True)
    b /= b.sum(-1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype)


TOL = {torch.float32: dict(rtol=2e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-12)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 9), (5, 7), (37, 45), (70, 19)])
def test_sinkhorn_modes_match_cpu(emu_so, gen, dtype, n, m):
    """K in registers (37 x 45, float32), in shared memory (the rest); n > 64; n = m = 1."""
    cost, a, b = problems(gen, 3, n, m, dtype, zero_weights=True)
    emu = Emulator(emu_so)
    for mode, eps in ((AUTO, 0.05), (KERNEL, 0.1), (LOG, 0.01), (AUTO, 0.01)):
        args = (cost, a, b, eps, 25, 1e-4, mode)
        check_same(emu_sinkhorn(emu, *args), cpu_sinkhorn(*args), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_official_matches_cpu(emu_so, gen, dtype):
    """Official mode: groups of 3 coupled problems stop together (and group 1: on their own)."""
    cost, a, b = problems(gen, 6, 9, 13, dtype)
    emu = Emulator(emu_so)
    for group, tol in ((3, 1e-3), (1, 1e-3), (2, 0.0)):
        args = (cost, a, b, 0.1, 40, tol, OFFICIAL, group)
        want = cpu_sinkhorn(*args)
        got = emu_sinkhorn(emu, *args)
        check_same(got, want, **TOL[dtype])
        assert want["n_iter"].reshape(-1, group).unique(dim=-1).shape[-1] == 1  # per group
    assert (want["n_iter"] == 40).all() and not want["converged"].any()  # tol 0: never stops


def test_sinkhorn_plan_buffer_path(emu_so, gen):
    """K too large for shared memory: the plan buffer holds it (forced by a small opt-in)."""
    cost, a, b = problems(gen, 2, 30, 33, torch.float64)
    with_k = Emulator(emu_so).query("sinkhorn_smem_bytes", 30, 33, be.DTYPE_CODES[torch.float64], AUTO, 1)
    small = Emulator(emu_so, FF_EMU_SMEM_OPTIN=with_k - 1)  # K does not fit, the solver vectors do
    for mode, eps in ((AUTO, 0.05), (LOG, 0.02), (KERNEL, 0.1)):
        args = (cost, a, b, eps, 20, 1e-6, mode)
        check_same(emu_sinkhorn(small, *args), cpu_sinkhorn(*args), **TOL[torch.float64])


def run_patch_cost(fn, x, y, rep):
    P, m, C = y.shape
    n = x.shape[1]
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.full((P, n, m), float("nan"), dtype=out_dtype)
    fn(be.ptr(x), be.ptr(y), be.ptr(out), P, rep, n, m, C, be.DTYPE_CODES[x.dtype])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_patch_cost_matches_cpu(emu_so, gen, dtype):
    """Tiles of 64 x 64 with ragged edges (n = 70, m = 3 and 1 x 1), odd C, zero patches, rep > 1."""
    emu = Emulator(emu_so)
    for n, m, C, rep in ((70, 3, 37, 2), (1, 1, 5, 1), (9, 66, 20, 1)):
        x = torch.randn(2, n, C, generator=gen).to(dtype)
        y = torch.randn(2 * rep, m, C, generator=gen).to(dtype)
        x[0, 0] = 0  # zero-norm patch: cost 1 to everything
        got = run_patch_cost(lambda *a: emu.call("patch_cost", *a), x, y, rep)
        ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        want = run_patch_cost(lambda *a: be._C.patch_cost_cpu(*a, 1), x.to(ref_dtype), y.to(ref_dtype), rep)
        assert_close(got, want, **TOL[ref_dtype])
        assert (got[0, 0] == 1).all()


def run_emd_pairs(fn, x, y, idx, k, weighting, eps, max_iter, tol, mode, want_flows=True):
    B, n, C = x.shape
    m = y.shape[1]
    P = B * k
    out = dict(emd=torch.full((P,), float("nan")),
               flows=torch.full((P, n, m), float("nan")) if want_flows else None,
               n_iter=torch.full((P,), -1, dtype=torch.int32), converged=torch.full((P,), 7, dtype=torch.uint8),
               fallback=torch.full((P,), 7, dtype=torch.uint8))
    fn(be.ptr(x), be.ptr(y), be.ptr(idx), B, k, n, m, C, be.DTYPE_CODES[x.dtype], weighting, float(eps),
       int(max_iter), float(tol), mode, *(be.ptr(out[k]) for k in ("emd", "flows", "n_iter", "converged", "fallback")))
    return out


def emd_inputs(gen, B, k, n, m, C, gallery=None, dtype=torch.float32):
    """x (B, n, C); y (G, m, C) with idx (B, k) when gallery = G, else y (B * k, m, C), idx None."""
    x = torch.randn(B, n, C, generator=gen).relu()  # ReLU features: APC / SC weights can vanish
    rows = gallery if gallery else B * k
    y = torch.randn(rows, m, C, generator=gen).relu()
    idx = torch.randint(0, gallery, (B, k), generator=gen) if gallery else None
    return x.to(dtype), y.to(dtype), idx


@pytest.mark.parametrize("n,m,C", [(1, 1, 3), (6, 9, 19), (37, 45, 33), (70, 12, 5)])
def test_emd_pairs_matches_cpu(emu_so, gen, n, m, C):
    """Tiled GEMM (n, m <= 64) with K in registers or shared memory; n > 64: one dot per thread."""
    emu = Emulator(emu_so)
    x, y, idx = emd_inputs(gen, 2, 2, n, m, C, gallery=5)
    x[0, 0] = 0  # a zero patch: weight 0
    for weighting, mode, eps in ((APC, AUTO, 0.05), (UNIFORM, KERNEL, 0.1), (SC, LOG, 0.02)):
        args = (x, y, idx, 2, weighting, eps, 15, 1e-5, mode)
        got = run_emd_pairs(lambda *a: emu.call("emd_pairs", *a), *args)
        want = run_emd_pairs(lambda *a: be._C.emd_pairs_cpu(*a, 1), *args)
        check_same(got, want, rtol=1e-3, atol=2e-5)


def test_emd_pairs_half_inputs_and_fallback(emu_so, gen):
    """fp16 / bf16 inputs (the CPU kernel on the same values in float32); all-zero sides fall back."""
    emu = Emulator(emu_so)
    x, y, _ = emd_inputs(gen, 2, 2, 10, 7, 24)
    x[1] = -x[1].abs() - 0.1  # APC of a side all negative -> all-zero weights -> uniform fallback
    for dtype in (torch.float16, torch.bfloat16):
        xh, yh = x.to(dtype), y.to(dtype)
        args = (None, 2, APC, 0.05, 15, 1e-5, AUTO)
        got = run_emd_pairs(lambda *a: emu.call("emd_pairs", *a), xh, yh, *args, want_flows=False)
        want = run_emd_pairs(lambda *a: be._C.emd_pairs_cpu(*a, 1), xh.float(), yh.float(), *args, want_flows=False)
        check_same(got, want, rtol=1e-3, atol=2e-5)
        assert got["fallback"][2:].all() and not got["fallback"][:2].any()


def official_check(emu, cost, a, b, group, tol, want_plan=True):
    args = (cost, a, b, 0.1, 40, tol, OFFICIAL, group)
    want = cpu_sinkhorn(*args)
    got = emu_sinkhorn(emu, *args, want_plan=want_plan)
    if not want_plan:
        want["plan"] = None
    check_same(got, want, **TOL[cost.dtype])
    return want


def test_sinkhorn_official_team_layouts(emu_so, gen):
    """Groups run by fewer blocks than problems, in waves, with r, c in global scratch, no plan."""
    cost, a, b = problems(gen, 9, 6, 11, torch.float32)
    # Groups that stop at different iterations (the first converges fastest), all below max_iter.
    cost[:3] *= 0.2
    emu = Emulator(emu_so)
    with_k = emu.query("sinkhorn_smem_bytes", 6, 11, 0, OFFICIAL, 1)  # r, c and K in shared memory
    rc_only = emu.query("sinkhorn_smem_bytes", 6, 11, 0, OFFICIAL, 0)  # r, c in shared memory
    assert rc_only < with_k
    variants = [
        dict(),                                     # a block per problem, every group at once
        dict(FF_EMU_SMS=1, FF_EMU_BLOCKS_PER_SM=2),  # 2 blocks per group of 3, one group at a time
        dict(FF_EMU_SMS=1, FF_EMU_BLOCKS_PER_SM=1),  # one block per group
        dict(FF_EMU_SMEM_OPTIN=with_k - 1),         # K recomputed from the cost every iteration
        dict(FF_EMU_SMEM_OPTIN=rc_only - 1),        # ... and r, c in global scratch
    ]
    layouts = []
    for env in variants:
        emu = Emulator(emu_so, **env)
        want = official_check(emu, cost, a, b, 3, 1e-4)
        official_check(emu, cost, a, b, 3, 1e-4, want_plan=False)
        layouts.append(emu.query("last_launch_smem_bytes"))
    assert layouts[0] == with_k and layouts[3] == rc_only and layouts[4] < rc_only, layouts
    assert layouts[2] > layouts[1] > with_k  # r, c and K of 2, then 3 problems per block
    iters = want["n_iter"].reshape(3, 3)
    assert (iters == iters[:, :1]).all() and len(set(iters[:, 0].tolist())) > 1, iters
    assert want["converged"].all()


def test_sinkhorn_plan_scratch_only_beyond_shared_memory(emu_so, gen):
    """K stays in shared memory up to the opt-in maximum (227 KB), not 48 KB; beyond, the plan is scratch."""
    emu = Emulator(emu_so)
    f64 = be.DTYPE_CODES[torch.float64]
    # 80 x 81 doubles = 52 KB of K: over 48 KB, no plan buffer needed.
    assert emu.query("sinkhorn_smem_bytes", 80, 80, f64, AUTO, 1) > 48 * 1024
    assert emu.query("sinkhorn_needs_plan", 80, 80, f64, AUTO) == 0
    cost, a, b = problems(gen, 1, 80, 80, torch.float64)
    args = (cost, a, b, 0.05, 2, 1e-9, AUTO)
    check_same(emu_sinkhorn(emu, *args, want_plan=False), cpu_sinkhorn(*args, want_plan=False), **TOL[torch.float64])
    # Past the device's limit: the plan is needed as scratch, and its absence is an error.
    with_k = emu.query("sinkhorn_smem_bytes", 30, 33, f64, AUTO, 1)
    without_k = emu.query("sinkhorn_smem_bytes", 30, 33, f64, AUTO, 0)
    assert without_k < with_k
    small = Emulator(emu_so, FF_EMU_SMEM_OPTIN=with_k - 1)
    assert small.query("sinkhorn_needs_plan", 30, 33, f64, AUTO) == 1
    assert Emulator(emu_so, FF_EMU_SMEM_OPTIN=with_k).query("sinkhorn_needs_plan", 30, 33, f64, AUTO) == 0
    assert small.query("sinkhorn_needs_plan", 30, 33, f64, OFFICIAL) == 0
    cost, a, b = problems(gen, 2, 30, 33, torch.float64)
    args = (cost, a, b, 0.05, 10, 1e-9, AUTO)
    check_same(emu_sinkhorn(small, *args), cpu_sinkhorn(*args), **TOL[torch.float64])
    assert small.query("last_launch_smem_bytes") == without_k  # K in the plan
    with pytest.raises(ValueError, match="plan buffer"):
        emu_sinkhorn(small, *args, want_plan=False)
    tiny = Emulator(emu_so, FF_EMU_SMEM_OPTIN=without_k - 1)
    with pytest.raises(ValueError, match="too large"):
        tiny.query("sinkhorn_needs_plan", 30, 33, f64, AUTO)


def test_emd_pairs_size_is_the_launch_size(emu_so, gen):
    """emd_pairs_smem_bytes is what the launch uses: it runs at exactly that opt-in, not one byte less."""
    need = Emulator(emu_so).query("emd_pairs_smem_bytes", 20, 13)
    x, y, _ = emd_inputs(gen, 1, 2, 20, 13, 8)
    args = (x, y, None, 2, APC, 0.05, 5, 1e-6, AUTO)
    fits, short = Emulator(emu_so, FF_EMU_SMEM_OPTIN=need), Emulator(emu_so, FF_EMU_SMEM_OPTIN=need - 1)
    assert fits.query("emd_pairs_fits", 20, 13) == 1 and short.query("emd_pairs_fits", 20, 13) == 0
    run_emd_pairs(lambda *a: fits.call("emd_pairs", *a), *args)
    with pytest.raises(ValueError, match="shared memory"):
        run_emd_pairs(lambda *a: short.call("emd_pairs", *a), *args)


def test_smem_opt_in_set_once_to_the_device_maximum(emu_so, gen):
    """Launches of different sizes do not re-set the kernel's opt-in (a race between threads)."""
    emu = Emulator(emu_so)
    for n in (80, 85):  # 52 KB and 58 KB of K in shared memory, both past the 48 KB default
        cost, a, b = problems(gen, 1, n, n, torch.float64)
        emu_sinkhorn(emu, cost, a, b, 0.05, 1, 1e-9, KERNEL, want_plan=False)
    assert emu.query("smem_attr_sets") == 1
    assert emu.query("smem_attr_below_max") == 0


def test_huge_patch_magnitudes_are_scale_safe(emu_so, gen):
    """Entries around 1e20 overflow squared norms: the kernels rescale, so the cost and EMD do not change."""
    emu = Emulator(emu_so)
    for n, m, weightings in ((7, 5, (APC, SC, UNIFORM)), (70, 4, (APC,))):  # tiled GEMM, one dot per thread
        x, y, _ = emd_inputs(gen, 1, 2, n, m, 9)
        x[0, 0] = 0  # zero patches stay zero (weight 0, cost 1)
        for weighting in weightings:
            args = (None, 2, weighting, 0.05, 10, 1e-6, AUTO)
            want = run_emd_pairs(lambda *a: emu.call("emd_pairs", *a), x, y, *args)
            for big_x, big_y in ((1e20, 1.0), (3e25, 1e30)):
                got = run_emd_pairs(lambda *a: emu.call("emd_pairs", *a), x * big_x, y * big_y, *args)
                check_same(got, want, rtol=1e-4, atol=1e-6)
    for dtype, big in ((torch.float32, 2.0 ** 66), (torch.bfloat16, 2.0 ** 100), (torch.float64, 2.0 ** 670)):
        x = torch.randn(1, 70, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
        x[0, 1] = 0
        want = run_patch_cost(lambda *a: emu.call("patch_cost", *a), x.to(dtype), y.to(dtype), 2)
        got = run_patch_cost(lambda *a: emu.call("patch_cost", *a), (x * big).to(dtype), (y * big).to(dtype), 2)
        assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert (got[:, 1] == 1).all()


def test_sinkhorn_auto_falls_back_to_the_log_domain(emu_so, gen):
    """A denormal weight underflows a kernel-domain scaling: auto reruns that problem in the log domain."""
    cost, a, b = problems(gen, 3, 6, 7, torch.float32)
    a[:, 0] = 1e-42
    b[:, 1] = 1e-42
    args = (cost, a, b, 0.021, 30, 1e-6, AUTO)  # max(Cr) / eps < 50: auto starts in the kernel domain
    want = cpu_sinkhorn(*args)
    kernel_only = cpu_sinkhorn(cost, a, b, 0.021, 30, 1e-6, KERNEL)
    assert not torch.equal(want["f"], kernel_only["f"])  # the fallback ran
    check_same(emu_sinkhorn(Emulator(emu_so), *args), want, **TOL[torch.float32])

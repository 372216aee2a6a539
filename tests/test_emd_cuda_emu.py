"""The CUDA Sinkhorn, emd_pairs and patch_cost kernels and launchers, run on the CPU by the host emulator.

tests/cuda_emu builds csrc/cuda/{sinkhorn,emd_pairs,patch_cost}.cu with g++ against fake CUDA
headers (a thread per CUDA thread, real barriers and warp shuffles, NaN-filled shared memory, the
driver's launch limits) and the results are compared with the C++ CPU kernels (fastface._C
*_cpu) on the same raw inputs, so every launcher path (K in registers / shared memory / the plan
buffer, official mode, fp16 input, n or m > 64, n = m = 1, zero weights) runs where no GPU exists.
Timing means nothing here; on a GPU the same paths run for real in tests/test_sinkhorn.py.
"""
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from fastface import _backend as be
from fastface.reference.sinkhorn import AUTO, KERNEL, LOG, OFFICIAL

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "tests" / "cuda_emu"
ENV_KEYS = ("FF_EMU_SMEM_OPTIN", "FF_EMU_SMS", "FF_EMU_BLOCKS_PER_SM")
UNIFORM, APC, SC = 0, 1, 2

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found (host CUDA emulator)")


@pytest.fixture(scope="module")
def emu_so(tmp_path_factory):
    """Build the emulator library once per run (a compile error fails the tests)."""
    out = tmp_path_factory.mktemp("cuda_emu_emd") / "libffemu_emd.so"
    cmd = ["g++", "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
           "-DFASTFACE_CUDA_EMULATION", f"-I{EMU / 'include'}", str(EMU / "emu_emd.cpp"), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


class Emulator:
    """The emulated CUDA launchers with fresh static state (attribute flags) per instance."""

    count = 0

    def __init__(self, so, **env):
        Emulator.count += 1
        path = so.with_name(f"libffemu_emd_{Emulator.count}.so")
        shutil.copy(so, path)
        self.lib = ctypes.CDLL(str(path))
        self.lib.ff_emu_error.restype = ctypes.c_char_p
        self.env = {k: str(v) for k, v in env.items()}

    def call(self, name, *args):
        """Run ff_emu_<name>(*args) under this instance's device properties; ValueError on failure."""
        saved = {k: os.environ.get(k) for k in ENV_KEYS}
        os.environ.update(self.env)
        try:
            conv = [ctypes.c_double(a) if isinstance(a, float) else ctypes.c_int64(a) for a in args]
            fn = getattr(self.lib, f"ff_emu_{name}")
            fn.argtypes = [type(c) for c in conv]
            if fn(*conv) != 0:
                raise ValueError(self.lib.ff_emu_error().decode())
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _int_args(args):
    """ctypes passes every integer as int64: fine for the int parameters on x86-64 / aarch64 too."""
    return args


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

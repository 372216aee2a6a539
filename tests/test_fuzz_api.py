"""Fuzz of the public API with seeded random valid-but-odd and bad inputs (deterministic).

Properties, for every call:
1. it returns, or raises ValueError / TypeError (FloatingPointError only where ff.sinkhorn
   documents it); never another exception, a crash (the C++ kernels run in-process) or a hang;
2. a ValueError / TypeError for a bad argument names that argument;
3. valid inputs give finite results, the C++ kernels (impl="cpu") agree with the PyTorch twin
   (impl="torch") within the dtype's tolerance, and adding a constant to a Sinkhorn cost adds it
   to the distance and changes neither the plan nor the gradient.
Each test collects all its failures, so one run lists every defect class it hits; `pytest -s`
prints the cases run per API (about 2,270 valid + 910 bad inputs in all).
"""
import copy
import faulthandler
import math
import random
import re
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import fastface as ff
from fastface import _backend as be
from fastface.data import SynthFaces, occlude
from fastface.eval import metrics
from fastface.reference.cost import NORM_FLOOR

HANG_S = 120                       # a test still running after this long is a hang: abort the run
FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _no_hang():
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def rng_for(name):
    """Seeded (python, torch) generators: the same cases on every run."""
    seed = zlib.crc32(name.encode())
    return random.Random(seed), torch.Generator().manual_seed(seed)


def name_pattern(name):
    """A regex finding `name` as an argument in a message (a one-letter name such as "a" must be
    followed by what an error says about it, so that the article "a" does not count)."""
    if len(name) == 1:
        return rf"(?<![\w.']){name}(?= must| has| and| contains| \(| of|=|:|,|'s)"
    return rf"(?<![\w.]){re.escape(name)}(?![\w])"


class Fuzz:
    """Runs cases and collects every failure (not only the first)."""

    def __init__(self, name):
        self.name, self.failures, self.n_valid, self.n_bad, self.n_allowed = name, [], 0, 0, 0

    def fail(self, label, why):
        self.failures.append(f"[{label}] {why}")

    def valid(self, label, call, check=None, allow=()):
        """A valid input: the call returns (or raises one of `allow`) and check(result) holds."""
        self.n_valid += 1
        try:
            out = call()
        except allow:
            self.n_allowed += 1
            return None
        except Exception as exc:  # noqa: BLE001 - any exception on a valid input is a defect
            self.fail(label, f"valid input raised {type(exc).__name__}: {exc}")
            return None
        if check is not None:
            try:
                check(out)
            except AssertionError as exc:
                self.fail(label, f"wrong result: {str(exc)[:400]}")
        return out

    def bad(self, label, call, names, types=(ValueError, TypeError)):
        """A bad input: the call raises one of `types` whose message names one of `names`."""
        self.n_bad += 1
        names = (names,) if isinstance(names, str) else names
        try:
            call()
        except types as exc:
            msg = str(exc)
            if not any(re.search(name_pattern(n), msg) for n in names):
                self.fail(label, f"{type(exc).__name__} does not name {' or '.join(names)}: {msg!r}")
        except Exception as exc:  # noqa: BLE001
            self.fail(label, f"bad input raised {type(exc).__name__} (want {[t.__name__ for t in types]}): {exc}")
        else:
            self.fail(label, f"bad input accepted (want an error naming {' or '.join(names)})")

    def finish(self):
        print(f"\n{self.name}: {self.n_valid} valid + {self.n_bad} bad cases ({self.n_allowed} valid ones "
              f"raised a documented error), {len(self.failures)} failures")
        assert not self.failures, f"{len(self.failures)} failures:\n" + "\n".join(self.failures[:40])


# ---- input makers ----
def odd_layout(t, how):
    """The same values as t, laid out contiguous, transposed (last two dims) or strided."""
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how == "strided":
        return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
    return t


def magnitude(r):
    return r.choice([1.0, 1.0, 1.0, 1e-20, 1e-3, 1e3, 1e19, 1e30])


def close(got, want, rtol, atol, what):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, equal_nan=False,
                               msg=lambda m: f"{what}: {m}")


def assert_finite(t, what):
    assert bool(torch.isfinite(t).all()), f"{what} is not finite: {t}"


def tol_for(dtype):
    """(rtol, atol) for cpu vs torch: both accumulate in float32 unless an input is float64."""
    return (1e-9, 1e-9) if dtype == torch.float64 else (2e-4, 2e-4)


def acc_dtype(*dtypes):
    return torch.float64 if torch.float64 in dtypes else torch.float32


# ---- bad values shared by the solver arguments ----
BAD_EPS = [0, 0.0, -0.1, float("nan"), float("inf"), "0.05", True, None, [0.05]]
BAD_MAX_ITER = [0, -1, 2**31, 2.5, True, "10", None]
BAD_TOL = [-1e-3, float("nan"), float("inf"), "1e-6", None]
BAD_MODE = ["fast", 1, None, "Auto"]
BAD_IMPL = ["gpu", None, 3, "CPU"]


def bad_tensors(shape, name):
    """(label, value) pairs of tensors / non-tensors that are bad for an argument of `shape`."""
    out = []
    nan = torch.rand(shape)
    if nan.numel():
        nan.view(-1)[0] = float("nan")
        inf = torch.rand(shape)
        inf.view(-1)[-1] = float("-inf")
        out += [(f"{name}=NaN", nan), (f"{name}=inf", inf)]
    out += [(f"{name}=int64", torch.ones(shape, dtype=torch.int64)),
            (f"{name}=bool", torch.ones(shape, dtype=torch.bool)),
            (f"{name}=complex", torch.ones(shape, dtype=torch.complex64)),
            (f"{name}=meta", torch.empty(shape, device="meta")),
            (f"{name}=numpy", np.ones(shape, dtype=np.float32)),
            (f"{name}=list", torch.rand(shape).tolist()),
            (f"{name}=str", "tensor")]
    return out


# =============================================================================================
# ff.sinkhorn
# =============================================================================================
def random_cost(r, g, batch, n, m):
    """A float64 cost of one of several odd kinds, and its spread (max - min)."""
    kind = r.choice(["unit", "unit", "offset", "tiny", "negative", "constant", "wide", "huge", "one_row"])
    u = torch.rand(*batch, n, m, generator=g, dtype=torch.float64)
    one_row = u.clone()
    one_row[..., 0, :] += 50                                # one row far above the others
    cost = {"unit": u * 2, "offset": 1000 + u, "tiny": 1e-6 * u, "negative": -3 * u,
            "constant": torch.full_like(u, 0.7), "wide": 30 * u, "huge": 1e4 * u, "one_row": one_row}[kind]
    return kind, cost


def check_sinkhorn(res, cost, official, want_plan, what):
    d = res.distance
    assert_finite(d, f"{what} distance")
    assert d.shape == cost.shape[:-2], f"{what} distance shape {tuple(d.shape)}"
    if want_plan:
        assert res.plan.shape == cost.shape, f"{what} plan shape"
        assert_finite(res.plan, f"{what} plan")
        assert bool((res.plan >= 0).all()), f"{what} plan has negative entries"
    if not official and cost.numel():   # a plan of mass 1: distance within [min C, max C]
        c = cost.double()
        lo, hi = c.amin((-1, -2)), c.amax((-1, -2))
        slack = 1e-3 * (hi - lo) + 1e-3 * c.abs().amax((-1, -2)) * (1e-2 if cost.dtype == torch.float64 else 1) + 1e-6
        assert bool(((d.double() >= lo - slack) & (d.double() <= hi + slack)).all()), \
            f"{what} distance {d} outside [{lo}, {hi}]"


def test_sinkhorn_valid_inputs_agree_across_impls():
    r, g = rng_for("sinkhorn_valid")
    fz = Fuzz("sinkhorn valid")
    for case in range(160):
        batch = r.choice([(), (1,), (3,), (2, 3), (0,)])
        n, m = r.choice([1, 2, 3, 5, 9]), r.choice([1, 2, 4, 7])
        kind, cost64 = random_cost(r, g, batch, n, m)
        dtype = r.choice(FLOATS)
        wdtype = r.choice([None, dtype, r.choice(FLOATS)])
        mode = r.choice(["auto", "auto", "kernel", "log", "official"])
        eps = r.choice([0.05, 0.5, 2.0, 1e-3, 1e-5, 1e6])
        max_iter = r.choice([1, 3, 100])
        tol = r.choice([0.0, 1e-6, 0.1])
        layout = r.choice(["contiguous", "transposed", "strided"])
        want_plan = r.random() < 0.5
        cost = odd_layout(cost64.to(dtype), layout)
        a = b = None
        if wdtype is not None:
            a = torch.rand(*batch, n, generator=g, dtype=torch.float64) * r.choice([1.0, 1e3, 1e-3])
            b = torch.rand(*batch, m, generator=g, dtype=torch.float64) + 0.01
            if n > 1 and r.random() < 0.3:
                a[..., 0] = 0                                   # a zero weight (not all)
            a, b = a.to(wdtype) + (0 if wdtype != torch.float16 else 1e-3), b.to(wdtype)
        label = (f"#{case} {kind} batch={batch} n={n} m={m} {dtype}/{wdtype} {layout} mode={mode} "
                 f"eps={eps} max_iter={max_iter} tol={tol}")
        acc = acc_dtype(dtype, *((wdtype,) if wdtype else ()))
        # the kernel domain (kernel, official) documents FloatingPointError for eps too small
        allow = (FloatingPointError,) if mode in ("kernel", "official") else ()
        results = {}
        for impl in ("cpu", "torch"):
            results[impl] = fz.valid(
                f"{label} impl={impl}",
                lambda impl=impl: ff.sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, mode=mode,
                                              return_plan=want_plan, impl=impl),
                lambda res: check_sinkhorn(res, cost, mode == "official", want_plan, impl), allow=allow)
        rc, rt = results["cpu"], results["torch"]
        if (rc is None) != (rt is None):
            fz.fail(label, "one impl raised FloatingPointError and the other did not")
        if rc is not None and rt is not None:
            rtol, atol = tol_for(acc)
            spread = float(cost.double().abs().amax()) if cost.numel() else 1.0
            try:
                close(rc.distance, rt.distance, rtol, atol * max(1.0, spread), "distance cpu vs torch")
                if want_plan:
                    close(rc.plan, rt.plan, rtol, atol, "plan cpu vs torch")
            except AssertionError as exc:
                fz.fail(label, str(exc)[:400])
    fz.finish()


def test_sinkhorn_constant_offset_keeps_plan_and_gradient():
    """cost + c: distance + c, same plan, same gradient (also far from 0, e.g. 1000 + U(0, 1))."""
    r, g = rng_for("sinkhorn_offset")
    fz = Fuzz("sinkhorn offset")
    for case in range(40):
        n, m, P = r.choice([1, 3, 6]), r.choice([2, 5]), r.choice([1, 4])
        dtype = r.choice([torch.float32, torch.float64])
        # multiples of 2**-10 in [0, 2]: base + c is exact in float32 for |c| < 2**13
        base = (torch.rand(P, n, m, generator=g, dtype=torch.float64) * 2048).round() / 1024
        c = float(r.choice([1000, -1000, 4096, 0.5]))
        mode = r.choice(["auto", "log", "kernel"])
        eps = r.choice([0.05, 0.2]) if mode != "kernel" else 0.2
        impl = r.choice(["cpu", "torch"])
        grad = r.choice(["exact", "plan"])
        label = f"#{case} P={P} n={n} m={m} {dtype} c={c} mode={mode} eps={eps} impl={impl} grad={grad}"

        def run(cost):
            cost = cost.to(dtype).requires_grad_(True)
            res = ff.sinkhorn(cost, eps=eps, max_iter=500, tol=1e-9, mode=mode, return_plan=True,
                              impl=impl, grad=grad)
            (gc,) = torch.autograd.grad(res.distance.sum(), cost)
            return res, gc

        def check(pair):
            (r0, g0), (r1, g1) = pair
            atol = 1e-9 if dtype == torch.float64 else 1e-5
            close(r1.distance - c, r0.distance, 0, atol * (1 + abs(c)) * 4, "distance(C + c) - c vs distance(C)")
            close(r1.plan, r0.plan, 0, atol * 10, "plan(C + c) vs plan(C)")
            close(g1, g0, 0, atol * 100, "d distance / dC at C + c vs at C")
            assert bool(r1.converged.all() == r0.converged.all()), "converged differs"
        fz.valid(label, lambda: (run(base), run(base + c)), check)
    fz.finish()


def test_sinkhorn_odd_edges_every_mode():
    """Empty batches, n = m = 1, a single weight left, in every mode and impl."""
    fz = Fuzz("sinkhorn edges")
    for mode in ("auto", "kernel", "log", "official"):
        for impl in ("cpu", "torch"):
            for batch in [(0,), (2, 0), (0, 3)]:
                fz.valid(f"empty batch {batch} {mode} {impl}",
                         lambda batch=batch: ff.sinkhorn(torch.rand(*batch, 2, 3), mode=mode, impl=impl, return_plan=True),
                         lambda res, batch=batch: (res.distance.shape == batch and res.plan.shape == (*batch, 2, 3))
                         or (_ for _ in ()).throw(AssertionError(f"shapes {tuple(res.distance.shape)}")))
            cost = torch.tensor([[[0.3]]])
            fz.valid(f"n = m = 1 {mode} {impl}", lambda: ff.sinkhorn(cost, mode=mode, impl=impl).distance,
                     lambda d: close(d, cost[:, 0, 0], 0, 1e-6, "distance"))
            a = torch.tensor([[0.0, 0.0, 2.0]])
            cost3 = torch.rand(1, 3, 4, generator=torch.Generator().manual_seed(1))
            fz.valid(f"one weight left {mode} {impl}",
                     lambda: ff.sinkhorn(cost3, a / (2 if mode == "official" else 1), mode=mode, impl=impl, max_iter=500,
                                         tol=1e-9).distance,
                     lambda d: close(d, cost3[:, 2].mean(-1), 0, 1e-4, "distance with all mass on row 2"))
    fz.finish()


def test_sinkhorn_gradients_agree_across_impls_and_thread_counts():
    """d distance / d(cost, a, b) of impl="cpu" and impl="torch" agree, also after set_num_threads."""
    r, g = rng_for("sinkhorn_grad")
    fz = Fuzz("sinkhorn gradients")
    threads = torch.get_num_threads()
    try:
        for case in range(40):
            torch.set_num_threads(r.choice([1, 2, threads]))
            P, n, m = r.choice([1, 5, 16]), r.choice([1, 2, 6]), r.choice([1, 3, 9])
            dtype = r.choice([torch.float32, torch.float64])
            base = torch.rand(P, n, m, generator=g, dtype=torch.float64) * r.choice([1.0, 2.0]) + r.choice([0.0, 100.0])
            wa = torch.rand(P, n, generator=g, dtype=torch.float64) + 0.1
            wb = torch.rand(P, m, generator=g, dtype=torch.float64) + 0.1
            if n > 1 and r.random() < 0.3:
                wa[:, 0] = 0
            mode, grad = r.choice(["auto", "log", "kernel"]), r.choice(["exact", "plan"])
            label = f"#{case} P={P} n={n} m={m} {dtype} mode={mode} grad={grad} threads={torch.get_num_threads()}"
            grads = {}
            for impl in ("cpu", "torch"):
                def run(impl=impl):
                    c, a, b = (t.to(dtype).requires_grad_(True) for t in (base, wa, wb))
                    d = ff.sinkhorn(c, a, b, eps=0.2, max_iter=300, tol=1e-9, mode=mode, impl=impl, grad=grad).distance
                    return torch.autograd.grad(d.sum(), (c, a, b))

                def check(gs, impl=impl):
                    for t, name in zip(gs, ("cost", "a", "b")):
                        assert_finite(t, f"{impl} grad {name}")
                grads[impl] = fz.valid(f"{label} impl={impl}", run, check)
            if grads["cpu"] is not None and grads["torch"] is not None:
                atol = 1e-7 if dtype == torch.float64 else 2e-3
                try:
                    for gc, gt, name in zip(grads["cpu"], grads["torch"], ("cost", "a", "b")):
                        close(gc, gt, 0, atol, f"grad {name} cpu vs torch")
                except AssertionError as exc:
                    fz.fail(label, str(exc)[:400])
    finally:
        torch.set_num_threads(threads)
    fz.finish()


def test_sinkhorn_bad_inputs_name_the_argument():
    r, g = rng_for("sinkhorn_bad")
    fz = Fuzz("sinkhorn bad")
    cost = torch.rand(2, 3, 4)
    for impl in ("cpu", "torch"):
        kw = dict(impl=impl)
        for label, v in bad_tensors((2, 3, 4), "cost"):
            fz.bad(f"{label} {impl}", lambda v=v: ff.sinkhorn(v, **kw), "cost")
        for shape in [(4,), (), (2, 0, 4), (2, 3, 0)]:
            fz.bad(f"cost shape {shape} {impl}", lambda s=shape: ff.sinkhorn(torch.rand(s), **kw), "cost")
        for name, size in (("a", 3), ("b", 4)):
            bad_w = bad_tensors((2, size), name) + [
                (f"{name} negative", -torch.rand(2, size)), (f"{name} all zero", torch.zeros(2, size)),
                (f"{name} shape", torch.rand(3, size)), (f"{name} rank", torch.rand(size)),
                (f"{name} scalar", 0.5)]
            for label, v in bad_w:
                fz.bad(f"{label} {impl}", lambda name=name, v=v: ff.sinkhorn(cost, **{name: v}, **kw),
                       rf"{name}")
        for name, values in (("eps", BAD_EPS), ("max_iter", BAD_MAX_ITER), ("tol", BAD_TOL),
                             ("mode", BAD_MODE), ("impl", BAD_IMPL), ("grad", ["exact ", None, 1])):
            for v in values:
                fz.bad(f"{name}={v!r} {impl}", lambda name=name, v=v: ff.sinkhorn(cost, **{**kw, name: v}),
                       name)
        for name in ("return_plan", "check_finite"):
            for v in ("no", 1, None):
                fz.bad(f"{name}={v!r} {impl}", lambda name=name, v=v: ff.sinkhorn(cost, **{**kw, name: v}), name)
        for v in (0, -2, "3", 1.5, True, 5):   # 5 does not divide the 2 problems
            fz.bad(f"official_group={v!r} {impl}",
                   lambda v=v: ff.sinkhorn(cost, mode="official", official_group=v, **kw), "official_group")
        # a meta weight next to a real cost, a real weight next to a meta cost
        fz.bad(f"a meta {impl}", lambda: ff.sinkhorn(cost, torch.rand(2, 3, device="meta"), **kw), "a")
        fz.bad(f"cost meta with a {impl}", lambda: ff.sinkhorn(cost.to("meta"), torch.rand(2, 3), **kw), "cost")
    # many random combinations of one bad argument among odd valid ones
    for case in range(120):
        batch, n, m = r.choice([(), (2,)]), r.choice([1, 3]), r.choice([1, 2, 5])
        c = torch.rand(*batch, n, m, generator=g).to(r.choice(FLOATS))
        name, value = r.choice([("eps", v) for v in BAD_EPS] + [("max_iter", v) for v in BAD_MAX_ITER]
                               + [("tol", v) for v in BAD_TOL] + [("mode", v) for v in BAD_MODE])
        impl = r.choice(["cpu", "torch"])
        fz.bad(f"#{case} {name}={value!r} {impl} {tuple(c.shape)}",
               lambda: ff.sinkhorn(c, impl=impl, **{name: value}), name)
    fz.finish()


# =============================================================================================
# ff.patch_cost, ff.patch_weights, ff.emd
# =============================================================================================
def random_patches(r, g, batch_x, batch_y, n, m, C):
    """Odd patch sets x (..., n, C), y (..., m, C): magnitudes, zero patches, dtypes, layouts."""
    dx, dy = r.choice(FLOATS), r.choice(FLOATS) if r.random() < 0.3 else None
    dy = dy or dx
    sx, sy = magnitude(r), magnitude(r)
    if dx in (torch.float16, torch.bfloat16):
        sx = min(sx, 1e3) if dx == torch.float16 else sx
    if dy in (torch.float16, torch.bfloat16):
        sy = min(sy, 1e3) if dy == torch.float16 else sy
    if torch.float32 in (dx, dy) or torch.float16 in (dx, dy) or torch.bfloat16 in (dx, dy):
        sx, sy = (min(s, 1e30) for s in (sx, sy))
    x = torch.randn(*batch_x, n, C, generator=g, dtype=torch.float64) * sx
    y = torch.randn(*batch_y, m, C, generator=g, dtype=torch.float64) * sy
    if r.random() < 0.3 and n:
        x[..., 0, :] = 0                                   # a zero-norm patch
    if r.random() < 0.1:
        y.zero_()                                          # every patch zero
    if r.random() < 0.15:
        x = x.abs() + 0.5 * sx                             # all patches alike (APC scores > 0)
    x = odd_layout(x.to(dx), r.choice(["contiguous", "transposed", "strided"]))
    y = odd_layout(y.to(dy), r.choice(["contiguous", "transposed", "strided"]))
    return x, y


def cosine_oracle(x, y):
    """1 - cos in float64, scale-safe (rows divided by their max |value| first); rows are divided
    by max(norm, NORM_FLOOR) (documented: a patch of norm below the floor counts as ~zero)."""
    def unit(t):
        t = t.double()
        big = t.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        nrm = (t / big).norm(dim=-1, keepdim=True)
        return (t / big) / torch.maximum(nrm, NORM_FLOOR / big)
    return 1 - unit(x) @ unit(y).transpose(-1, -2)


BATCH_PAIRS = [((), ()), ((2,), (2,)), ((2, 1), (1, 3)), ((1,), (3,)), ((3,), ()), ((), (2,)), ((0,), (0,))]


def test_patch_cost_valid_inputs_agree_with_oracle():
    r, g = rng_for("patch_cost_valid")
    fz = Fuzz("patch_cost valid")
    for case in range(150):
        bx, by = r.choice(BATCH_PAIRS)
        n, m, C = r.choice([0, 1, 2, 5]), r.choice([1, 3, 8]), r.choice([1, 2, 7, 16])
        x, y = random_patches(r, g, bx, by, n, m, C)
        want = cosine_oracle(x, y)
        acc = acc_dtype(x.dtype, y.dtype)
        label = f"#{case} x {tuple(x.shape)} {x.dtype} y {tuple(y.shape)} {y.dtype}"
        for impl in ("cpu", "torch"):
            def check(out, impl=impl):
                assert out.dtype == acc, f"{impl}: dtype {out.dtype}, want {acc}"
                assert out.shape == want.shape, f"{impl}: shape {tuple(out.shape)}, want {tuple(want.shape)}"
                assert_finite(out, impl)
                close(out, want, 0, 1e-12 if acc == torch.float64 else 2e-6, f"{impl} vs float64 oracle")
            fz.valid(f"{label} impl={impl}", lambda impl=impl: ff.patch_cost(x, y, impl=impl), check)
    fz.finish()


def test_patch_cost_and_weights_bad_inputs_name_the_argument():
    fz = Fuzz("patch_cost/patch_weights bad")
    x, y = torch.rand(2, 3, 4), torch.rand(2, 5, 4)
    for impl in ("cpu", "torch"):
        for which in ("x", "y"):
            shape = (2, 3, 4) if which == "x" else (2, 5, 4)
            for label, v in bad_tensors(shape, which) + [(f"{which} rank 1", torch.rand(4))]:
                args = {**dict(x=x, y=y), which: v}
                fz.bad(f"patch_cost {label} {impl}", lambda args=args: ff.patch_cost(args["x"], args["y"], impl=impl), which)
                fz.bad(f"patch_weights {label}", lambda args=args: ff.patch_weights(args["x"], args["y"]), which)
                fz.bad(f"emd {label} {impl}", lambda args=args: ff.emd(args["x"], args["y"], impl=impl), which)
        for label, xx, yy in [("C differs", x, torch.rand(2, 5, 3)), ("C = 0", torch.rand(2, 3, 0), torch.rand(2, 5, 0)),
                              ("batch dims", torch.rand(2, 3, 4), torch.rand(3, 5, 4))]:
            fz.bad(f"patch_cost {label} {impl}", lambda xx=xx, yy=yy: ff.patch_cost(xx, yy, impl=impl), ("x", "y"))
            fz.bad(f"patch_weights {label}", lambda xx=xx, yy=yy: ff.patch_weights(xx, yy), ("x", "y"))
            fz.bad(f"emd {label} {impl}", lambda xx=xx, yy=yy: ff.emd(xx, yy, impl=impl), ("x", "y"))
        fz.bad(f"patch_cost impl", lambda: ff.patch_cost(x, y, impl="gpu"), "impl")
    fz.bad("emd empty n", lambda: ff.emd(torch.rand(2, 0, 4), y), ("x", "y"))
    for v in ("no", 1, None):
        fz.bad(f"emd return_plan={v!r}", lambda v=v: ff.emd(x, y, return_plan=v), "return_plan")
        fz.bad(f"patch_weights official={v!r}", lambda v=v: ff.patch_weights(x, y, official=v), "official")
        fz.bad(f"patch_weights return_fallback={v!r}", lambda v=v: ff.patch_weights(x, y, return_fallback=v),
               "return_fallback")
        fz.bad(f"patch_cost check_finite={v!r}", lambda v=v: ff.patch_cost(x, y, check_finite=v), "check_finite")
    for method in ("magic", None, 3, "APC"):
        fz.bad(f"method={method!r}", lambda method=method: ff.patch_weights(x, y, method), ("method", "weighting"))
    e = torch.rand(2, 4)
    fz.bad("cc without embeddings", lambda: ff.patch_weights(x, y, "cc"), ("x_embedding", "y_embedding"))
    fz.bad("cc D != C", lambda: ff.patch_weights(x, y, "cc", x_embedding=torch.rand(2, 5), y_embedding=e),
           "x_embedding")
    fz.bad("cc NaN embedding", lambda: ff.patch_weights(x, y, "cc", x_embedding=e, y_embedding=e * float("nan")),
           "y_embedding")
    fz.bad("cc embedding batch", lambda: ff.patch_weights(x, y, "cc", x_embedding=torch.rand(3, 4), y_embedding=e),
           "x_embedding")
    sq_x, sq_y = torch.rand(2, 4, 4), torch.rand(2, 9, 4)
    lm = torch.rand(2, 5, 2)
    fz.bad("lmk without landmarks", lambda: ff.patch_weights(sq_x, sq_y, "lmk"), ("x_landmarks", "y_landmarks"))
    fz.bad("lmk landmarks (.., L, 3)", lambda: ff.patch_weights(sq_x, sq_y, "lmk", x_landmarks=torch.rand(2, 5, 3),
                                                                y_landmarks=lm), "x_landmarks")
    fz.bad("lmk NaN landmarks", lambda: ff.patch_weights(sq_x, sq_y, "lmk", x_landmarks=lm,
                                                         y_landmarks=lm * float("nan")), "y_landmarks")
    fz.bad("lmk non-square", lambda: ff.patch_weights(x, y, "lmk", x_landmarks=lm, y_landmarks=lm), "grid")
    for grid in [(2, 3), (0, 4), "2x2", (2.0, 2.0), (True, 4)]:
        fz.bad(f"lmk grid={grid!r}", lambda grid=grid: ff.patch_weights(sq_x, sq_x, "lmk", x_landmarks=lm,
                                                                        y_landmarks=lm, grid=grid), "grid")
    fz.finish()


def check_weights(out, x, y):
    wx, wy = out
    for w, t, name in ((wx, x, "wx"), (wy, y, "wy")):
        assert w.shape[-1] == t.shape[-2], f"{name} shape {tuple(w.shape)}"
        assert_finite(w, name)
        assert bool((w >= 0).all()), f"{name} negative"
        if w.numel():
            close(w.double().sum(-1), torch.ones_like(w.sum(-1), dtype=torch.float64), 0, 1e-5, f"{name} sums")


def emd_extras(r, g, weighting, x, y):
    """Keyword arguments emd / patch_weights need for `weighting` (embeddings, landmarks, grid)."""
    if weighting == "cc":
        return dict(x_embedding=torch.randn(*x.shape[:-2], x.shape[-1], generator=g).to(x.dtype),
                    y_embedding=torch.randn(*y.shape[:-2], y.shape[-1], generator=g).to(y.dtype))
    if weighting == "lmk":
        lx = torch.rand(*x.shape[:-2], 5, 2, generator=g) * 3
        ly = torch.rand(*y.shape[:-2], 5, 2, generator=g) * 3
        return dict(x_landmarks=lx, y_landmarks=ly)
    return {}


def test_patch_weights_valid_inputs_are_distributions():
    r, g = rng_for("patch_weights_valid")
    fz = Fuzz("patch_weights valid")
    for case in range(120):
        bx, by = r.choice(BATCH_PAIRS)
        weighting = r.choice(["uniform", "apc", "sc", "cc", "lmk"])
        n, m = (r.choice([1, 4, 9]), r.choice([1, 4, 9])) if weighting == "lmk" else (r.choice([1, 2, 5]), r.choice([1, 3, 8]))
        C = r.choice([1, 3, 8])
        x, y = random_patches(r, g, bx, by, n, m, C)
        extra = emd_extras(r, g, weighting, x, y)
        official = r.random() < 0.2 and weighting in ("uniform", "apc", "sc")
        label = f"#{case} {weighting} official={official} x {tuple(x.shape)} {x.dtype} y {tuple(y.shape)} {y.dtype}"
        fz.valid(label, lambda: ff.patch_weights(x, y, weighting, official=official, **extra),
                 None if official else (lambda out: check_weights(out, x, y)))
    fz.finish()


def test_emd_valid_inputs_agree_across_impls():
    r, g = rng_for("emd_valid")
    fz = Fuzz("emd valid")
    for case in range(120):
        bx, by = r.choice(BATCH_PAIRS[:-1])
        weighting = r.choice(["uniform", "apc", "apc", "sc", "cc", "lmk"])
        n, m = (r.choice([1, 4, 9]), r.choice([1, 4])) if weighting == "lmk" else (r.choice([1, 2, 5]), r.choice([1, 3, 8]))
        C = r.choice([1, 3, 8])
        x, y = random_patches(r, g, bx, by, n, m, C)
        extra = emd_extras(r, g, weighting, x, y)
        mode = r.choice(["auto", "auto", "kernel", "log", "official"])
        eps, max_iter = r.choice([0.05, 0.1, 1.0]), r.choice([1, 2, 50])
        tol = 0.1 if mode == "official" else r.choice([1e-6, 0.0])
        want_plan = r.random() < 0.3
        label = (f"#{case} {weighting} x {tuple(x.shape)} {x.dtype} y {tuple(y.shape)} {y.dtype} mode={mode} "
                 f"eps={eps} max_iter={max_iter} return_plan={want_plan}")

        def check(res):
            d = res.distance if want_plan else res
            if want_plan:
                assert res.plan.shape == (*d.shape, n, m), f"plan shape {tuple(res.plan.shape)}"
                assert_finite(res.plan, "plan")
                assert bool((res.plan >= 0).all()), "plan has negative entries"
            assert d.shape == torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]), f"shape {tuple(d.shape)}"
            assert_finite(d, "emd")
            if mode != "official":   # a cosine cost in [0, 2] and a plan of mass 1
                assert bool(((d >= -1e-3) & (d <= 2 + 1e-3)).all()), f"emd {d} outside [0, 2]"
        allow = (FloatingPointError,) if mode in ("kernel", "official") else ()
        out = {impl: fz.valid(f"{label} impl={impl}",
                              lambda impl=impl: ff.emd(x, y, weighting=weighting, eps=eps, max_iter=max_iter,
                                                       tol=tol, mode=mode, impl=impl, return_plan=want_plan,
                                                       **extra), check, allow)
               for impl in ("cpu", "torch")}
        if out["cpu"] is not None and out["torch"] is not None:
            rtol, atol = tol_for(acc_dtype(x.dtype, y.dtype))
            try:
                if want_plan:
                    close(out["cpu"].plan, out["torch"].plan, rtol, atol, "plan cpu vs torch")
                    out = {k: v.distance for k, v in out.items()}
                close(out["cpu"], out["torch"], rtol, atol, "emd cpu vs torch")
            except AssertionError as exc:
                fz.fail(label, str(exc)[:400])
    fz.finish()


def test_emd_gradients_agree_across_impls():
    r, g = rng_for("emd_grad")
    fz = Fuzz("emd gradients")
    for case in range(30):
        bx, by = r.choice(BATCH_PAIRS[:-1])
        n, m, C = r.choice([1, 3, 6]), r.choice([1, 4]), r.choice([2, 8])
        dtype = r.choice([torch.float32, torch.float64])
        x0 = torch.randn(*bx, n, C, generator=g, dtype=torch.float64) * magnitude(r)
        y0 = torch.randn(*by, m, C, generator=g, dtype=torch.float64)
        if r.random() < 0.3:
            x0[..., 0, :] = 0
        weighting, mode = r.choice(["uniform", "apc", "sc"]), r.choice(["auto", "log"])
        label = f"#{case} x {tuple(x0.shape)} y {tuple(y0.shape)} {dtype} {weighting} mode={mode}"
        grads = {}
        for impl in ("cpu", "torch"):
            def run(impl=impl):
                x, y = x0.to(dtype).requires_grad_(True), y0.to(dtype).requires_grad_(True)
                d = ff.emd(x, y, weighting=weighting, mode=mode, eps=0.1, max_iter=300, tol=1e-9, impl=impl)
                return torch.autograd.grad(d.sum(), (x, y))
            grads[impl] = fz.valid(f"{label} impl={impl}", run,
                                   lambda gs, impl=impl: [assert_finite(t, f"{impl} grad") for t in gs])
        if grads["cpu"] is not None and grads["torch"] is not None:
            try:
                for gc, gt, name in zip(grads["cpu"], grads["torch"], ("x", "y")):
                    scale = 1 + float(gt.abs().amax())
                    close(gc, gt, 0, (1e-7 if dtype == torch.float64 else 2e-3) * scale, f"grad {name} cpu vs torch")
            except AssertionError as exc:
                fz.fail(label, str(exc)[:400])
    fz.finish()


def test_emd_bad_solver_arguments_name_the_argument():
    r, g = rng_for("emd_bad")
    fz = Fuzz("emd bad")
    for case in range(100):
        x, y = torch.rand(2, r.choice([1, 4]), 3, generator=g), torch.rand(2, r.choice([1, 5]), 3, generator=g)
        name, value = r.choice([("eps", v) for v in BAD_EPS] + [("max_iter", v) for v in BAD_MAX_ITER]
                               + [("tol", v) for v in BAD_TOL] + [("mode", v) for v in BAD_MODE]
                               + [("impl", v) for v in BAD_IMPL] + [("weighting", v) for v in ("x", None, 1)])
        impl = r.choice(["cpu", "torch"])
        weighting = r.choice(["uniform", "apc", "sc"])
        kw = dict(impl=impl, weighting=weighting)
        kw[name] = value
        fz.bad(f"#{case} {name}={value!r} {kw}", lambda: ff.emd(x, y, **kw), name)
    fz.finish()


def test_kernel_block_boundaries_agree_across_impls():
    """Sizes around the kernels' tiles and register / shared-memory paths (n, m near 64 and 128)."""
    r, g = rng_for("boundaries")
    fz = Fuzz("block boundaries")
    for case, (n, m, C) in enumerate([(63, 1, 3), (64, 65, 1), (65, 64, 17), (1, 129, 5), (128, 2, 33),
                                      (129, 130, 2)]):
        x = torch.randn(2, n, C, generator=g)
        y = torch.randn(2, m, C, generator=g)
        weighting = r.choice(["uniform", "apc", "sc"])
        label = f"#{case} n={n} m={m} C={C} {weighting}"
        out = {}
        for impl in ("cpu", "torch"):
            out[impl] = fz.valid(f"{label} impl={impl}", lambda impl=impl: (
                ff.patch_cost(x, y, impl=impl),
                ff.emd(x, y, weighting=weighting, impl=impl, max_iter=10, return_plan=True),
                ff.sinkhorn(torch.rand(3, n, m, generator=torch.Generator().manual_seed(case)), impl=impl,
                            max_iter=10, return_plan=True)))
        if out["cpu"] is not None and out["torch"] is not None:
            try:
                (cc, ec, sc), (ct, et, st) = out["cpu"], out["torch"]
                close(cc, ct, 0, 2e-6, "patch_cost")
                close(ec.distance, et.distance, 2e-4, 2e-4, "emd")
                close(ec.plan, et.plan, 2e-4, 2e-5, "emd plan")
                close(sc.distance, st.distance, 2e-4, 2e-4, "sinkhorn")
                close(sc.plan, st.plan, 2e-4, 2e-5, "sinkhorn plan")
            except AssertionError as exc:
                fz.fail(label, str(exc)[:400])
    fz.finish()


def test_concurrent_calls_match_sequential_ones():
    """The C++ kernels release the GIL: calls from several Python threads at once give the results
    of the same calls one after another (no shared scratch, no uninitialised state)."""
    from concurrent.futures import ThreadPoolExecutor
    r, g = rng_for("threads")
    fz = Fuzz("threads")
    jobs = []
    for case in range(24):
        n, m, C = r.choice([1, 5, 70]), r.choice([2, 9, 66]), r.choice([3, 16])
        x, y = torch.randn(r.choice([1, 6]), n, C, generator=g), torch.randn(1, m, C, generator=g)
        mode, max_iter = r.choice(["auto", "kernel", "log"]), r.choice([1, 2, 40])
        gal = (torch.randn(9, 4, generator=g), torch.randn(9, m, C, generator=g))
        qry = (torch.randn(2, 4, generator=g), torch.randn(2, n, C, generator=g))
        kind = r.choice(["emd", "sinkhorn", "rerank"])
        if kind == "emd":
            jobs.append((f"#{case} emd {tuple(x.shape)} {mode} {max_iter}",
                         lambda x=x, y=y, mode=mode, it=max_iter: ff.emd(x, y, mode=mode, max_iter=it, impl="cpu")))
        elif kind == "sinkhorn":
            cost = torch.rand(4, n, m, generator=g)
            jobs.append((f"#{case} sinkhorn {n}x{m} {mode} {max_iter}",
                         lambda c=cost, mode=mode, it=max_iter: ff.sinkhorn(c, mode=mode, max_iter=it, impl="cpu").distance))
        else:
            jobs.append((f"#{case} emd_rerank n={n} m={m} {mode} {max_iter}",
                         lambda q=qry, gg=gal, mode=mode, it=max_iter: ff.emd_rerank(q, gg, k=5, mode=mode, max_iter=it,
                                                                                    impl="cpu").emd))
    sequential = [fn() for _, fn in jobs]
    for repeat in range(2):
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(fn) for _, fn in jobs]
        for (label, _), want, fut in zip(jobs, sequential, futures):
            fz.valid(f"{label} thread run {repeat}", fut.result,
                     lambda got, want=want: close(got, want, 0, 0, "threaded vs sequential"))
    fz.finish()


def test_triton_interpreter_agrees_on_a_few_small_cases():
    if not be.triton_usable(torch.device("cpu")):
        pytest.skip("triton not installed (or a GPU machine: covered by the triton tests)")
    r, g = rng_for("triton")
    fz = Fuzz("triton")
    for case in range(3):
        n, m = r.choice([1, 3]), r.choice([2, 4])
        cost = torch.rand(2, n, m, generator=g)
        want = ff.sinkhorn(cost, max_iter=5, impl="cpu").distance
        fz.valid(f"sinkhorn #{case} n={n} m={m}", lambda: ff.sinkhorn(cost, max_iter=5, impl="triton").distance,
                 lambda d: close(d, want, 1e-4, 1e-5, "triton vs cpu"))
        x, y = torch.randn(2, n, 3, generator=g), torch.randn(2, m, 3, generator=g)
        want = ff.emd(x, y, max_iter=5, impl="cpu")
        fz.valid(f"emd #{case}", lambda: ff.emd(x, y, max_iter=5, impl="triton"),
                 lambda d: close(d, want, 1e-4, 1e-5, "triton vs cpu"))
    fz.finish()


# =============================================================================================
# ff.Faces, ff.emd_rerank, ff.stage1_topk
# =============================================================================================
def random_faces(r, g, count, D, C, H, W, dtype, landmarks=False):
    """(embeddings (count, D), patches as (count, C, H, W) maps or (count, H*W, C), odd layouts)
    (+ landmarks (count, 5, 2) in patch-grid units, with maps: they give the grid)."""
    emb = torch.randn(count, D, generator=g, dtype=torch.float64)
    maps = torch.randn(count, C, H, W, generator=g, dtype=torch.float64)
    if r.random() < 0.2 and count:
        maps[0] = 0                                                   # a face of zero patches
    patches = maps if landmarks or r.random() < 0.5 else maps.flatten(2).transpose(1, 2)
    patches = odd_layout(patches.to(dtype), r.choice(["contiguous", "transposed", "strided"]))
    emb = odd_layout(emb.to(dtype), r.choice(["contiguous", "strided"]))
    if landmarks:
        return emb, patches, torch.rand(count, 5, 2, generator=g) * torch.tensor([W, H])
    return emb, patches


def test_faces_valid_and_bad():
    r, g = rng_for("faces")
    fz = Fuzz("Faces")
    for case in range(60):
        count, D, C, H, W = r.choice([1, 2, 5]), r.choice([1, 4]), r.choice([1, 3]), r.choice([1, 2]), r.choice([1, 3])
        emb, patches = random_faces(r, g, count, D, C, H, W, r.choice(FLOATS))
        single = r.random() < 0.2
        if single:
            emb, patches = emb[0], patches[0]
        want = (patches.flatten(-2).transpose(-1, -2) if patches.dim() == (3 if single else 4) else patches)

        def check(f):
            assert len(f) == (1 if single else count), f"len {len(f)}"
            assert f.patches.shape == (len(f), H * W, C), f"patches {tuple(f.patches.shape)}"
            assert f.patches.is_contiguous(), "patches not laid out"
            close(f.patches.reshape(-1), want.reshape(-1), 0, 0, "patches")
        fz.valid(f"#{case} single={single} emb {tuple(emb.shape)} patches {tuple(patches.shape)}",
                 lambda: ff.Faces(emb, patches), check)
    emb, patches = torch.rand(3, 4), torch.rand(3, 2, 2, 2)
    for label, v in bad_tensors((3, 4), "embeddings") + [("embeddings rank 3", torch.rand(3, 4, 1))]:
        fz.bad(label, lambda v=v: ff.Faces(v, patches), "embeddings")
    for label, v in bad_tensors((3, 2, 2, 2), "patches") + [
            ("patches rank 5", torch.rand(3, 2, 2, 2, 1)), ("patches (n, 0, C)", torch.rand(3, 0, 2)),
            ("patches (n, N, 0)", torch.rand(3, 4, 0)), ("patches (n, 0, H, W)", torch.rand(3, 0, 2, 2)),
            ("patches (n, C, 0, W)", torch.rand(3, 2, 0, 2)), ("patches 2 faces", torch.rand(2, 4, 2))]:
        fz.bad(label, lambda v=v: ff.Faces(emb, v), "patches")
    fz.bad("single face, 4-D patches", lambda: ff.Faces(emb[0], patches), "patches")
    for label, v in [("landmarks (3, 5, 3)", torch.rand(3, 5, 3)), ("landmarks NaN", torch.full((3, 5, 2), float("nan"))),
                     ("landmarks 2 faces", torch.rand(2, 5, 2)), ("landmarks list", [[0, 0]])]:
        fz.bad(label, lambda v=v: ff.Faces(emb, patches, landmarks=v), "landmarks")
    fz.finish()


def rerank_oracle(q_patches, g_patches, idx, weighting, eps, max_iter, tol, mode):
    """emd_rerank's EMDs one pair at a time through ff.emd (PyTorch twin): (B, k)."""
    B, k = idx.shape
    out = torch.empty(B, k, dtype=torch.float64)
    for i in range(B):
        for j in range(k):
            out[i, j] = ff.emd(q_patches[i], g_patches[idx[i, j]], weighting=weighting, eps=eps,
                               max_iter=max_iter, tol=tol, mode=mode, impl="torch").double()
    return out


def test_emd_rerank_valid_inputs_agree_across_impls_and_one_by_one():
    r, g = rng_for("rerank_valid")
    fz = Fuzz("emd_rerank valid")
    for case in range(70):
        G, D, C, H, W = r.choice([1, 2, 5, 8]), r.choice([1, 4]), r.choice([1, 3, 8]), r.choice([1, 2]), r.choice([1, 3])
        dq, dg = r.choice(FLOATS), r.choice(FLOATS)
        lmk = r.random() < 0.15
        gallery = random_faces(r, g, G, D, C, H, W, dg, lmk)
        exclude_self = G > 1 and r.random() < 0.2
        if exclude_self:
            query, dq = gallery, dg
        else:
            query = random_faces(r, g, r.choice([1, 3]), D, C, H, W, dq, lmk)
        single = not exclude_self and r.random() < 0.2
        if single:
            query = tuple(t[0] for t in query)
        as_faces = r.random() < 0.5
        if as_faces:
            query, gallery = ff.Faces(*query), ff.Faces(*gallery)
        k = r.choice([1, G - exclude_self, max(1, (G - exclude_self) // 2)])
        weighting = "lmk" if lmk else r.choice(["uniform", "apc", "sc", "cc"] if C == D else ["uniform", "apc", "sc"])
        official = r.random() < 0.2 and weighting not in ("cc", "lmk")
        chunk_size = r.choice([1, 2, 65536])
        mode = "auto" if official else r.choice(["auto", "log", "kernel"])
        eps, max_iter = r.choice([0.05, 0.5]), r.choice([1, 20, 100])
        alpha = r.choice([0.0, 0.7, 1.0])
        flows = r.random() < 0.3
        label = (f"#{case} G={G} D={D} C={C} H={H} W={W} {dq}/{dg} k={k} exclude_self={exclude_self} single={single} "
                 f"faces={as_faces} {weighting} official={official} mode={mode} eps={eps} max_iter={max_iter} "
                 f"chunk_size={chunk_size}")
        kw = dict(k=k, alpha=alpha, weighting=weighting, eps=eps, max_iter=max_iter, exclude_self=exclude_self,
                  return_flows=flows, mode=mode, official=official, chunk_size=chunk_size)

        def check(res):
            B = 1 if single else (len(query) if as_faces else query[0].shape[0])
            shape = (k,) if single else (B, k)
            for name in ("indices", "distance", "emd", "cosine"):
                assert getattr(res, name).shape == shape, f"{name} shape {tuple(getattr(res, name).shape)}"
                if name != "indices":
                    assert_finite(getattr(res, name), name)
            assert bool((res.distance[..., 1:] >= res.distance[..., :-1]).all()), "not sorted"
            if exclude_self:
                assert not bool((res.indices == torch.arange(B)[:, None]).any()), "self not excluded"
            if not official:
                assert bool(((res.emd >= -1e-3) & (res.emd <= 2 + 1e-3)).all()), f"emd {res.emd} outside [0, 2]"
            if flows:
                assert res.flows.shape == (*shape, H * W, H * W), f"flows {tuple(res.flows.shape)}"
        allow = (FloatingPointError,) if mode == "kernel" or official else ()
        out = {impl: fz.valid(f"{label} impl={impl}", lambda impl=impl: ff.emd_rerank(query, gallery, impl=impl, **kw),
                              check, allow) for impl in ("cpu", "torch")}
        if out["cpu"] is None or out["torch"] is None:
            continue
        rc, rt = out["cpu"], out["torch"]
        try:
            assert torch.equal(rc.stage1_indices, rt.stage1_indices), "stage-1 candidates differ"
            # EMD per stage-1 candidate (the orders may differ on ties)
            sc = torch.full((rc.indices.reshape(-1, k).shape[0], G), float("nan"), dtype=torch.float64)
            st = sc.clone()
            sc.scatter_(1, rc.indices.reshape(-1, k), rc.emd.reshape(-1, k).double())
            st.scatter_(1, rt.indices.reshape(-1, k), rt.emd.reshape(-1, k).double())
            rtol, atol = tol_for(acc_dtype(dq, dg))
            torch.testing.assert_close(sc, st, rtol=rtol, atol=atol, equal_nan=True)  # NaN off the candidates
            assert rc.n_fallback == rt.n_fallback, f"n_fallback {rc.n_fallback} vs {rt.n_fallback}"
            if not official:
                qp = (query.patches if as_faces else ff.Faces(*query).patches)
                gp = (gallery.patches if as_faces else ff.Faces(*gallery).patches)
                idx = rt.indices.reshape(-1, k)
                want = rerank_oracle(qp, gp, idx, weighting, eps, max_iter, 1e-6, mode) \
                    if weighting not in ("cc", "lmk") else None
                if want is not None:
                    close(rt.emd.reshape(-1, k), want, 1e-5, 1e-5, "emd_rerank vs ff.emd one by one")
        except AssertionError as exc:
            fz.fail(label, str(exc)[:400])
    fz.finish()


def test_emd_rerank_and_stage1_bad_inputs_name_the_argument():
    r, g = rng_for("rerank_bad")
    fz = Fuzz("emd_rerank bad")
    gal = (torch.rand(6, 4, generator=g), torch.rand(6, 4, 2, 2, generator=g))
    qry = (torch.rand(2, 4, generator=g), torch.rand(2, 4, 2, 2, generator=g))
    bad_args = ([("k", v) for v in (0, -1, 7, 1.5, True, "3", None)]
                + [("alpha", v) for v in (-0.1, 1.5, float("nan"), "0.7", True, None)]
                + [("eps", v) for v in BAD_EPS] + [("max_iter", v) for v in BAD_MAX_ITER]
                + [("tol", v) for v in BAD_TOL] + [("mode", v) for v in BAD_MODE] + [("impl", v) for v in BAD_IMPL]
                + [("chunk_size", v) for v in (0, -5, 2.0, True, "64")]
                + [("weighting", v) for v in ("magic", None, 2)]
                + [("official", v) for v in ("yes", 1, None)]
                + [("exclude_self", v) for v in ("yes", 2, None)]
                + [("return_flows", v) for v in ("yes", 2)])
    for name, value in bad_args:
        for impl in ("cpu", "torch"):
            kw = dict(k=3, impl=impl)
            kw[name] = value
            fz.bad(f"{name}={value!r} {impl}", lambda kw=kw: ff.emd_rerank(qry, gal, **kw), name)
    fz.bad("k > G - 1 with exclude_self", lambda: ff.emd_rerank(gal, gal, k=6, exclude_self=True), "k")
    fz.bad("exclude_self, query != gallery", lambda: ff.emd_rerank(qry, gal, k=2, exclude_self=True), "exclude_self")
    fz.bad("official with cc", lambda: ff.emd_rerank(qry, gal, k=2, official=True, weighting="cc"), ("official", "weighting"))
    for name, make in (("query", lambda v: (v, gal)), ("gallery", lambda v: (qry, v))):
        src = qry if name == "query" else gal
        for label, v in [("str", "faces"), ("tensor", src[0]), ("1-tuple", (src[0],)),
                         ("NaN patches", (src[0], src[1] * float("nan"))), ("NaN embeddings", (src[0] * float("inf"), src[1])),
                         ("int embeddings", (src[0].long(), src[1])), ("meta patches", (src[0], src[1].to("meta"))),
                         ("empty", (src[0][:0], src[1][:0])), ("D differs", (src[0][:, :3], src[1])),
                         ("C differs", (src[0], src[1][:, :3])), ("faces differ", (src[0], src[1][:1]))]:
            a, b = make(v)
            fz.bad(f"{name} {label}", lambda a=a, b=b: ff.emd_rerank(a, b, k=1), name)
    lm_g, lm_q = torch.rand(6, 5, 2, generator=g), torch.rand(2, 5, 2, generator=g)
    fz.bad("lmk without gallery landmarks", lambda: ff.emd_rerank(qry + (lm_q,), gal, k=2, weighting="lmk"),
           ("x_landmarks", "y_landmarks", "landmarks"))
    fz.bad("lmk, grid does not fit", lambda: ff.emd_rerank(ff.Faces(*qry, lm_q, grid=(3, 3)), gal + (lm_g,), k=2,
                                                           weighting="lmk"), "grid")
    fz.bad("Faces grid not a pair", lambda: ff.Faces(*qry, lm_q, grid="2x2"), "grid")
    fz.bad("Faces lay_out str", lambda: ff.Faces(*qry, lay_out="no"), "lay_out")
    # stage1_topk is public: it checks its arguments like emd_rerank
    q, gg = torch.rand(2, 4), torch.rand(5, 4)
    for label, args, names in [
            ("q 1-D", (torch.rand(4), gg, 2), "q"), ("g 3-D", (q, torch.rand(5, 4, 1), 2), "g"),
            ("q NaN", (q * float("nan"), gg, 2), "q"), ("g int", (q, gg.long(), 2), "g"),
            ("D differs", (q, torch.rand(5, 3), 2), ("q", "g")), ("k 0", (q, gg, 0), "k"),
            ("k 6", (q, gg, 6), "k"), ("k 1.5", (q, gg, 1.5), "k"), ("k True", (q, gg, True), "k"),
            ("g empty", (q, gg[:0], 1), ("g", "k")), ("exclude_self q != g", (q, gg, 2, True), "exclude_self"),
            ("exclude_self k = G", (gg, gg, 5, True), "k"), ("chunk 0", (q, gg, 2, False, 0), "chunk"),
            ("exclude_self str", (gg, gg, 2, "yes"), "exclude_self")]:
        fz.bad(f"stage1_topk {label}", lambda args=args: ff.stage1_topk(*args), names)
    fz.finish()


def test_stage1_topk_valid_inputs_match_brute_force():
    r, g = rng_for("stage1")
    fz = Fuzz("stage1_topk valid")
    for case in range(60):
        G, D = r.choice([1, 2, 7, 20]), r.choice([1, 3, 8])
        gal = torch.randn(G, D, generator=g, dtype=torch.float64)
        if r.random() < 0.3:
            gal[r.randrange(G)] = 0                                    # a zero embedding: cosine 0
        gal = odd_layout(gal.to(r.choice(FLOATS)), r.choice(["contiguous", "strided"]))
        exclude_self = G > 1 and r.random() < 0.3
        q = gal if exclude_self else torch.randn(r.choice([1, 4]), D, generator=g).to(r.choice(FLOATS))
        k = r.choice([1, G - exclude_self])
        chunk = r.choice([1, 3, 65536])
        qn = torch.nn.functional.normalize(q.double(), dim=1)
        gn = torch.nn.functional.normalize(gal.double(), dim=1)
        sim = qn @ gn.T
        if exclude_self:
            sim.fill_diagonal_(float("-inf"))
        want = sim.topk(k, dim=1).values

        def check(out):
            cos, idx = out
            assert cos.shape == idx.shape == (q.shape[0], k), f"shape {tuple(cos.shape)}"
            close(cos, want, 0, 1e-3 if torch.bfloat16 in (q.dtype, gal.dtype) else 1e-5, "cosines vs brute force")
            close(sim.gather(1, idx), want, 0, 1e-3 if torch.bfloat16 in (q.dtype, gal.dtype) else 1e-5,
                  "cosines of the chosen rows")
        fz.valid(f"#{case} G={G} D={D} B={q.shape[0]} {q.dtype}/{gal.dtype} k={k} chunk={chunk} "
                 f"exclude_self={exclude_self}", lambda: ff.stage1_topk(q, gal, k, exclude_self, chunk), check)
    fz.finish()


# =============================================================================================
# ff.FusedGenerator.from_module
# =============================================================================================
def random_generator_module(r, g):
    """A small eval-mode nn.Sequential of ConvTranspose2d / BatchNorm2d / activations."""
    layers, cin = [], r.choice([1, 2, 4])
    for i in range(r.choice([1, 2, 3])):
        cout, k, s = r.choice([1, 2, 3]), r.choice([1, 2, 3, 4]), r.choice([1, 2, 3])
        d = r.choice([1, 1, 2])
        p = r.randrange(0, d * (k - 1) + 1)
        op = r.randrange(0, max(s, d)) if r.random() < 0.3 else 0
        layers.append(nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op, dilation=d, bias=r.random() < 0.7))
        if r.random() < 0.6:
            bn = nn.BatchNorm2d(cout)
            bn.running_mean.normal_(generator=g)
            bn.running_var.uniform_(0.1, 3, generator=g)
            bn.weight.data.normal_(generator=g)
            bn.bias.data.normal_(generator=g)
            layers.append(bn)
        if r.random() < 0.8:
            layers.append(r.choice([nn.ReLU(), nn.LeakyReLU(0.2), nn.LeakyReLU(-1.5), nn.Tanh(), nn.Sigmoid()]))
        if r.random() < 0.2:
            layers.append(r.choice([nn.Identity(), nn.Dropout(0.5), nn.Dropout2d()]))
        cin = cout
    if len(layers) > 2 and r.random() < 0.3:                    # nested containers
        layers = [nn.Sequential(*layers[:2]), nn.Sequential(nn.Sequential(*layers[2:]))]
    module = nn.Sequential(*layers).eval()
    for p in module.parameters():
        p.data.normal_(generator=g)
    first = next(m for m in module.modules() if isinstance(m, nn.ConvTranspose2d))
    return module, first.in_channels


def test_fused_generator_valid_modules_agree_across_impls():
    r, g = rng_for("generator")
    fz = Fuzz("FusedGenerator valid")
    for case in range(50):
        module, cin = random_generator_module(r, g)
        mdtype = r.choice([torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16])
        module = module.to(mdtype)
        verify = r.choice(["auto", True, False])
        fg = fz.valid(f"#{case} from_module {mdtype} verify={verify} {module}",
                      lambda: ff.FusedGenerator.from_module(module, verify=verify))
        if fg is None:
            continue
        zd = r.choice(FLOATS)
        B = r.choice([0, 1, 3])
        plane = r.choice([(1, 1), (2, 3)])
        z = torch.randn(B, cin, *plane, generator=g, dtype=torch.float64)
        if plane == (1, 1) and r.random() < 0.5:
            z = z.flatten(1)
        z = odd_layout(z.to(zd), r.choice(["contiguous", "strided"]))
        label = f"#{case} {mdtype} z {tuple(z.shape)} {zd} {module}"
        try:   # (a batch of one: torch accepts any plane for an empty batch)
            with torch.no_grad():
                copy.deepcopy(module).double()(torch.zeros(1, cin, *plane, dtype=torch.float64))
                ref = copy.deepcopy(module).double()(z.double().reshape(B, cin, *plane))
        except RuntimeError:   # the plane is too small for the module: a bad input
            for impl in ("cpu", "torch"):
                fz.bad(f"{label} impl={impl}", lambda impl=impl: fg(z, impl=impl), "z")
            continue
        rtol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(zd, 1e-4)
        atol = rtol * (1 + float(ref.abs().amax()) if ref.numel() else 1)
        # the plan holds the module's weights in float32: a float64 module rounds to them
        for impl in ("cpu", "torch"):
            def check(out, impl=impl):
                assert out.dtype == zd and out.shape == ref.shape, f"{impl}: {out.dtype} {tuple(out.shape)}"
                assert_finite(out, impl)
                close(out, ref, rtol, atol, f"{impl} vs the module in float64")
            fz.valid(f"{label} impl={impl}", lambda impl=impl: fg(z, impl=impl), check)
        if zd in (torch.float32, torch.float64) and B:   # z.requires_grad: the differentiable twin
            zg = z.detach().requires_grad_(True)
            fz.valid(f"{label} grad", lambda: torch.autograd.grad(fg(zg).sum(), zg)[0],
                     lambda gz: assert_finite(gz, "dz"))
    fz.finish()


def test_fused_generator_bad_inputs_name_the_argument():
    fz = Fuzz("FusedGenerator bad")
    good = nn.Sequential(nn.ConvTranspose2d(3, 2, 3, 2), nn.BatchNorm2d(2), nn.ReLU()).eval()
    fg = ff.FusedGenerator.from_module(good)
    for label, m, names in [
            ("str", "module", "module"), ("Linear", nn.Sequential(nn.Linear(3, 3)), "'0'"),
            ("Conv2d", nn.Sequential(nn.ConvTranspose2d(3, 2, 3), nn.Conv2d(2, 2, 3)), "'1'"),
            ("BN training", nn.Sequential(nn.ConvTranspose2d(3, 2, 3), nn.BatchNorm2d(2)), "'1'"),
            ("BN first", nn.Sequential(nn.BatchNorm2d(3).eval(), nn.ConvTranspose2d(3, 2, 3)), "'0'"),
            ("channels", nn.Sequential(nn.ConvTranspose2d(3, 2, 3), nn.ConvTranspose2d(3, 2, 3)), "'1'"),
            ("groups", nn.Sequential(nn.ConvTranspose2d(4, 2, 3, groups=2)), "'0'"),
            ("no conv", nn.Sequential(nn.ReLU()), ("module", "ConvTranspose2d")),
            ("65 layers", nn.Sequential(*[nn.ConvTranspose2d(1, 1, 1) for _ in range(65)]), ("module", "layers"))]:
        fz.bad(f"from_module {label}", lambda m=m: ff.FusedGenerator.from_module(m), names)
    for v in ("yes", 1, None):
        fz.bad(f"verify={v!r}", lambda v=v: ff.FusedGenerator.from_module(good, verify=v), "verify")
    for impl in ("cpu", "torch"):
        for label, z in [("int", torch.ones(2, 3, dtype=torch.int64)), ("bool", torch.ones(2, 3, dtype=torch.bool)),
                         ("list", [[0.0] * 3]), ("str", "z"), ("rank 3", torch.rand(2, 3, 1)),
                         ("channels", torch.rand(2, 4)), ("channels 4-D", torch.rand(2, 4, 1, 1)),
                         ("rank 1", torch.rand(3)), ("plane 0", torch.rand(2, 3, 0, 0)),
                         ("meta", torch.rand(2, 3, device="meta"))]:
            fz.bad(f"z {label} {impl}", lambda z=z: fg(z, impl=impl), "z")
    fz.bad("impl", lambda: fg(torch.rand(2, 3), impl="gpu"), "impl")
    fz.finish()


# =============================================================================================
# fastface.eval metrics
# =============================================================================================
def retrieval_oracle(ranked_labels, query_labels, R):
    """Per-query P@1, R-Precision, AP@R by the definitions; None for R = 0."""
    out = []
    for rel_row, q, r in zip(ranked_labels.tolist(), query_labels.tolist(), R.tolist()):
        if r == 0:
            out.append(None)
            continue
        rel = [lab == q for lab in rel_row]
        hits, ap = 0, 0.0
        for i, is_rel in enumerate(rel[:r]):
            if is_rel:
                hits += 1
                ap += hits / (i + 1)
        out.append((float(rel[0]) if rel else 0.0, sum(rel[:r]) / r, ap / r))
    return out


def verification_oracle(scores, same, n_folds):
    """LFW k-fold accuracy by brute force: per fold, the lowest threshold among the training scores
    (and max + 1) that maximises training accuracy of (score >= t) == same."""
    N = len(scores)
    folds = [i * n_folds // N for i in range(N)]
    accs = []
    for f in range(n_folds):
        train = [i for i in range(N) if folds[i] != f]
        test = [i for i in range(N) if folds[i] == f]
        cands = sorted({float(scores[i]) for i in train}) + [max(float(scores[i]) for i in train) + 1]
        best = max(cands, key=lambda t: (sum((float(scores[i]) >= t) == bool(same[i]) for i in train), -t))
        accs.append(sum((float(scores[i]) >= best) == bool(same[i]) for i in test) / len(test))
    return sum(accs) / len(accs)


def distractor_oracle(p, labels, d):
    """MegaFace rank-1 rate by brute force over ordered probe pairs (a, b) of one identity."""
    pn, dn = torch.nn.functional.normalize(p.double(), dim=1), torch.nn.functional.normalize(d.double(), dim=1)
    best = (pn @ dn.T).amax(1) if len(d) else torch.full((len(p),), -2.0, dtype=torch.float64)
    wins = pairs = 0
    for a in range(len(p)):
        for b in range(len(p)):
            if a != b and labels[a] == labels[b]:
                pairs += 1
                wins += bool(pn[a] @ pn[b] > best[a])
    return wins / pairs


def test_metrics_valid_inputs_match_definitions():
    r, g = rng_for("metrics_valid")
    fz = Fuzz("metrics valid")
    for case in range(80):
        G, B, K, L = r.choice([1, 3, 10]), r.choice([1, 4]), r.choice([0, 1, 3]), r.choice([1, 2, 5])
        K = min(K, G)
        gallery_labels = torch.randint(0, L, (G,), generator=g)
        exclude_self = r.random() < 0.3 and B <= G
        query_labels = gallery_labels[:B].clone() if exclude_self else torch.randint(0, L + 1, (B,), generator=g)
        ranked = torch.stack([torch.randperm(G, generator=g)[:K] for _ in range(B)])
        as_type = r.choice(["tensor", "numpy", "list"])
        conv = {"tensor": lambda t: t, "numpy": lambda t: t.numpy(), "list": lambda t: t.tolist()}[as_type]
        R = (gallery_labels[None] == query_labels[:, None]).sum(1) - (1 if exclude_self else 0)
        want = retrieval_oracle(gallery_labels[ranked], query_labels, R.clamp_min(0))
        kept = [w for w in want if w is not None]

        def check(out):
            if not kept:
                assert out["n_queries"] == 0 and math.isnan(out["p_at_1"]), f"{out}"
                return
            for j, key in enumerate(("p_at_1", "r_precision", "map_at_r")):
                exp = sum(w[j] for w in kept) / len(kept)
                assert abs(out[key] - exp) < 1e-12, f"{key} {out[key]} vs {exp}"
            assert out["n_queries"] == len(kept) and out["n_skipped"] == B - len(kept), f"{out}"
        fz.valid(f"#{case} retrieval_metrics G={G} B={B} K={K} exclude_self={exclude_self} {as_type}",
                 lambda: metrics.retrieval_metrics(conv(ranked), conv(query_labels), conv(gallery_labels), exclude_self),
                 check)
        for j, fn in enumerate((metrics.precision_at_1, metrics.r_precision, metrics.map_at_r)):
            def check_one(v, j=j, fn=fn):
                exp = sum(w[j] for w in kept) / len(kept) if kept else float("nan")
                assert (math.isnan(v) and math.isnan(exp)) or abs(v - exp) < 1e-12, f"{fn.__name__} {v} vs {exp}"
            fz.valid(f"#{case} {fn.__name__} K={K}", lambda fn=fn: fn(conv(gallery_labels[ranked]), conv(query_labels),
                                                                      conv(R.clamp_min(0))), check_one)
        # verification: scores and same pairs
        N = r.choice([2, 5, 40])
        same = torch.rand(N, generator=g) < 0.5
        same[0], same[-1] = True, False
        scores = torch.randn(N, generator=g, dtype=torch.float64) * magnitude(r) + same.double()
        if r.random() < 0.3:
            scores = scores.round()                        # ties
        n_folds = r.choice([2, min(10, N)])
        fz.valid(f"#{case} verification_accuracy N={N} folds={n_folds}",
                 lambda: metrics.verification_accuracy(conv(scores), conv(same), n_folds),
                 lambda out: close(torch.tensor(out["accuracy"]), torch.tensor(verification_oracle(scores, same, n_folds)),
                                   0, 1e-12, "accuracy vs brute force"))
        fprs = (0.0, 0.1, 0.5, 1.0)

        def check_tpr(out):
            from sklearn.metrics import roc_curve
            fpr, tpr, _ = roc_curve(same.numpy(), scores.numpy(), drop_intermediate=False)
            for t in fprs:
                exp = max(tp for fp, tp in zip(fpr, tpr) if fp <= t + 1e-12)
                assert abs(out[t] - exp) < 1e-12, f"tpr at {t}: {out[t]} vs roc_curve {exp}"
        fz.valid(f"#{case} tpr_at_fpr N={N}", lambda: metrics.tpr_at_fpr(conv(scores), conv(same), fprs), check_tpr)
        P, M = r.choice([2, 5]), r.choice([0, 1, 6])
        probes, distractors = torch.randn(P, 3, generator=g), torch.randn(M, 3, generator=g)
        plabels = torch.tensor([0, 0] + [r.randrange(3) for _ in range(P - 2)])
        fz.valid(f"#{case} identification_with_distractors P={P} M={M}",
                 lambda: metrics.identification_with_distractors(conv(probes), conv(plabels), conv(distractors)),
                 lambda v: close(torch.tensor(v), torch.tensor(distractor_oracle(probes, plabels, distractors)), 0, 1e-12,
                                 "rank-1 rate vs brute force"))
    fz.finish()


def test_metrics_bad_inputs_name_the_argument():
    fz = Fuzz("metrics bad")
    ranked, ql, R = torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 1]), torch.tensor([1, 1])
    gl, ri = torch.tensor([0, 1, 1]), torch.tensor([[0, 1], [2, 1]])
    for fn in (metrics.precision_at_1, metrics.r_precision, metrics.map_at_r):
        nm = fn.__name__
        fz.bad(f"{nm} ranked float", lambda fn=fn: fn(ranked.double(), ql, R), "ranked")
        fz.bad(f"{nm} ranked 1-D", lambda fn=fn: fn(ranked[0], ql, R), "ranked")
        fz.bad(f"{nm} query_labels shape", lambda fn=fn: fn(ranked, ql[:1], R), "query_labels")
        fz.bad(f"{nm} query_labels bool", lambda fn=fn: fn(ranked, ql.bool(), R), "query_labels")
        fz.bad(f"{nm} n_relevant negative", lambda fn=fn: fn(ranked, ql, -R), "n_relevant")
        fz.bad(f"{nm} n_relevant shape", lambda fn=fn: fn(ranked, ql, R[:1]), "n_relevant")
        fz.bad(f"{nm} ranked str", lambda fn=fn: fn("ranked", ql, R), "ranked")
    fn = metrics.retrieval_metrics
    for label, args, name in [
            ("negative index", (ri - 1, ql, gl), "ranked_indices"), ("index >= G", (ri + 1, ql, gl), "ranked_indices"),
            ("float index", (ri.double(), ql, gl), "ranked_indices"), ("gallery 2-D", (ri, ql, gl[None]), "gallery_labels"),
            ("query_labels shape", (ri, ql[:1], gl), "query_labels"),
            ("NaN labels", (ri, ql, gl.double() * float("nan")), "gallery_labels"),
            ("ranked 3-D", (ri[None], ql, gl), "ranked_indices")]:
        fz.bad(f"retrieval_metrics {label}", lambda args=args: fn(*args), name)
    fz.bad("retrieval_metrics exclude_self str", lambda: fn(ri, ql, gl, "yes"), "exclude_self")
    scores, same = torch.rand(10), torch.arange(10) % 2 == 0
    nan = scores.clone()
    nan[3] = float("nan")
    for label, args, name in [("scores NaN", (nan, same), "scores"), ("scores inf", (scores / 0, same), "scores"),
                              ("scores 2-D", (scores[None], same), "scores"), ("scores str", ("s", same), "scores"),
                              ("same float", (scores, same.float() * 0.5), "same"), ("same shape", (scores, same[:3]), "same"),
                              ("same 2", (scores, same.long() * 2), "same")]:
        fz.bad(f"verification_accuracy {label}", lambda args=args: metrics.verification_accuracy(*args), name)
        fz.bad(f"tpr_at_fpr {label}", lambda args=args: metrics.tpr_at_fpr(*args), name)
    for v in (1, 11, 2.5, True, "10"):
        fz.bad(f"n_folds={v!r}", lambda v=v: metrics.verification_accuracy(scores, same, v), "n_folds")
    for v in ((1.5,), (-0.1,), "0.1", 0.1, (float("nan"),), None):
        fz.bad(f"fprs={v!r}", lambda v=v: metrics.tpr_at_fpr(scores, same, v), "fprs")
    fz.bad("tpr_at_fpr only positives", lambda: metrics.tpr_at_fpr(scores, torch.ones(10, dtype=torch.bool)), "same")
    p, lab, d = torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(5, 3)
    fn = metrics.identification_with_distractors
    for label, args, name in [("probe NaN", (p * float("nan"), lab, d), "probe_embeddings"),
                              ("probe 1-D", (p[0], lab, d), "probe_embeddings"),
                              ("labels shape", (p, lab[:3], d), "probe_labels"),
                              ("labels float", (p, lab.double(), d), "probe_labels"),
                              ("distractors D", (p, lab, d[:, :2]), "distractor_embeddings"),
                              ("distractors inf", (p, lab, d / 0), "distractor_embeddings"),
                              ("no pair", (p, torch.arange(4), d), "probe_labels")]:
        fz.bad(f"identification {label}", lambda args=args: fn(*args), name)
    fz.finish()


# =============================================================================================
# fastface.data: occlude, SynthFaces
# =============================================================================================
def test_occlude_and_synthfaces_valid_and_bad():
    r, g = rng_for("data")
    fz = Fuzz("data")
    ds = SynthFaces(n_identities=3, images_per_identity=2, size=16, seed=1)
    items = ds.render_batch(list(range(len(ds))))
    for case in range(40):
        B = r.choice([1, 2, 4])
        rows = [r.randrange(len(ds)) for _ in range(B)]
        dtype = r.choice([torch.float32, torch.float64, torch.float16, torch.bfloat16])
        images = odd_layout(items["image"][rows].to(dtype), r.choice(["contiguous", "strided"]))
        if r.random() < 0.3:
            images = images.mean(1, keepdim=True)                      # one channel
        lm = items["landmarks68"][rows].to(r.choice([torch.float32, torch.float64, torch.int64]))
        kind = r.choice(["none", "mask", "sunglasses", "crop"])
        gen = torch.Generator().manual_seed(case) if r.random() < 0.5 else None
        off_image = r.random() < 0.15
        if off_image:                                        # a face mostly outside the image
            lm = lm + torch.tensor([ds.size * 0.6, 0]).to(lm.dtype)
        if r.random() < 0.1:
            images, lm = images[:0], lm[:0]                  # an empty batch

        def check(out):
            assert out.shape == images.shape and out.dtype == images.dtype, f"{out.dtype} {tuple(out.shape)}"
            assert_finite(out, "occluded")
            if kind == "none":
                assert torch.equal(out, images), "kind='none' changed the images"
            if kind in ("mask", "sunglasses") and not off_image:
                assert bool((out != images).flatten(1).any(1).all()), f"{kind} drew nothing on some face"
        fz.valid(f"#{case} occlude {kind} {tuple(images.shape)} {dtype} landmarks {lm.dtype}",
                 lambda: occlude(images, lm, kind, generator=gen), check)
    images, lm = items["image"][:2], items["landmarks68"][:2]
    for label, args, name in [
            ("kind", (images, lm, "hat"), "kind"), ("kind None", (images, lm, None), "kind"),
            ("images int", ((images * 255).long(), lm, "mask"), "images"), ("images 3-D", (images[0], lm, "mask"), "images"),
            ("images 2 channels", (images[:, :2], lm, "mask"), "images"),
            ("images list", (images.tolist(), lm, "mask"), "images"),
            ("images 0x0", (images[:, :, :0, :0], lm, "crop"), "images"),
            ("landmarks NaN", (images, lm * float("nan"), "mask"), "landmarks68"),
            ("landmarks inf", (images, lm / 0, "sunglasses"), "landmarks68"),
            ("landmarks (B, 5, 2)", (images, lm[:, :5], "mask"), "landmarks68"),
            ("landmarks batch", (images, lm[:1], "mask"), "landmarks68"),
            ("landmarks list", (images, lm.tolist(), "mask"), "landmarks68"),
            ("landmarks bool", (images, lm.bool(), "mask"), "landmarks68")]:
        fz.bad(f"occlude {label}", lambda args=args: occlude(*args), name)
    fz.bad("occlude generator", lambda: occlude(images, lm, "crop", generator=3), "generator")
    # SynthFaces indexing: ints (python, numpy, 0-d tensors), negative from the end, deterministic
    for case, index in enumerate([0, -1, len(ds) - 1, np.int64(3), torch.tensor(2), -len(ds)]):
        def check(item, index=index):
            want = int(index) % len(ds)
            assert torch.equal(item["image"], items["image"][want]), f"ds[{index!r}] is not item {want}"
            assert item["identity"] == want // ds.images_per_identity, "identity"
        fz.valid(f"ds[{index!r}]", lambda index=index: ds[index], check)
    fz.valid("render_batch tensor", lambda: ds.render_batch(torch.tensor([1, 0]), chunk=1),
             lambda out: torch.testing.assert_close(out["image"], items["image"][[1, 0]]))
    fz.valid("render_batch numpy", lambda: ds.render_batch(np.array([-1, 2, 2])),
             lambda out: torch.testing.assert_close(out["image"], items["image"][[len(ds) - 1, 2, 2]]))
    for index in (1.5, "1", True, None, torch.tensor(1.0), torch.tensor([1, 2]), np.float64(1)):
        fz.bad(f"ds[{index!r}]", lambda index=index: ds[index], "index")
    for index in (len(ds), -len(ds) - 1, 10**20):
        fz.bad(f"ds[{index!r}]", lambda index=index: ds[index], "index", types=(IndexError,))
    for label, args, name in [("indices empty", ([],), "indices"),
                              ("indices 2-D", (torch.zeros(1, 1, dtype=torch.long),), "indices"),
                              ("indices float", ([0.5],), "indices"), ("indices str", ("01",), "indices"),
                              ("chunk 0", ([0], 0), "chunk"), ("chunk float", ([0], 1.5), "chunk")]:
        fz.bad(f"render_batch {label}", lambda args=args: ds.render_batch(*args), name)
    for name, v in [("n_identities", 0), ("n_identities", 1.5), ("images_per_identity", -1), ("size", 8),
                    ("size", "64"), ("channels", 2), ("channels", True), ("seed", -1), ("seed", 1.0), ("occlusion", "hat")]:
        fz.bad(f"SynthFaces {name}={v!r}", lambda name=name, v=v: SynthFaces(**{name: v}), name)
    fz.bad("traits identity", lambda: ds.traits(99), "identity")
    fz.finish()

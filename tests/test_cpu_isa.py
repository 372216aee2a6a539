"""Run-time instruction-set dispatch of the C++ CPU kernels (csrc/cpu/isa.h, dispatch.cpp): the
instruction sets of the build, FASTFACE_CPU_ISA, and every kernel set against the generic one and the
pure-PyTorch twin. Each kernel set runs in a subprocess (the set is chosen once per process)."""
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fastface as ff
from fastface import _backend as be

pytestmark = pytest.mark.skipif(be._C is None, reason="compiled kernels not built")

X86 = platform.machine().lower() in ("x86_64", "amd64")
# Kernel sets compiled for more than the baseline: their code may use anything the set names.
DISPATCHED = ("isa_avx2::", "isa_avx512::")
# Instructions beyond x86-64-v2 (SSE4.2, SSSE3, POPCNT, CX16): VEX/EVEX-encoded ones (AVX, AVX2, FMA,
# F16C, AVX-512: every mnemonic starting with v), AVX-512 mask instructions, BMI1/2, LZCNT, MOVBE.
BEYOND_V2 = re.compile(r"^(v(?!err|erw)\w+|k(add|and|andn|mov|not|or|ortest|shiftl|shiftr|test|unpck|xnor|xor)[bwdq]"
                       r"|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|tzcnt|lzcnt|movbe)$")
WIDE_REGS = re.compile(r"%[yz]mm\d+|%k[0-7]\b")


def beyond_v2(disassembly, allowed=DISPATCHED):
    """[(function, instruction)] of `objdump -d -C` text: instructions beyond x86-64-v2 in functions
    whose (demangled) name holds none of `allowed`."""
    found, func = [], None
    for line in disassembly.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            func = head.group(1)
            continue
        parts = line.split("\t")
        if func is None or len(parts) < 2 or any(a in func for a in allowed):
            continue
        insn = parts[-1].strip()
        mnemonic = insn.split(" ")[0]
        if BEYOND_V2.match(mnemonic) or WIDE_REGS.search(insn):
            found.append((func, insn))
    return found


def test_the_checker_finds_avx_outside_the_dispatched_kernels():
    # The instruction-set test below is only as good as this parser: it must flag AVX, AVX-512 and
    # BMI code in baseline functions and nothing in a dispatched kernel or in SSE code.
    text = textwrap.dedent("""\
        0000000000001000 <fastface::cpu::isa_avx512::patch_cost(fastface::PatchCostArgs const&, int)>:
            1000:\tvfmadd231ps %zmm1,%zmm2,%zmm0
        0000000000002000 <fastface::cpu::active_isa[abi:cxx11]()>:
            2000:\tmovups %xmm0,(%rdi)
            2004:\tpopcnt %rax,%rax
            2008:\tvmovups %ymm0,(%rdi)
        0000000000003000 <std::vector<float, std::allocator<float> >::_M_default_append(unsigned long)>:
            3000:\tshlx %rax,%rbx,%rcx
            3004:\tkmovw %k1,%eax
            3008:\tpaddd %xmm1,%xmm0
        """)
    found = beyond_v2(text)
    assert [insn.split()[0] for _, insn in found] == ["vmovups", "shlx", "kmovw"], found
    assert not any("isa_avx512" in f for f, _ in found)


@pytest.mark.skipif(not X86, reason="x86-64 only: the baseline of other architectures is their own")
def test_default_build_has_no_instructions_beyond_x86_64_v2_outside_the_dispatched_kernels():
    info = be.build_info
    if info is not None and "native" in getattr(info, "cpu_isas", ""):
        pytest.skip("a FASTFACE_CPU_NATIVE=ON build is not portable by design")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) is not installed")
    so = be._C.__file__
    symbols = subprocess.run([objdump, "-t", so], capture_output=True, text=True, check=True).stdout
    assert "isa_generic" in symbols, f"{so} has no symbol table (stripped?): the test cannot tell the kernels apart"
    text = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", so], capture_output=True, text=True,
                          check=True).stdout
    found = beyond_v2(text)
    assert not found, f"{len(found)} instructions beyond x86-64-v2 outside the dispatched kernels, e.g. {found[:5]}"
    # and the dispatched kernels are really there, compiled for their instruction sets
    for isa, mnemonic in (("avx2", "vfmadd"), ("avx512", "zmm")):
        if isa in be._C.cpu_isas_built():
            assert any(f"isa_{isa}::" in f for f, _ in beyond_v2(text, allowed=())), isa
            assert re.search(mnemonic, text), isa


def test_choice_rule_never_goes_above_the_cpu():
    choose = be._C.cpu_isa_choose
    built = be._C.cpu_isas_built()
    assert choose("", built) == built[0] and choose("auto", built) == built[0]
    assert choose("generic" if X86 else built[-1], built) == ("generic" if X86 else built[-1])
    if X86 and "avx512" in built:
        # a CPU with AVX2 only: auto takes avx2, asking for avx512 is an error that names both
        assert choose("auto", ["avx2", "generic"]) == "avx2"
        with pytest.raises(ValueError, match=r"FASTFACE_CPU_ISA='avx512' asks for instructions this CPU lacks; "
                                             r"it runs avx2, generic"):
            choose("avx512", ["avx2", "generic"])
    with pytest.raises(ValueError, match=r"FASTFACE_CPU_ISA must be auto or one of .* got 'sse9'"):
        choose("sse9", built)


def run_python(code, isa=None, cwd=None, timeout=180):
    """Run code in a fresh interpreter (the installed fastface, not the source tree) with
    FASTFACE_CPU_ISA=isa."""
    env = dict(os.environ)
    env.pop("FASTFACE_CPU_ISA", None)
    if isa is not None:
        env["FASTFACE_CPU_ISA"] = isa
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd or os.path.expanduser("~"))


SUPPORTED = be._C.cpu_isas_supported() if be._C is not None else []
BUILT = be._C.cpu_isas_built() if be._C is not None else []
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in SUPPORTED, reason=f"this CPU cannot run the {isa} kernels"))
        for isa in BUILT]


@pytest.mark.parametrize("isa", ISAS)
def test_environment_variable_forces_the_kernel_set(isa):
    run = run_python("""
        import fastface as ff
        print(ff.backend_info()["cpu_isa"])
    """, isa)
    assert run.returncode == 0 and run.stdout.strip() == isa, run.stderr[-2000:]


def test_fastface_info_prints_the_cpu_code_path(capsys):
    import argparse

    from fastface.cli import cmd_info
    assert cmd_info(argparse.Namespace(json=False)) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "CPU code path" in ln)
    assert f": {be._C.cpu_isa()}" in line and "built: " + ", ".join(BUILT) in line, line


def test_an_unusable_environment_variable_is_a_clear_error():
    run = run_python("""
        import torch, fastface as ff
        print(ff.backend_info()["cpu_isa_error"])
        try:
            ff.patch_cost(torch.rand(2, 3), torch.rand(4, 3), impl="cpu")
        except ValueError as e:
            print("ValueError:", e)
    """, "sse9")
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0 and len(lines) == 2, (run.stdout, run.stderr[-2000:])
    assert "FASTFACE_CPU_ISA must be auto or one of" in lines[0]
    assert lines[1].startswith("ValueError: FASTFACE_CPU_ISA must be auto or one of") and "'sse9'" in lines[1]


# Small odd-shaped problems through every CPU kernel; run(impl) returns their outputs. Executed here
# for the pure-PyTorch twin and in one subprocess per kernel set for impl="cpu".
CASES = """
import torch
from torch import nn
import fastface as ff

def run(impl):
    g = torch.Generator().manual_seed(16)
    out = {}
    x, y = torch.randn(3, 5, 37, generator=g), torch.randn(3, 7, 37, generator=g)
    out["cost"] = ff.patch_cost(x, y, impl=impl)
    out["cost_f64"] = ff.patch_cost(x.double(), y.double(), impl=impl)
    xb, yb = torch.randn(2, 1, 6, 19, generator=g), torch.randn(2, 3, 13, 19, generator=g)
    out["cost_broadcast"] = ff.patch_cost(xb, yb, impl=impl)
    out["cost_extreme"] = ff.patch_cost(x * 1e30, y * 1e-25, impl=impl)   # scaled-copy path
    out["cost_bf16"] = ff.patch_cost(x.bfloat16(), y.bfloat16(), impl=impl)
    out["cost_f16"] = ff.patch_cost(x.half(), y.half(), impl=impl)
    cost = torch.rand(5, 7, 9, generator=g)
    a, b = torch.rand(5, 7, generator=g) + 0.05, torch.rand(5, 9, generator=g) + 0.05
    a[:, 0] = 0
    for dt in (torch.float32, torch.float64):
        for mode in ("auto", "kernel", "log"):
            r = ff.sinkhorn(cost.to(dt), a.to(dt), b.to(dt), eps=0.1, mode=mode, return_plan=True, impl=impl)
            for key in ("distance", "plan", "f", "g", "n_iter"):
                out[f"sinkhorn_{mode}_{dt}_{key}"] = getattr(r, key)
    r = ff.sinkhorn(cost * 40, eps=0.05, impl=impl, return_plan=True)  # auto mode goes to the log domain
    out["sinkhorn_auto_log_distance"], out["sinkhorn_auto_log_plan"] = r.distance, r.plan
    xe, ye = torch.randn(4, 6, 24, generator=g), torch.randn(4, 5, 24, generator=g)
    for w in ("uniform", "apc", "sc"):
        r = ff.emd(xe, ye, weighting=w, eps=0.1, impl=impl, return_plan=True)
        out[f"emd_{w}"], out[f"emd_{w}_plan"] = r.distance, r.plan
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):  # read as they are, fp32 thereafter
        out[f"emd_apc_{name}"] = ff.emd(xe.to(dt), ye.to(dt), weighting="apc", eps=0.1, impl=impl)
    emb, patches = torch.randn(20, 8, generator=g), torch.randn(20, 9, 16, generator=g)
    qe, qp = torch.randn(3, 8, generator=g), torch.randn(3, 9, 16, generator=g)
    gallery = ff.Faces(emb, patches)
    batched = ff.emd_rerank(ff.Faces(qe, qp), gallery, k=5, impl=impl, return_flows=True)
    for key in ("indices", "distance", "emd", "flows"):
        out[f"rerank_{key}"] = getattr(batched, key)
        out[f"rerank_one_by_one_{key}"] = torch.stack(
            [getattr(ff.emd_rerank(ff.Faces(qe[i], qp[i]), gallery, k=5, impl=impl, return_flows=True), key)
             for i in range(3)])
    half = ff.emd_rerank(ff.Faces(qe, qp.bfloat16()), ff.Faces(emb, patches.bfloat16()), k=5, impl=impl)
    out["rerank_bf16_emd"], out["rerank_bf16_indices"] = half.emd, half.indices
    net = nn.Sequential(nn.ConvTranspose2d(6, 5, 4, 1, 0), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.ConvTranspose2d(5, 3, 4, 2, 1), nn.Tanh()).eval()
    with torch.no_grad():
        for prm in net.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.3)
        z = torch.randn(3, 6, 1, 1, generator=g)
        out["generator"] = ff.FusedGenerator.from_module(net)(z, impl=impl) if impl != "torch" else net(z)
    return out
"""


@pytest.fixture(scope="module")
def isa_outputs(tmp_path_factory):
    """{kernel set: outputs of CASES with impl="cpu"} for every set this CPU runs, each in its own process."""
    tmp = tmp_path_factory.mktemp("isa")
    outputs = {}
    for isa in SUPPORTED:
        path = tmp / f"{isa}.pt"
        run = run_python(CASES + f"""
import fastface as ff
assert ff.backend_info()["cpu_isa"] == {isa!r}
torch.save(run("cpu"), {str(path)!r})
""", isa, cwd=str(tmp))
        assert run.returncode == 0, (isa, run.stderr[-3000:])
        outputs[isa] = torch.load(path)
    return outputs


@pytest.fixture(scope="module")
def twin_outputs():
    env = {}
    exec(CASES, env)
    with torch.no_grad():
        return env["run"]("torch")


def _close(got, want, key):
    if key.endswith("n_iter") or key.endswith("indices"):
        # iteration counts may differ by one where the error crosses tol between summation orders
        assert (got.long() - want.long()).abs().max() <= (1 if key.endswith("n_iter") else 0), key
        return
    # float16 / bfloat16 inputs: the same rounded values on both sides, float32 arithmetic thereafter
    tol = {}
    if key.startswith(("emd", "rerank", "cost_extreme", "cost_bf16", "cost_f16", "sinkhorn_auto_log")):
        tol = dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got, want.to(got.dtype), msg=key, **tol)


@pytest.mark.parametrize("isa", ISAS)
def test_every_kernel_set_equals_the_generic_one_and_the_twin(isa, isa_outputs, twin_outputs):
    got = isa_outputs[isa]
    assert set(got) == set(twin_outputs)
    for key in sorted(got):
        _close(got[key], isa_outputs["generic" if X86 else BUILT[-1]][key], key)
        _close(got[key], twin_outputs[key], key)


@pytest.mark.parametrize("isa", ISAS)
def test_batched_queries_equal_one_by_one_in_every_kernel_set(isa, isa_outputs):
    got = isa_outputs[isa]
    for key in ("indices", "distance", "emd", "flows"):
        torch.testing.assert_close(got[f"rerank_{key}"], got[f"rerank_one_by_one_{key}"], msg=key)

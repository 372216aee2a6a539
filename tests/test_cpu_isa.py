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


def run_python(code, isa=None, timeout=180):
    """Run code in a fresh interpreter (the installed fastface) with FASTFACE_CPU_ISA=isa."""
    env = dict(os.environ)
    env.pop("FASTFACE_CPU_ISA", None)
    if isa is not None:
        env["FASTFACE_CPU_ISA"] = isa
    env["OMP_NUM_THREADS"] = "2"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(os.path.abspath(__file__)) + "/..",)


SUPPORTED = be._C.cpu_isas_supported() if be._C is not None else []
BUILT = be._C.cpu_isas_built() if be._C is not None else []
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(isa not in SUPPORTED, reason=f"this CPU cannot run the {isa} kernels"))
        for isa in BUILT]


@pytest.mark.parametrize("isa", ISAS)
def test_environment_variable_forces_the_kernel_set(isa):
    run = run_python("""
        import sys; sys.path = [p for p in sys.path if p not in ('', '.')]
        import fastface as ff
        print(ff.backend_info()["cpu_isa"])
    """, isa)
    assert run.returncode == 0 and run.stdout.strip() == isa, run.stderr[-2000:]


def test_an_unusable_environment_variable_is_a_clear_error():
    run = run_python("""
        import sys; sys.path = [p for p in sys.path if p not in ('', '.')]
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

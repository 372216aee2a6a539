"""The CUDA FusedGenerator kernels and launchers, run on the CPU by the host emulator.

tests/cuda_emu builds csrc/cuda/conv_transpose.cu with g++ against fake CUDA headers (a thread
per CUDA thread, real barriers, clusters with distributed shared memory, NaN-filled shared
memory, the driver's launch limits), so the index arithmetic, phases, tap skipping, cluster
all-gather, path choice and fallbacks are checked against the twin where no GPU exists.
Timing means nothing here; on a GPU the same paths run for real in tests/test_generator.py.
"""
import ctypes
import shutil

import pytest
import torch
from torch import nn

import fastface as ff
from fastface.models.r3an import Generator as R3ANGenerator
from fastface.ops.generator import CUDA_PATHS

from cuda_emu.harness import EmulatorCopy, build_emulator

CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found (host CUDA emulator)")


@pytest.fixture(scope="module")
def emu_so(tmp_path_factory):
    return build_emulator(tmp_path_factory, "emu_conv_transpose.cpp", "ffemu")


class Emulator(EmulatorCopy):
    """The emulated launchers with fresh static state (cluster-size cache) per instance."""

    def __init__(self, so, **env):
        super().__init__(so, **env)
        self.lib.ff_emu_workspace.restype = ctypes.c_longlong
        self.lib.ff_emu_workspace.argtypes = [ctypes.c_longlong, ctypes.c_void_p] + [ctypes.c_int] * 4
        self.lib.ff_emu_chain.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong, ctypes.c_void_p] + \
            [ctypes.c_int] * 4 + [ctypes.c_void_p, ctypes.c_longlong]

    def __call__(self, fg, z, path="auto", dtype=torch.float32):
        """Return (out, workspace bytes) of the CUDA launchers for fg(z), on host memory."""
        with self.device_properties():
            x = fg._input(z).to(dtype).contiguous()
            B, _, H, W = x.shape
            C, Ho, Wo = fg.output_shape(H, W)
            desc = fg._desc(fg._state(torch.device("cpu")), "cuda", H, W)  # CUDA weight layout
            args = (desc.data_ptr(), len(fg.layers), int(fg.normalize_input), CODES[dtype], CUDA_PATHS[path])
            n = self.lib.ff_emu_workspace(B, *args)
            if n < 0:
                raise ValueError(self.lib.ff_emu_error().decode())
            ws = torch.full((max(n, 1),), 0xFF, dtype=torch.uint8)  # NaN garbage
            out = torch.full((B, C, Ho, Wo), float("nan"), dtype=dtype)
            if self.lib.ff_emu_chain(x.data_ptr(), out.data_ptr(), B, *args, ws.data_ptr(), n) != 0:
                raise ValueError(self.lib.ff_emu_error().decode())
            return out, n


def randomize_(module, gen):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.ConvTranspose2d):
                cin, _, kh, kw = m.weight.shape
                fan = cin * kh * kw / (m.stride[0] * m.stride[1])
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.25 + 1.5 * torch.rand(m.num_features, generator=gen))
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
    return module.eval()


def odd_chain(gen):
    """Odd shapes: kernel 3/4/5, stride 1/2, padding 0/1/2, output_padding, dilation, all activations."""
    return randomize_(nn.Sequential(
        nn.ConvTranspose2d(7, 13, 5, 2, 2, 1), nn.BatchNorm2d(13), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(13, 3, 3, 1, 0, dilation=2), nn.Sigmoid(), nn.BatchNorm2d(3),
        nn.ConvTranspose2d(3, 7, 4, 2, 1, bias=False), nn.Tanh()), gen)


def check(got, want, rtol=1e-4):
    assert not got.isnan().any(), "NaN: the kernel read or left unwritten memory"
    err = (got.double() - want.double()).abs().max().item()
    assert err <= rtol * want.abs().max().item(), f"max error {err:.3g}"


@pytest.mark.parametrize("path", ["chain", "layers"])
def test_emulated_r3an_generator(emu_so, path, gen):
    fg = ff.FusedGenerator.from_module(randomize_(R3ANGenerator(width=0.25), gen))
    z = torch.randn(3, 256, generator=gen)
    got, ws = Emulator(emu_so)(fg, z, path)
    assert (ws == 0) == (path == "chain")
    check(got, fg(z, impl="torch"))


@pytest.mark.parametrize("path", ["chain", "layers"])
def test_emulated_odd_chain_and_dtypes(emu_so, path, gen):
    fg = ff.FusedGenerator.from_module(odd_chain(gen))
    z = torch.randn(2, 7, 3, 2, generator=gen)
    emu = Emulator(emu_so)
    check(emu(fg, z, path)[0], fg(z, impl="torch"))
    for dtype in (torch.float16, torch.bfloat16):
        got, _ = emu(fg, z, path, dtype)
        assert got.dtype == dtype
        check(got.float(), fg(z.to(dtype).float(), impl="torch"), rtol=2e-2)


def test_emulated_device_variants(emu_so, gen):
    fg = ff.FusedGenerator.from_module(odd_chain(gen))
    z = torch.randn(5, 7, 1, 1, generator=gen)
    want = fg(z, impl="torch")
    # Clusters of 16 unavailable: falls back to smaller clusters; more samples than clusters.
    got, ws = Emulator(emu_so, FF_EMU_MAX_CLUSTER=4, FF_EMU_ACTIVE_CLUSTERS=2)(fg, z)
    assert ws == 0
    check(got, want)
    # Ampere: auto takes the per-layer path; the chain path still works, one block per sample.
    a100 = Emulator(emu_so, FF_EMU_CC_MAJOR=8)
    got, ws = a100(fg, z)
    assert ws > 0
    check(got, want)
    check(a100(fg, z, "chain")[0], want)
    # Too little shared memory: auto falls back to the per-layer path, a forced chain is an error.
    tiny = Emulator(emu_so, FF_EMU_SMEM_OPTIN=256)  # below this chain's ~600 bytes
    got, ws = tiny(fg, z)
    assert ws > 0
    check(got, want)
    with pytest.raises(ValueError, match="shared memory"):
        tiny(fg, z, "chain")
    # Large batches take the per-layer path.
    got, ws = Emulator(emu_so)(fg, torch.randn(20, 7, 1, 1, generator=gen))
    assert ws > 0

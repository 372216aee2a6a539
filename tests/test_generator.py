"""FusedGenerator: fused ConvTranspose2d chains (CPU, CUDA) against module.eval()(z) and the twin."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastface as ff
from fastface import _backend as be
from fastface.models.r3an import Generator as R3ANGenerator
from fastface.reference import generator_ref

CUDA = pytest.mark.skipif(not be.cuda_usable(), reason="CUDA kernels not built or no GPU on this machine")
IMPLS = [pytest.param("torch", id="torch"), pytest.param("cpu", id="cpu"),
         pytest.param("cuda", id="cuda", marks=CUDA)]
ACTS = [lambda g: nn.ReLU(), lambda g: nn.LeakyReLU(0.05 + 0.4 * torch.rand(1, generator=g).item()),
        lambda g: nn.Tanh(), lambda g: nn.Sigmoid(), lambda g: None]


def device_of(impl):
    return "cuda" if impl == "cuda" else "cpu"


def randomize_(module, gen, scale=1.0):
    """Fresh random weights (fan-in scaled), BN running statistics and affine parameters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.ConvTranspose2d):
                cin, _, kh, kw = m.weight.shape
                fan = cin * kh * kw / (m.stride[0] * m.stride[1])
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * scale / fan ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.3)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.25)
                if m.affine:
                    m.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                    m.bias.copy_(0.3 * torch.randn(n, generator=gen))
    return module.eval()


def random_chain(gen, in_channels):
    """An nn.Sequential of 1-3 odd ConvTranspose2d layers with BN / activations; its input plane."""
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=gen))]  # noqa: E731
    plane = pick([(1, 1), (2, 3), (5, 4)])
    layers, c, (h, w) = [], in_channels, plane
    for _ in range(pick([1, 2, 3])):
        while True:
            cout, k, s, p = pick([3, 7, 13]), pick([3, 4, 5]), pick([1, 2]), pick([0, 1, 2])
            d = pick([1, 1, 1, 2])
            op = pick([0, 1]) if max(s, d) > 1 else 0
            size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n in (h, w)]
            if min(size) >= 2:
                break
        h, w = size
        layers.append(nn.ConvTranspose2d(c, cout, k, s, p, op, bias=pick([True, False]), dilation=d))
        if pick([True, False]):
            layers.append(nn.BatchNorm2d(cout, affine=pick([True, False])))
        act = pick(ACTS)(gen)
        if act is not None:
            layers.append(act)
            if pick([False, False, True]):
                layers.append(nn.BatchNorm2d(cout))  # after the activation: post-affine
        c = cout
    return randomize_(nn.Sequential(*layers), gen), plane


def r3an_eager(gen):
    return randomize_(R3ANGenerator(), gen)


def dcgan(nz=100, ngf=64, nc=3):
    """The DCGAN generator: nz -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> 3x64x64."""
    def up(cin, cout, s, p):
        return [nn.ConvTranspose2d(cin, cout, 4, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    return nn.Sequential(*up(nz, ngf * 8, 1, 0), *up(ngf * 8, ngf * 4, 2, 1), *up(ngf * 4, ngf * 2, 2, 1),
                         *up(ngf * 2, ngf, 2, 1), nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())


def eager64(module, z):
    """module.eval()(z) in float64 (the oracle: independent of TF32 and float32 rounding)."""
    import copy
    m = copy.deepcopy(module).double()
    with torch.no_grad():
        return m(z.double())


def assert_rel_close(got, want, rtol=1e-4):
    scale = want.abs().max().item() if want.numel() else 1.0
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), rtol=rtol, atol=rtol * scale * 0.1)
    err = (got.double().cpu() - want.double().cpu()).abs().max().item() if want.numel() else 0.0
    assert err <= rtol * max(scale, 1e-30), f"max error {err:.3g} > {rtol} x max |want| {scale:.3g}"


# ---- parity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(10))
def test_random_chains_match_eager(impl, seed):
    gen = torch.Generator().manual_seed(1000 + seed)
    cin = [3, 7, 13][seed % 3]
    module, (h, w) = random_chain(gen, cin)
    fg = ff.FusedGenerator.from_module(module)
    for B in (1, 3, 17):
        z = torch.randn(B, cin, h, w, generator=gen)
        got = fg(z.to(device_of(impl)), impl=impl)
        assert got.dtype == torch.float32 and got.device.type == device_of(impl)
        assert_rel_close(got, eager64(module, z))


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_kernel_matches_twin_on_random_chains(impl, gen):
    for _ in range(6):
        module, (h, w) = random_chain(gen, 7)
        fg = ff.FusedGenerator.from_module(module)
        z = torch.randn(5, 7, h, w, generator=gen).to(device_of(impl))
        twin = generator_ref(z, fg._state(z.device).layers)
        assert_rel_close(fg(z, impl=impl), twin)


@pytest.mark.parametrize("impl", IMPLS)
def test_r3an_generator(impl, gen):
    g = r3an_eager(gen)
    fg = ff.FusedGenerator.from_module(g)
    # Table 1: 256x1x1 -> 512x4x4 -> 128x7x7 -> 32x14x14 -> 8x28x28 -> 3x56x56, BN + ReLU between, Tanh out.
    shapes, h = [], (1, 1)
    for L in fg.layers:
        h = L.output_size(*h)
        shapes.append((L.out_channels, *h))
    assert shapes == [(512, 4, 4), (128, 7, 7), (32, 14, 14), (8, 28, 28), (3, 56, 56)]
    assert [L.activation for L in fg.layers] == ["relu"] * 4 + ["tanh"]
    for B in (1, 3):
        z = torch.randn(B, 256, generator=gen)
        want = eager64(g, z)
        assert_rel_close(fg(z.to(device_of(impl)), impl=impl), want)
        assert_rel_close(fg(z[:, :, None, None].to(device_of(impl)), impl=impl), want)


@pytest.mark.parametrize("impl", IMPLS)
def test_dcgan_64x64(impl, gen):
    module = randomize_(dcgan(), gen)
    fg = ff.FusedGenerator.from_module(module)
    assert fg.output_shape() == (3, 64, 64)
    z = torch.randn(3, 100, generator=gen)
    want = eager64(module, z[:, :, None, None])
    assert_rel_close(fg(z.to(device_of(impl)), impl=impl), want)
    assert_rel_close(fg(z[:, :, None, None].to(device_of(impl)), impl=impl), want)


@pytest.mark.parametrize("impl", IMPLS[1:])
def test_batched_equals_one_by_one(impl, gen):
    module = randomize_(dcgan(nz=16, ngf=24), gen)   # more samples than one CPU group
    fg = ff.FusedGenerator.from_module(module)
    z = torch.randn(40, 16, generator=gen).to(device_of(impl))
    batched = fg(z, impl=impl)
    single = torch.cat([fg(z[i:i + 1], impl=impl) for i in range(z.shape[0])])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert_rel_close(batched, eager64(module, z.cpu()[:, :, None, None]))


def test_cpu_threads_give_identical_results(gen):
    module, (h, w) = random_chain(gen, 13)
    fg = ff.FusedGenerator.from_module(module)
    z = torch.randn(9, 13, h, w, generator=gen)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fg(z, impl="cpu")
        torch.set_num_threads(3)
        three = fg(z, impl="cpu")
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, three)


# ---- module forms -------------------------------------------------------------------------------

class Chained(nn.Module):
    """Children in registration order form the chain; forward follows them."""

    def __init__(self, functional_relu=False):
        super().__init__()
        self.functional_relu = functional_relu
        self.up = nn.ConvTranspose2d(6, 5, 4, 1, 0)
        self.norm = nn.BatchNorm2d(5)
        self.act = nn.Identity() if functional_relu else nn.ReLU()
        self.head = nn.Sequential(nn.ConvTranspose2d(5, 3, 3, 2, 1, 1), nn.Tanh())

    def forward(self, z):
        h = self.norm(self.up(z.view(z.shape[0], -1, 1, 1)))
        h = F.relu(h) if self.functional_relu else self.act(h)
        return self.head(h)


def test_module_forms(gen):
    nested = randomize_(nn.Sequential(nn.Unflatten(1, (6, 1, 1)),
                                      nn.Sequential(nn.ConvTranspose2d(6, 5, 4, 1, 0), nn.BatchNorm2d(5)),
                                      nn.Sequential(nn.Sequential(nn.ReLU(), nn.Dropout(0.3)), nn.Identity()),
                                      nn.ConvTranspose2d(5, 3, 3, 2, 1, 1), nn.Tanh()), gen)
    custom = randomize_(Chained(), gen)
    z = torch.randn(4, 6, generator=gen)
    for module in (nested, custom):
        fg = ff.FusedGenerator.from_module(module)
        want = eager64(module, z)
        assert_rel_close(fg(z), want)
        assert_rel_close(fg(z.view(4, 6, 1, 1)), want)
    with pytest.raises(ValueError, match="does not follow its children"):
        ff.FusedGenerator.from_module(randomize_(Chained(functional_relu=True), gen))


def test_bn_after_activation_and_multiple_bns(gen):
    module = randomize_(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, 2, 0), nn.BatchNorm2d(6), nn.BatchNorm2d(6),
                                      nn.LeakyReLU(0.3), nn.BatchNorm2d(6), nn.BatchNorm2d(6, affine=False),
                                      nn.ConvTranspose2d(6, 2, 2, 2, 1)), gen)
    fg = ff.FusedGenerator.from_module(module)
    assert len(fg.layers) == 2 and fg.layers[0].post_scale is not None
    z = torch.randn(3, 4, 2, 3, generator=gen)
    assert_rel_close(fg(z, impl="cpu"), eager64(module, z))


def gan_generator(gen, latent_dim=24, image_size=16, channels=3):
    """fastface's GAN generator (PixelNorm on z, Unflatten, ConvT/BN/ReLU, Tanh), random weights and BN stats."""
    from fastface.models.dcgan import GANConfig, Generator
    cfg = GANConfig(latent_dim=latent_dim, image_size=image_size, channels=channels, width=4, max_width=12)
    return randomize_(Generator(cfg), gen)


@pytest.mark.parametrize("impl", IMPLS)
def test_gan_generator_with_pixel_norm(impl, gen):
    module = gan_generator(gen)
    fg = ff.FusedGenerator.from_module(module)
    assert fg.normalize_input and fg.output_shape() == (3, 16, 16) and fg.input_shape == (24, 1, 1)
    for B in (1, 5):
        z = torch.randn(B, 24, generator=gen) * (0.5 + torch.rand(B, 1, generator=gen) * 3)   # odd norms
        want = eager64(module, z)
        assert_rel_close(fg(z.to(device_of(impl)), impl=impl), want)
        assert_rel_close(fg(z[:, :, None, None].to(device_of(impl)), impl=impl), want)
        # pixel-norm: G(c z) = G(z) for c > 0, in the fused kernels too
        assert_rel_close(fg((7.5 * z).to(device_of(impl)), impl=impl), want)
    # batched == one by one; verification against the module passes
    z = torch.randn(9, 24, generator=gen).to(device_of(impl))
    torch.testing.assert_close(fg(z, impl=impl), torch.cat([fg(z[i:i + 1], impl=impl) for i in range(9)]),
                               rtol=1e-5, atol=1e-6)
    ff.FusedGenerator.from_module(module, verify=True)


def test_pixel_norm_without_unflatten_and_the_loaded_gan(tmp_path, gen):
    from fastface.models.dcgan import PixelNorm
    from fastface.models.serialization import save_model
    module = randomize_(nn.Sequential(PixelNorm(), nn.ConvTranspose2d(10, 6, 4), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.ConvTranspose2d(6, 1, 4, 2, 1), nn.Sigmoid()), gen)
    fg = ff.FusedGenerator.from_module(module, verify=True)
    z = torch.randn(3, 10, 1, 1, generator=gen)
    assert_rel_close(fg(z, impl="cpu"), eager64(module, z))
    g = gan_generator(gen, latent_dim=16, image_size=8, channels=1)
    save_model(tmp_path / "model.pt", "gan", g.cfg.to_dict(), g)
    loaded = ff.load(tmp_path / "model.pt", kind="gan")
    z = torch.randn(4, 16, generator=gen)
    assert_rel_close(ff.FusedGenerator.from_module(loaded)(z, impl="cpu"), eager64(g, z))


def test_pixel_norm_layouts_it_cannot_fuse_are_refused():
    from fastface.models.dcgan import PixelNorm
    with pytest.raises(ValueError, match=r"layer '1' \(PixelNorm.*only supported as the first layer"):
        ff.FusedGenerator.from_module(nn.Sequential(nn.Unflatten(1, (4, 1, 1)), PixelNorm(), nn.ConvTranspose2d(4, 4, 3)))
    with pytest.raises(ValueError, match=r"PixelNorm eps=0.01 is not supported"):
        ff.FusedGenerator.from_module(nn.Sequential(PixelNorm(eps=1e-2), nn.ConvTranspose2d(4, 4, 3)))
    with pytest.raises(ValueError, match=r"1x1 plane.*\(1, 2, 2\)"):   # the whole latent vs each pixel
        ff.FusedGenerator.from_module(nn.Sequential(PixelNorm(), nn.Unflatten(1, (1, 2, 2)), nn.ConvTranspose2d(1, 4, 3)))
    with pytest.raises(ValueError, match="only supported as the first layer"):
        ff.FusedGenerator.from_module(nn.Sequential(PixelNorm(), PixelNorm(), nn.ConvTranspose2d(4, 4, 3)))


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Conv2d(4, 4, 3)), r"layer '1' \(Conv2d"),
    (lambda: nn.Sequential(nn.Linear(4, 16), nn.ConvTranspose2d(16, 4, 3)), r"layer '0' \(Linear"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Dropout(0.5)).train(), r"'1'.*Dropout in training mode"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.BatchNorm2d(4)).train(), r"'1'.*training mode"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval(),
     "running statistics"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=2)), "groups=2"),
    (lambda: nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(4, 4, 3)), "activation before the first"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.ReLU(), nn.Tanh()), "second activation"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.BatchNorm2d(5)).eval(), "num_features=5"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.ConvTranspose2d(5, 4, 3)), "in_channels=5"),
    (lambda: nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Unflatten(1, (4, 1, 1))), "first layer"),
    (lambda: nn.Sequential(nn.ReLU()), "activation before"),
    (lambda: nn.Sequential(), "no ConvTranspose2d"),
])
def test_unsupported_layers_raise_naming_the_layer(bad, match):
    with pytest.raises(ValueError, match=match):
        ff.FusedGenerator.from_module(bad())


def test_nested_names_in_errors():
    module = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.Sequential(nn.ReLU(), nn.Upsample(scale_factor=2)))
    with pytest.raises(ValueError, match=r"layer '1\.1' \(Upsample"):
        ff.FusedGenerator.from_module(module)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        ff.FusedGenerator.from_module(lambda z: z)


def test_bad_inputs(gen):
    fg = ff.FusedGenerator.from_module(randomize_(dcgan(nz=8, ngf=4), gen))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        fg([[0.0] * 8])
    with pytest.raises(TypeError, match="z must be a floating-point tensor"):
        fg(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 8\) or \(B, 8, H, W\), got \(2, 9\)"):
        fg(torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"got \(2, 7, 1, 1\)"):
        fg(torch.zeros(2, 7, 1, 1))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        fg(torch.zeros(8))
    with pytest.raises(ValueError, match="impl must be one of"):
        fg(torch.zeros(2, 8), impl="triton")
    if not be.cuda_usable():
        with pytest.raises(ValueError, match="impl='cuda'"):
            fg(torch.zeros(2, 8), impl="cuda")
    r3 = ff.FusedGenerator.from_module(r3an_eager(gen))
    with pytest.raises(ValueError, match=r"\(B, 256\) or \(B, 256, 1, 1\)"):
        r3(torch.zeros(2, 256, 2, 2))
    shrink = ff.FusedGenerator.from_module(nn.Sequential(nn.ConvTranspose2d(3, 3, 1, 1, 2)))
    with pytest.raises(ValueError, match="too small for layer '0'"):
        shrink(torch.zeros(1, 3, 3, 3))
    # NaN propagates as in eager (no error); an empty batch gives an empty output.
    z = torch.randn(3, 8, generator=gen)
    z[1, 0] = float("nan")
    out = fg(z)
    assert out[1].isnan().any() and not out[0].isnan().any() and not out[2].isnan().any()
    assert fg(torch.zeros(0, 8)).shape == (0, 3, 64, 64)


def test_noncontiguous_and_dtypes(gen):
    module = randomize_(nn.Sequential(nn.ConvTranspose2d(5, 7, 3, 2, 1, 1), nn.BatchNorm2d(7), nn.Sigmoid(),
                                      nn.ConvTranspose2d(7, 3, 4, 1, 2)), gen)
    fg = ff.FusedGenerator.from_module(module)
    base = torch.randn(4, 3, 5, 6, generator=gen).permute(0, 3, 1, 2)[:, 1:]  # (4, 5, 3, 5), strided
    assert not base.is_contiguous()
    want = eager64(module, base)
    assert_rel_close(fg(base, impl="cpu"), want)
    out64 = fg(base.double(), impl="cpu")
    assert out64.dtype == torch.float64
    assert_rel_close(out64, want)
    out16 = fg(base.bfloat16(), impl="cpu")
    assert out16.dtype == torch.bfloat16
    assert_rel_close(out16, eager64(module, base.bfloat16().float()), rtol=2e-2)


def test_grad_falls_back_to_the_twin(gen):
    fg = ff.FusedGenerator.from_module(randomize_(dcgan(nz=8, ngf=4), gen))
    z = torch.randn(2, 8, generator=gen, requires_grad=True)
    fg(z).square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---- CUDA ---------------------------------------------------------------------------------------

@CUDA
@pytest.mark.parametrize("path", ["chain", "layers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_paths_and_dtypes(path, dtype, gen):
    for module, z in ((r3an_eager(gen), torch.randn(5, 256, generator=gen)),
                      (random_chain(gen, 7)[0], torch.randn(3, 7, 2, 3, generator=gen))):
        fg = ff.FusedGenerator.from_module(module)
        fg.cuda_path = path
        zc = z.to("cuda", dtype)
        got = fg(zc, impl="cuda")
        assert got.dtype == dtype and got.device.type == "cuda"
        want = eager64(module, zc.float().cpu())
        assert_rel_close(got, want, rtol=1e-4 if dtype == torch.float32 else 2e-2)


@CUDA
def test_cuda_large_batch_and_stream(gen):
    module = randomize_(dcgan(nz=16, ngf=16), gen)
    fg = ff.FusedGenerator.from_module(module)
    z = torch.randn(300, 16, generator=gen)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = fg(z.cuda(), impl="cuda")
    s.synchronize()
    assert_rel_close(got, eager64(module, z[:, :, None, None]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules_compile_and_verify_in_float64(gen, dtype):
    # The probe used to compare the module's own half-precision forward with the float32 plan at
    # 1e-3 and rejected every fp16 / bf16 module; it now verifies both in float64.
    for module, z in ((randomize_(Chained(), gen), torch.randn(3, 6, generator=gen)),
                      (dcgan(nz=8, ngf=4, nc=3), torch.randn(2, 8, 1, 1, generator=gen))):
        module = randomize_(module, gen).to(dtype)
        fg = ff.FusedGenerator.from_module(module, verify=True)
        assert_rel_close(fg(z), eager64(module, z), rtol=1e-4)
        assert fg(z.to(dtype)).dtype == dtype
    with pytest.raises(ValueError, match="does not follow its children"):
        ff.FusedGenerator.from_module(randomize_(Chained(functional_relu=True), gen).to(dtype))


def test_chain_longer_than_the_kernels_limit_is_rejected_at_compile_time():
    layers = [nn.ConvTranspose2d(2, 2, 1) for _ in range(65)]
    with pytest.raises(ValueError, match="at most 64 ConvTranspose2d layers.*65"):
        ff.FusedGenerator.from_module(nn.Sequential(*layers))
    fg = ff.FusedGenerator.from_module(nn.Sequential(*layers[:64]).eval())
    assert fg(torch.randn(2, 2, 3, 3), impl="cpu").shape == (2, 2, 3, 3)

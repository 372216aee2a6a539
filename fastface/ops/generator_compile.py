"""The FusedGenerator compiler: walk a module's ConvTranspose2d chain, fold BatchNorm, verify.

compile_module(module) returns the plan (a list of reference.generator.FusedLayer); the runtime
(fastface/ops/generator.py) packs and runs it. verify_chain runs a probe through the module and the
plan, in float64, and raises when the module's forward does not follow its children.
"""
import copy

import torch
from torch import nn

from ..reference.generator import FusedLayer, generator_ref

# Layers per chain: the C++ kernel's limit (csrc/cpu/conv_transpose.cpp, conv_transpose_chain).
MAX_LAYERS = 64
_ACTIVATION_TYPES = ((nn.ReLU, "relu"), (nn.LeakyReLU, "leaky_relu"), (nn.Tanh, "tanh"),
                     (nn.Sigmoid, "sigmoid"))
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)
_LEAF_TYPES = (nn.ConvTranspose2d, nn.BatchNorm2d, nn.Unflatten, nn.Identity) + _DROPOUT_TYPES + \
    tuple(t for t, _ in _ACTIVATION_TYPES)
_SUPPORTED = ("ConvTranspose2d (groups=1, zeros padding), BatchNorm2d (eval mode, running stats), "
              "ReLU, LeakyReLU, Tanh, Sigmoid, Identity, Dropout (eval mode), a leading "
              "Unflatten to (C, H, W) and a leading PixelNorm (fastface.models.dcgan)")
# PixelNorm(z) = z / sqrt(mean(z^2) + eps) runs as sqrt(D) * z / |z| (normalize_input, sqrt(D) folded
# into the first weight): relative error ~ D eps / (2 |z|^2) (~eps / 2 for z ~ N(0, I)), below float32
# rounding for eps <= this
PIXEL_NORM_MAX_EPS = 1e-6


def _unsupported(name, module, why=None):
    head = repr(module).splitlines()[0]
    why = why or f"unsupported layer type; supported: {_SUPPORTED}"
    return ValueError(f"FusedGenerator: layer {name!r} ({head}): {why}")


def _leaves(module, name=""):
    """Yield (name, module) for the chain's layers in registration order, entering containers."""
    children = list(module.named_children())
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and not children:
        return
    if isinstance(module, _LEAF_TYPES) or not children:
        yield name, module
        return
    for cname, child in children:
        yield from _leaves(child, f"{name}.{cname}" if name else cname)


def _r3an_leaves(gen):
    """The chain of R³AN's generator (fastface.models.r3an.Generator): its forward applies ReLU
    after bn1..bn4 and Tanh after fconv5 functionally, so they are spelled out here."""
    from ..models.r3an import GENERATOR_LAYERS
    n = len(GENERATOR_LAYERS)
    out = []
    for i in range(1, n + 1):
        out.append((f"fconv{i}", getattr(gen, f"fconv{i}")))
        if i < n:
            out.append((f"bn{i}", getattr(gen, f"bn{i}")))
            out.append((f"relu{i} (functional)", nn.ReLU()))
    out.append(("tanh (functional)", nn.Tanh()))
    return out


def _fold_bn(bn):
    """Return (scale, shift) float64 with bn(y) = y * scale + shift per channel (eval mode)."""
    var = bn.running_var.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _is_pixel_norm(m):
    from ..models.dcgan import PixelNorm
    return isinstance(m, PixelNorm)


def _compile(leaves):
    """Return (layers, input_shape, normalize_input) for a list of (name, module); raise naming a bad layer."""
    layers, unflatten, cur, pixel_norm = [], None, None, None

    def finish():
        if cur is None:
            return
        post = cur["post_scale"], cur["post_shift"]
        layers.append(FusedLayer(
            weight=cur["w"].float().contiguous(),
            bias=None if cur["b"] is None else cur["b"].float().contiguous(),
            stride=cur["stride"], padding=cur["padding"], output_padding=cur["output_padding"],
            dilation=cur["dilation"], activation=cur["act"], slope=cur["slope"],
            post_scale=None if post[0] is None else post[0].float().contiguous(),
            post_shift=None if post[1] is None else post[1].float().contiguous(),
            name=cur["name"]))

    for name, m in leaves:
        if _is_pixel_norm(m):
            if cur is not None or layers or unflatten is not None or pixel_norm is not None:
                raise _unsupported(name, m, "PixelNorm is only supported as the first layer")
            if not 0 <= m.eps <= PIXEL_NORM_MAX_EPS:
                raise _unsupported(name, m, f"PixelNorm eps={m.eps!r} is not supported: the fused kernels "
                                   f"compute sqrt(D) z / |z|, which equals it only for eps <= {PIXEL_NORM_MAX_EPS}")
            pixel_norm = name
        elif isinstance(m, nn.Unflatten):
            size = tuple(m.unflattened_size)
            if cur is not None or layers or unflatten is not None:
                raise _unsupported(name, m, "Unflatten is only supported as the first layer")
            if m.dim not in (1, -1) or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
                raise _unsupported(name, m, "Unflatten must turn (B, D) into (B, C, H, W) (dim=1, 3 sizes)")
            if pixel_norm is not None and size[1:] != (1, 1):
                raise _unsupported(name, m, f"after PixelNorm, Unflatten must give a 1x1 plane (C, 1, 1) (PixelNorm "
                                   f"normalises the whole latent; the kernels normalise each pixel), got {size}")
            unflatten = size
        elif isinstance(m, nn.ConvTranspose2d):
            if m.groups != 1:
                raise _unsupported(name, m, f"groups={m.groups} is not supported (only groups=1)")
            if m.padding_mode != "zeros":
                raise _unsupported(name, m, f"padding_mode={m.padding_mode!r} is not supported")
            if not isinstance(m.padding, tuple):
                raise _unsupported(name, m, f"padding={m.padding!r} is not supported")
            for op, s, d in zip(m.output_padding, m.stride, m.dilation):
                if op >= max(s, d):
                    raise _unsupported(name, m, "output_padding must be smaller than stride or dilation")
            prev = layers[-1].out_channels if layers else None
            if cur is not None:
                prev = cur["w"].shape[1]
            elif unflatten is not None:
                prev = unflatten[0]
            if prev is not None and m.in_channels != prev:
                raise _unsupported(name, m, f"in_channels={m.in_channels} but the previous layer "
                                   f"gives {prev} channels")
            finish()
            w = m.weight.detach().double().clone()
            if pixel_norm is not None and not layers:   # PixelNorm = sqrt(D) * normalize: sqrt(D) into W
                w *= float(m.in_channels) ** 0.5
            cur = dict(name=name, w=w,
                       b=None if m.bias is None else m.bias.detach().double().clone(),
                       stride=tuple(m.stride), padding=tuple(m.padding),
                       output_padding=tuple(m.output_padding), dilation=tuple(m.dilation),
                       act="none", slope=0.01, post_scale=None, post_shift=None)
        elif isinstance(m, nn.BatchNorm2d):
            if cur is None:
                raise _unsupported(name, m, "BatchNorm2d before the first ConvTranspose2d")
            if m.training:
                raise _unsupported(name, m, "BatchNorm2d in training mode (call module.eval())")
            if m.running_mean is None or m.running_var is None:
                raise _unsupported(name, m, "BatchNorm2d without running statistics "
                                   "(track_running_stats=False uses batch statistics)")
            cout = cur["w"].shape[1]
            if m.num_features != cout:
                raise _unsupported(name, m, f"num_features={m.num_features} but the layer has "
                                   f"{cout} channels")
            scale, shift = _fold_bn(m)
            scale, shift = scale.to(cur["w"].device), shift.to(cur["w"].device)
            if cur["act"] == "none" and cur["post_scale"] is None:   # before the activation
                cur["w"] *= scale[None, :, None, None]
                cur["b"] = shift if cur["b"] is None else cur["b"] * scale + shift
            else:                                                     # after it: post-affine
                ps = torch.ones_like(scale) if cur["post_scale"] is None else cur["post_scale"]
                pt = torch.zeros_like(shift) if cur["post_shift"] is None else cur["post_shift"]
                cur["post_scale"], cur["post_shift"] = ps * scale, pt * scale + shift
        elif isinstance(m, tuple(t for t, _ in _ACTIVATION_TYPES)):
            if cur is None:
                raise _unsupported(name, m, "activation before the first ConvTranspose2d")
            if cur["act"] != "none" or cur["post_scale"] is not None:
                raise _unsupported(name, m, f"a second activation after {cur['name']!r} is not "
                                   "supported (one activation per ConvTranspose2d)")
            cur["act"] = next(a for t, a in _ACTIVATION_TYPES if isinstance(m, t))
            if isinstance(m, nn.LeakyReLU):
                cur["slope"] = float(m.negative_slope)
        elif isinstance(m, _DROPOUT_TYPES):
            if m.training:
                raise _unsupported(name, m, "Dropout in training mode (call module.eval())")
        elif isinstance(m, nn.Identity):
            pass
        else:
            raise _unsupported(name, m)
    finish()
    if not layers:
        raise ValueError("FusedGenerator: the module contains no ConvTranspose2d layer")
    return layers, unflatten, pixel_norm is not None


def compile_module(module):
    """Return (layers, input_shape (C, H, W) | None, normalize_input, plain) for `module`.

    plain: the module is made of nn.Sequential containers only (its forward follows its children).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    from ..models.r3an import Generator as R3ANGenerator
    r3an = isinstance(module, R3ANGenerator)
    leaves = _r3an_leaves(module) if r3an else list(_leaves(module))
    layers, unflatten, pixel_norm = _compile(leaves)
    normalize = r3an or pixel_norm
    if len(layers) > MAX_LAYERS:
        raise ValueError(f"FusedGenerator takes at most {MAX_LAYERS} ConvTranspose2d layers (the kernels' "
                         f"limit), the module has {len(layers)}")
    plain = all(isinstance(m, nn.Sequential) for m in module.modules()
                if not isinstance(m, _LEAF_TYPES) and len(list(m.children())))
    return layers, None if r3an else unflatten, normalize, plain


def verify_chain(fg, module):
    """Check module(probe) == plan(probe) for random probes; raise if the forward differs.

    Both run in float64 (the module on a copy): a float16 / bfloat16 module's own forward differs
    from the float32 plan by its rounding (~1e-3), which says nothing about the chain.
    """
    p = next(iter(module.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    reference = copy.deepcopy(module).to(torch.float64)
    layers = [L.to(device) for L in fg.layers]
    C = fg.in_channels
    # a 1x1 plane first; an 8x8 one for modules whose padding needs a larger input plane
    shapes = [(2, fg.input_shape[0] * fg.input_shape[1] * fg.input_shape[2])] \
        if fg.input_shape else [(2, C, 1, 1), (2, C)] + ([] if fg.normalize_input else [(2, C, 8, 8)])
    gen = torch.Generator().manual_seed(0)
    errors = []
    for shape in shapes:
        probe = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
        try:
            with torch.no_grad():
                want = reference(probe)
        except Exception as exc:  # the forward wants another input shape: try the next
            errors.append(f"{tuple(shape)}: {type(exc).__name__}: {exc}")
            continue
        with torch.no_grad():
            got = generator_ref(fg._input(probe), layers, normalize_input=fg.normalize_input,
                                dtype=torch.float64)
        if not isinstance(want, torch.Tensor) or want.shape != got.shape:
            raise ValueError("FusedGenerator: module's forward does not follow its children in "
                             f"registration order (output {getattr(want, 'shape', type(want))} "
                             f"vs the chain's {tuple(got.shape)})")
        err = (want - got).abs().max().item()
        scale = max(want.abs().max().item(), 1e-6)
        if not err <= 1e-4 * scale:   # the plan's weights are float32
            raise ValueError("FusedGenerator: module's forward does not follow its children in "
                             f"registration order (max difference {err:.3g} on a probe input; "
                             "functional layers in forward?); pass an nn.Sequential")
        return
    raise ValueError("FusedGenerator: could not run the module on a probe input to verify "
                     f"the compiled chain ({'; '.join(errors)}); pass verify=False to skip")

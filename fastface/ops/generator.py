"""FusedGenerator: an eval-mode ConvTranspose2d generator compiled into fused inference kernels.

    fg = fastface.FusedGenerator.from_module(generator.eval())
    images = fg(z)                        # z (B, D) or (B, D, 1, 1) / (B, C, H, W)

Compilation folds every BatchNorm2d into the neighbouring ConvTranspose2d (before the activation:
into its weight and bias; after it: into a per-channel post-affine), fuses bias and activation
into the convolution epilogue and packs the weights once per backend. A call then runs the
whole chain in one C++ call (CPU) or one CUDA launch sequence on the caller's stream; no Python
runs between layers. The pure-PyTorch twin (fastface/reference/generator.py) runs the same plan.
"""
import struct

import torch
from torch import nn

from .. import _backend as be
from ..reference.generator import ACTIVATIONS, FusedLayer, generator_ref

IMPLS = ("auto", "cpu", "cuda", "torch")
CUDA_PATHS = {"auto": 0, "chain": 1, "layers": 2}
_DESC_LEN = 22  # csrc/common/problem.h: kConvTDescLen and ConvTDescField
_ACTIVATION_TYPES = ((nn.ReLU, "relu"), (nn.LeakyReLU, "leaky_relu"), (nn.Tanh, "tanh"),
                     (nn.Sigmoid, "sigmoid"))
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)
_LEAF_TYPES = (nn.ConvTranspose2d, nn.BatchNorm2d, nn.Unflatten, nn.Identity) + _DROPOUT_TYPES + \
    tuple(t for t, _ in _ACTIVATION_TYPES)
_SUPPORTED = ("ConvTranspose2d (groups=1, zeros padding), BatchNorm2d (eval mode, running stats), "
              "ReLU, LeakyReLU, Tanh, Sigmoid, Identity, Dropout (eval mode) and a leading "
              "Unflatten to (C, H, W)")


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


def _compile(leaves):
    """Return (layers, input_shape) for a list of (name, module); raise naming a bad layer."""
    layers, unflatten, cur = [], None, None

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
        if isinstance(m, nn.Unflatten):
            size = tuple(m.unflattened_size)
            if cur is not None or layers or unflatten is not None:
                raise _unsupported(name, m, "Unflatten is only supported as the first layer")
            if m.dim not in (1, -1) or len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
                raise _unsupported(name, m, "Unflatten must turn (B, D) into (B, C, H, W) (dim=1, 3 sizes)")
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
            cur = dict(name=name, w=m.weight.detach().double().clone(),
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
    return layers, unflatten


def _slope_bits(slope):
    return struct.unpack("<q", struct.pack("<d", float(slope)))[0]


class _DeviceState:
    """The plan's tensors on one device, backend weight packings and descriptors (made lazily)."""

    def __init__(self, layers):
        self.layers = layers
        self.packed = {}   # impl -> list of weight tensors in the backend's layout
        self.descs = {}    # (impl, H, W) -> (int64 descriptor tensor (L, 22), output shape)


class FusedGenerator:
    """A compiled ConvTranspose2d chain: `fg(z)` returns the images (B, C, H, W).

    Build one with `FusedGenerator.from_module(module)`. Computes in float32 (CUDA: float32,
    float16 or bfloat16 inputs and outputs, float32 accumulation) and returns z's dtype.
    `cuda_path` ("auto" | "chain" | "layers") picks the CUDA kernels: one launch per chain with
    activations in shared memory (small batches), or one implicit-GEMM launch per layer.
    """

    def __init__(self, layers, *, input_shape=None, normalize_input=False):
        if not layers:
            raise ValueError("FusedGenerator needs at least one layer")
        for a, b in zip(layers, layers[1:]):
            if b.in_channels != a.out_channels:
                raise ValueError(f"layer {b.name!r} takes {b.in_channels} channels but "
                                 f"{a.name!r} gives {a.out_channels}")
        for L in layers:
            if L.activation not in ACTIVATIONS:
                raise ValueError(f"layer {L.name!r}: activation must be one of {ACTIVATIONS}")
        self.layers = list(layers)
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.normalize_input = bool(normalize_input)
        self.cuda_path = "auto"
        self._states = {}

    # ---- construction ----
    @classmethod
    def from_module(cls, module, *, verify="auto"):
        """Return a FusedGenerator computing `module.eval()(z)`.

        module: an nn.Sequential (nested ones too), a module whose children in registration
        order form the chain, or fastface.models.r3an.Generator. Supported layers:
        ConvTranspose2d, BatchNorm2d, ReLU / LeakyReLU / Tanh / Sigmoid, Identity, Dropout (eval)
        and a leading Unflatten; anything else raises a ValueError naming the layer.
        verify: "auto" (run a probe input through `module` and the plan when the module is not
        a plain Sequential, whose forward could differ from its children), True or False.
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if verify not in ("auto", True, False):
            raise ValueError(f"verify must be 'auto', True or False, got {verify!r}")
        from ..models.r3an import Generator as R3ANGenerator
        normalize = False
        if isinstance(module, R3ANGenerator):
            leaves, normalize = _r3an_leaves(module), True
        else:
            leaves = list(_leaves(module))
        layers, unflatten = _compile(leaves)
        if normalize:
            unflatten = None
        fg = cls(layers, input_shape=unflatten, normalize_input=normalize)
        plain = all(isinstance(m, nn.Sequential) for m in module.modules()
                    if not isinstance(m, _LEAF_TYPES) and len(list(m.children())))
        if verify is True or (verify == "auto" and not plain):
            fg._verify(module)
        return fg

    def _verify(self, module):
        """Check module(probe) == plan(probe) for a random probe; raise if the forward differs."""
        p = next(iter(module.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        C = self.layers[0].in_channels
        shapes = [(2, self.input_shape[0] * self.input_shape[1] * self.input_shape[2])] \
            if self.input_shape else [(2, C, 1, 1), (2, C)]
        gen = torch.Generator().manual_seed(0)
        errors = []
        for shape in shapes:
            probe = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
            try:
                with torch.no_grad():
                    want = module(probe)
            except Exception as exc:  # the forward wants another input shape: try the next
                errors.append(f"{tuple(shape)}: {type(exc).__name__}: {exc}")
                continue
            with torch.no_grad():
                got = self(probe, impl="torch")
            if not isinstance(want, torch.Tensor) or want.shape != got.shape:
                raise ValueError("FusedGenerator: module's forward does not follow its children in "
                                 f"registration order (output {getattr(want, 'shape', type(want))} "
                                 f"vs the chain's {tuple(got.shape)})")
            err = (want.double() - got.double()).abs().max().item()
            scale = max(want.double().abs().max().item(), 1e-6)
            if not err <= 1e-3 * scale:
                raise ValueError("FusedGenerator: module's forward does not follow its children in "
                                 f"registration order (max difference {err:.3g} on a probe input; "
                                 "functional layers in forward?); pass an nn.Sequential")
            return
        raise ValueError("FusedGenerator: could not run the module on a probe input to verify "
                         f"the compiled chain ({'; '.join(errors)}); pass verify=False to skip")

    # ---- shapes ----
    @property
    def in_channels(self):
        return self.layers[0].in_channels

    @property
    def out_channels(self):
        return self.layers[-1].out_channels

    def output_shape(self, h=1, w=1):
        """Return (C, H, W) of the output for an input plane of h x w (raise if it vanishes)."""
        for L in self.layers:
            h2, w2 = L.output_size(h, w)
            if h2 <= 0 or w2 <= 0:
                raise ValueError(f"z's plane {h}x{w} is too small for layer {L.name!r} "
                                 f"(output {h2}x{w2})")
            h, w = h2, w2
        return self.out_channels, h, w

    def __repr__(self):
        parts = [f"{L.name}: {L.in_channels}->{L.out_channels} k{tuple(L.weight.shape[2:])} "
                 f"s{L.stride} p{L.padding} op{L.output_padding} +{L.activation}" for L in self.layers]
        return f"FusedGenerator({'; '.join(parts)})"

    # ---- inputs ----
    def _input(self, z):
        """Return z as (B, C, H, W) (a view where possible), validated."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"z must be a floating-point tensor (float32, float16, bfloat16 or "
                            f"float64), got {z.dtype}")
        C = self.in_channels
        if self.input_shape is not None:
            c, h, w = self.input_shape
            if z.dim() == 2 and z.shape[1] == c * h * w:
                return z.reshape(z.shape[0], c, h, w)
            if z.dim() == 4 and tuple(z.shape[1:]) == self.input_shape:
                return z
            raise ValueError(f"z must have shape (B, {c * h * w}) or (B, {c}, {h}, {w}), "
                             f"got {tuple(z.shape)}")
        if z.dim() == 2 and z.shape[1] == C:
            return z[:, :, None, None]
        if z.dim() == 4 and z.shape[1] == C and not self.normalize_input:
            return z
        if z.dim() == 4 and z.shape[1] == C and z.shape[2:] == (1, 1):
            return z
        plane = ", 1, 1" if self.normalize_input else ", H, W"
        raise ValueError(f"z must have shape (B, {C}) or (B, {C}{plane}), got {tuple(z.shape)}")

    # ---- execution ----
    def __call__(self, z, *, impl="auto"):
        """Return the generated images (B, C, H, W) for z (B, D) / (B, D, 1, 1) / (B, C, H, W)."""
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        x = self._input(z)
        B, _, H, W = x.shape
        C, Ho, Wo = self.output_shape(H, W)
        impl = be.resolve_impl(impl, x.device)
        if impl == "triton":  # auto on a GPU that prefers triton elsewhere: no triton kernel here
            impl = "cuda" if be.cuda_usable() else "torch"
        if impl == "torch" or (torch.is_grad_enabled() and z.requires_grad):
            return generator_ref(x, self._state(x.device).layers,
                                 normalize_input=self.normalize_input).to(z.dtype)
        if B == 0:
            return torch.empty(0, C, Ho, Wo, dtype=z.dtype, device=z.device)
        if self.cuda_path not in CUDA_PATHS:
            raise ValueError(f"cuda_path must be one of {tuple(CUDA_PATHS)}, got {self.cuda_path!r}")
        st = self._state(x.device)
        desc = self._desc(st, impl, H, W)
        if impl == "cpu":
            xc = x.to(torch.float32).contiguous()  # kept alive until the kernel returns
            out = torch.empty(B, C, Ho, Wo, dtype=torch.float32)
            be._C.conv_transpose_chain_cpu(xc.data_ptr(), out.data_ptr(), B, desc.data_ptr(),
                                           len(self.layers), _DESC_LEN, self.normalize_input,
                                           0, be.threads())
            return out if z.dtype == torch.float32 else out.to(z.dtype)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        xc = x.to(dtype).contiguous()
        out = torch.empty(B, C, Ho, Wo, dtype=dtype, device=x.device)
        code, path = be.DTYPE_CODES[dtype], CUDA_PATHS[self.cuda_path]
        with torch.cuda.device(x.device):
            nbytes = be._C.conv_transpose_workspace_cuda(B, desc.data_ptr(), len(self.layers),
                                                         _DESC_LEN, self.normalize_input, code, path)
            ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=x.device)
            be._C.conv_transpose_chain_cuda(xc.data_ptr(), out.data_ptr(), B, desc.data_ptr(),
                                            len(self.layers), _DESC_LEN, self.normalize_input, code,
                                            path, ws.data_ptr(), nbytes, be.stream_of(x.device))
        return out if z.dtype == dtype else out.to(z.dtype)

    def _state(self, device):
        key = (device.type, device.index)
        st = self._states.get(key)
        if st is None:
            st = _DeviceState([L.to(device) for L in self.layers])
            self._states[key] = st
        return st

    def _desc(self, st, impl, H, W):
        """Return the int64 layer descriptors (host tensor) for impl and an H x W input plane."""
        key = (impl, H, W)
        d = st.descs.get(key)
        if d is not None:
            return d
        if impl not in st.packed:
            if impl == "cpu":
                packed = []
                for L in st.layers:
                    cin, cout, kh, kw = L.weight.shape
                    p = torch.empty(be._C.conv_transpose_packed_size_cpu(cin, cout, kh, kw))
                    be._C.conv_transpose_pack_cpu(L.weight.data_ptr(), p.data_ptr(), cin, cout, kh, kw)
                    packed.append(p)
            else:  # CUDA: (Cin, kh, kw, Cout)
                packed = [L.weight.permute(0, 2, 3, 1).contiguous() for L in st.layers]
            st.packed[impl] = packed
        rows, h, w = [], H, W
        for L, wp in zip(st.layers, st.packed[impl]):
            ho, wo = L.output_size(h, w)
            kh, kw = L.weight.shape[2:]
            rows.append([wp.data_ptr(), be.ptr(L.bias), be.ptr(L.post_scale), be.ptr(L.post_shift),
                         L.in_channels, L.out_channels, h, w, ho, wo, kh, kw, *L.stride, *L.padding,
                         *L.dilation, ACTIVATIONS.index(L.activation), _slope_bits(L.slope),
                         *L.output_padding])
            h, w = ho, wo
        d = torch.tensor(rows, dtype=torch.int64)
        assert d.shape[1] == _DESC_LEN
        st.descs[key] = d
        return d

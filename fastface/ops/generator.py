"""FusedGenerator: an eval-mode ConvTranspose2d generator compiled into fused inference kernels.

    fg = fastface.FusedGenerator.from_module(generator.eval())
    images = fg(z)                        # z (B, D) or (B, D, 1, 1) / (B, C, H, W)

This file is the runtime. fastface/ops/generator_compile.py turns a module into the plan: it folds
every BatchNorm2d into the neighbouring ConvTranspose2d (before the activation: into its weight
and bias; after it: into a per-channel post-affine) and verifies the chain. The runtime packs the
weights once per backend and fuses bias and activation into the convolution epilogue; a call runs
the whole chain in one C++ call (CPU) or one CUDA launch sequence on the caller's stream; no
Python runs between layers. The pure-PyTorch twin (fastface/reference/generator.py) runs the same plan.
"""
import struct

import torch

from .. import _backend as be
from ..reference.generator import ACTIVATIONS, generator_ref
from .generator_compile import MAX_LAYERS, compile_module, verify_chain

IMPLS = ("auto", "cpu", "cuda", "torch")
CUDA_PATHS = {"auto": 0, "chain": 1, "layers": 2}
_DESC_LEN = 22  # csrc/common/convt_problem.h: kConvTDescLen and ConvTDescField


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
        if len(layers) > MAX_LAYERS:
            raise ValueError(f"FusedGenerator takes at most {MAX_LAYERS} ConvTranspose2d layers (the "
                             f"kernels' limit), got {len(layers)}")
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
        ConvTranspose2d, BatchNorm2d, ReLU / LeakyReLU / Tanh / Sigmoid, Identity, Dropout (eval),
        a leading Unflatten and a leading PixelNorm (fastface.models.dcgan: the kernels normalise z and
        sqrt(D) is folded into the first weight); anything else raises a ValueError naming the layer.
        verify: "auto" (run a probe input through `module` and the plan when the module is not
        a plain Sequential, whose forward could differ from its children), True or False.
        """
        if not (isinstance(verify, bool) or (isinstance(verify, str) and verify == "auto")):   # not 1 or 0
            raise ValueError(f"verify must be 'auto', True or False, got {verify!r}")
        layers, unflatten, normalize, plain = compile_module(module)
        fg = cls(layers, input_shape=unflatten, normalize_input=normalize)
        if verify is True or (verify == "auto" and not plain):
            verify_chain(fg, module)
        return fg

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
        x = self._as_planes(z)
        if x.is_meta:
            raise ValueError("z must hold data (a CPU or CUDA tensor), got a tensor on the meta device")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"z's plane must be at least 1x1, got z of shape {tuple(z.shape)}")
        return x

    def _as_planes(self, z):
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
            impl = "cuda" if x.is_cuda and be.cuda_usable(x.device) else "torch"
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

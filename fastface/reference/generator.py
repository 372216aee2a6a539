"""Pure-PyTorch twin of FusedGenerator's fused plan: folded weights + F.conv_transpose2d + activation.

It is the oracle of the C++ and CUDA kernels (same folded float32 parameters, same order of
operations per layer) and the fallback implementation (impl="torch").
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .precision import in_full_fp32

# Epilogue activations, in the order of the kernels' codes (csrc/common/convt_problem.h, Activation).
ACTIVATIONS = ("none", "relu", "leaky_relu", "tanh", "sigmoid")


@dataclass
class FusedLayer:
    """One fused layer: y = post_scale * act(conv_transpose2d(x, weight) + bias) + post_shift.

    BatchNorm layers before the activation are folded into weight and bias; BatchNorm layers after
    it become post_scale / post_shift. Tensors are float32, on one device.
    """
    weight: torch.Tensor                   # (Cin, Cout, kh, kw)
    bias: Optional[torch.Tensor]           # (Cout,) or None
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    output_padding: Tuple[int, int]
    dilation: Tuple[int, int]
    activation: str = "none"               # one of ACTIVATIONS
    slope: float = 0.01                    # LeakyReLU negative slope
    post_scale: Optional[torch.Tensor] = None  # (Cout,) or None
    post_shift: Optional[torch.Tensor] = None  # (Cout,) or None
    name: str = ""                         # the ConvTranspose2d's name in the source module

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1]

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        """Return (hout, wout) for an input plane of h x w."""
        kh, kw = self.weight.shape[2:]
        return tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in zip(
            (h, w), self.stride, self.padding, self.dilation, (kh, kw), self.output_padding))

    def to(self, device) -> "FusedLayer":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return FusedLayer(move(self.weight), move(self.bias), self.stride, self.padding,
                          self.output_padding, self.dilation, self.activation, self.slope,
                          move(self.post_scale), move(self.post_shift), self.name)


def activate_ref(h, activation, slope=0.01):
    """Return act(h) for one of ACTIVATIONS."""
    if activation == "relu":
        return torch.relu(h)
    if activation == "leaky_relu":
        return F.leaky_relu(h, slope)
    if activation == "tanh":
        return torch.tanh(h)
    if activation == "sigmoid":
        return torch.sigmoid(h)
    if activation == "none":
        return h
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


@in_full_fp32
def generator_ref(x, layers, *, normalize_input=False, dtype=torch.float32):
    """Return the chain's output (B, C', H', W') for x (B, C, H, W), computed in dtype (float32;
    float64 to verify a compiled module).

    normalize_input first divides every pixel's channel vector by max(its L2 norm, 1e-12)
    (F.normalize over dim 1, as R³AN's generator does with its input feature).
    """
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    h = x.to(dtype)
    if normalize_input:
        h = F.normalize(h, dim=1)
    for L in layers:
        h = F.conv_transpose2d(h, cast(L.weight), cast(L.bias), L.stride, L.padding,
                               L.output_padding, 1, L.dilation)
        h = activate_ref(h, L.activation, L.slope)
        if L.post_scale is not None:
            h = h * cast(L.post_scale)[:, None, None]
        if L.post_shift is not None:
            h = h + cast(L.post_shift)[:, None, None]
    return h

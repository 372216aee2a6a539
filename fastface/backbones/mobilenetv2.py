"""MobileNetV2 face backbone (Sandler et al. 2018) with a configurable expansion factor T.

R³AN's prior models Mb-6, Mb-10 and Mb-16 are MobileNetV2 with T = 6, 10, 16 in every bottleneck
after the first. forward(x) returns (embedding (B, D), feature map (B, C, h, w)) like ArcFaceResNet:
the map after the last 1x1 conv, the embedding from flatten -> FC -> BN (the ArcFace head style).
activation="relu6" is the paper's network; "prelu" (MobileFaceNet's choice) trains reliably from
scratch with ArcFace at lr 0.1, where ReLU6 units can saturate and the network collapse to a
constant output (seen on SynthFaces at 32 px).
"""
from torch import nn

# (expansion or None = "T", output channels, repeats, first stride) of the ImageNet network
MOBILENETV2_STAGES = ((1, 16, 1, 1), (None, 24, 2, 2), (None, 32, 3, 2), (None, 64, 4, 2),
                      (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


def _scaled(channels, width_mult, divisor=8):
    """Channels times width_mult, rounded to a multiple of divisor (never below 90 % or divisor)."""
    c = max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)
    return c + divisor if c < 0.9 * channels * width_mult else c


ACTIVATIONS = {"relu6": lambda c: nn.ReLU6(inplace=True), "relu": lambda c: nn.ReLU(inplace=True),
               "prelu": lambda c: nn.PReLU(c)}


def conv_bn_act(cin, cout, kernel, stride=1, groups=1, act="relu6"):
    """Conv -> BN (-> activation; act=None for the linear projection)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, ACTIVATIONS[act](cout)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand (x expansion) -> 3x3 depthwise (stride) -> 1x1 linear
    projection; identity shortcut when stride is 1 and cin == cout."""

    def __init__(self, cin, cout, stride, expansion, act="relu6"):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expansion))
        layers = [conv_bn_act(cin, hidden, 1, act=act)] if expansion != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=act),
                   conv_bn_act(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):  # x (B, cin, H, W) -> (B, cout, H / stride, W / stride)
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Face(nn.Module):
    """MobileNetV2 for aligned faces: stem conv (stem_stride) -> 7 bottleneck stages (total
    stride 16) -> 1x1 conv to last_channels -> flatten -> FC -> BN embedding.

    input_size must be a multiple of 16 * stem_stride; the map side is input_size / (16 * stem_stride).
    """

    def __init__(self, in_channels=3, expansion=6, width_mult=1.0, embedding_dim=256, input_size=112,
                 stem_stride=2, last_channels=1280, dropout=0.2, activation="relu6"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(expansion, (int, float)) or isinstance(expansion, bool) or expansion < 1:
            raise ValueError(f"expansion must be a number >= 1, got {expansion!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        stride = 16 * stem_stride
        if input_size % stride:
            raise ValueError(f"input_size must be a multiple of {stride}, got {input_size}")
        self.in_channels, self.input_size, self.expansion = in_channels, input_size, expansion
        cin = _scaled(32, width_mult)
        self.stem = conv_bn_act(in_channels, cin, 3, stem_stride, act=activation)
        blocks = []
        for t, c, n, s in MOBILENETV2_STAGES:
            cout = _scaled(c, width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, expansion if t is None else t,
                                               activation))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.channels = _scaled(last_channels, width_mult)  # scaled down too: small CPU priors
        self.head_conv = conv_bn_act(cin, self.channels, 1, act=activation)
        side = input_size // stride
        self.map_size = (side, side)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.channels * side * side, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x):  # x (B, in_channels, S, S)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, {self.in_channels}, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        fmap = self.head_conv(self.blocks(self.stem(x)))            # (B, C, S/16/stem, S/16/stem)
        emb = self.bn(self.fc(self.dropout(fmap).flatten(1)))        # (B, D)
        return emb, fmap


def mobilenetv2_face(expansion=6, **kw):
    """Return a MobileNetV2 face backbone with expansion factor T (Mb-6, Mb-10, Mb-16 in R³AN)."""
    return MobileNetV2Face(expansion=expansion, **kw)

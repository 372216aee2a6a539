"""Bottleneck ResNet face backbones (He et al. 2016): ResNet-50 / ResNet-101 layouts at any width.

forward(x) returns (embedding (B, D), feature map (B, C, h, w)) like ArcFaceResNet. width=64 is
the ImageNet network (2048-channel map); small widths give CPU-sized prior models.
"""
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride) -> 1x1 expand (x4), BN after each, ReLU, projection shortcut."""
    expansion = 4

    def __init__(self, cin, planes, stride=1):
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):  # x (B, cin, H, W) -> (B, 4 * planes, H / stride, W / stride)
        return self.relu(self.body(x) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """Stem conv3x3 (stem_stride) -> 4 bottleneck stages (strides 1, 2, 2, 2) -> BN -> flatten -> FC -> BN.

    input_size must be a multiple of 8 * stem_stride; the map side is input_size / (8 * stem_stride).
    """

    def __init__(self, layers=(3, 4, 6, 3), in_channels=3, width=64, embedding_dim=256, input_size=112,
                 stem_stride=2, dropout=0.2):
        super().__init__()
        stride = 8 * stem_stride
        if input_size % stride:
            raise ValueError(f"input_size must be a multiple of {stride}, got {input_size}")
        self.in_channels, self.input_size = in_channels, input_size
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            stage = [Bottleneck(cin, planes, 1 if i == 0 else 2)]
            cin = planes * Bottleneck.expansion
            stage += [Bottleneck(cin, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.bn_map = nn.BatchNorm2d(cin)
        side = input_size // stride
        self.map_size = (side, side)
        self.channels = cin
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin * side * side, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.embedding_dim = embedding_dim

    def forward(self, x):  # x (B, in_channels, S, S)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, {self.in_channels}, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        fmap = self.bn_map(self.stages(self.stem(x)))            # (B, C, S/8/stem, S/8/stem)
        emb = self.bn(self.fc(self.dropout(fmap).flatten(1)))    # (B, D)
        return emb, fmap


def resnet50_face(**kw):
    """Return a ResNet-50 face backbone (bottleneck layers 3, 4, 6, 3)."""
    return BottleneckResNet((3, 4, 6, 3), **kw)


def resnet101_face(**kw):
    """Return a ResNet-101 face backbone (bottleneck layers 3, 4, 23, 3)."""
    return BottleneckResNet((3, 4, 23, 3), **kw)

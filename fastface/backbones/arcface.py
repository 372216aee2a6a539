"""ArcFace ResNet-18 as in the official DeepFace-EMD code (IR blocks, 128x128 input, 512x8x8 patches).

forward(x) returns (embedding (B, D), feature map (B, C, 8, 8)): the map after bn4 gives the
8x8 patch embeddings, fc5 + bn5 the image embedding (fc5: C*8*8 -> D).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class SEBlock(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, max(1, channels // reduction)), nn.PReLU(),
                                nn.Linear(max(1, channels // reduction), channels), nn.Sigmoid())

    def forward(self, x):  # x (B, C, H, W)
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class IRBlock(nn.Module):
    """bn -> conv3x3 -> bn -> prelu -> conv3x3(stride) -> bn (-> SE) + shortcut -> prelu."""

    def __init__(self, cin, cout, stride=1, use_se=False):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SEBlock(cout) if use_se else nn.Identity()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.se(self.bn2(self.conv2(out)))
        return self.prelu(out + self.shortcut(x))


class ArcFaceResNet(nn.Module):
    """IR ResNet for 128x128 faces. width=64 is the paper's network (512-channel 8x8 map)."""

    def __init__(self, layers=(2, 2, 2, 2), in_channels=1, width=64, embedding_dim=512,
                 use_se=False, input_size=128, dropout=0.5, stem_pool=True):
        super().__init__()
        stride = 16 if stem_pool else 8  # stem_pool=False: 64x64 input -> the same 8x8 map
        if input_size % stride:
            raise ValueError(f"input_size must be a multiple of {stride}, got {input_size}")
        chans = [width, 2 * width, 4 * width, 8 * width]
        self.in_channels, self.input_size = in_channels, input_size
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2) if stem_pool else nn.Identity()
        blocks, cin = [], width
        for i, (c, n) in enumerate(zip(chans, layers)):
            stage = [IRBlock(cin, c, stride=1 if i == 0 else 2, use_se=use_se)]
            stage += [IRBlock(c, c, use_se=use_se) for _ in range(n - 1)]
            blocks.append(nn.Sequential(*stage))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = blocks
        self.bn4 = nn.BatchNorm2d(chans[-1])
        self.dropout = nn.Dropout(dropout)
        side = input_size // stride
        self.map_size = (side, side)
        self.fc5 = nn.Linear(chans[-1] * side * side, embedding_dim)
        self.bn5 = nn.BatchNorm1d(embedding_dim)
        self.channels = chans[-1]
        self.embedding_dim = embedding_dim

    def forward(self, x):  # x (B, in_channels, S, S)
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.input_size:
            raise ValueError(f"x must be (B, {self.in_channels}, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        fmap = self.bn4(self.layer4(self.layer3(self.layer2(self.layer1(x)))))  # (B, C, S/16, S/16) or S/8
        emb = self.bn5(self.fc5(self.dropout(fmap).flatten(1)))                 # (B, D)
        return emb, fmap


def arcface_resnet18(in_channels=1, width=64, **kw):
    """Return DeepFace-EMD's ArcFace ResNet-18; width=16 is the reduced CPU variant (128x8x8 map)."""
    return ArcFaceResNet((2, 2, 2, 2), in_channels=in_channels, width=width, **kw)


class ArcMarginHead(nn.Module):
    """ArcFace additive angular margin: logits s*cos(theta + m) for the true class, s*cos(theta) else."""

    def __init__(self, embedding_dim, n_classes, s=64.0, m=0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.s = s
        self.set_margin(m)

    def set_margin(self, m):
        """Change the margin m (training schedules ramp it up from 0)."""
        self.m = float(m)
        self.cos_m, self.sin_m = math.cos(self.m), math.sin(self.m)
        self.th, self.mm = math.cos(math.pi - self.m), math.sin(math.pi - self.m) * self.m

    def forward(self, emb, labels=None):  # emb (B, D), labels (B,) -> logits (B, n_classes)
        cosine = F.linear(F.normalize(emb), F.normalize(self.weight))
        if labels is None:
            return self.s * cosine
        sine = torch.sqrt((1.0 - cosine.pow(2)).clamp(0, 1))
        phi = cosine * self.cos_m - sine * self.sin_m
        # past theta = pi - m, cos(theta + m) is not monotone: use the insightface linear fallback
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)

"""The GAN-inversion encoder (GAN-inversion paper): a ResNet-18 and three fully connected layers
(2048, 1024, latent_dim) mapping a face to the latent z that the generator turns back into it.

    E: images (B, C, S, S) in [-1, 1] (the generator's range) -> ResNet (stem conv 7x7/2, max-pool 3/2,
       4 stages of basic blocks, global average pool) -> FC 2048 -> ReLU -> FC 1024 -> ReLU -> FC latent_dim
       -> z (B, latent_dim)

arch "resnet18" is the paper's network, "resnet34" the public code's. The config records the generator's
latent_dim, image_size and channels, so an encoder is only ever paired with a generator it fits
(check_pair). Built from torch.nn alone (no torchvision, no downloaded weights).
"""
from dataclasses import dataclass

import torch
from torch import nn

from .._arch import ArchConfig

ARCHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@dataclass
class InversionConfig(ArchConfig):
    """The encoder's architecture and the generator it inverts (what model.pt records, kind "inversion")."""
    arch: str = "resnet18"            # resnet18 (the paper) or resnet34 (the public code)
    width: int = 64                   # channels of the first stage (doubling per stage); 64 = ResNet-18
    fc: tuple = (2048, 1024)          # hidden fully connected layers before the latent layer
    latent_dim: int = 512             # the generator's
    image_size: int = 64              # the generator's
    channels: int = 3                 # the generator's

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        for name in ("width", "latent_dim", "image_size", "channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.fc = tuple(self.fc)
        if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in self.fc):
            raise ValueError(f"fc must be positive ints (hidden layer widths), got {self.fc!r}")

    def to_dict(self):
        d = super().to_dict()
        d["fc"] = list(self.fc)
        return d


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):  # x (B, cin, H, W)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class InversionEncoder(nn.Module):
    """images (B, channels, image_size, image_size) in [-1, 1] -> latents z (B, latent_dim); see the module doc."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        cfg = cfg if isinstance(cfg, InversionConfig) else InversionConfig(**{**(cfg or {}), **kw})
        self.cfg = cfg
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.channels, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], w
        for i, n in enumerate(ARCHS[cfg.arch]):
            cout = w * 2 ** i
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, 2 if i and b == 0 else 1)
                                          for b in range(n)]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        head, d = [], cin
        for h in cfg.fc:
            head += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        head.append(nn.Linear(d, cfg.latent_dim))
        self.head = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def latent_dim(self):
        return self.cfg.latent_dim

    def forward(self, images):  # images (B, C, S, S) in [-1, 1]
        x = self.stages(self.stem(images))
        return self.head(x.mean((2, 3)))


def check_pair(encoder, generator, encoder_name="encoder", generator_name="generator"):
    """Raise ValueError unless the encoder inverts this generator: same latent_dim, image_size and channels."""
    e, g = encoder.cfg, generator.cfg
    for field in ("latent_dim", "image_size", "channels"):
        if getattr(e, field) != getattr(g, field):
            raise ValueError(f"{encoder_name} and {generator_name} do not fit: the encoder has {field}="
                             f"{getattr(e, field)}, the generator {field}={getattr(g, field)}")


def build_inversion_encoder(config):
    """The InversionEncoder an InversionConfig (or its dict) describes (fastface.load's builder for kind
    "inversion")."""
    return InversionEncoder(config if isinstance(config, InversionConfig) else InversionConfig.from_dict(config))


__all__ = ["InversionConfig", "InversionEncoder", "BasicBlock", "ARCHS", "check_pair", "build_inversion_encoder"]

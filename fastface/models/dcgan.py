"""The face generator fastface inverts (GAN-inversion paper; it inverts a pretrained 128x128 ProGAN, which
cannot be downloaded here, so fastface trains its own): a DCGAN-style ConvTranspose2d generator with
ProGAN's pixel-norm on z, and a convolutional discriminator.

    G: z (B, latent_dim) ~ N(0, I) -> PixelNorm -> 1x1 -> ConvT 4x4 -> [ConvT stride 2, BN, ReLU] ... -> Tanh
       -> images (B, channels, S, S) in [-1, 1]
    D: images -> [Conv stride 2, LeakyReLU 0.2] ... -> 4x4 -> Conv 4x4 -> one logit (B,)
       (optionally spectrally normalised convolutions: cfg.spectral_norm)

Pixel-norm makes G(c z) = G(z) for every c > 0: latents are compared on the unit sphere (unit_latent).
Generator is a plain nn.Sequential, so FusedGenerator.from_module compiles it for inference.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .._arch import ArchConfig
from .._checks import check_image_batch


@dataclass
class GANConfig(ArchConfig):
    """The architecture of a generator / discriminator pair (what model.pt records for the generator)."""
    latent_dim: int = 512
    image_size: int = 64              # a power of two >= 8 (the paper's ProGAN: 128)
    channels: int = 3
    width: int = 64                   # channels before the last layer; doubling towards the 4x4 plane ...
    max_width: int = 512              # ... up to this
    d_width: int = 64                 # discriminator: channels of its first layer (doubling, up to max_width)
    spectral_norm: bool = False       # discriminator: spectral normalisation of every conv (Miyato et al. 2018)

    def __post_init__(self):
        for name in ("latent_dim", "image_size", "channels", "width", "max_width", "d_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.spectral_norm, bool):
            raise ValueError(f"spectral_norm must be a bool, got {self.spectral_norm!r}")
        s = self.image_size
        if s < 8 or s & (s - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {s}")

    @property
    def n_up(self):
        """Stride-2 layers after the first 4x4 one."""
        return (self.image_size // 4).bit_length() - 1



class PixelNorm(nn.Module):
    """ProGAN's pixel-wise normalisation of z: z / sqrt(mean(z^2) + eps) over the latent channels."""

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, z):  # z (B, D) or (B, D, H, W)
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + self.eps)


def unit_latent(z):
    """z / |z| (B, D): where the generator's pixel-norm makes latents comparable."""
    return torch.nn.functional.normalize(z.flatten(1), dim=1)


def _widths(cfg, n):
    """Output channels of the n generator layers before the image layer, widest first."""
    return [min(cfg.max_width, cfg.width * 2 ** (n - 1 - i)) for i in range(n)]


class Generator(nn.Sequential):
    """z (B, latent_dim) -> images (B, channels, image_size, image_size) in [-1, 1]; see the module doc."""

    def __init__(self, cfg=None, **kw):
        cfg = cfg if isinstance(cfg, GANConfig) else GANConfig(**{**(cfg or {}), **kw})
        widths = _widths(cfg, cfg.n_up)           # 4x4 plane: widths[0]; the last stride-2 layer gives the image
        layers = [PixelNorm(), nn.Unflatten(1, (cfg.latent_dim, 1, 1)),
                  nn.ConvTranspose2d(cfg.latent_dim, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]),
                  nn.ReLU(inplace=True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.channels, 4, 2, 1), nn.Tanh()]
        super().__init__(*layers)
        self.cfg = cfg
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    @property
    def latent_dim(self):
        return self.cfg.latent_dim

    def sample_latents(self, n, generator=None, device=None):
        """n latents ~ N(0, I) (n, latent_dim)."""
        return torch.randn(n, self.cfg.latent_dim, generator=generator,
                           device=device or next(self.parameters()).device)


class Discriminator(nn.Module):
    """images (B, channels, S, S) in [-1, 1] -> logits (B,): real > 0 > generated."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        cfg = cfg if isinstance(cfg, GANConfig) else GANConfig(**{**(cfg or {}), **kw})
        self.cfg = cfg
        layers, cin = [], cfg.channels
        for i in range(cfg.n_up):                   # S -> 4
            cout = min(cfg.max_width, cfg.d_width * 2 ** i)
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, 1, 4, 1, 0)
        if cfg.spectral_norm:   # W / sigma_max(W), sigma by one power iteration per training forward
            for m in [m for m in self.modules() if isinstance(m, nn.Conv2d)]:
                nn.utils.parametrizations.spectral_norm(m)

    def forward(self, images):  # images (B, C, S, S)
        return self.head(self.features(images)).flatten()


def check_images(name, images, cfg):
    """Raise unless images is a float (B, channels, image_size, image_size) tensor for this GAN."""
    check_image_batch(name, images, cfg.channels, cfg.image_size, "this generator")


def build_generator(config):
    """The Generator a GANConfig (or its dict) describes (fastface.load's builder for kind "gan")."""
    return Generator(config if isinstance(config, GANConfig) else GANConfig.from_dict(config))


__all__ = ["GANConfig", "PixelNorm", "Generator", "Discriminator", "unit_latent", "check_images", "build_generator"]

"""D²AE, the identity Distilling and Dispelling Autoencoder (Liu et al., "Exploring Disentangled Feature
Representation Beyond Face Identification", CVPR 2018).

    images (B, C, S, S) in [0, 1]
      -> E_enc: ResNet-style encoder (stem conv 3x3, stages of basic blocks halving the side down to 8x8)
      -> B_T: 3 conv 3x3 + global average pool + FC -> f_T (B, feature_dim)   identity-distilled
      -> B_P: 3 conv 3x3 + global average pool + FC -> f_P (B, feature_dim)   identity-dispelled
      classifier_t(f_T), classifier_p(f_P): identity logits (B, n_identities)
      D_dec: FC on [f_T, f_P] -> (C_dec, 4, 4) -> [upsample x2, conv 3x3, conv 3x3] ... -> conv -> sigmoid
             -> images (B, C, S, S) in [0, 1]

The paper's encoder is an Inception-ResNet at 235x235; fastface's is sized to the input (image_size a power
of two >= 16; 64 by default). Statistical augmentation (Eq. 5) adds eps * sigma to a feature, sigma the
per-channel standard deviation tracked like BatchNorm's running statistics (buffers running_var_t /
running_var_p, updated in training mode). The baseline of Table 2 is the same encoder and B_T without
B_P and without the decoder (p_branch=False, decoder=False). Losses and their gradient routing:
fastface/models/d2ae_losses.py.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .._arch import ArchConfig
from .._checks import check_image_batch
from .inversion import BasicBlock


@dataclass
class D2AEConfig(ArchConfig):
    """The architecture of a D²AE (what model.pt records, kind "d2ae")."""
    n_identities: int = 1000          # outputs of the two identity classifiers (training identities)
    image_size: int = 64              # a power of two >= 16
    channels: int = 3
    width: int = 32                   # encoder: channels of its first stage (doubling per stage, up to 8 x width)
    blocks: int = 1                   # encoder: basic blocks per stage
    branch_width: int = 128           # B_T / B_P: channels of their 3 conv layers
    feature_dim: int = 256            # N_T = N_P (the paper's 256)
    decoder_width: int = 128          # decoder: channels at 4x4 (halving per upsampling, at least 16)
    p_branch: bool = True             # False: no identity dispelling branch (the baseline)
    decoder: bool = True              # False: no decoder (the baseline)
    sigma_momentum: float = 0.1       # running per-channel variance of f_T / f_P, as BatchNorm's momentum

    def __post_init__(self):
        for name in ("n_identities", "image_size", "channels", "width", "blocks", "branch_width", "feature_dim",
                     "decoder_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        s = self.image_size
        if s < 16 or s & (s - 1):
            raise ValueError(f"image_size must be a power of two >= 16, got {s}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        for name in ("p_branch", "decoder"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.decoder and not self.p_branch:
            raise ValueError("decoder=True needs p_branch=True (the decoder reads [f_T, f_P])")
        if not 0 < self.sigma_momentum <= 1:
            raise ValueError(f"sigma_momentum must be in (0, 1], got {self.sigma_momentum!r}")


def _conv_bn_relu(cin, cout):
    return [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Encoder(nn.Sequential):
    """E_enc: images (B, C, S, S) -> maps (B, out_channels, 8, 8): stem conv 3x3 (stride 2 when S >= 32), then
    stages of basic blocks, each but the first halving the side, until the side is 8."""

    def __init__(self, cfg):
        w = cfg.width
        stem_stride = 2 if cfg.image_size >= 32 else 1
        layers = [nn.Conv2d(cfg.channels, w, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        side, cin, stage = cfg.image_size // stem_stride, w, 0
        while True:
            cout = min(8 * w, w * 2 ** stage)
            stride = 1 if stage == 0 else 2
            layers += [BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1) for b in range(cfg.blocks)]
            side, cin, stage = side // stride, cout, stage + 1
            if side <= 8:
                break
        super().__init__(*layers)
        self.out_channels = cin


class Branch(nn.Sequential):
    """B_T or B_P: maps (B, cin, 8, 8) -> 3 x (conv 3x3, BN, ReLU) -> global average pool -> FC -> (B, feature_dim)."""

    def __init__(self, cin, width, feature_dim):
        super().__init__(*_conv_bn_relu(cin, width), *_conv_bn_relu(width, width), *_conv_bn_relu(width, width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, feature_dim))


class Decoder(nn.Module):
    """D_dec: [f_T, f_P] (B, 2 * feature_dim) -> FC -> (B, decoder_width, 4, 4) -> [nearest upsample x2,
    2 x (conv 3x3, BN, ReLU)] until the image side -> conv 3x3 -> sigmoid -> images (B, C, S, S) in [0, 1]."""

    def __init__(self, cfg):
        super().__init__()
        c = cfg.decoder_width
        self.fc = nn.Sequential(nn.Linear(2 * cfg.feature_dim, c * 16), nn.ReLU(inplace=True))
        self.start = c
        layers, side, cin = [], 4, c
        while side < cfg.image_size:
            cout = max(16, cin // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_bn_relu(cin, cout),
                       *_conv_bn_relu(cout, cout)]
            side, cin = side * 2, cout
        layers += [nn.Conv2d(cin, cfg.channels, 3, 1, 1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, f):  # f (B, 2 * feature_dim)
        return self.body(self.fc(f).view(f.shape[0], self.start, 4, 4))


class D2AE(nn.Module):
    """The D²AE of a D2AEConfig; encode(images) -> (f_T, f_P), decode(f_T, f_P) -> images (see the module doc)."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        cfg = cfg if isinstance(cfg, D2AEConfig) else D2AEConfig(**{**(cfg or {}), **kw})
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.branch_t = Branch(self.encoder.out_channels, cfg.branch_width, cfg.feature_dim)
        self.classifier_t = nn.Linear(cfg.feature_dim, cfg.n_identities)
        self.register_buffer("running_var_t", torch.ones(cfg.feature_dim))
        if cfg.p_branch:
            self.branch_p = Branch(self.encoder.out_channels, cfg.branch_width, cfg.feature_dim)
            self.classifier_p = nn.Linear(cfg.feature_dim, cfg.n_identities)
            self.register_buffer("running_var_p", torch.ones(cfg.feature_dim))
        if cfg.decoder:
            self.decoder = Decoder(cfg)
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    # ---- parts
    def features(self, images):  # images (B, C, S, S), unchecked
        """(f_T (B, feature_dim), f_P (B, feature_dim) or None without B_P): the training path (no checks)."""
        maps = self.encoder(images)
        return self.branch_t(maps), (self.branch_p(maps) if self.cfg.p_branch else None)

    def reconstruct(self, f_t, f_p):  # f_t, f_p (B, feature_dim), unchecked
        return self.decoder(torch.cat([f_t, f_p], 1))

    @property
    def sigma_t(self):
        """(feature_dim,) running per-channel standard deviation of f_T."""
        return self.running_var_t.sqrt()

    @property
    def sigma_p(self):
        """(feature_dim,) running per-channel standard deviation of f_P."""
        return self.running_var_p.sqrt()

    @torch.no_grad()
    def track_statistics(self, f_t, f_p):  # f_t, f_p (B, feature_dim)
        """Update the running per-channel variances with this batch (the first batch sets them; then an
        exponential average with sigma_momentum, as BatchNorm)."""
        m = 1.0 if int(self.num_batches_tracked) == 0 else self.cfg.sigma_momentum
        for buf, f in (("running_var_t", f_t), ("running_var_p", f_p)):
            if f is not None and f.shape[0] > 1:
                var = getattr(self, buf)
                var.mul_(1 - m).add_(m * f.detach().float().var(0, unbiased=True))
        self.num_batches_tracked.add_(1)

    def augment(self, f_t, f_p, generator=None):  # f_t, f_p (B, feature_dim)
        """Statistical augmentation (Eq. 5): (f_T + eps sigma_T, f_P + eps' sigma_P), eps, eps' ~ N(0, I)
        (sigma: the running statistics, no gradient)."""
        noise = lambda f: torch.randn(f.shape, generator=generator, device=f.device, dtype=f.dtype)  # noqa: E731
        return (f_t + noise(f_t) * self.sigma_t.to(f_t.dtype),
                f_p + noise(f_p) * self.sigma_p.to(f_p.dtype))

    # ---- public API
    def check_images(self, images, name="images"):
        """Raise unless images is a float (B, channels, image_size, image_size) tensor for this model."""
        check_image_batch(name, images, self.cfg.channels, self.cfg.image_size, "this model")

    def check_features(self, f, name):
        if not isinstance(f, torch.Tensor) or not f.is_floating_point():
            raise TypeError(f"{name} must be a float tensor (B, {self.cfg.feature_dim}), got "
                            f"{f.dtype if isinstance(f, torch.Tensor) else type(f).__name__}")
        if f.dim() != 2 or f.shape[1] != self.cfg.feature_dim:
            raise ValueError(f"{name} must be (B, {self.cfg.feature_dim}), got {tuple(f.shape)}")

    def encode(self, images):  # images (B, C, S, S) in [0, 1]
        """(f_T (B, feature_dim), f_P (B, feature_dim)) of images; f_P is None for the baseline (no B_P)."""
        self.check_images(images)
        return self.features(images)

    def decode(self, f_t, f_p):  # f_t, f_p (B, feature_dim)
        """Images (B, C, S, S) in [0, 1] decoded from [f_T, f_P]."""
        if not self.cfg.decoder:
            raise ValueError("this D²AE has no decoder (decoder=False, the baseline): it cannot decode")
        self.check_features(f_t, "f_t")
        self.check_features(f_p, "f_p")
        if f_t.shape[0] != f_p.shape[0]:
            raise ValueError(f"f_t and f_p must have the same batch size, got {f_t.shape[0]} and {f_p.shape[0]}")
        return self.reconstruct(f_t, f_p)

    def forward(self, images):  # images (B, C, S, S)
        """Reconstructions (B, C, S, S) of images (the autoencoder); the baseline returns f_T."""
        f_t, f_p = self.encode(images)
        return self.reconstruct(f_t, f_p) if self.cfg.decoder else f_t


def build_d2ae(config):
    """The D2AE a D2AEConfig (or its dict) describes (fastface.load's builder for kind "d2ae")."""
    return D2AE(config if isinstance(config, D2AEConfig) else D2AEConfig.from_dict(config))


__all__ = ["D2AEConfig", "D2AE", "Encoder", "Branch", "Decoder", "build_d2ae"]

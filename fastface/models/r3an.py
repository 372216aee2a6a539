"""R³AN (Chen et al., CVPR 2019): feature-to-feature transformation between face models.

Three paths (paper Fig. 3, Table 1):
- Reconstruction: generator G, the normalised source feature X (B, Ds) reshaped to (B, Ds, 1, 1)
  and up-sampled by five ConvTranspose2d layers to a 3x56x56 face (BN + ReLU between, Tanh out);
- Representation: extractor E, MobileNetV2 bottlenecks -> 1x1 conv 1280 -> average pool -> FC
  to the target feature (B, Dt);
- Regression: E(G(X)) against the target feature Y.
A discriminator D (conv stack -> FC 1) makes the reconstruction adversarial.

The transformation a trained R³AN applies is `transform(x) = E(G(x / |x|))`; `FCTransform` is
the paper's naive MLP baseline with the same parameter count as G + E.

Losses (Eq. 4-9). The L2 losses are the mean over the batch of the per-sample Euclidean norm,
as written (not squared). The paper's adversarial pair is not consistent as printed: Eq. 10 has D
maximise, Eq. 6 is minimised by G, and Algorithm 1 descends on Eq. 5. fastface reads D(.) as the
probability that an image was *generated* (so Eq. 6, minimised by G, is the non-saturating GAN
loss exactly as written) and trains D on the negative log-likelihood of the right labels,
-E[log(1 - D(I))] - E[log D(G(X))] (Eq. 5's logistic likelihood, bounded below by 0). Descending on
Eq. 5 literally with that D is unbounded below (log D(I) -> -inf); it diverged in practice
(L_D ~ -1e23 within 150 steps). D returns logits; log D = logsigmoid(z).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.mobilenetv2 import ACTIVATIONS, InvertedResidual, _scaled, conv_bn_act

# Table 1 generator: (output channels, kernel, stride, padding) of fConv1-fConv5;
# 1x1 -> 4x4 -> 7x7 -> 14x14 -> 28x28 -> 56x56
GENERATOR_LAYERS = ((512, 4, 1, 0), (128, 3, 2, 1), (32, 4, 2, 1), (8, 4, 2, 1), (3, 4, 2, 1))
# Table 1 extractor: (output channels, first stride) of the bottleneck stages Conv1-Conv5
EXTRACTOR_STAGES = ((32, 2), (64, 2), (96, 1), (160, 2), (320, 1))
# Table 1 discriminator: (output channels, kernel, stride, padding) of Conv1-Conv6;
# 56 -> 28 -> 14 -> 7 -> 4 -> 2 -> 1
DISCRIMINATOR_LAYERS = ((4, 4, 2, 1), (8, 4, 2, 1), (16, 4, 2, 1), (32, 3, 2, 1), (64, 4, 2, 1), (128, 2, 1, 0))
IMAGE_SIZE = 56


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_features(name, x, dim):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, {dim}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (B, {dim}), got {tuple(x.shape)}")


class Generator(nn.Module):
    """Reconstruction path G: feature (B, D) -> normalised -> (B, D, 1, 1) -> face (B, C, 56, 56) in [-1, 1].

    width scales the hidden channels 512/128/32/8 (width=1 is Table 1 exactly). Layers are
    fconv1..fconv5 (ConvTranspose2d) and bn1..bn4.
    """

    def __init__(self, feature_dim=256, image_channels=3, width=1.0):
        super().__init__()
        _check_positive_int("feature_dim", feature_dim)
        if width <= 0:
            raise ValueError(f"width must be positive, got {width!r}")
        self.feature_dim, self.image_channels = feature_dim, image_channels
        cin = feature_dim
        for i, (c, k, s, p) in enumerate(GENERATOR_LAYERS, 1):
            cout = image_channels if i == len(GENERATOR_LAYERS) else max(1, int(round(c * width)))
            setattr(self, f"fconv{i}", nn.ConvTranspose2d(cin, cout, k, s, p, bias=i == len(GENERATOR_LAYERS)))
            if i < len(GENERATOR_LAYERS):
                setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
            cin = cout

    def forward(self, x, return_all=False):  # x (B, feature_dim) -> (B, C, 56, 56)
        _check_features("x", x, self.feature_dim)
        h = F.normalize(x, dim=1)[:, :, None, None]                       # (B, D, 1, 1)
        outs = []
        for i in range(1, len(GENERATOR_LAYERS)):
            h = F.relu(getattr(self, f"bn{i}")(getattr(self, f"fconv{i}")(h)))
            outs.append(h)
        h = torch.tanh(self.fconv5(h))                                    # (B, C, 56, 56)
        outs.append(h)
        return outs if return_all else h


class Extractor(nn.Module):
    """Representation path E: face (B, C, 56, 56) -> MobileNetV2 bottlenecks -> 1x1 conv 1280 ->
    global average pool -> FC -> feature (B, feature_dim).

    repeats[i] bottlenecks in stage i (Table 1's Conv1-Conv5), expansion T in each, width scales
    every channel count (width=1: Table 1). activation: "relu6" (MobileNetV2's, the paper's), "relu"
    or "prelu".
    """

    def __init__(self, feature_dim=256, image_channels=3, expansion=6, width=1.0, repeats=(1, 2, 2, 2, 1),
                 last_channels=1280, activation="relu6"):
        super().__init__()
        _check_positive_int("feature_dim", feature_dim)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if len(repeats) != len(EXTRACTOR_STAGES) or any(int(r) < 1 for r in repeats):
            raise ValueError(f"repeats must be {len(EXTRACTOR_STAGES)} positive ints, got {repeats!r}")
        self.feature_dim, self.image_channels = feature_dim, image_channels
        blocks, cin = [], image_channels
        for (c, s), n in zip(EXTRACTOR_STAGES, repeats):
            cout = _scaled(c, width)
            stage = [InvertedResidual(cin, cout, s, expansion, activation)]
            stage += [InvertedResidual(cout, cout, 1, expansion, activation) for _ in range(int(n) - 1)]
            blocks.append(nn.Sequential(*stage))
            cin = cout
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = blocks
        self.conv6 = conv_bn_act(cin, _scaled(last_channels, width), 1, act=activation)
        self.fc = nn.Linear(_scaled(last_channels, width), feature_dim)

    def forward(self, images, return_all=False):  # images (B, C, 56, 56) -> (B, feature_dim)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != self.image_channels:
            raise ValueError(f"images must be a tensor (B, {self.image_channels}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                             f"got {getattr(images, 'shape', type(images).__name__)}")
        outs, h = [], images
        for layer in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, self.conv6):
            h = layer(h)
            outs.append(h)
        h = h.mean((2, 3))                                                # (B, 1280): AvgPool2d
        outs.append(h[:, :, None, None])
        h = self.fc(h)                                                    # (B, feature_dim)
        outs.append(h[:, :, None, None])
        return outs if return_all else h


class Discriminator(nn.Module):
    """D: face (B, C, 56, 56) -> six stride convs (LeakyReLU, BN inside) -> FC -> logit (B,) that
    the image was generated."""

    def __init__(self, image_channels=3, width=1.0):
        super().__init__()
        layers, cin = [], image_channels
        for i, (c, k, s, p) in enumerate(DISCRIMINATOR_LAYERS):
            cout = max(1, int(round(c * width)))
            layers.append(nn.Conv2d(cin, cout, k, s, p, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 1)
        self.image_channels = image_channels

    def forward(self, images, return_all=False):  # images (B, C, 56, 56) -> logits (B,)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != self.image_channels:
            raise ValueError(f"images must be a tensor (B, {self.image_channels}, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                             f"got {getattr(images, 'shape', type(images).__name__)}")
        outs, h = [], images
        for layer in self.convs:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                outs.append(h)
        logits = self.fc(h.flatten(1)).squeeze(1)
        return (outs, logits) if return_all else logits


class R3AN(nn.Module):
    """G, E and D; transform(x (B, source_dim)) = E(G(x / |x|)) (B, target_dim)."""

    kind = "r3an"

    def __init__(self, source_dim=256, target_dim=256, image_channels=3, g_width=1.0, e_width=1.0,
                 e_expansion=6, e_repeats=(1, 2, 2, 2, 1), d_width=1.0, e_activation="relu6"):
        super().__init__()
        self.source_dim, self.target_dim = source_dim, target_dim
        self.generator = Generator(source_dim, image_channels, g_width)
        self.extractor = Extractor(target_dim, image_channels, e_expansion, e_width, tuple(e_repeats),
                                   activation=e_activation)
        self.discriminator = Discriminator(image_channels, d_width)

    def transform(self, x):  # x (B, source_dim) -> (B, target_dim)
        return self.extractor(self.generator(x))

    forward = transform

    def reconstruct(self, x):  # x (B, source_dim) -> faces (B, C, 56, 56) in [-1, 1]
        return self.generator(x)

    def transform_parameters(self):
        """Number of parameters used by transform (G + E; D only trains)."""
        return count_parameters(self.generator) + count_parameters(self.extractor)


class FCTransform(nn.Module):
    """The naive baseline (paper Sec. 3.1): an MLP x / |x| -> [Linear -> BN -> ReLU] x n_hidden -> Linear."""

    kind = "fc"

    def __init__(self, source_dim=256, target_dim=256, hidden=1024, n_hidden=2):
        super().__init__()
        _check_positive_int("source_dim", source_dim)
        _check_positive_int("target_dim", target_dim)
        _check_positive_int("hidden", hidden)
        self.source_dim, self.target_dim = source_dim, target_dim
        layers, cin = [], source_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(cin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            cin = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(cin, target_dim))

    def transform(self, x):  # x (B, source_dim) -> (B, target_dim)
        _check_features("x", x, self.source_dim)
        return self.mlp(F.normalize(x, dim=1))

    forward = transform

    def transform_parameters(self):
        return count_parameters(self)


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def fc_parameters(hidden, source_dim, target_dim, n_hidden=2):
    """Parameter count of FCTransform: (n_hidden - 1) h^2 + h (Ds + Dt + 3 n_hidden) + Dt."""
    return (n_hidden - 1) * hidden ** 2 + hidden * (source_dim + target_dim + 3 * n_hidden) + target_dim


def fc_hidden_for(n_params, source_dim, target_dim, n_hidden=2):
    """Return the hidden width h whose FCTransform has the parameter count closest to n_params."""
    a, b, c = n_hidden - 1, source_dim + target_dim + 3 * n_hidden, target_dim - n_params
    h = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    cands = [max(1, int(h) + d) for d in (-1, 0, 1, 2)]
    return min(cands, key=lambda k: abs(fc_parameters(k, source_dim, target_dim, n_hidden) - n_params))


def build_transform(spec: dict):
    """Return the module a spec dict describes: {"kind": "r3an" | "fc", ...constructor arguments}."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("r3an", "fc"):
        raise ValueError(f"spec must be a dict with kind 'r3an' or 'fc', got {spec!r}")
    kw = {k: v for k, v in spec.items() if k != "kind"}
    return R3AN(**kw) if spec["kind"] == "r3an" else FCTransform(**kw)


# ---------------------------------------------------------------------------------------------
# Losses (Eq. 4-9)
# ---------------------------------------------------------------------------------------------
def l2_loss(pred, target):
    """Return E[||target - pred||_2]: the batch mean of per-sample Euclidean norms (B, ...)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return (target - pred).flatten(1).norm(dim=1).mean()


def reconstruction_loss(fake, real):
    """Eq. 4: L_Rec = E[||I - G(X)||_2]; fake, real (B, C, 56, 56)."""
    return l2_loss(fake, real)


def discriminator_loss(d_real, d_fake):
    """Eq. 5 as D's logistic loss: -E[log(1 - D(I))] - E[log D(G(X))] >= 0, D's logits (B,) that an
    image is generated (minimised by D: real images -> D = 0, generated -> D = 1)."""
    return -F.logsigmoid(-d_real).mean() - F.logsigmoid(d_fake).mean()


def adversarial_loss(d_fake):
    """Eq. 6: L_Adv = -E[log(1 - D(G(X)))], D's logits (B,) on generated images (minimised by G)."""
    return -F.logsigmoid(-d_fake).mean()


def representation_loss(pred, target):
    """Eq. 8: L_Rep = E[||Y - E(I)||_2]; pred, target (B, Dt)."""
    return l2_loss(pred, target)


def regression_loss(pred, target):
    """Eq. 9: L_Reg = E[||Y - E(G(X))||_2]; pred, target (B, Dt)."""
    return l2_loss(pred, target)

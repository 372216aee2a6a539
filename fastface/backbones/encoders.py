"""Encoders: a backbone plus how it reads images, behind one interface for `identify` and `demo`.

An encoder has name, image_size, channels, grid (side of its patch map) and
  load_images(paths, progress) -> dict(images (N, C, S, S) float [0, 1], landmarks68 (N, 68, 2), ok (N,))
  encode(images (N, C, S, S), batch_size) -> (embeddings (N, D), patch map (N, C', g, g))
Specs: "arcface" (the small checkpoint shipped with fastface), "arcface:CKPT", "dlib".
"""
import os
from functools import lru_cache

import torch

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEMO_CHECKPOINT = os.path.join(ASSETS, "demo_backbone.pt")


@lru_cache(maxsize=8)
def canonical_landmarks68(size):
    """Mean 68-point landmarks of frontal SynthFaces at size x size: the landmark guess for an
    image folder of aligned faces without landmarks (occlusions, LMK weighting). (68, 2) pixels."""
    from ..data import SynthFaces
    ds = SynthFaces(n_identities=64, images_per_identity=2, size=int(size), channels=1, seed=12345)
    return ds.render_batch(range(len(ds)))["landmarks68"].mean(0)


def _batched(fn, images, batch_size):
    outs = [fn(images[s:s + batch_size]) for s in range(0, images.shape[0], batch_size)]
    return tuple(torch.cat(parts) for parts in zip(*outs))


class ArcFaceEncoder:
    """A trained ArcFace ResNet checkpoint (`fastface train backbone`'s model.pt or last.pt)."""

    def __init__(self, checkpoint=DEMO_CHECKPOINT, device="cpu"):
        from ..train.backbone import BackboneConfig, build_model
        from ..train.checkpoint import load_checkpoint
        if not os.path.isfile(checkpoint):
            raise ValueError(f"arcface checkpoint {checkpoint!r} does not exist")
        state = load_checkpoint(checkpoint, map_location="cpu")
        if not isinstance(state, dict) or "model" not in state or "config" not in state:
            raise ValueError(f"{checkpoint!r} is not a fastface backbone checkpoint (needs 'config' and 'model')")
        cfg = dict(state["config"])
        if isinstance(cfg.get("milestones"), list):
            cfg["milestones"] = tuple(cfg["milestones"])
        self.config = BackboneConfig(**cfg)
        self.model = build_model(self.config)
        self.model.load_state_dict(state["model"])
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.name = "arcface" if os.path.abspath(checkpoint) == DEMO_CHECKPOINT else f"arcface:{checkpoint}"
        self.image_size, self.channels = self.config.image_size, self.config.channels
        self.grid = self.model.map_size[0]

    def load_images(self, paths, progress=False):
        from tqdm import tqdm

        from ..data import read_image
        images = torch.stack([read_image(p, self.image_size, self.channels)
                              for p in tqdm(paths, disable=not progress, desc="read images")])
        lm = canonical_landmarks68(self.image_size).expand(len(paths), 68, 2).clone()
        return {"images": images, "landmarks68": lm, "ok": torch.ones(len(paths), dtype=torch.bool)}

    def prepare(self, images):
        """Bring (N, C, H, W) [0, 1] images to the model's channels and size."""
        if images.shape[1] != self.channels:
            images = images.mean(1, keepdim=True) if self.channels == 1 else images.expand(-1, 3, -1, -1)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = torch.nn.functional.interpolate(images, size=(self.image_size, self.image_size),
                                                     mode="bilinear", align_corners=False, antialias=True)
        return images

    @torch.no_grad()
    def encode(self, images, batch_size=128):
        def run(x):
            emb, fmap = self.model(self.prepare(x.to(self.device, torch.float32)))
            return emb.float(), fmap.float()
        return _batched(run, images, batch_size)


def load_encoder(spec, device="cpu"):
    """Return the encoder named by spec: "arcface" (shipped demo checkpoint), "arcface:CKPT" or "dlib"."""
    if not isinstance(spec, str):
        raise TypeError(f"backbone must be a string like 'dlib' or 'arcface:CKPT', got {type(spec).__name__}")
    if spec == "arcface":
        return ArcFaceEncoder(DEMO_CHECKPOINT, device)
    if spec.startswith("arcface:"):
        return ArcFaceEncoder(spec.split(":", 1)[1], device)
    if spec == "dlib" or spec.startswith("dlib:"):
        from .dlib_encoder import DlibEncoder
        level = int(spec.split(":", 1)[1]) if ":" in spec else 8
        return DlibEncoder(device=device, level=level)
    raise ValueError(f"backbone must be 'arcface', 'arcface:CKPT', 'dlib' or 'dlib:LEVEL', got {spec!r}")

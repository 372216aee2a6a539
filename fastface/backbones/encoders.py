"""Encoders: a backbone plus how it reads images, behind one interface for `identify` and `demo`.

An encoder has name, image_size, channels, grid (side of its patch map), embedding_dim,
map_channels, detects (whether load_images finds faces) and
  load_images(paths, progress, all_faces, landmarks) -> dict(images (M, C, S, S) float [0, 1],
      landmarks68 (M, 68, 2) or None, source (M,) the path index of each face, n_no_face, unreadable)
  encode(images (N, C, S, S), batch_size) -> (embeddings (N, D), patch map (N, C', g, g))
Specs: "arcface" (the small checkpoint shipped with fastface), "arcface:CKPT",
"arcface-official:PATH" (DeepFace-EMD's resnet18_110.pth), "dlib", "dlib:LEVEL".
ArcFace encoders read aligned faces as they are (align="none") or detect and warp every photograph
to the ArcFace template from dlib's 5-point landmarks (align="dlib").
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


ALIGNS = ("none", "dlib")


def _read_aligned(paths, size, channels, progress, landmarks):
    """Read already-aligned faces: one face per readable file; landmarks from the mean template."""
    from tqdm import tqdm

    from ..data import UnreadableImage, read_image
    images, source, unreadable = [], [], []
    for i, p in enumerate(tqdm(paths, disable=not progress, desc="read images")):
        try:
            images.append(read_image(p, size, channels))
            source.append(i)
        except UnreadableImage:
            unreadable.append(os.fspath(p))
    images = torch.stack(images) if images else torch.zeros(0, channels, size, size)
    lm = canonical_landmarks68(size).expand(len(source), 68, 2).clone() if landmarks else None
    return {"images": images, "landmarks68": lm, "source": torch.tensor(source, dtype=torch.int64),
            "n_no_face": 0, "unreadable": unreadable}


class _ArcFaceBase:
    """What ArcFace encoders share: reading images (aligned already, or aligned with dlib) and encode."""

    def _init_common(self, model, device, align):
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        self.model, self.align = model, align
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.grid = self.model.map_size[0]
        self.embedding_dim, self.map_channels = self.model.embedding_dim, self.model.channels
        self.detects = align == "dlib"
        self._aligner = None

    def load_images(self, paths, progress=False, all_faces=False, landmarks=True):
        if self.align == "dlib":
            if self._aligner is None:
                from ..data.align import TemplateAligner
                self._aligner = TemplateAligner(size=self.image_size)
            return self._aligner.align_paths(paths, progress=progress, all_faces=all_faces, landmarks=landmarks)
        if all_faces:
            raise ValueError("all_faces needs face detection: align='dlib' (or the dlib backbone)")
        return _read_aligned(paths, self.image_size, self.channels, progress, landmarks)

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


class ArcFaceEncoder(_ArcFaceBase):
    """A trained ArcFace ResNet checkpoint (`fastface train backbone`'s model.pt or last.pt)."""

    def __init__(self, checkpoint=DEMO_CHECKPOINT, device="cpu", align="none"):
        from ..models.serialization import build_module, read_model
        from .build import BackboneArch
        if not os.path.isfile(checkpoint):
            raise ValueError(f"arcface checkpoint {checkpoint!r} does not exist")
        saved = read_model(checkpoint)
        if saved.kind != "backbone":
            raise ValueError(f"{checkpoint!r} holds a {saved.kind} model, not a backbone")
        self.config = BackboneArch.from_dict(saved.config)
        model = build_module(saved)
        self.name = "arcface" if os.path.abspath(checkpoint) == DEMO_CHECKPOINT else f"arcface:{checkpoint}"
        self.image_size, self.channels = self.config.image_size, self.config.channels
        self._init_common(model, device, align)


class OfficialArcFaceEncoder(_ArcFaceBase):
    """DeepFace-EMD's official ArcFace ResNet-18 (`resnet18_110.pth`): grey 128 x 128 input in
    [-1, 1]; grey = ITU-R 601 luma of RGB, as OpenCV's imread(..., 0) that the official code uses."""

    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, path, device="cpu", align="none"):
        from .official import load_official_arcface
        model = load_official_arcface(path)
        self.name = f"arcface-official:{path}"
        self.image_size, self.channels = model.input_size, model.in_channels
        self._init_common(model, device, align)

    def prepare(self, images):
        if images.shape[1] == 3 and self.channels == 1:
            luma = torch.tensor(self.LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            images = (images * luma).sum(1, keepdim=True)
        return super().prepare(images) * 2.0 - 1.0               # (x - 0.5) / 0.5


def check_backbone_spec(spec):
    """Validate a backbone spec's syntax without loading anything; return (kind, argument)."""
    if not isinstance(spec, str):
        raise TypeError(f"backbone must be a string like 'dlib' or 'arcface:CKPT', got {type(spec).__name__}")
    if spec in ("arcface", "dlib"):
        return spec, None
    kind, _, arg = spec.partition(":")
    if kind in ("arcface", "arcface-official") and arg:
        return kind, arg
    if kind == "dlib" and arg:
        from .dlib_encoder import LEVELS
        if not arg.isdigit() or int(arg) not in LEVELS:
            raise ValueError(f"backbone dlib:LEVEL needs LEVEL in {sorted(LEVELS)} (the side of the dlib "
                             f"map used as patches), got {spec!r}")
        return kind, int(arg)
    raise ValueError(f"backbone must be 'arcface', 'arcface:CKPT', 'arcface-official:PATH', 'dlib' or "
                     f"'dlib:LEVEL', got {spec!r}")


def load_encoder(spec, device="cpu", align="none"):
    """Return the encoder named by spec: "arcface" (shipped demo checkpoint), "arcface:CKPT",
    "arcface-official:PATH" (DeepFace-EMD's resnet18_110.pth) or "dlib" / "dlib:LEVEL".
    align: "none" (ArcFace encoders read aligned faces) or "dlib" (detect and warp to the ArcFace
    template); the dlib backbone always aligns with dlib's own chips."""
    kind, arg = check_backbone_spec(spec)
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if kind == "arcface":
        return ArcFaceEncoder(DEMO_CHECKPOINT if arg is None else arg, device, align)
    if kind == "arcface-official":
        return OfficialArcFaceEncoder(arg, device, align)
    from .dlib_encoder import DlibEncoder
    return DlibEncoder(device=device, level=8 if arg is None else arg)

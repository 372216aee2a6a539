"""The pretrained dlib face-recognition ResNet as a fastface encoder (`--backbone dlib`).

Images are dlib's aligned 150-px chips (fastface.data.align.DlibAligner); the embedding is dlib's
128-d descriptor, the patch map one of the network's spatial maps (level 8: 8x8x128 by default).
Needs the `dlib` extra: pip install fastface[dlib].
"""
from functools import lru_cache

import torch

from .dlib_resnet import DlibResNet

# spatial side of a map for a 150-px chip -> its channels
LEVELS = {35: 32, 17: 64, 8: 128, 4: 256, 2: 256}


@lru_cache(maxsize=4)
def _network(device):
    """One parsed network per device, shared by the encoders (inference only, never trained)."""
    return DlibResNet().to(device).eval()


class DlibEncoder:
    """encoder interface: name, image_size, channels, grid; load_images(paths) and encode(images)."""

    name = "dlib"
    image_size = 150
    channels = 3
    embedding_dim = 128
    detects = True

    def __init__(self, device="cpu", level=8):
        if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
            raise ValueError(f"level must be one of {sorted(LEVELS)} (the side of the dlib map used as "
                             f"patches), got {level!r}")
        self.grid, self.map_channels = level, LEVELS[level]
        self.name = "dlib" if level == 8 else f"dlib:{level}"
        self.device = torch.device(device)
        self.net = _network(self.device)
        self._aligner = None

    @property
    def aligner(self):
        if self._aligner is None:
            from ..data.align import DlibAligner
            self._aligner = DlibAligner(size=self.image_size, padding=0.25)
        return self._aligner

    def load_images(self, paths, progress=False, all_faces=False, landmarks=True):
        """Detect and align faces (the largest per file, or all) -> DlibAligner.align_paths' dict:
        images (M, 3, 150, 150) float [0, 1], landmarks68 (M, 68, 2) chip pixels (None without
        landmarks: the 68-point model is then never loaded), source (M,), n_no_face, unreadable."""
        return self.aligner.align_paths(paths, progress=progress, all_faces=all_faces, landmarks=landmarks)

    @torch.no_grad()
    def encode(self, images, batch_size=64):
        """images: (N, 3, 150, 150) float RGB in [0, 1] (x 255 = the chip's pixels) -> (embeddings
        (N, 128) = dlib's descriptors, patch maps (N, C, grid, grid)), float32 on self.device."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            got = f"{type(images).__name__}" + (f" {images.dtype}" if isinstance(images, torch.Tensor) else "")
            raise TypeError(f"images must be a floating torch.Tensor (N, 3, 150, 150) in [0, 1], got {got}")
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"images must have shape (N, 3, {self.image_size}, {self.image_size}) "
                             f"(dlib chips), got {tuple(images.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.net.eval()
        embs, maps = [], []
        for s in range(0, images.shape[0], batch_size):
            x = images[s:s + batch_size].to(self.device, torch.float32)                # (B, 3, 150, 150)
            desc, fmaps = self.net((x * 255.0 - self.net.mean) / 256.0)              # dlib's input scaling
            embs.append(desc.float())
            maps.append(fmaps[self.grid].float())
        if not embs:
            return (torch.zeros(0, 128, device=self.device),
                    torch.zeros(0, self.map_channels, self.grid, self.grid, device=self.device))
        return torch.cat(embs), torch.cat(maps)

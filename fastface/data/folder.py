"""Image-folder face data sets: DIR/<identity>/<image>, identities sorted by name."""
import os
import warnings

import numpy as np
import torch

from ._args import as_int

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def scan_image_folder(root, extensions=IMAGE_EXTENSIONS):
    """Return (paths, labels, identity_names) for root/<identity>/<image>, sorted; raise if empty."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} does not exist or is not a directory")
    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels, kept = [], [], []
    for name in names:
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(extensions))
        if not files:
            continue
        label = len(kept)
        kept.append(name)
        paths += [os.path.join(root, name, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"image folder {root!r} has no images in the layout DIR/<identity>/<image> "
                         f"(extensions {', '.join(extensions)})")
    return paths, labels, kept


class UnreadableImage(ValueError):
    """A file that is not a decodable image (corrupt, truncated, not an image)."""


def list_images(images, name="images"):
    """Photo paths: a file, a folder (searched recursively, sorted) or a list of paths."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name}: an empty list of photos")
        return [os.fspath(p) for p in images]
    if not isinstance(images, (str, os.PathLike)):
        raise TypeError(f"{name} must be a photo, a folder of photos or a list of paths, got {type(images).__name__}")
    images = os.fspath(images)
    if os.path.isfile(images):
        return [images]
    if not os.path.isdir(images):
        raise ValueError(f"{name}: {images!r} is neither a photo nor a folder")
    out = sorted(os.path.join(r, f) for r, _, files in os.walk(images) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS))
    if not out:
        raise ValueError(f"{name}: {images!r} holds no photos ({', '.join(IMAGE_EXTENSIONS)})")
    return out


def open_image(path, mode="RGB"):
    """Decode path as a PIL image in mode ("RGB" or "L") with its EXIF orientation applied (a
    phone photo stored sideways comes out upright). Raises UnreadableImage naming the file."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)     # a copy, decoded
            return im.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"cannot read image {os.fspath(path)!r}: {type(e).__name__}: {e}") from e


def read_image(path, size=None, channels=3):
    """Read an image as a float32 (C, H, W) tensor in [0, 1] (EXIF orientation applied; resized to
    size x size if given). Raises UnreadableImage for a corrupt or non-image file."""
    from PIL import Image
    im = open_image(path, "L" if channels == 1 else "RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def is_readable_image(path):
    """Whether path opens as an image whose header and structure PIL can verify (cheap: no full
    decode, so a file truncated inside its pixel data can still fail later, naming the file)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # PIL raises many types for corrupt files; any of them means unreadable
        return False


class ImageFolder(torch.utils.data.Dataset):
    """Aligned face images in DIR/<identity>/<image>; items like SynthFaces': image (C, S, S) in
    [0, 1] and identity (int), plus path. Identities are numbered in sorted-name order.

    skip_unreadable=True checks every file once at construction and leaves out those PIL cannot
    open (listed in .unreadable, with one warning), so one corrupt file does not stop a training
    run; False keeps every file (faster on huge folders; a corrupt one then raises when read).
    The check reads headers only: a file truncated inside its pixel data passes it. on_unreadable says what
    reading such a file does: "raise" (UnreadableImage naming it) or "substitute" (training: the next
    readable file takes its place and the item carries "_unreadable", the number of files it replaced, so a
    run counts them instead of crashing; the batch keeps its size, so every process keeps in step).
    """

    ON_UNREADABLE = ("raise", "substitute")

    def __init__(self, root, size=64, channels=3, extensions=IMAGE_EXTENSIONS, skip_unreadable=True,
                 on_unreadable="raise"):
        size = as_int("size", size, min_value=8)
        if as_int("channels", channels) not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not isinstance(skip_unreadable, bool):
            raise TypeError(f"skip_unreadable must be a bool, got {type(skip_unreadable).__name__}")
        if on_unreadable not in self.ON_UNREADABLE:
            raise ValueError(f"on_unreadable must be one of {self.ON_UNREADABLE}, got {on_unreadable!r}")
        self.on_unreadable = on_unreadable
        paths, labels, names = scan_image_folder(root, extensions)
        self.unreadable = []
        if skip_unreadable:
            ok = [is_readable_image(p) for p in paths]
            self.unreadable = [p for p, good in zip(paths, ok) if not good]
            if self.unreadable:
                warnings.warn(f"ImageFolder {os.fspath(root)!r}: skipped {len(self.unreadable)} unreadable "
                              f"file(s), e.g. {self.unreadable[0]!r}", RuntimeWarning, stacklevel=2)
                paths = [p for p, good in zip(paths, ok) if good]
                labels = [lab for lab, good in zip(labels, ok) if good]
                if not paths:
                    raise ValueError(f"image folder {os.fspath(root)!r}: none of its "
                                     f"{len(self.unreadable)} image files can be read")
                # Renumber identities densely: one whose files are all unreadable disappears.
                used = sorted(set(labels))
                names = [names[i] for i in used]
                remap = {old: new for new, old in enumerate(used)}
                labels = [remap[lab] for lab in labels]
        self.paths, self.identity_names = paths, names
        self.root, self.size, self.channels = os.fspath(root), size, int(channels)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.n_identities = len(self.identity_names)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        index = as_int("index", index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for ImageFolder of length {len(self)}")
        if self.on_unreadable == "raise":
            return self._item(index)
        n = len(self)
        for skipped in range(n):
            j = (index + skipped) % n
            try:
                item = self._item(j)
            except UnreadableImage as e:
                warnings.warn(f"ImageFolder: {e}; the next readable image takes its place", RuntimeWarning,
                              stacklevel=2)
                continue
            item["_unreadable"] = skipped
            return item
        raise UnreadableImage(f"image folder {self.root!r}: none of its {n} files can be read")

    def _item(self, index):
        return {"image": read_image(self.paths[index], self.size, self.channels),
                "identity": int(self.labels[index]), "path": self.paths[index]}

    def load_all(self, indices=None):
        """Return (images (N, C, S, S), labels (N,)) for the given indices (default all)."""
        n = len(self)
        idx = range(n) if indices is None else [as_int("indices", i, min_value=-n, max_value=n - 1) % n
                                                for i in indices]
        images = torch.stack([read_image(self.paths[i], self.size, self.channels) for i in idx])
        return images, self.labels[list(idx)]

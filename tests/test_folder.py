"""Image files as users have them (no dlib needed): EXIF orientation, unreadable files, the affine warp."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastface.data import UnreadableImage, read_image
from fastface.data.align import ARCFACE_TEMPLATE_112, eye_centres5, similarity_from_eyes, warp_affine


@pytest.mark.parametrize("orientation,stored_as", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                                   (8, Image.Transpose.ROTATE_270)])
def test_read_image_applies_exif_orientation(tmp_path, orientation, stored_as):
    rng = np.random.default_rng(orientation)
    upright = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)         # portrait, asymmetric
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    Image.fromarray(upright).transpose(stored_as).save(path, exif=exif)
    got = read_image(path)                                                # (3, 20, 12) as a viewer shows it
    torch.testing.assert_close(got, torch.from_numpy(upright).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00"])
def test_unreadable_file_names_the_path(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match="broken.png"):
        read_image(path)
    assert issubclass(UnreadableImage, ValueError)


def test_similarity_from_eyes_is_exact():
    eyes = np.array([[40.0, 60.0], [90.0, 50.0]])
    target = ARCFACE_TEMPLATE_112[:2]
    m = similarity_from_eyes(eyes, target)
    np.testing.assert_allclose(eyes @ m[:, :2].T + m[:, 2], target, atol=1e-9)
    assert abs(m[0, 0] - m[1, 1]) < 1e-12 and abs(m[0, 1] + m[1, 0]) < 1e-12      # rotation + scale only
    # dlib's 5 points: two corners per eye (either order), then the nose; image-left eye first
    pts = np.array([[95, 50], [85, 50], [35, 60], [45, 60], [65, 80]], dtype=np.float64)
    np.testing.assert_allclose(eye_centres5(pts), [[40, 60], [90, 50]])


@pytest.mark.parametrize("scale", [1.7, 0.8, 0.3, 0.12])
def test_warp_affine_puts_a_point_where_the_transform_says(scale):
    """A bright 3x3 square in the original lands, after the warp, centred on transform(its centre),
    whether the warp enlarges, shrinks a little or shrinks past 2x (box-reduced first)."""
    H, W, size = 400, 500, 96
    centre = np.array([317.0, 141.0])
    img = np.zeros((H, W, 3), dtype=np.uint8)
    blob = max(1, int(round(2 / scale)))                                  # about 4 chip pixels across
    img[int(centre[1]) - blob:int(centre[1]) + blob + 1, int(centre[0]) - blob:int(centre[0]) + blob + 1] = 255
    ang = 0.3
    a = scale * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    t = np.array([size / 2, size / 2]) - a @ centre + np.array([7.0, -5.0])
    m = np.c_[a, t]
    chip = warp_affine(img, m, size).astype(np.float64)[:, :, 0]           # (size, size)
    ys, xs = np.mgrid[0:size, 0:size]
    found = np.array([(chip * xs).sum(), (chip * ys).sum()]) / chip.sum()   # intensity centroid
    np.testing.assert_allclose(found, m[:, :2] @ centre + m[:, 2], atol=0.25)


def _folder(tmp_path, broken):
    """root/<a|b|c>/<i>.png, two faces each; `broken` names files (ident/i) to corrupt."""
    rng = np.random.default_rng(0)
    for ident in "abc":
        (tmp_path / ident).mkdir()
        for i in range(2):
            path = tmp_path / ident / f"{i}.png"
            if f"{ident}/{i}" in broken:
                path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            else:
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return tmp_path


def test_image_folder_skips_and_counts_unreadable_files(tmp_path):
    from fastface.data import ImageFolder
    root = _folder(tmp_path, {"a/1", "b/0", "b/1"})
    with pytest.warns(RuntimeWarning, match="skipped 3 unreadable"):
        ds = ImageFolder(root, size=16)
    assert len(ds) == 3 and sorted(p.split("/")[-2:][0] for p in ds.unreadable) == ["a", "b", "b"]
    assert ds.identity_names == ["a", "c"] and ds.n_identities == 2    # b had no readable face
    images, labels = ds.load_all()                                       # a training run reads them all
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 1, 1]
    kept = ImageFolder(root, size=16, skip_unreadable=False)
    assert len(kept) == 6 and kept.unreadable == []
    with pytest.raises(UnreadableImage, match="1.png"):
        kept.load_all()


def test_image_folder_with_only_unreadable_files_says_so(tmp_path):
    from fastface.data import ImageFolder
    root = _folder(tmp_path, {f"{i}/{j}" for i in "abc" for j in range(2)})
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="none of its 6 image files"):
        ImageFolder(root, size=16)
    with pytest.raises(TypeError, match="skip_unreadable must be a bool"):
        ImageFolder(root, size=16, skip_unreadable=1)

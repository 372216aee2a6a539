"""dlib alignment (chips + 68 landmarks mapped into the chip) and the dlib encoder, on real photographs.

The photographs are the face_recognition sdist's test images in tests/.photos (see the README's
set-up command); everything skips with a reason without them, dlib, its models or pillow.
"""
import glob
import io
import os
import tarfile

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ("obama", "obama2", "biden")

dlib = pytest.importorskip("dlib", reason="the dlib extra (dlib-bin) is not installed")
Image = pytest.importorskip("PIL.Image", reason="pillow is not installed")


def _model_path(name=None):
    from fastface.backbones.dlib_resnet import model_path
    try:
        return model_path(name) if name else model_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"dlib models unavailable: {exc}")


@pytest.fixture(scope="module")
def photos():
    """name -> (H, W, 3) uint8 RGB, read from the face_recognition sdist."""
    _model_path()
    sdists = glob.glob(os.path.join(HERE, ".photos", "face_recognition-*.tar.gz"))
    if not sdists:
        pytest.skip("no face_recognition sdist in tests/.photos (see the README's set-up command)")
    out = {}
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if base in {n + ".jpg" for n in NAMES}:
                raw = tar.extractfile(member).read()
                out[base[:-4]] = np.array(Image.open(io.BytesIO(raw)).convert("RGB"))
    if set(out) != set(NAMES):
        pytest.skip(f"the sdist lacks some of {NAMES}")
    return out


@pytest.fixture(scope="module")
def aligner():
    from fastface.data.align import DlibAligner
    return DlibAligner()


@pytest.fixture(scope="module")
def faces(photos, aligner):
    out = {name: aligner.align(img) for name, img in photos.items()}
    assert all(f is not None for f in out.values())
    return out


@pytest.fixture(scope="module")
def rects(photos, aligner):
    """name -> the largest detection, found directly with dlib (the reference path)."""
    return {name: max(aligner.detector(img, 1), key=lambda r: r.area()) for name, img in photos.items()}


def _points(shape):
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _bilinear(img, pts):  # img (H, W, C), pts (K, 2) x, y inside -> (K, C)
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    im = img.astype(np.float64)
    return (im[y0, x0] * (1 - fx) * (1 - fy) + im[y0, x0 + 1] * fx * (1 - fy)
            + im[y0 + 1, x0] * (1 - fx) * fy + im[y0 + 1, x0 + 1] * fx * fy)


def test_chips_equal_dlib_get_face_chip(photos, faces, aligner, rects):
    for name, img in photos.items():
        rect = rects[name]
        ref = dlib.get_face_chip(img, aligner.shape5(img, rect), size=150, padding=0.25)
        face = faces[name]
        assert face.chip.dtype == np.uint8 and face.chip.shape == (150, 150, 3)
        assert np.array_equal(face.chip, ref), name
        assert face.box == (rect.left(), rect.top(), rect.right(), rect.bottom())
        assert face.landmarks68.shape == (68, 2) and face.landmarks68.dtype == np.float32


def test_chip_transform_is_dlibs_sampling(photos, aligner, rects):
    """Where dlib samples the original directly (no pyramid: chip scale > 1/2), every chip pixel is
    the original bilinearly sampled at the inverse-mapped position (up to uint8 rounding)."""
    from fastface.data.align import apply_transform, chip_transform
    for name in ("obama2", "biden"):  # rotated faces
        img, rect = photos[name], rects[name]
        details = dlib.get_face_chip_details(aligner.shape5(img, rect), 300, 0.25)
        assert abs(details.angle) > 0.05
        chip = dlib.extract_image_chip(img, details)
        inv = np.linalg.inv(np.vstack([chip_transform(details), [0, 0, 1]]))[:2]
        ys, xs = np.mgrid[1:299, 1:299]
        src = apply_transform(inv, np.c_[xs.ravel(), ys.ravel()])
        diff = np.abs(_bilinear(img, src) - chip[1:299, 1:299].reshape(-1, 3))
        assert diff.mean() < 0.75 and np.percentile(diff, 99) <= 1.5, name
        # half a pixel off would be clearly visible
        shifted = apply_transform(inv, np.c_[xs.ravel() + 0.5, ys.ravel()])
        assert np.abs(_bilinear(img, shifted) - chip[1:299, 1:299].reshape(-1, 3)).mean() > 2 * diff.mean()


def test_mapped_landmarks_match_predictors_run_in_the_chip(photos, faces, aligner, rects):
    from fastface.data.align import apply_transform
    for name, img in photos.items():
        face = faces[name]
        lm = face.landmarks68.astype(np.float64)
        inner = lm[17:]                                   # brows, nose, eyes, mouth: inside the chip
        assert (inner >= 0).all() and (inner <= 149).all(), name
        assert (lm >= -22).all() and (lm <= 172).all(), name  # the jaw may leave it a little
        chip_rects = aligner.detector(face.chip, 1)
        assert len(chip_rects) >= 1, name
        rect = max(chip_rects, key=lambda r: r.area())
        direct = _points(aligner.shape68(face.chip, rect))
        err = np.linalg.norm(direct - lm, axis=1)
        assert err[36:48].mean() < 3.0, (name, err[36:48].mean())
        assert err.mean() < 3.0, (name, err.mean())
        # the 5-point shape of the original, mapped, is where the 5-point predictor finds it in the chip
        mapped5 = apply_transform(face.transform, _points(aligner.shape5(img, rects[name])))
        assert np.linalg.norm(_points(aligner.shape5(face.chip, rect)) - mapped5, axis=1).mean() < 1.5, name


def test_occlusions_from_mapped_landmarks(faces, aligner):
    from fastface.data import occlude
    chips = torch.stack([torch.from_numpy(f.chip).permute(2, 0, 1).float() / 255 for f in faces.values()])
    lms = torch.stack([torch.from_numpy(f.landmarks68) for f in faces.values()])   # (3, 68, 2)
    glasses = occlude(chips, lms, "sunglasses")
    masked = occlude(chips, lms, "mask")
    dark = torch.tensor([0.05, 0.05, 0.07])
    for i in range(len(faces)):
        eyes = lms[i, 36:48].round().long()
        px = glasses[i, :, eyes[:, 1], eyes[:, 0]].T                                 # (12, 3)
        assert torch.allclose(px, dark.expand_as(px), atol=1e-6)
        assert (chips[i, :, eyes[:, 1], eyes[:, 0]].T - dark).abs().max() > 0.05      # changed something
        mouth = lms[i, 48:68].round().long()
        assert (masked[i, :, mouth[:, 1], mouth[:, 0]] != chips[i, :, mouth[:, 1], mouth[:, 0]]).any(0).all()
        # the eyes stay visible under the mask, the mouth under the sunglasses
        assert torch.equal(masked[i, :, eyes[:, 1], eyes[:, 0]], chips[i, :, eyes[:, 1], eyes[:, 0]])
        assert torch.equal(glasses[i, :, mouth[:, 1], mouth[:, 0]], chips[i, :, mouth[:, 1], mouth[:, 0]])


@pytest.fixture(scope="module")
def encoder():
    from fastface.backbones.dlib_encoder import DlibEncoder
    return DlibEncoder()


def test_encoder_equals_dlib_descriptors(photos, encoder, aligner, rects, tmp_path):
    paths = []
    for name in NAMES:
        path = tmp_path / f"{name}.png"                   # lossless: same pixels as the array
        Image.fromarray(photos[name]).save(path)
        paths.append(str(path))
    data = encoder.load_images(paths + [str(tmp_path / "obama.png")])
    assert data["images"].shape == (4, 3, 150, 150) and data["images"].dtype == torch.float32
    assert data["landmarks68"].shape == (4, 68, 2) and data["source"].tolist() == [0, 1, 2, 3]
    assert data["n_no_face"] == 0 and data["unreadable"] == []
    emb, fmap = encoder.encode(data["images"], batch_size=3)   # two batches
    assert emb.shape == (4, 128) and fmap.shape == (4, 128, 8, 8)
    assert torch.allclose(emb[3], emb[0], atol=1e-5)              # batch composition: float rounding
    reference = dlib.face_recognition_model_v1(_model_path())
    for i, name in enumerate(NAMES):
        img = photos[name]
        ref = np.array(reference.compute_face_descriptor(img, aligner.shape5(img, rects[name])))
        assert np.abs(emb[i].numpy() - ref).max() <= 1e-4, name
    d = lambda a, b: float((emb[NAMES.index(a)] - emb[NAMES.index(b)]).norm())  # noqa: E731
    assert d("obama", "obama2") < 0.6 < d("obama", "biden")      # dlib's usual 0.6 threshold
    assert d("obama", "obama2") < d("obama2", "biden")


def test_encoder_levels(encoder):
    from fastface.backbones.dlib_encoder import DlibEncoder
    assert (encoder.name, encoder.image_size, encoder.channels, encoder.grid) == ("dlib", 150, 3, 8)
    enc4 = DlibEncoder(level=4)
    x = torch.rand(2, 3, 150, 150)
    e4, m4 = enc4.encode(x)
    e8, m8 = encoder.encode(x)
    assert m4.shape == (2, 256, 4, 4) and enc4.grid == 4
    assert torch.allclose(e4, e8)


def test_no_face(aligner):
    grey = np.full((200, 240, 3), 128, dtype=np.uint8)
    assert aligner.align(grey) is None
    chips, lms, ok = aligner.align_many([grey, grey[:100]])
    assert chips.shape == (2, 3, 150, 150) and lms.shape == (2, 68, 2)
    assert ok.tolist() == [False, False] and chips.abs().sum() == 0 and lms.abs().sum() == 0


def test_bad_arguments(aligner, encoder):
    from fastface.backbones.dlib_encoder import DlibEncoder
    from fastface.data.align import DlibAligner
    with pytest.raises(ValueError, match="level"):
        DlibEncoder(level=5)
    with pytest.raises(ValueError, match="size"):
        DlibAligner(size=0)
    with pytest.raises(TypeError, match="image.*uint8"):
        aligner.align(np.zeros((50, 50, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"image.*\(H, W, 3\)"):
        aligner.align(np.zeros((50, 50), dtype=np.uint8))
    with pytest.raises(TypeError, match="image"):
        aligner.align([[1, 2, 3]])
    with pytest.raises(ValueError, match="image"):
        aligner.align("/nonexistent/face.jpg")
    with pytest.raises(TypeError, match="images_or_paths"):
        aligner.align_many("/some/face.jpg")
    with pytest.raises(ValueError, match="images"):
        encoder.encode(torch.zeros(2, 3, 64, 64))
    with pytest.raises(TypeError, match="images"):
        encoder.encode(torch.zeros(2, 3, 150, 150, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(torch.zeros(1, 3, 150, 150), batch_size=0)

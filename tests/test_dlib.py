"""The dlib ResNet loader: dlib's serialisation, and descriptors equal to dlib's on real photographs.

The photographs are those of the face_recognition sdist's tests folder, fetched by the README's
set-up command into tests/.photos; the real-model test skips with a reason without them or dlib.
"""
import glob
import io
import os
import struct
import tarfile

import numpy as np
import pytest
import torch

from fastface.backbones.dlib_resnet import _Reader

HERE = os.path.dirname(os.path.abspath(__file__))


def dlib_int(v):
    raw = abs(v).to_bytes(max(1, (abs(v).bit_length() + 7) // 8), "little")
    return bytes([len(raw) | (0x80 if v < 0 else 0)]) + raw


def test_reader_ints_strings_tensors():
    data = dlib_int(5) + dlib_int(-300) + dlib_int(70000)
    data += bytes([1, 5]) + b"con_4" + dlib_int(2) + b"".join(dlib_int(d) for d in (2, 1, 1, 1))
    data += struct.pack("<2f", 1.5, -2.25)
    r = _Reader(data)
    assert (r.int(), r.int(), r.int()) == (5, -300, 70000)
    assert r.seek_record(("affine_", "con_4")) == "con_4"
    arr, dims = r.tensor()
    assert dims == [2, 1, 1, 1] and arr.tolist() == [1.5, -2.25]
    assert r.seek_record(("con_4",)) is None


def _photos(tmp_path):
    sdists = glob.glob(os.path.join(HERE, ".photos", "face_recognition-*.tar.gz"))
    if not sdists:
        pytest.skip("no face_recognition sdist in tests/.photos (see the README's set-up command)")
    out = []
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            if member.name.endswith(("obama.jpg", "biden.jpg", "obama2.jpg")):
                out.append(tar.extractfile(member).read())
    return out


def test_descriptors_equal_dlib_on_real_photos(tmp_path):
    dlib = pytest.importorskip("dlib", reason="the dlib extra (dlib-bin) is not installed")
    Image = pytest.importorskip("PIL.Image", reason="pillow is not installed")
    from fastface.backbones.dlib_resnet import DlibResNet, model_path
    try:
        path = model_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    photos = _photos(tmp_path)
    net = DlibResNet(path).eval()
    detector = dlib.get_frontal_face_detector()
    shapes = dlib.shape_predictor(model_path("shape_predictor_5_face_landmarks.dat"))
    reference = dlib.face_recognition_model_v1(path)
    for raw in photos:
        img = np.array(Image.open(io.BytesIO(raw)).convert("RGB"))
        rect = detector(img, 1)[0]
        chip = dlib.get_face_chip(img, shapes(img, rect), size=150, padding=0.25)
        ref = np.array(reference.compute_face_descriptor(chip))
        with torch.no_grad():
            desc, maps = net(net.preprocess(chip))
        assert np.abs(desc[0].numpy() - ref).max() <= 1e-4
        assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
            35: (32, 35, 35), 17: (64, 17, 17), 8: (128, 8, 8), 4: (256, 4, 4), 2: (256, 2, 2)}

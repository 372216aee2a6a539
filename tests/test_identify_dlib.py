"""`fastface identify --backbone dlib` and `fastface demo --backbone dlib --images DIR` on real photographs
(the face_recognition sdist's test images; the test skips with a reason without them or the dlib extra)."""
import glob
import json
import os
import tarfile

import pytest

from fastface.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
PEOPLE = {"obama": ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg"), "biden": ("biden.jpg",)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    pytest.importorskip("dlib", reason="the dlib extra (dlib-bin) is not installed")
    pytest.importorskip("PIL.Image", reason="pillow is not installed")
    from fastface.backbones.dlib_resnet import model_path
    try:
        model_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    sdists = glob.glob(os.path.join(HERE, ".photos", "face_recognition-*.tar.gz"))
    if not sdists:
        pytest.skip("no face_recognition sdist in tests/.photos (see the README's set-up command)")
    root = tmp_path_factory.mktemp("people")
    with tarfile.open(sdists[0]) as tar:
        for person, files in PEOPLE.items():
            (root / person).mkdir()
            for f in files:
                member = tar.getmember(f"{sdists[0].split('/')[-1][:-7]}/tests/test_images/{f}")
                (root / person / f).write_bytes(tar.extractfile(member).read())
    (root / "nobody").mkdir()   # an image without a face is skipped, and reported
    from PIL import Image
    Image.new("RGB", (120, 120), (128, 128, 128)).save(root / "nobody" / "grey.png")
    return str(root)


def test_identify_dlib_leave_one_out(photos, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", photos, "--backbone", "dlib", "--k", "3", "--json", str(out),
                 "--flows", str(tmp_path / "flows"), "--n-flows", "1", "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_unaligned"] == 1 and res["n_queries"] == 5
    # biden has no other photo: skipped by the metrics; every obama photo finds another obama first
    assert res["stage1"]["n_skipped"] == 1 and res["stage1"]["p_at_1"] == 1.0 and res["stage2"]["p_at_1"] == 1.0
    assert "without a detected face skipped" in capsys.readouterr().out
    assert os.path.getsize(tmp_path / "flows" / "query_0000.png") > 1000


def test_demo_dlib_on_an_image_folder(photos, tmp_path):
    rows = main(["demo", "--backbone", "dlib", "--images", photos, "--out", str(tmp_path), "--k", "3",
                 "--grid", "4", "--quiet"])
    assert rows == 0
    res = json.loads((tmp_path / "demo.json").read_text())
    assert [r["occlude"] for r in res] == ["none", "mask", "sunglasses", "crop"]
    assert all(r["grid"] == 4 and r["n_queries"] == 5 for r in res)
    assert os.path.isdir(tmp_path / "flows_mask")


# ----------------------------------------------------------------------------- real photographs (issue 11, 2)

def _read(photos, person, name):
    from PIL import Image
    return Image.open(os.path.join(photos, person, name)).convert("RGB")


def _with_exif_orientation(img, orientation):
    """img stored so that a viewer applying EXIF `orientation` shows the original again."""
    from PIL import Image
    stored = {6: img.transpose(Image.Transpose.ROTATE_90), 8: img.transpose(Image.Transpose.ROTATE_270),
              3: img.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return stored, exif


@pytest.fixture(scope="module")
def messy(photos, tmp_path_factory):
    """A folder as users have them: a sideways phone photo (EXIF orientation), a corrupt JPEG,
    a text file named .jpg, and a photograph with two people."""
    from PIL import Image
    root = tmp_path_factory.mktemp("messy")
    for person in ("obama", "biden", "pair"):
        (root / person).mkdir()
    obama, obama2 = _read(photos, "obama", "obama.jpg"), _read(photos, "obama", "obama2.jpg")
    biden = _read(photos, "biden", "biden.jpg")
    obama.save(root / "obama" / "a.jpg", quality=95)
    stored, exif = _with_exif_orientation(obama2, 6)
    stored.save(root / "obama" / "sideways.jpg", quality=95, exif=exif)
    biden.save(root / "biden" / "a.jpg", quality=95)
    raw = (root / "biden" / "a.jpg").read_bytes()
    (root / "biden" / "truncated.jpg").write_bytes(raw[:len(raw) // 3])
    (root / "biden" / "notes.jpg").write_text("not an image")
    # two faces side by side, obama's scaled up so that it is the larger one
    o = obama.resize((obama.width * 3 // 2, obama.height * 3 // 2))
    canvas = Image.new("RGB", (o.width + biden.width, max(o.height, biden.height)), (90, 90, 90))
    canvas.paste(o, (0, 0))
    canvas.paste(biden, (o.width, 0))
    canvas.save(root / "pair" / "two.jpg", quality=95)
    return str(root)


def test_exif_orientation_is_applied(messy):
    from fastface.data import read_image
    from fastface.data.align import DlibAligner
    upright = read_image(os.path.join(messy, "obama", "sideways.jpg"))
    assert upright.shape[1] > upright.shape[2]                  # portrait again, as the viewer shows it
    assert DlibAligner().align(os.path.join(messy, "obama", "sideways.jpg")) is not None   # HOG needs upright


def test_unreadable_files_are_skipped_and_counted(messy, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", messy, "--backbone", "dlib", "--k", "3", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_unreadable"] == 2 and sorted(os.path.basename(p) for p in res["unreadable"]) == \
        ["notes.jpg", "truncated.jpg"]
    assert res["n_unaligned"] == 0 and res["n_queries"] == 4    # a, sideways, biden a, the pair's largest
    assert "2 unreadable files skipped" in capsys.readouterr().out


def test_all_faces_uses_every_detected_face(messy, tmp_path):
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", messy, "--backbone", "dlib", "--k", "3", "--all-faces", "--json",
                 str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_queries"] == 5
    pair = [q for q in res["queries"] if q["path"].endswith("two.jpg")]
    assert len(pair) == 2
    # the largest face (obama's, scaled up) comes first and finds obama's photos; the second biden's
    assert pair[0]["stage1"][0]["path"].endswith(("obama/a.jpg", "obama/sideways.jpg"))
    assert pair[1]["stage1"][0]["path"].endswith("biden/a.jpg")


def test_68_point_model_loaded_only_for_landmarks(messy, tmp_path, monkeypatch):
    import dlib

    from fastface.data.align import SHAPE5_FILE, SHAPE68_FILE
    loaded = []
    real = dlib.shape_predictor

    def recording(path):
        loaded.append(os.path.basename(path))
        return real(path)
    monkeypatch.setattr(dlib, "shape_predictor", recording)
    assert main(["identify", "--gallery", messy, "--backbone", "dlib", "--k", "2", "--quiet"]) == 0
    assert loaded == [SHAPE5_FILE]
    assert main(["identify", "--gallery", messy, "--backbone", "dlib", "--k", "2", "--occlude", "mask", "--quiet"]) == 0
    assert loaded[1:] == [SHAPE5_FILE, SHAPE68_FILE]


def test_arguments_checked_before_any_image_is_decoded(messy, monkeypatch, capsys):
    import fastface.data.folder as folder

    def boom(*a, **k):
        raise AssertionError("an image was decoded")
    monkeypatch.setattr(folder, "open_image", boom)
    for argv, words in ((["--backbone", "dlib:4", "--grid", "8"], ["grid 8", "4x4"]),
                        (["--backbone", "dlib:4", "--grid", "4", "--weighting", "cc"], ["cc", "128", "256"]),
                        (["--backbone", "arcface", "--all-faces"], ["all_faces", "--align dlib"]),
                        (["--k", "0"], ["k must be", "got 0"]),
                        (["--alpha", "1.5"], ["alpha", "1.5"]),
                        (["--eps", "-1"], ["eps", "-1"])):
        assert main(["identify", "--gallery", messy, "--quiet", *argv]) == 2, argv
        err = capsys.readouterr().err
        for w in words:
            assert w in err, (argv, w, err)


def test_arcface_template_alignment(photos):
    """--align dlib: the eyes of the warped face sit on the ArcFace template (dlib's 5-point model
    run again on the warped face finds them within 2 px at 128 px)."""
    import dlib
    import numpy as np

    from fastface.backbones.dlib_resnet import model_path
    from fastface.data.align import TemplateAligner, eye_centres5
    aligner = TemplateAligner(size=128)
    for person, name in (("obama", "obama.jpg"), ("obama", "obama2.jpg"), ("biden", "biden.jpg")):
        face = aligner.align(os.path.join(photos, person, name), landmarks=False)
        assert face.chip.shape == (128, 128, 3) and np.isnan(face.landmarks68).all()
        rects = aligner.detector(face.chip, 1)
        assert len(rects) == 1, name
        pts = np.array([(p.x, p.y) for p in aligner.shape5(face.chip, rects[0]).parts()], dtype=np.float64)
        err = np.linalg.norm(eye_centres5(pts) - aligner.template[:2], axis=1)
        assert err.max() < 2.0, (name, err)
        assert dlib is not None and model_path()
        # the 68 landmarks follow the same warp: their eye centres sit on the template's eyes too
        lm = aligner.align(os.path.join(photos, person, name)).landmarks68            # (68, 2) chip pixels
        eyes68 = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
        assert np.linalg.norm(eyes68 - aligner.template[:2], axis=1).max() < 3.0, name


def test_identify_arcface_with_dlib_alignment(messy, tmp_path):
    out = tmp_path / "r.json"
    assert main(["identify", "--gallery", messy, "--backbone", "arcface", "--align", "dlib", "--grid", "4",
                 "--k", "3", "--all-faces", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["n_queries"] == 5 and res["n_unreadable"] == 2 and res["align"] == "dlib"

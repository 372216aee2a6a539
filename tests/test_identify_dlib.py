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

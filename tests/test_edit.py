"""D²AE face editing (fastface.edit, `fastface edit`) on a small D²AE trained once for this file: an identity-
irrelevant edit on f_P keeps the identity and moves the attribute's SVM score the right way; identity swap
moves the identity; alpha bounds, unknown names and bad input are refused."""
import json

import pytest
import torch
import torch.nn.functional as F

from fastface.data import SynthFaces
from fastface.edit import (AttributeDirections, attribute_sweep, direction_sigma, edit_attributes, edit_features,
                           fit_directions, interpolation_grid, parse_edits, swap_identity)
from fastface.eval.d2ae import extract_features
from fastface.train.d2ae import D2AETrainConfig, render_synthfaces, to_uint8, train_d2ae

N_IDS = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 16 px D²AE trained on 12 SynthFaces identities x 10 images (about 10 s on one thread), the faces
    (as the model saw them: uint8-rounded) and the attribute directions fitted on them."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = render_synthfaces(N_IDS, 10, 16, seed=0)
    images = to_uint8(d["images"])
    cfg = D2AETrainConfig(n_identities=N_IDS, images_per_identity=10, image_size=16, width=8, branch_width=32,
                          feature_dim=32, decoder_width=32, batch_size=40, epochs=60, lr=3e-3, checkpoint_every=1000)
    out = tmp_path_factory.mktemp("d2ae")
    model = train_d2ae(cfg, out, data=(images, d["identities"]), progress=False)["model"].eval()
    x = images.float() / 255
    dirs = fit_directions(model, x, d["attributes"], SynthFaces.ATTRIBUTES, SynthFaces.IDENTITY_RELATED)
    torch.set_num_threads(n)
    return {"model": model, "x": x, "ids": d["identities"], "attributes": d["attributes"], "dirs": dirs,
            "path": out / "model.pt"}


def nearest_identity(model, x, ids, f_t):
    """Identity (B,) of the nearest f_T centroid (cosine) of the training faces."""
    f = extract_features(model, x)["t"]
    centroids = F.normalize(torch.stack([f[ids == k].mean(0) for k in range(N_IDS)]), dim=1)
    return (F.normalize(f_t, dim=1) @ centroids.T).argmax(1)


def test_directions_live_on_the_branch_of_their_attribute(trained):
    dirs = trained["dirs"]
    for name, branch in zip(dirs.names, dirs.branches):
        related = SynthFaces.IDENTITY_RELATED[SynthFaces.ATTRIBUTES.index(name)]
        assert branch == ("t" if related else "p"), name
    torch.testing.assert_close(dirs.directions.norm(dim=1), torch.ones(len(dirs.names)))


def test_editing_an_identity_irrelevant_attribute_keeps_the_identity_and_moves_its_score(trained):
    m, x, ids, dirs = trained["model"], trained["x"], trained["ids"], trained["dirs"]
    name = "dark_background"
    a = SynthFaces.ATTRIBUTES.index(name)
    without = trained["attributes"][:, a] < 0.5
    assert dirs.branches[dirs.index(name)] == "p" and int(without.sum()) >= 30
    src, src_ids = x[without], ids[without]
    with torch.no_grad():
        recon = m.decode(*m.encode(src))
        edited = edit_attributes(m, src, dirs, {name: 3.0})
    r, e = extract_features(m, recon), extract_features(m, edited)
    before, after = dirs.score(name, r["t"], r["p"]), dirs.score(name, e["t"], e["p"])
    # the re-encoded edit scores higher on the attribute than the re-encoded plain reconstruction, for most
    # faces and on average (paired t statistic > 3)
    diff = after - before
    assert (diff > 0).float().mean() >= 0.7 and diff.mean() / (diff.std() / len(diff) ** 0.5) > 3
    # and keeps its identity as well as the plain reconstruction does (chance: 1 / 12)
    kept = (nearest_identity(m, x, ids, e["t"]) == src_ids).float().mean()
    kept_recon = (nearest_identity(m, x, ids, r["t"]) == src_ids).float().mean()
    assert kept >= 3 / N_IDS and kept >= kept_recon - 0.1
    # the opposite edit moves the score the other way
    with torch.no_grad():
        down = extract_features(m, edit_attributes(m, src, dirs, {name: -3.0}))
    assert (dirs.score(name, down["t"], down["p"]) < before).float().mean() >= 0.7


def test_identity_swap_takes_the_identity_of_b(trained):
    m, x, ids = trained["model"], trained["x"], trained["ids"]
    a_idx = torch.arange(0, len(ids), 10)                    # one face per identity
    b_idx = a_idx.roll(1)
    with torch.no_grad():
        swapped = swap_identity(m, x[a_idx], x[b_idx])
    who = nearest_identity(m, x, ids, extract_features(m, swapped)["t"])
    assert (who == ids[b_idx]).float().mean() > (who == ids[a_idx]).float().mean()


def test_several_edits_add_up_and_alpha_is_in_units_of_the_learned_sigma(trained):
    m, x, dirs = trained["model"], trained["x"][:4], trained["dirs"]
    f_t, f_p = m.encode(x)
    edits = {"dark_background": 1.5, "smiling": -2.0, "dark_skin": 2.5}
    t2, p2 = edit_features(m, f_t, f_p, dirs, edits)
    want_t, want_p = f_t.clone(), f_p.clone()
    for name, alpha in edits.items():
        i = dirs.index(name)
        sigma = m.sigma_t if dirs.branches[i] == "t" else m.sigma_p
        step = alpha * (dirs.directions[i] ** 2 * sigma ** 2).sum().sqrt() * dirs.directions[i]
        assert direction_sigma(m, dirs, i) == pytest.approx(float((dirs.directions[i] ** 2 * sigma ** 2).sum().sqrt()))
        if dirs.branches[i] == "t":
            want_t += step
        else:
            want_p += step
    torch.testing.assert_close(t2, want_t)
    torch.testing.assert_close(p2, want_p)
    assert not torch.equal(t2, f_t) and not torch.equal(p2, f_p)     # dark_skin moved f_T, the others f_P


def test_grids_have_their_shapes_and_corners(trained):
    m, x, dirs = trained["model"], trained["x"], trained["dirs"]
    with torch.no_grad():
        grid = interpolation_grid(m, x[0], x[15], steps=4)
        assert grid.shape == (16, 3, 16, 16)
        torch.testing.assert_close(grid[0], m.decode(*m.encode(x[:1]))[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grid[-1], m.decode(*m.encode(x[15:16]))[0], rtol=1e-4, atol=1e-4)
        f_t, f_p = m.encode(x[[0, 15]])
        torch.testing.assert_close(grid[3], m.decode(f_t[:1], f_p[1:])[0], rtol=1e-4, atol=1e-4)
        assert attribute_sweep(m, x[:2], dirs, "smiling", [-3, 0, 3]).shape == (6, 3, 16, 16)


def test_bad_edits_are_refused(trained):
    m, x, dirs = trained["model"], trained["x"][:2], trained["dirs"]
    with pytest.raises(ValueError, match="unknown attribute 'beard'; known attributes: wide_face"):
        edit_attributes(m, x, dirs, {"beard": 1.0})
    with pytest.raises(ValueError, match=r"alpha of 'smiling' must be in \[-3.0, 3.0\].*got 3.5"):
        edit_attributes(m, x, dirs, {"smiling": 3.5})
    with pytest.raises(ValueError, match="finite"):
        edit_attributes(m, x, dirs, {"smiling": float("nan")})
    with pytest.raises(TypeError, match="non-empty dict"):
        edit_attributes(m, x, dirs, {})
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 16, 16\)"):
        edit_attributes(m, torch.rand(2, 3, 32, 32), dirs, {"smiling": 1.0})
    with pytest.raises(ValueError, match="same shape"):
        swap_identity(m, x, x[:1])
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        interpolation_grid(m, x[0], x[1], steps=1)
    with pytest.raises(ValueError, match=r"image_b must be one image \(C, S, S\), got \(2, 3, 16, 16\)"):
        interpolation_grid(m, x[0], x)
    with pytest.raises(ValueError, match="NAME=ALPHA"):
        parse_edits(["smiling"])
    with pytest.raises(ValueError, match="NAME=ALPHA"):
        parse_edits(["smiling=lots"])


def test_directions_save_and_load(trained, tmp_path):
    dirs = trained["dirs"]
    dirs.save(tmp_path / "d.npz")
    back = AttributeDirections.load(tmp_path / "d.npz")
    assert back.names == dirs.names and back.branches == dirs.branches
    torch.testing.assert_close(back.coef, dirs.coef)


def test_cli_edit(trained, tmp_path, capsys):
    from fastface.cli import main
    args = ["edit", "--model", str(trained["path"]), "--out", str(tmp_path), "--n", "8", "--fit-identities", "20",
            "--fit-images", "4", "--steps", "3", "--device", "cpu"]
    assert main(args + ["--attribute", "dark_background=3", "--attribute", "dark_skin=-2"]) == 0
    out = capsys.readouterr().out
    assert "dark_background (f_P, alpha +3)" in out and "dark_skin (f_T, alpha -2)" in out
    assert {p.name for p in tmp_path.iterdir()} >= {"edits.png", "swap.png", "interpolation.png", "directions.npz",
                                                    "edit.json"}
    report = json.loads((tmp_path / "edit.json").read_text())
    assert report["edits"]["dark_background"]["score_after"] > report["edits"]["dark_background"]["score_before"]
    assert main(args + ["--attribute", "beard=1"]) == 2
    assert "unknown attribute 'beard'" in capsys.readouterr().err
    assert main(args + ["--attribute", "smiling=9"]) == 2
    assert "must be in [-3.0, 3.0]" in capsys.readouterr().err

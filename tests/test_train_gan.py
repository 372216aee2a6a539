"""`fastface train gan`: the losses, R1 against a hand computation, one step against a replica, exact
resume, the FID-style score and sample grids, image folders, the CLI; `fastface sample`."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastface
from fastface.models.dcgan import Generator
from fastface.train.gan import (GANTrainConfig, GANTrainer, discriminator_loss, generator_loss, r1_penalty,
                                train_gan)
from fastface.train.loop import fit, read_log

TINY = dict(n_identities=4, images_per_identity=4, image_size=8, latent_dim=8, width=4, max_width=8, d_width=4,
            batch_size=4, epochs=2, n_fid=8, n_samples=4, checkpoint_every=3)


def images(n=16, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).round().to(torch.uint8)


# ------------------------------------------------------------------------------------- losses
def test_non_saturating_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(7, generator=g), torch.randn(7, generator=g)
    sig = torch.sigmoid
    want_d = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    torch.testing.assert_close(discriminator_loss(real, fake), want_d)
    torch.testing.assert_close(generator_loss(fake), -torch.log(sig(fake)).mean())
    # stable for large logits (softplus, not log(sigmoid))
    assert torch.isfinite(discriminator_loss(torch.tensor([-200.0]), torch.tensor([200.0])))


class Quadratic(nn.Module):
    """D(x) = c sum(x^2) + w . x: grad_x D = 2 c x + w."""

    def __init__(self, shape, gen):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(0.7))
        self.w = nn.Parameter(torch.randn(shape, generator=gen))

    def forward(self, x):
        return self.c * x.pow(2).flatten(1).sum(1) + (x * self.w).flatten(1).sum(1)


def test_r1_penalty_by_hand_and_its_gradient():
    gen = torch.Generator().manual_seed(1)
    d = Quadratic((3, 5, 5), gen)
    x = torch.randn(6, 3, 5, 5, generator=gen)
    r1 = r1_penalty(d, x)
    grad = 2 * d.c.detach() * x + d.w.detach()
    want = grad.pow(2).flatten(1).sum(1).mean()
    torch.testing.assert_close(r1, want)
    # the penalty has its graph: d R1 / d c = mean 2 (2 c x + w) . (2 x)
    r1.backward()
    want_dc = (2 * grad * 2 * x).flatten(1).sum(1).mean()
    torch.testing.assert_close(d.c.grad, want_dc)
    assert x.grad is None                                             # the input is not touched


# ------------------------------------------------------------------------------------- one step
def _trainer(tmp_path, **kw):
    cfg = GANTrainConfig(**{**TINY, **kw})
    return fit(GANTrainer, cfg, tmp_path, progress=False, stop_after=0, images=images())


@pytest.mark.parametrize("r1_step", [True, False])
def test_train_step_matches_a_replica(tmp_path, r1_step):
    t = _trainer(tmp_path, r1_gamma=3.0, r1_every=2)
    t.run.step = 0 if r1_step else 1                     # lazy R1 on steps 0, 2, ... (before the step)
    G, D = copy.deepcopy(t.generator), copy.deepcopy(t.discriminator)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.99))
    batch = {"image": images(4, seed=3)}
    torch.manual_seed(5)
    out = t.train_step(batch)
    torch.manual_seed(5)
    real = batch["image"].float() / 127.5 - 1
    with torch.no_grad():
        fake = G(torch.randn(4, 8))
    loss_d = F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()
    total = loss_d + (3.0 / 2 * 2 * r1_penalty(D, real) if r1_step else 0)
    opt_d.zero_grad()
    total.backward()
    opt_d.step()
    loss_g = F.softplus(-D(G(torch.randn(4, 8)))).mean()
    opt_g.zero_grad()
    loss_g.backward()
    opt_g.step()
    assert out["loss_d"] == pytest.approx(loss_d.item(), rel=1e-6)
    assert out["loss_g"] == pytest.approx(loss_g.item(), rel=1e-6)
    assert ("r1" in out) == r1_step
    for mine, want in ((t.discriminator, D), (t.generator, G)):
        for (k, a), b in zip(mine.state_dict().items(), want.state_dict().values()):
            torch.testing.assert_close(a, b, msg=k)
    assert all(p.grad is None for p in t.discriminator.parameters())   # G's step leaves no grads in D


# ------------------------------------------------------------------------------------- the loop
def test_training_resumes_exactly_and_exports_the_generator(tmp_path):
    cfg = GANTrainConfig(**TINY, sample_every=3, eval_every=4)
    full = train_gan(cfg, tmp_path / "full", images=images(), progress=False)
    train_gan(cfg, tmp_path / "cut", images=images(), progress=False, stop_after=5)
    cut = train_gan(cfg, tmp_path / "cut", images=images(), progress=False)
    assert full["step"] == cut["step"] == 8
    for name in ("generator", "discriminator"):
        for k, v in full[name].state_dict().items():
            torch.testing.assert_close(v, cut[name].state_dict()[k], rtol=0, atol=0, msg=f"{name}.{k}")
    # the cut run logged steps 4-5 twice (killed after 5, resumed from the checkpoint of step 3): same values
    losses = lambda d: {r["step"]: (r["loss_d"], r["loss_g"]) for r in read_log(d)}  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")
    g = fastface.load(tmp_path / "full" / "model.pt", kind="gan")
    assert isinstance(g, Generator) and not g.training and g.cfg.image_size == 8
    z = torch.randn(3, 8)
    torch.testing.assert_close(g(z), full["generator"](z))
    saved = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    assert saved["train_config"]["r1_gamma"] == cfg.r1_gamma
    assert not any(k.startswith("head") or "features" in k for k in saved["state_dict"])   # no discriminator
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    assert set(last["modules"]) == {"generator", "discriminator"}
    # hooks: grids at 3, 6, 8; FID-style score at 4 and 8, equal in both runs (fixed latents)
    assert sorted(p.name for p in (tmp_path / "full" / "samples").iterdir()) == [
        "samples_0000003.png", "samples_0000006.png", "samples_0000008.png"]
    evals = lambda d: {r["step"]: r["fid"] for r in read_log(d, events=True) if r.get("event") == "eval"}  # noqa
    assert sorted(evals(tmp_path / "full")) == [4, 8]
    assert evals(tmp_path / "full") == evals(tmp_path / "cut")
    assert all(f > 0 for f in evals(tmp_path / "full").values())


def test_spectral_norm_discriminator_trains_and_resumes_exactly(tmp_path):
    from fastface.models.dcgan import Discriminator, GANConfig
    d = Discriminator(GANConfig(image_size=16, d_width=4, spectral_norm=True))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(hasattr(m, "parametrizations") for m in convs)
    for _ in range(30):                                   # power iterations run in training forwards
        d(torch.randn(2, 3, 16, 16))
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
    cfg = GANTrainConfig(**TINY, spectral_norm=True, r1_gamma=0.0)
    full = train_gan(cfg, tmp_path / "full", images=images(), progress=False)
    train_gan(cfg, tmp_path / "cut", images=images(), progress=False, stop_after=5)
    cut = train_gan(cfg, tmp_path / "cut", images=images(), progress=False)
    for name in ("generator", "discriminator"):
        for k, v in full[name].state_dict().items():
            torch.testing.assert_close(v, cut[name].state_dict()[k], rtol=0, atol=0, msg=f"{name}.{k}")
    assert all("r1" not in r for r in read_log(tmp_path / "full"))
    assert fastface.load(tmp_path / "full" / "model.pt").cfg.spectral_norm


def test_fid_hook_scores_the_eval_generator_against_real_faces(tmp_path):
    from fastface.backbones import load_encoder
    from fastface.eval.frechet import encoder_features, frechet_distance
    t = _trainer(tmp_path)
    fid = t.evaluate(0)
    enc = load_encoder("arcface")
    g = copy.deepcopy(t.generator).eval()
    with torch.no_grad():
        fake = g(t.fid_latents) * 0.5 + 0.5
    want = frechet_distance(encoder_features(enc, fake), encoder_features(enc, t.data.images[:8].float() / 255))
    assert fid == pytest.approx(want, rel=1e-5)
    assert t.generator.training                         # the hook restores train mode


def test_trains_on_an_image_folder_and_synthfaces(tmp_path):
    from fastface.data import SynthFaces, export_image_folder
    export_image_folder(SynthFaces(n_identities=3, images_per_identity=3, size=16, seed=3), tmp_path / "faces")
    cfg = GANTrainConfig(**{**TINY, "data": str(tmp_path / "faces"), "image_size": 16, "epochs": 1})
    out = train_gan(cfg, tmp_path / "run", progress=False)
    assert out["step"] == 2                               # 9 images, batch 4
    cfg = GANTrainConfig(**{**TINY, "epochs": 1})           # SynthFaces rendered at 16, downsampled to 8
    t = fit(GANTrainer, cfg, tmp_path / "synth", progress=False, stop_after=0)
    assert t.data.images.shape == (16, 3, 8, 8) and t.data.images.dtype == torch.uint8


@pytest.mark.parametrize("kw, match", [
    (dict(image_size=12), "image_size must be a power of two"),
    (dict(r1_gamma=-1.0), "r1_gamma must be >= 0"),
    (dict(r1_every=0), "r1_every must be a positive int"),
    (dict(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (dict(n_fid=1), "n_fid must be >= 2"),
    (dict(fid_encoder="inception"), "backbone must be"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        GANTrainConfig(**{**TINY, **kw})


def test_training_images_of_the_wrong_size_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"training images must be \(N, 3, 8, 8\).*\(16, 3, 16, 16\)"):
        train_gan(GANTrainConfig(**TINY), tmp_path, images=images(size=16), progress=False)


# ------------------------------------------------------------------------------------- the CLI
def test_cli_trains_a_gan_and_samples_it(tmp_path, capsys):
    from fastface.cli import main
    sets = [x for k, v in {**TINY, "epochs": 1, "sample_every": 2}.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", "gan", *sets, "--out", str(tmp_path / "g"), "--device", "cpu", "--quiet"]) == 0
    assert "trained 4 of 4 steps" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "g" / "samples").iterdir()) == ["samples_0000002.png",
                                                                              "samples_0000004.png"]
    model = tmp_path / "g" / "model.pt"
    assert main(["sample", "--model", str(model), "--n", "6", "--out", str(tmp_path / "grid.png"), "--seed", "3",
                 "--latents", str(tmp_path / "z.npy"), "--impl", "cpu"]) == 0
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (6, 8) and z.dtype == np.float32
    from PIL import Image
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (6 * 10 + 2, 10 + 2)                               # nrow 8: 6 faces in one row, pad 2
    # the grid holds G(z) of the saved latents, mapped from [-1, 1] to [0, 1]
    from fastface.viz.grid import image_grid
    g = fastface.load(model)
    with torch.no_grad():
        want = image_grid(g(torch.from_numpy(z)) * 0.5 + 0.5, nrow=8)
    got = torch.from_numpy(np.array(grid)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(got, want, atol=1 / 255 + 1e-6, rtol=0)
    # same seed, same latents; another seed, others
    assert main(["sample", "--model", str(model), "--n", "6", "--out", str(tmp_path / "g2.png"), "--seed", "3",
                 "--latents", str(tmp_path / "z2.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z2.npy"), z)
    assert main(["sample", "--model", str(model), "--n", "6", "--out", str(tmp_path / "g3.png"), "--seed", "4",
                 "--latents", str(tmp_path / "z3.npy")]) == 0
    assert not np.array_equal(np.load(tmp_path / "z3.npy"), z)
    capsys.readouterr()


def test_sample_refuses_other_files(tmp_path, capsys):
    from fastface.cli import main
    from fastface.models.serialization import save_model
    from fastface.models.r3an import build_transform
    spec = dict(kind="fc", source_dim=4, target_dim=3, hidden=5, n_hidden=1)
    save_model(tmp_path / "fc.pt", "r3an", spec, build_transform(spec))
    assert main(["sample", "--model", str(tmp_path / "fc.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds a r3an model, not a gan" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a model")
    assert main(["sample", "--model", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not a fastface model" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    g = Generator(latent_dim=8, image_size=8, width=4, max_width=8)
    save_model(tmp_path / "g.pt", "gan", g.cfg.to_dict(), g)
    assert main(["sample", "--model", str(tmp_path / "g.pt"), "--n", "0", "--out", str(tmp_path / "x.png")]) == 2
    assert "--n must be a positive int, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

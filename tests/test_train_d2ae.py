"""`fastface train d2ae`: one step equals a hand-written replica, exact resume, model.pt, ablation switches,
image folders, the CLI."""
import copy

import pytest
import torch

import fastface
from fastface.models.d2ae import D2AE
from fastface.models.d2ae_losses import d2ae_losses
from fastface.train.d2ae import D2AETrainConfig, D2AETrainer, train_d2ae
from fastface.train.loop import fit, read_log

TINY = dict(n_identities=4, images_per_identity=4, image_size=16, width=4, branch_width=8, feature_dim=6,
            decoder_width=16, batch_size=4, epochs=2, checkpoint_every=3, n_samples=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=16, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) // 4


def test_train_step_is_one_optimiser_step_on_the_routed_total(tmp_path):
    t = fit(D2AETrainer, D2AETrainConfig(**TINY), tmp_path, progress=False, stop_after=0, data=data())
    model = copy.deepcopy(t.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, ids = data(4, seed=3)
    torch.manual_seed(5)
    out = t.train_step({"image": images, "identity": ids})
    torch.manual_seed(5)
    want = d2ae_losses(model, images.float() / 255, ids)
    opt.zero_grad()
    want["total"].backward()
    opt.step()
    assert out["loss_total"] == pytest.approx(want["total"].item(), rel=1e-6)
    assert {"loss_identity", "loss_adversary", "loss_confusion", "loss_reconstruction", "loss_reconstruction_aug",
            "acc_t", "acc_p"} <= set(out)
    for (k, a), b in zip(t.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_training_resumes_exactly_and_exports_the_model(tmp_path):
    cfg = D2AETrainConfig(**TINY, sample_every=3)
    full = train_d2ae(cfg, tmp_path / "full", data=data(), progress=False)
    train_d2ae(cfg, tmp_path / "cut", data=data(), progress=False, stop_after=5)
    cut = train_d2ae(cfg, tmp_path / "cut", data=data(), progress=False)
    assert full["step"] == cut["step"] == 8
    for k, v in full["model"].state_dict().items():     # weights and the running sigma buffers
        torch.testing.assert_close(v, cut["model"].state_dict()[k], rtol=0, atol=0, msg=k)
    losses = lambda d: {r["step"]: r["loss_total"] for r in read_log(d)}  # noqa: E731
    assert losses(tmp_path / "full") == losses(tmp_path / "cut")
    m = fastface.load(tmp_path / "full" / "model.pt", kind="d2ae")
    assert isinstance(m, D2AE) and not m.training and m.cfg.n_identities == 4
    x = torch.rand(2, 3, 16, 16)
    f_t, f_p = m.encode(x)
    torch.testing.assert_close(m.decode(f_t, f_p), full["model"].eval().decode(*full["model"].encode(x)))
    assert sorted(p.name for p in (tmp_path / "full" / "samples").iterdir()) == [
        "reconstructions_0000003.png", "reconstructions_0000006.png", "reconstructions_0000008.png"]


@pytest.mark.parametrize("kw, losses", [
    (dict(baseline=True), {"loss_identity", "loss_total"}),
    (dict(confusion=False), {"loss_identity", "loss_adversary", "loss_reconstruction", "loss_reconstruction_aug",
                             "loss_total"}),
    (dict(adversary=False), {"loss_identity", "loss_confusion", "loss_reconstruction", "loss_reconstruction_aug",
                             "loss_total"}),
    (dict(augment=False), {"loss_identity", "loss_adversary", "loss_confusion", "loss_reconstruction",
                           "loss_total"}),
])
def test_ablation_switches(tmp_path, kw, losses):
    out = train_d2ae(D2AETrainConfig(**{**TINY, "epochs": 1, **kw}), tmp_path, data=data(), progress=False)
    logged = {k for k in read_log(tmp_path)[-1] if k.startswith("loss_")}
    assert logged == losses
    if kw.get("baseline"):
        assert not hasattr(out["model"], "decoder") and not hasattr(out["model"], "branch_p")
        assert not (tmp_path / "samples").exists() or not list((tmp_path / "samples").iterdir())


def test_trains_on_synthfaces_and_an_image_folder(tmp_path):
    from fastface.data import SynthFaces, export_image_folder
    t = fit(D2AETrainer, D2AETrainConfig(**TINY), tmp_path / "s", progress=False, stop_after=0)
    assert t.data.images.shape == (16, 3, 16, 16) and t.model.cfg.n_identities == 4
    export_image_folder(SynthFaces(n_identities=3, images_per_identity=3, size=16, seed=3), tmp_path / "faces")
    out = train_d2ae(D2AETrainConfig(**{**TINY, "data": str(tmp_path / "faces"), "epochs": 1}), tmp_path / "f",
                     progress=False)
    assert out["step"] == 2 and out["model"].cfg.n_identities == 3


def test_the_adversary_learns_at_its_own_rate(tmp_path):
    # adversary_lr_scale: the P classifier in a parameter group of its own, every other parameter at lr.
    cfg = D2AETrainConfig(**TINY, adversary_lr_scale=10.0)
    t = fit(D2AETrainer, cfg, tmp_path, progress=False, stop_after=0, data=data())
    groups = t.optimizers["adam"].param_groups
    adversary = {id(p) for p in t.model.classifier_p.parameters()}
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-2)]
    assert {id(p) for p in groups[1]["params"]} == adversary
    assert {id(p) for p in groups[0]["params"]} | adversary == {id(p) for p in t.model.parameters()}
    before = {k: v.clone() for k, v in t.model.classifier_p.state_dict().items()}
    t.train_step({"image": data(4, seed=3)[0], "identity": torch.arange(4)})
    step = (t.model.classifier_p.weight - before["weight"]).abs().max().item()
    assert step == pytest.approx(1e-2, rel=0.05)   # Adam's first step moves each weight by ~lr


@pytest.mark.parametrize("kw, match", [(dict(image_size=24), "power of two"), (dict(optimizer="lbfgs"), "optimizer"),
                                       (dict(adversary_lr_scale=0.0), "adversary_lr_scale"),
                                       (dict(lambda_p=-1.0), "lambda_p"), (dict(lr=0.0), "lr must be > 0"),
                                       (dict(n_samples=0), "n_samples")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        D2AETrainConfig(**{**TINY, **kw})


def test_training_images_of_the_wrong_size_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"training images must be \(N, 3, 16, 16\).*\(16, 3, 32, 32\)"):
        train_d2ae(D2AETrainConfig(**TINY), tmp_path, data=data(size=32), progress=False)


def test_cli_trains_d2ae(tmp_path, capsys):
    from fastface.cli import main
    args = ["train", "d2ae", "--out", str(tmp_path), "--steps", "2", "--device", "cpu", "--quiet"]
    for k, v in TINY.items():
        args += ["--set", f"{k}={v}"]
    assert main(args + ["--set", "baseline=true"]) == 0
    assert "trained 2 of 2 steps" in capsys.readouterr().out
    assert fastface.load(tmp_path / "model.pt").encode(torch.rand(1, 3, 16, 16))[1] is None

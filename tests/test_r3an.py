"""R³AN: Table 1 shapes, losses, Algorithm 1 stages, training, resume, transform CLI, CMFR, bad input."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from fastface.eval.cmfr import cmfr_scores, cross_identification, markdown_table, reconstruction_figure
from fastface.eval.metrics import identification_with_distractors
from fastface.models.r3an import (Discriminator, Extractor, FCTransform, Generator, R3AN, adversarial_loss,
                                  build_transform, count_parameters, discriminator_loss, fc_hidden_for, l2_loss,
                                  reconstruction_loss, regression_loss, representation_loss)
from fastface.train import load_checkpoint
from fastface.train.loop import read_log
from fastface.train.r3an import (PRESETS, R3ANConfig, algorithm1_step, d_step, e_step, g_step, load_transform,
                                 make_optimizers, model_spec, recon_batch, reg_step, train_r3an, transform_features,
                                 transform_file)

TINY_MODEL = dict(g_width=0.0625, e_width=0.25, e_repeats=(1, 1, 1, 1, 1), d_width=0.5)
TINY = dict(epochs=2, batch_size=8, checkpoint_every=2, **TINY_MODEL)


def tiny_triples(n=24, ds=16, dt=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, ds, generator=g), y=torch.nn.functional.normalize(torch.randn(n, dt, generator=g)),
                images=torch.randint(0, 256, (n, 3, 56, 56), generator=g, dtype=torch.uint8))


def tiny_model(ds=16, dt=8):
    torch.manual_seed(0)
    return R3AN(ds, dt, 3, **{k: v for k, v in TINY_MODEL.items()})


# --------------------------------------------------------------------------------- Table 1 shapes
def test_generator_layer_shapes_are_table_1():
    g = Generator(256)
    outs = g(torch.randn(2, 256), return_all=True)
    assert [tuple(o.shape[1:]) for o in outs] == [(512, 4, 4), (128, 7, 7), (32, 14, 14), (8, 28, 28), (3, 56, 56)]
    assert all(isinstance(getattr(g, f"fconv{i}"), torch.nn.ConvTranspose2d) for i in range(1, 6))
    assert outs[-1].abs().max() <= 1  # Tanh
    assert Generator(128)(torch.randn(2, 128)).shape == (2, 3, 56, 56)  # other source dimensions


def test_extractor_and_discriminator_shapes_are_table_1():
    e = Extractor(256)
    outs = e(torch.randn(2, 3, 56, 56), return_all=True)
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 28, 28), (64, 14, 14), (96, 14, 14), (160, 7, 7),
                                                  (320, 7, 7), (1280, 7, 7), (1280, 1, 1), (256, 1, 1)]
    assert Extractor(128)(torch.randn(2, 3, 56, 56)).shape == (2, 128)
    convs, logits = Discriminator()(torch.randn(2, 3, 56, 56), return_all=True)
    assert [tuple(o.shape[1:]) for o in convs] == [(4, 28, 28), (8, 14, 14), (16, 7, 7), (32, 4, 4), (64, 2, 2),
                                                   (128, 1, 1)]
    assert logits.shape == (2,)
    r = R3AN(256, 128).eval()
    assert r.transform(torch.randn(3, 256)).shape == (3, 128)


@pytest.mark.parametrize("ds,dt,kw", [(256, 256, {}), (128, 256, {}), (16, 8, TINY_MODEL)])
def test_fc_baseline_has_r3an_parameter_count(ds, dt, kw):
    r3an = R3AN(ds, dt, **kw)
    spec = model_spec(R3ANConfig.preset("fc", **kw), ds, dt)
    fc = FCTransform(**{k: v for k, v in spec.items() if k != "kind"})
    assert abs(count_parameters(fc) - r3an.transform_parameters()) <= 0.01 * r3an.transform_parameters()
    assert fc_hidden_for(count_parameters(FCTransform(ds, dt, 300)), ds, dt) == 300


# --------------------------------------------------------------------------------- losses
def test_losses_on_hand_computable_cases():
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[3.0, 4.0], [6.0, 8.0]]).view(2, 1, 1, 2)
    for fn in (l2_loss, reconstruction_loss, representation_loss, regression_loss):
        assert fn(pred, target).item() == pytest.approx(7.5)  # mean of norms 5 and 10
    d_real, d_fake = torch.tensor([0.0]), torch.tensor([math.log(3.0)])  # D(I) = 1/2, D(G(X)) = 3/4
    assert discriminator_loss(d_real, d_fake).item() == pytest.approx(-math.log(0.5) - math.log(0.75))
    assert adversarial_loss(d_fake).item() == pytest.approx(-math.log(0.25))
    # D minimising L_D pushes real logits down and generated logits up
    z = torch.zeros(4, requires_grad=True)
    discriminator_loss(z[:2], z[2:]).backward()
    assert (z.grad[:2] > 0).all() and (z.grad[2:] < 0).all()
    # ... and is bounded below by 0: a confident, correct D has (almost) no loss and no gradient left
    z = torch.tensor([-30.0, -30.0, 30.0, 30.0], requires_grad=True)
    loss = discriminator_loss(z[:2], z[2:])
    loss.backward()
    assert 0.0 <= loss.item() < 1e-12 and z.grad.abs().max().item() < 1e-12


# --------------------------------------------------------------------------------- Algorithm 1
def _snapshot(model):
    return {part: {n: p.detach().clone() for n, p in getattr(model, part).named_parameters()}
            for part in ("generator", "extractor", "discriminator")}


def _changed(model, before):
    return {part for part, params in before.items()
            if any(not torch.equal(p, dict(getattr(model, part).named_parameters())[n]) for n, p in params.items())}


@pytest.mark.parametrize("stage,expected", [("d", {"discriminator"}), ("g", {"generator"}), ("e", {"extractor"}),
                                            ("reg", {"generator", "extractor"})])
def test_each_stage_changes_only_its_parameters(stage, expected):
    model = tiny_model().train()
    cfg = R3ANConfig(**TINY)
    opts = make_optimizers(model, cfg)
    t = tiny_triples(8)
    real = recon_batch(t["images"])
    before = _snapshot(model)
    if stage == "d":
        with torch.no_grad():
            fake = model.generator(t["x"])
        d_step(model, opts["d"], fake, real)
    elif stage == "g":
        g_step(model, opts["g"], model.generator(t["x"]), real, cfg)
        assert all(p.grad is None for p in model.discriminator.parameters())
    elif stage == "e":
        e_step(model, opts["e"], real, t["y"], cfg)
    else:
        reg_step(model, opts["ge"], t["x"], t["y"], cfg)
    assert _changed(model, before) == expected


def test_ablation_presets_run_only_their_stages():
    t = tiny_triples(8)
    real = recon_batch(t["images"])
    seen = {}
    for name in PRESETS:
        cfg = R3ANConfig.preset(name, **TINY)
        if name == "fc":
            continue
        model = tiny_model().train()
        before = _snapshot(model)
        losses = algorithm1_step(model, make_optimizers(model, cfg), t["x"], t["y"], real, cfg)
        seen[name] = set(losses)
        assert ("discriminator" in _changed(model, before)) == cfg.use_adv
        assert all(math.isfinite(v) for v in losses.values())
    assert seen["r3an"] == {"loss_d", "loss_rec", "loss_adv", "loss_rep", "loss_reg"}
    assert seen["arch1"] == {"loss_rec", "loss_rep"} and seen["arch3"] == {"loss_reg"}
    assert seen["arch6"] == {"loss_d", "loss_adv", "loss_reg"} and seen["arch7"] == {"loss_rep", "loss_reg"}
    assert R3ANConfig.from_file("arch2") == R3ANConfig.preset("arch2")  # packaged configs/r3an_arch2.json


# --------------------------------------------------------------------------------- training loop
@pytest.mark.parametrize("preset", ["r3an", "fc"])
def test_resume_is_exact(tmp_path, preset):
    cfg = R3ANConfig.preset(preset, **TINY)
    t = tiny_triples()
    full = train_r3an(cfg, tmp_path / "full", triples=t, progress=False)
    assert full["step"] == 6
    train_r3an(cfg, tmp_path / "cut", triples=t, progress=False, stop_after=3)   # checkpoint at step 2
    resumed = train_r3an(cfg, tmp_path / "cut", triples=t, progress=False)
    assert resumed["step"] == 6
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_checkpoint_log_and_weights_only_export(tmp_path):
    cfg = R3ANConfig.preset("r3an", **TINY)
    t = tiny_triples()
    out = train_r3an(cfg, tmp_path, triples=t, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")  # weights_only=True
    assert state["step"] == 6 and set(state["optimizers"]) == {"d", "g", "e", "ge"} and "rng" in state
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all({"loss_d", "loss_rec", "loss_adv", "loss_rep", "loss_reg", "lr"} <= set(r) for r in records)
    model = load_transform(tmp_path / "model.pt")
    x = torch.randn(5, 16)
    torch.testing.assert_close(model.transform(x), out["model"].transform(x))
    assert not model.training


def test_resume_with_another_config_is_refused(tmp_path):
    train_r3an(R3ANConfig(**TINY), tmp_path, triples=tiny_triples(), progress=False, stop_after=2)
    with pytest.raises(ValueError, match=r"lambda_adv: 0.001 there, 0.5 now"):
        train_r3an(R3ANConfig(**TINY, lambda_adv=0.5), tmp_path, triples=tiny_triples(), progress=False)


@pytest.mark.parametrize("recalibrate", [True, False])
def test_extractor_bn_statistics_are_those_of_the_transform_path(tmp_path, recalibrate):
    # E also sees real faces (E step), whose statistics differ from G(X)'s; after training, E's running
    # statistics must be those of its inference input G(x) (G in eval mode), on every BN layer
    cfg = R3ANConfig.preset("r3an", **TINY, recalibrate_bn=recalibrate)
    t = tiny_triples()
    model = train_r3an(cfg, tmp_path, triples=t, progress=False)["model"]
    # each BN's input when E normalises G(x) by batch statistics (momentum 0: a copy's buffers stay put)
    probe = copy.deepcopy(model.extractor).train()
    inputs = []
    for bn in probe.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = 0.0
            bn.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    with torch.no_grad():
        probe(model.generator(t["x"]))    # one batch: 24 <= 4 * batch_size
    bns = [m for m in model.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(inputs) > 10
    matches = []
    for bn, h in zip(bns, inputs):
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
        matches.append(torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-6)
                       and torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-6))
    assert all(matches) if recalibrate else not any(matches)
    exported = load_transform(tmp_path / "model.pt")
    torch.testing.assert_close(exported.transform(t["x"]), model.transform(t["x"]))
    assert not model.training


def test_lr_schedule_follows_the_paper(tmp_path):
    cfg = R3ANConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.milestones) == (0.08, 0.9, 1e-3, (0.3, 0.5, 0.7))
    # lr / 10 after 30, 50 and 70 % of the steps, in every stage's optimiser (10 steps here)
    out = train_r3an(R3ANConfig(**{**TINY, "epochs": 1}), tmp_path, triples=tiny_triples(80), progress=False)
    lrs = [r["lr"] for r in read_log(tmp_path)]
    assert lrs == pytest.approx([0.08, 0.08, 0.008, 0.008, 8e-4, 8e-4, 8e-5, 8e-5, 8e-5, 8e-5])
    state = load_checkpoint(tmp_path / "last.pt")
    assert sorted(state["schedulers"]) == ["d", "e", "g", "ge"]
    assert [o["param_groups"][0]["lr"] for o in state["optimizers"].values()] == pytest.approx([8e-5] * 4)
    assert out["step"] == 10


def test_resume_from_a_checkpoint_of_the_old_loop_is_refused(tmp_path):
    train_r3an(R3ANConfig(**TINY), tmp_path, triples=tiny_triples(), progress=False, stop_after=2)
    state = load_checkpoint(tmp_path / "last.pt")
    old = {"model": state["modules"]["model"], "spec": state["export"]["config"], "optimizers": state["optimizers"],
           "schedulers": state["schedulers"], "rng": state["rng"][0], "step": 2, "config": state["config"]}
    torch.save(old, tmp_path / "last.pt")       # the layout train_r3an wrote before the shared loop
    with pytest.raises(ValueError, match="older fastface .before the shared training loop"):
        train_r3an(R3ANConfig(**TINY), tmp_path, triples=tiny_triples(), progress=False)
    assert load_transform(tmp_path / "last.pt").source_dim == 16     # its weights still load for inference


def test_lr_warmup_then_steps(tmp_path):
    # 20 steps, warm-up over 25 % = 5 steps, milestones at steps 6, 10, 14; the log holds the lr
    # after step s (that of step s + 1): steps 1..5 run at 1/5..5/5 of 0.08
    cfg = R3ANConfig.preset("arch3", **{**TINY, "epochs": 2, "warmup": 0.25})
    train_r3an(cfg, tmp_path, triples=tiny_triples(80), progress=False)
    lrs = [r["lr"] for r in read_log(tmp_path)]
    expected = [0.08 * min(1, (s + 1) / 5) * 0.1 ** sum(s >= m for m in (6, 10, 14)) for s in range(1, 21)]
    assert lrs == pytest.approx(expected)
    assert lrs[:6] == pytest.approx([0.032, 0.048, 0.064, 0.08, 0.08, 0.008])


def test_train_r3an_from_prior_checkpoints_via_cli(tmp_path):
    from fastface.cli import main
    from fastface.train import BackboneConfig, train_backbone
    priors = {}
    for name, kw in (("mb", dict(arch="mobilenetv2", expansion=2, width_mult=0.25, embedding_dim=12)),
                     ("res", dict(arch="resnet50", width=4, embedding_dim=10))):
        cfg = BackboneConfig(n_identities=4, images_per_identity=4, image_size=32, channels=1, stem_pool=False,
                             epochs=1, batch_size=8, **kw)
        train_backbone(cfg, tmp_path / name, progress=False)
        priors[name] = str(tmp_path / name / "model.pt")
    conf = tmp_path / "r3an.json"
    conf.write_text(json.dumps(dict(n_identities=4, images_per_identity=4, render_size=32, batch_size=8,
                                    checkpoint_every=1, **{k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in TINY_MODEL.items()})))
    assert main(["train", "r3an", "--config", str(conf), "--set", f"source={priors['mb']}", "--set",
                 f"target=arcface:{priors['res']}", "--out", str(tmp_path / "r3an"), "--steps", "2", "--device", "cpu"]) == 0
    model = load_transform(tmp_path / "r3an" / "model.pt")
    assert (model.source_dim, model.target_dim) == (12, 10)


# --------------------------------------------------------------------------------- transform CLI
def test_transform_cli_streams_in_chunks(tmp_path):
    from fastface.cli import main
    cfg = R3ANConfig.preset("r3an", **{**TINY, "epochs": 1})
    train_r3an(cfg, tmp_path / "m", triples=tiny_triples(), progress=False)
    feats = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    np.save(tmp_path / "in.npy", feats)
    assert main(["transform", "--model", str(tmp_path / "m" / "model.pt"), "--features", str(tmp_path / "in.npy"),
                 "--out", str(tmp_path / "out.npy"), "--chunk", "64", "--batch-size", "16", "--quiet",
                 "--device", "cpu"]) == 0
    got = np.load(tmp_path / "out.npy", mmap_mode="r")
    want = transform_features(load_transform(tmp_path / "m" / "model.pt"), torch.from_numpy(feats))
    assert got.shape == (300, 8) and got.dtype == np.float32
    torch.testing.assert_close(torch.from_numpy(np.array(got)), want)
    assert not [f for f in os.listdir(tmp_path) if "partial" in f]


# --------------------------------------------------------------------------------- CMFR
def test_cmfr_matches_single_model_identification_and_transform():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(6, 8, generator=g)
    labels = torch.arange(6).repeat_interleave(3)
    probe = centers[labels] + 0.3 * torch.randn(18, 8, generator=g)
    dis = torch.randn(40, 8, generator=g)
    res = cross_identification(probe, probe, labels, dis)
    assert res["top1"] == pytest.approx(identification_with_distractors(probe, labels, dis))
    rot = torch.linalg.qr(torch.randn(8, 8, generator=g))[0]  # the "target model" = a rotation of the source
    src, tgt = {"probe": probe, "distractors": dis}, {"probe": probe @ rot, "distractors": dis @ rot}
    for mode in ("probe", "gallery"):
        assert cmfr_scores(src, tgt, labels, lambda f: f @ rot, mode)["top1"] == pytest.approx(res["top1"])
    assert cmfr_scores(src, tgt, labels)["top1"] < res["top1"]  # raw features are not comparable
    assert "| a | b |" in markdown_table(["a", "b"], [["x", 0.5]]) and "50.00" in markdown_table(["a", "b"], [["x", 0.5]])


def test_reconstruction_figure_png(tmp_path):
    model = tiny_model().eval()
    path = reconstruction_figure(model, torch.randn(5, 16), torch.randint(0, 256, (5, 3, 56, 56), dtype=torch.uint8),
                                 tmp_path / "fig4.png", columns=3)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="x must have shape"):
        Generator(16)(torch.randn(2, 17))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        Generator(16)(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="images must be"):
        Extractor(8)(torch.randn(2, 1, 56, 56))
    with pytest.raises(ValueError, match="arch must be"):
        R3ANConfig(arch="mlp")
    with pytest.raises(ValueError, match="preset must be"):
        R3ANConfig.preset("arch8")
    with pytest.raises(ValueError, match="batch_size"):
        R3ANConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"warmup must be a fraction of the steps in \[0, 1\), got 1.5"):
        R3ANConfig(warmup=1.5)
    with pytest.raises(ValueError, match="unknown config keys"):
        (tmp_path / "c.json").write_text('{"lr": 0.1, "learning_rate": 1}')
        R3ANConfig.from_file(tmp_path / "c.json")
    with pytest.raises(TypeError, match="cfg must be an R3ANConfig"):
        train_r3an({"arch": "r3an"}, tmp_path)
    with pytest.raises(ValueError, match=r"batch_size=64 x 1 process\(es\) exceeds"):
        train_r3an(R3ANConfig(**TINY_MODEL), tmp_path / "b", triples=tiny_triples(), progress=False)
    with pytest.raises(ValueError, match="triples disagree"):
        t = tiny_triples()
        train_r3an(R3ANConfig(**TINY), tmp_path / "c", triples={**t, "y": t["y"][:5]}, progress=False)
    with pytest.raises(ValueError, match="source and target must name"):
        train_r3an(R3ANConfig(**TINY), tmp_path / "d", progress=False)
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"features must have shape \(N, 16\)"):
        transform_features(model, torch.randn(3, 15))
    train_r3an(R3ANConfig.preset("fc", **{**TINY, "epochs": 1}), tmp_path / "m", triples=tiny_triples(),
               progress=False)
    np.save(tmp_path / "bad.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="must have shape"):
        transform_file(tmp_path / "m" / "model.pt", tmp_path / "bad.npy", tmp_path / "o.npy", progress=False)
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        transform_file(tmp_path / "m" / "model.pt", tmp_path / "bad.npy", tmp_path / "o.npy", chunk=0)
    with pytest.raises(ValueError, match="does not exist"):
        transform_file(tmp_path / "nope.pt", tmp_path / "bad.npy", tmp_path / "o.npy")
    with pytest.raises(TypeError, match="labels must hold integer"):
        cross_identification(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="gallery must have shape"):
        cross_identification(torch.randn(4, 3), torch.randn(4, 2), torch.zeros(4, dtype=torch.long), torch.randn(2, 3))
    with pytest.raises(ValueError, match="mode must be"):
        cmfr_scores({}, {}, None, mode="both")


def test_experiments_script_writes_tables_and_figure(tmp_path):
    """bench/r3an_experiments.py end to end at a tiny size: priors -> Table 2/3 -> Fig. 4."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "r3an_experiments.py")
    spec = importlib.util.spec_from_file_location("r3an_experiments", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "exp"
    args = ["--out", str(out), "--quick", "--priors", "Mb-6,Res18", "--size", "32", "--prior-identities", "6",
            "--prior-images", "4", "--prior-epochs", "1", "--r3an-identities", "6", "--r3an-images", "4",
            "--r3an-epochs", "1", "--probe-identities", "4", "--probe-images", "3", "--distractors", "5",
            "--batch-size", "8", "--g-width", "0.0625"]
    assert mod.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["priors"]) == {"Mb-6", "Res18"}
    assert list(res["table3"]) == mod.ABLATIONS
    for scores in res["table3"].values():
        assert 0.0 <= scores["top1"] <= 1.0 and 0.0 <= scores["p_at_1"] <= 1.0
    md = (out / "r3an_results.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "Arch7" in md
    assert (out / "fig4_reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run resumes every training from its folder and reproduces the tables
    assert mod.main(args) == 0
    assert json.loads((out / "results.json").read_text())["table3"] == res["table3"]
    # a finished model of another config is never reused silently
    with pytest.raises(ValueError, match="another config"):
        mod.main(args[:-2] + ["--g-width", "0.125"])


def test_extractor_activation_option():
    relu6 = Extractor(8, 3, width=0.25, repeats=(1, 1, 1, 1, 1))
    prelu = R3AN(16, 8, 3, g_width=0.0625, e_width=0.25, e_repeats=(1, 1, 1, 1, 1), d_width=0.5,
                 e_activation="prelu").extractor
    assert any(isinstance(m, torch.nn.ReLU6) for m in relu6.modules())
    assert not any(isinstance(m, torch.nn.ReLU6) for m in prelu.modules())
    assert sum(isinstance(m, torch.nn.PReLU) for m in prelu.modules()) == 11  # 5 blocks x 2 + conv6
    assert prelu(torch.rand(2, 3, 56, 56)).shape == (2, 8)
    spec = model_spec(R3ANConfig(e_activation="prelu", **TINY_MODEL), 16, 8)
    assert spec["e_activation"] == "prelu"
    with pytest.raises(ValueError, match="activation must be one of"):
        Extractor(8, activation="gelu")

"""Backbone training: a few CPU steps, atomic checkpoints, exact resume, logs."""
import os

import torch

from fastface.train import BackboneConfig, load_checkpoint, train_backbone
from fastface.train.loop import read_log

TINY = dict(n_identities=6, images_per_identity=4, image_size=32, channels=1, width=8, embedding_dim=16,
            epochs=2, batch_size=8, checkpoint_every=2, lr=0.05)


def test_resume_is_exact(tmp_path):
    cfg = BackboneConfig(**TINY)
    full = train_backbone(cfg, tmp_path / "full", progress=False)
    assert full["step"] == 6
    train_backbone(cfg, tmp_path / "cut", progress=False, stop_after=2)
    resumed = train_backbone(cfg, tmp_path / "cut", progress=False)
    assert resumed["step"] == 6
    for (name, a), (_, b) in zip(full["model"].state_dict().items(), resumed["model"].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(full["head"].weight, resumed["head"].weight, rtol=0, atol=0)


def test_checkpoint_and_log(tmp_path):
    cfg = BackboneConfig(**TINY)
    train_backbone(cfg, tmp_path, progress=False, stop_after=3)
    state = load_checkpoint(tmp_path / "last.pt")  # weights_only=True
    assert state["step"] == 2 and set(state["optimizers"]) == {"sgd"} and "rng" in state
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    records = read_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_train_on_an_image_folder_exports_a_loadable_model(tmp_path):
    from fastface.backbones import load_encoder
    from fastface.data import SynthFaces, export_image_folder
    export_image_folder(SynthFaces(n_identities=5, images_per_identity=4, size=32, seed=2), tmp_path / "faces")
    cfg = BackboneConfig(**{**TINY, "data": str(tmp_path / "faces"), "epochs": 1, "batch_size": 5})
    out = train_backbone(cfg, tmp_path / "run", progress=False)
    assert out["step"] == 4 and out["head"].weight.shape[0] == 5
    enc = load_encoder(f"arcface:{tmp_path / 'run' / 'model.pt'}")   # the inference-only export
    x = torch.rand(3, 1, 32, 32)
    torch.testing.assert_close(enc.encode(x)[0], out["model"].eval()(x)[0])


def test_margin_warmup_ramps_m_and_resumes_exactly(tmp_path):
    from fastface.backbones import ArcMarginHead
    from fastface.train.backbone import margin_at
    cfg = BackboneConfig(**{**TINY, "m": 0.4, "margin_warmup": 0.5})
    assert [round(margin_at(cfg, s, 6), 6) for s in range(7)] == [0.0, 0.133333, 0.266667, 0.4, 0.4, 0.4, 0.4]
    assert margin_at(BackboneConfig(**{**TINY, "m": 0.4}), 0, 6) == 0.4   # no warm-up: m from the first step
    full = train_backbone(cfg, tmp_path / "full", progress=False)
    records = read_log(tmp_path / "full")
    assert [round(r["m"], 6) for r in records] == [0.0, 0.133333, 0.266667, 0.4, 0.4, 0.4]
    train_backbone(cfg, tmp_path / "cut", progress=False, stop_after=2)
    resumed = train_backbone(cfg, tmp_path / "cut", progress=False)
    for (name, a), (_, b) in zip(full["model"].state_dict().items(), resumed["model"].state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # the head's margin can be changed in place and equals a head built with that margin
    emb, labels = torch.randn(5, 16), torch.tensor([0, 1, 2, 0, 1])
    head = ArcMarginHead(16, 3, s=8.0, m=0.0)
    ref = ArcMarginHead(16, 3, s=8.0, m=0.3)
    ref.weight.data.copy_(head.weight.data)
    head.set_margin(0.3)
    torch.testing.assert_close(head(emb, labels), ref(emb, labels), rtol=0, atol=0)


def test_resume_with_another_config_is_refused(tmp_path):
    import pytest
    train_backbone(BackboneConfig(**TINY), tmp_path, progress=False, stop_after=2)
    with pytest.raises(ValueError, match=r"another config \(lr: 0.05 there, 0.1 now\)"):
        train_backbone(BackboneConfig(**{**TINY, "lr": 0.1}), tmp_path, progress=False)
    # checkpoint frequency may change; a fresh start (resume=False) ignores the old state
    assert train_backbone(BackboneConfig(**{**TINY, "checkpoint_every": 3}), tmp_path, progress=False)["step"] == 6
    assert train_backbone(BackboneConfig(**{**TINY, "lr": 0.1}), tmp_path, progress=False, resume=False)["step"] == 6

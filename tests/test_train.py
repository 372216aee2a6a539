"""Backbone training: a few CPU steps, atomic checkpoints, exact resume, logs."""
import json
import os

import torch

from fastface.train import BackboneConfig, load_checkpoint, train_backbone

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
    assert state["step"] == 2 and "optimizer" in state and "rng" in state
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)

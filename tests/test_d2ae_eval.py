"""fastface.eval.d2ae on features whose answers are known: verification, the fresh identity probe, attribute
SVMs split by identity, the channel Gaussianity statistic (Fig. 8), PSNR."""
import numpy as np
import pytest
import torch

from fastface.eval import d2ae as ev
from fastface.eval.reconstruction import psnr
from fastface.models.d2ae import D2AE


def identity_features(n_ids=30, per=5, dim=8, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    ids = torch.arange(n_ids).repeat_interleave(per)
    return centres[ids] + noise * torch.randn(len(ids), dim, generator=g), ids


def test_verification_separates_identity_features_from_noise():
    f, ids = identity_features()
    good = ev.verification(f, ids, n_pairs=600)
    assert good["accuracy"] > 0.95 and good["tpr"] > 0.9
    bad = ev.verification(torch.randn(f.shape, generator=torch.Generator().manual_seed(1)), ids, n_pairs=600)
    assert 0.35 < bad["accuracy"] < 0.65 and bad["tpr"] < 0.1


def test_identity_probe_is_trained_after_the_fact_and_reports_chance():
    f, ids = identity_features()
    out = ev.identity_probe(f, ids)
    assert out["accuracy"] > 0.9 and out["chance"] == pytest.approx(1 / 30)
    assert out["n_train"] == 90 and out["n_test"] == 60          # all but 2 images of each identity train
    noise = ev.identity_probe(torch.randn(f.shape, generator=torch.Generator().manual_seed(2)), ids)
    assert noise["accuracy"] < 0.15
    with pytest.raises(ValueError, match="more images"):
        ev.identity_probe(f, ids, train_per_identity=5)


def test_attribute_svms_split_by_identity():
    f, ids = identity_features(n_ids=40)
    train = ev.identity_split(ids, 0.5, seed=0)
    assert set(ids[train].tolist()).isdisjoint(ids[~train].tolist()) and train.sum() == 100
    g = np.random.default_rng(0)
    attrs = np.stack([g.random(len(ids)) < 0.5, np.zeros(len(ids), bool)], 1).astype(np.float32)
    informative = torch.cat([f, torch.from_numpy(attrs[:, :1]) * 3], 1)
    out = ev.attribute_svms({"yes": informative, "no": f}, attrs, ids, ["visible", "constant"])
    assert out["constant"] is None                                   # one class only
    assert out["visible"]["yes"]["balanced_accuracy"] > 0.95
    assert out["visible"]["no"]["balanced_accuracy"] < 0.7
    assert 0.5 <= out["visible"]["majority"] <= 0.7
    three = ev.attribute_svms({"yes": informative}, attrs, ids, ["visible", "constant"], splits=3)
    assert three["visible"]["yes"]["balanced_accuracy"] > 0.95 and three["visible"]["yes"]["balanced_std"] < 0.05


def test_channel_gaussianity_is_high_for_gaussian_channels_only():
    g = np.random.default_rng(0)
    x = np.stack([g.standard_normal(20000), g.uniform(-1, 1, 20000), g.exponential(1, 20000)], 1)
    r = ev.channel_gaussianity(torch.from_numpy(x))
    assert r[0] > 0.99 and r[1] < 0.9 and r[2] < 0.9


def test_extract_features_and_psnr_of_a_model():
    torch.manual_seed(0)
    m = D2AE(n_identities=3, image_size=16, width=4, branch_width=8, feature_dim=6, decoder_width=16).eval()
    x = torch.rand(5, 3, 16, 16)
    f = ev.extract_features(m, x, batch_size=2)
    torch.testing.assert_close(f["tp"], torch.cat(m.encode(x), 1).detach())
    with torch.no_grad():
        want = psnr(m.decode(*m.encode(x)), x, data_range=1.0)
    torch.testing.assert_close(ev.reconstruction_psnr(m, x, batch_size=3), want)
    assert ev.tsne(f["t"], perplexity=2).shape == (5, 2)

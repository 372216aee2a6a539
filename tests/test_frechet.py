"""fastface.eval.frechet: the Fréchet distance against closed forms, and the encoder features."""
import math

import numpy as np
import pytest
import torch

from fastface.eval.frechet import (encoder_features, frechet_distance, gaussian_frechet_distance,
                                   trace_sqrt_product)


def random_spd(d, gen, cond=10.0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    vals = torch.exp(torch.rand(d, generator=gen, dtype=torch.float64) * math.log(cond))
    return (q * vals) @ q.T


def test_diagonal_covariances_closed_form():
    gen = torch.Generator().manual_seed(0)
    d = 7
    mu_a, mu_b = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    va, vb = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    want = ((mu_a - mu_b) ** 2).sum() + ((va.sqrt() - vb.sqrt()) ** 2).sum()   # commuting: sum (sa - sb)^2
    got = gaussian_frechet_distance(mu_a, torch.diag(va), mu_b, torch.diag(vb))
    assert got == pytest.approx(want.item(), rel=1e-10)


def test_two_by_two_non_commuting_closed_form():
    # for 2x2 A B with positive eigenvalues: tr sqrt(A B) = sqrt(tr(A B) + 2 sqrt(det(A B)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        a, b = random_spd(2, gen, 50.0), random_spd(2, gen, 50.0)
        ab = a @ b
        want = math.sqrt(torch.trace(ab).item() + 2 * math.sqrt(torch.det(ab).item()))
        assert trace_sqrt_product(a, b).item() == pytest.approx(want, rel=1e-10)
        assert not torch.allclose(a @ b, b @ a)      # the case a naive sqrt(A) sqrt(B) gets wrong
        fd = gaussian_frechet_distance(torch.zeros(2), a, torch.ones(2), b)
        assert fd == pytest.approx(2 + torch.trace(a + b).item() - 2 * want, rel=1e-9)


def test_against_scipy_sqrtm_on_random_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(2)
    d = 13
    a, b = random_spd(d, gen), random_spd(d, gen)
    want = np.trace(scipy_linalg.sqrtm(a.numpy() @ b.numpy()).real)
    assert trace_sqrt_product(a, b).item() == pytest.approx(want, rel=1e-8)


def test_identical_and_shifted_sets():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(x, x[torch.randperm(300, generator=gen)]) == pytest.approx(0.0, abs=1e-8)
    shift = torch.randn(16, generator=gen)
    assert frechet_distance(x, x + shift) == pytest.approx(shift.double().pow(2).sum().item(), rel=1e-8)
    # rank-deficient covariances (N < D) stay finite and >= 0
    assert 0 <= frechet_distance(x[:5], x[5:12]) < float("inf")
    # float32, float64 and numpy inputs agree
    assert frechet_distance(x.numpy(), (x + shift).double()) == pytest.approx(frechet_distance(x, x + shift))


def test_samples_converge_to_the_gaussians_distance():
    gen = torch.Generator().manual_seed(4)
    d, n = 4, 200_000
    ca, cb = random_spd(d, gen, 4.0), random_spd(d, gen, 4.0)
    mu_b = torch.randn(d, generator=gen, dtype=torch.float64)
    xa = torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(ca).T
    xb = torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cb).T + mu_b
    want = gaussian_frechet_distance(torch.zeros(d), ca, mu_b, cb)
    assert frechet_distance(xa, xb) == pytest.approx(want, rel=0.03, abs=0.01)


@pytest.mark.parametrize("a, b, err, match", [
    (torch.zeros(5), torch.zeros(5, 3), ValueError, r"feats_a must be \(N, D\).*\(5,\)"),
    (torch.zeros(1, 3), torch.zeros(5, 3), ValueError, r"N >= 2.*\(1, 3\)"),
    (torch.zeros(4, 3), torch.zeros(5, 2), ValueError, "same feature size D, got 3 and 2"),
    (torch.zeros(4, 3), torch.full((5, 3), float("nan")), ValueError, "feats_b holds NaN"),
    ("abc", torch.zeros(5, 3), TypeError, "feats_a must be"),
])
def test_bad_input(a, b, err, match):
    with pytest.raises(err, match=match):
        frechet_distance(a, b)


def test_encoder_features_bring_images_to_the_encoder():
    from fastface.backbones import load_encoder
    enc = load_encoder("arcface")
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(5, 3, 32, 32, generator=gen)                      # another size: resized
    feats = encoder_features(enc, x, batch_size=2)
    assert feats.shape == (5, enc.embedding_dim) and feats.dtype == torch.float32
    resized = torch.nn.functional.interpolate(x, size=(enc.image_size,) * 2, mode="bilinear", align_corners=False,
                                              antialias=True)
    torch.testing.assert_close(feats, enc.encode(resized)[0].float())
    grey = encoder_features(enc, x.mean(1, keepdim=True))           # grey -> RGB repeated
    torch.testing.assert_close(grey, encoder_features(enc, x.mean(1, keepdim=True).expand(-1, 3, -1, -1)))
    with pytest.raises(ValueError, match=r"images must be a \(N, C, H, W\)"):
        encoder_features(enc, torch.rand(3, 32, 32))


def test_encoder_features_with_dlib():
    pytest.importorskip("dlib", reason="the dlib extra (dlib-bin) is not installed")
    from fastface.backbones import load_encoder
    from fastface.backbones.dlib_resnet import model_path
    try:
        model_path()
    except ImportError as exc:
        pytest.skip(str(exc))
    enc = load_encoder("dlib")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))   # resized to dlib's 150 x 150
    feats = encoder_features(enc, x)
    assert feats.shape == (2, 128) and torch.isfinite(feats).all()

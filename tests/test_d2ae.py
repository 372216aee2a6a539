"""D²AE: shapes, fastface.load, the statistical augmentation's running sigma, and each gradient-routing rule
of Eq. 2-4 and 6 (which parameters each loss reaches), bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastface
from fastface.models.d2ae import D2AE, D2AEConfig
from fastface.models.d2ae_losses import (D2AELossConfig, confusion_loss, d2ae_losses, frozen_classifier,
                                         reconstruction_loss)
from fastface.models.serialization import save_model

TINY = dict(n_identities=5, image_size=16, width=4, branch_width=8, feature_dim=6, decoder_width=16)
GROUPS = ("encoder", "branch_t", "classifier_t", "branch_p", "classifier_p", "decoder")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return D2AE(**{**TINY, **kw})


def batch(b=6, size=16, channels=3, seed=1, n_identities=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, channels, size, size, generator=g), torch.randint(0, n_identities, (b,), generator=g)


# ------------------------------------------------------------------------------------- the model
@pytest.mark.parametrize("size, channels", [(16, 3), (32, 1), (64, 3)])
def test_shapes_encode_decode(size, channels):
    m = tiny(image_size=size, channels=channels).eval().requires_grad_(False)
    x, _ = batch(3, size, channels)
    f_t, f_p = m.encode(x)
    assert f_t.shape == f_p.shape == (3, 6)
    y = m.decode(f_t, f_p)
    assert y.shape == (3, channels, size, size) and 0 <= float(y.min()) and float(y.max()) <= 1
    torch.testing.assert_close(m(x), y)
    # the encoder ends at an 8x8 map whatever the input size
    assert m.encoder(x).shape[-2:] == (8, 8)


def test_batched_equals_one_by_one():
    m = tiny().eval()
    x, _ = batch(5)
    f_t, f_p = m.encode(x)
    for i in range(5):
        a, b = m.encode(x[i:i + 1])
        torch.testing.assert_close(a[0], f_t[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b[0], f_p[i], rtol=1e-5, atol=1e-5)


def test_baseline_has_no_p_branch_and_no_decoder():
    m = tiny(p_branch=False, decoder=False)
    names = {n.split(".")[0] for n, _ in m.named_parameters()}
    assert names == {"encoder", "branch_t", "classifier_t"}
    f_t, f_p = m.eval().encode(batch(2)[0])
    assert f_t.shape == (2, 6) and f_p is None
    with pytest.raises(ValueError, match="no decoder"):
        m.decode(f_t, f_t)
    with pytest.raises(ValueError, match="decoder=True needs p_branch=True"):
        D2AEConfig(p_branch=False, decoder=True)


def test_saves_and_loads_as_kind_d2ae(tmp_path):
    m = tiny()
    d2ae_losses(m, *batch())                     # moves the running statistics off their initial values
    save_model(tmp_path / "m.pt", "d2ae", m.cfg.to_dict(), m)
    back = fastface.load(tmp_path / "m.pt", kind="d2ae")
    assert isinstance(back, D2AE) and not back.training and back.cfg == m.cfg
    torch.testing.assert_close(back.sigma_t, m.sigma_t)
    x, _ = batch(2)
    m.eval()
    torch.testing.assert_close(back.decode(*back.encode(x)), m.decode(*m.encode(x)))


# ------------------------------------------------------------------------------------- augmentation
def test_running_sigma_tracks_the_feature_std_like_batchnorm():
    m = tiny(sigma_momentum=0.25)
    assert int(m.num_batches_tracked) == 0
    f1, f2 = torch.randn(64, 6) * 3, torch.randn(64, 6) * 0.5 + 2
    m.track_statistics(f1, f1 * 2)                # the first batch sets the statistics
    torch.testing.assert_close(m.running_var_t, f1.var(0))
    torch.testing.assert_close(m.sigma_p, (f1 * 2).var(0).sqrt())
    m.track_statistics(f2, f2)                    # then an exponential average, as BatchNorm's running_var
    torch.testing.assert_close(m.running_var_t, 0.75 * f1.var(0) + 0.25 * f2.var(0))
    assert int(m.num_batches_tracked) == 2


def test_training_forward_updates_sigma_and_eval_forward_does_not():
    m = tiny()
    x, y = batch(8)
    d2ae_losses(m, x, y)
    f_t, f_p = m.features(x)
    torch.testing.assert_close(m.running_var_t, f_t.detach().var(0), rtol=1e-4, atol=1e-6)
    m.eval()
    before = m.running_var_p.clone()
    d2ae_losses(m, x, y)
    torch.testing.assert_close(m.running_var_p, before, rtol=0, atol=0)


def test_augmentation_noise_has_the_running_sigma():
    m = tiny()
    m.running_var_t.copy_(torch.linspace(0.1, 4, 6))
    m.running_var_p.copy_(torch.linspace(2, 0.5, 6))
    f = torch.zeros(20000, 6)
    a_t, a_p = m.augment(f, f, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a_t.std(0), m.sigma_t, rtol=0.03, atol=0)
    torch.testing.assert_close(a_p.std(0), m.sigma_p, rtol=0.03, atol=0)
    torch.testing.assert_close(a_t.mean(0), torch.zeros(6), rtol=0, atol=0.05)
    # sigma is a statistic, not a parameter: no gradient reaches it, the gradient to f passes unchanged
    f = torch.randn(4, 6, requires_grad=True)
    m.augment(f, f)[0].sum().backward()
    torch.testing.assert_close(f.grad, torch.ones(4, 6))


# ------------------------------------------------------------------------------------- the losses by hand
def test_confusion_loss_is_cross_entropy_to_the_uniform_distribution():
    logits = torch.randn(4, 7)
    uniform = torch.full((4, 7), 1 / 7)
    torch.testing.assert_close(confusion_loss(logits), F.cross_entropy(logits, uniform))
    # minimal (log N) at uniform predictions, larger for confident ones: Eq. 3 with its sign corrected
    assert confusion_loss(torch.zeros(2, 7)).item() == pytest.approx(math.log(7))
    assert confusion_loss(torch.tensor([[9.0] + [0.0] * 6])).item() > math.log(7)


def test_reconstruction_loss_is_half_the_per_pixel_squared_error():
    x, y = torch.rand(2, 3, 5, 4), torch.rand(2, 3, 5, 4)
    want = 0.5 * ((x - y) ** 2).sum() / (2 * 5 * 4)
    torch.testing.assert_close(reconstruction_loss(x, y), want)
    # the weight does not depend on the image size: the same error per pixel, the same loss
    big = F.interpolate(torch.cat([x, y]), scale_factor=4, mode="nearest")
    torch.testing.assert_close(reconstruction_loss(big[:2], big[2:]), want)


def test_total_is_the_weighted_sum_of_eq_6():
    m = tiny()
    cfg = D2AELossConfig(lambda_t=0.7, lambda_p=0.3, lambda_x=2.0)
    out = d2ae_losses(m, *batch(), cfg)
    want = 0.7 * out["identity"] + 0.3 * (out["adversary"] + out["confusion"]) + \
        2.0 * (out["reconstruction"] + out["reconstruction_aug"])
    torch.testing.assert_close(out["total"], want)


# ------------------------------------------------------------------------------------- gradient routing
def reached(model, loss):
    """The parameter groups (GROUPS) with a non-zero gradient from loss."""
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    out = set()
    for n, g in zip(names, grads):
        if g is not None and bool(g.abs().sum() > 0):
            out.add(n.split(".")[0])
    return out


def test_each_loss_reaches_only_its_parameters():
    m = tiny()
    out = d2ae_losses(m, *batch(8))
    assert reached(m, out["identity"]) == {"encoder", "branch_t", "classifier_t"}       # L_I
    assert reached(m, out["adversary"]) == {"classifier_p"}                               # L_I^adv
    assert reached(m, out["confusion"]) == {"encoder", "branch_p"}                        # L_H, classifier frozen
    for name in ("reconstruction", "reconstruction_aug"):                                # L_X, L~_X
        assert reached(m, out[name]) == {"encoder", "branch_t", "branch_p", "decoder"}, name
    assert reached(m, out["total"]) == set(GROUPS)


def test_one_backward_of_the_total_equals_the_routed_sum_of_separate_losses():
    """Every parameter's gradient from L equals the weighted sum of the gradients of the losses routed to it."""
    m = tiny()
    cfg = D2AELossConfig(lambda_p=0.25, lambda_x=3.0)
    out = d2ae_losses(m, *batch(8), cfg)
    params = list(m.parameters())
    total = torch.autograd.grad(out["total"], params, retain_graph=True)
    parts = {"identity": 1.0, "adversary": 0.25, "confusion": 0.25, "reconstruction": 3.0, "reconstruction_aug": 3.0}
    want = [torch.zeros_like(p) for p in params]
    for name, w in parts.items():
        for acc, g in zip(want, torch.autograd.grad(out[name], params, retain_graph=True, allow_unused=True)):
            if g is not None:
                acc.add_(w * g)
    for (n, _), a, b in zip(m.named_parameters(), total, want):
        torch.testing.assert_close(a, b, msg=n)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_confusion_update_leaves_the_p_classifier_unchanged(optimizer):
    m = tiny()
    out = d2ae_losses(m, *batch(8))
    opt = (torch.optim.SGD(m.parameters(), lr=0.5) if optimizer == "sgd" else torch.optim.Adam(m.parameters(), 0.1))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt.zero_grad()
    out["confusion"].backward()
    opt.step()
    for n, p in m.named_parameters():
        moved = not torch.equal(p, before[n])
        if n.startswith("classifier_p") or n.startswith("classifier_t") or n.startswith("decoder") \
                or n.startswith("branch_t"):
            assert not moved, n
    assert any(not torch.equal(p, before[n]) for n, p in m.named_parameters() if n.startswith("branch_p"))


def test_frozen_classifier_passes_gradient_to_the_features_only():
    lin = torch.nn.Linear(4, 3)
    f = torch.randn(5, 4, requires_grad=True)
    y = frozen_classifier(lin, f)
    torch.testing.assert_close(y, lin(f))
    y.sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is None
    torch.testing.assert_close(f.grad, lin.weight.detach().sum(0).expand(5, 4))


def test_ablation_without_the_adversary_lets_confusion_update_the_classifier():
    m = tiny()
    out = d2ae_losses(m, *batch(8), D2AELossConfig(adversary=False))
    assert "adversary" not in out
    assert reached(m, out["confusion"]) == {"encoder", "branch_p", "classifier_p"}


def test_ablations_drop_their_losses():
    m = tiny()
    assert set(d2ae_losses(m, *batch(), D2AELossConfig(confusion=False))) >= {"identity", "adversary"}
    assert "confusion" not in d2ae_losses(m, *batch(), D2AELossConfig(confusion=False))
    assert "reconstruction_aug" not in d2ae_losses(m, *batch(), D2AELossConfig(augment=False))
    base = tiny(p_branch=False, decoder=False)
    out = d2ae_losses(base, *batch())
    assert set(out) == {"identity", "acc_t", "total"}
    assert reached(base, out["total"]) == {"encoder", "branch_t", "classifier_t"}


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("shape, word", [((2, 3, 32, 32), r"\(B, 3, 16, 16\).*\(2, 3, 32, 32\)"),
                                         ((2, 1, 16, 16), r"channels=3.*\(2, 1, 16, 16\)"),
                                         ((3, 16, 16), r"\(3, 16, 16\)")])
def test_images_of_the_wrong_size_or_channels_are_refused(shape, word):
    with pytest.raises(ValueError, match=word):
        tiny().encode(torch.rand(*shape))


def test_bad_features_and_dtypes_are_refused():
    m = tiny()
    with pytest.raises(TypeError, match="images must be a float tensor"):
        m.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"f_p must be \(B, 6\), got \(2, 5\)"):
        m.decode(torch.zeros(2, 6), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="same batch size"):
        m.decode(torch.zeros(2, 6), torch.zeros(3, 6))


@pytest.mark.parametrize("kw, word", [(dict(image_size=48), "power of two >= 16"), (dict(image_size=8), "power of two"),
                                      (dict(channels=2), "channels must be 1 or 3"), (dict(width=0), "width"),
                                      (dict(sigma_momentum=0.0), "sigma_momentum")])
def test_bad_config_names_the_field(kw, word):
    with pytest.raises(ValueError, match=word):
        D2AEConfig(**kw)
    with pytest.raises(ValueError, match="lambda_x must be a number >= 0"):
        D2AELossConfig(lambda_x=-1.0)

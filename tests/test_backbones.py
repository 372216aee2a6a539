"""ArcFace ResNet-18 and the ArcFace margin head."""
import math

import pytest
import torch

from fastface.backbones import ArcMarginHead, arcface_resnet18


@pytest.mark.parametrize("in_channels,width", [(1, 16), (3, 8)])
def test_arcface_shapes_and_gradients(in_channels, width):
    net = arcface_resnet18(in_channels=in_channels, width=width, embedding_dim=64)
    x = torch.randn(3, in_channels, 128, 128)
    emb, fmap = net(x)
    assert emb.shape == (3, 64) and fmap.shape == (3, 8 * width, 8, 8)
    emb.sum().backward()
    assert net.conv1.weight.grad is not None and torch.isfinite(net.conv1.weight.grad).all()


def test_paper_width_gives_512x8x8_patches():
    net = arcface_resnet18().eval()
    assert net.fc5.in_features == 512 * 64 and net.fc5.out_features == 512
    with torch.no_grad():
        emb, fmap = net(torch.randn(1, 1, 128, 128))
    assert emb.shape == (1, 512) and fmap.shape == (1, 512, 8, 8)


def test_wrong_input_is_a_clear_error():
    net = arcface_resnet18(width=8, embedding_dim=16)
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 128, 128\)"):
        net(torch.randn(2, 3, 128, 128))


def test_margin_head_logits():
    head = ArcMarginHead(4, 3, s=10.0, m=0.3)
    emb = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 1, 0])
    logits = head(emb, labels)
    cos = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(head.weight).T
    theta = torch.acos(cos.clamp(-1, 1))
    expected = 10.0 * cos
    rows = torch.arange(5)
    target = torch.where(theta[rows, labels] < math.pi - 0.3, torch.cos(theta[rows, labels] + 0.3),
                         cos[rows, labels] - math.sin(math.pi - 0.3) * 0.3)
    expected[rows, labels] = 10.0 * target
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(emb), 10.0 * cos)

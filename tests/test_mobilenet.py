"""Prior-model backbones: MobileNetV2 (expansion T) and the bottleneck ResNet-50, through build_backbone."""
import pytest
import torch

from fastface.backbones import MobileNetV2Face, resnet50_face
from fastface.backbones import BackboneArch, build_backbone


@pytest.mark.parametrize("stem_stride,side", [(2, 4), (1, 8)])
def test_mobilenetv2_shapes_and_expansion(stem_stride, side):
    m6 = MobileNetV2Face(expansion=6, width_mult=0.25, input_size=128, stem_stride=stem_stride).eval()
    emb, fmap = m6(torch.rand(2, 3, 128, 128))
    assert emb.shape == (2, 256) and fmap.shape[2:] == (side, side) and m6.map_size == (side, side)
    m16 = MobileNetV2Face(expansion=16, width_mult=0.25, input_size=128, stem_stride=stem_stride)
    # the second block (expansion T) widens 8 channels to 8 * T
    assert m6.blocks[1].block[0][0].out_channels == 48 and m16.blocks[1].block[0][0].out_channels == 128
    assert sum(p.numel() for p in m16.parameters()) > sum(p.numel() for p in m6.parameters())


def test_resnet50_shapes():
    m = resnet50_face(width=8, input_size=64, stem_stride=1, in_channels=1).eval()
    emb, fmap = m(torch.rand(2, 1, 64, 64))
    assert emb.shape == (2, 256) and fmap.shape == (2, 256, 8, 8)
    assert sum(len(s) for s in m.stages) == 16  # 3 + 4 + 6 + 3 bottlenecks


def test_build_backbone_archs_and_bad_input():
    for arch in ("arcface_resnet18", "mobilenetv2", "resnet50"):
        cfg = BackboneArch(arch=arch, image_size=32, stem_pool=False, width=8, width_mult=0.25, embedding_dim=16)
        emb, _ = build_backbone(cfg).eval()(torch.rand(1, 1, 32, 32))
        assert emb.shape == (1, 16)
        assert build_backbone(cfg.to_dict()).state_dict().keys() == build_backbone(cfg).state_dict().keys()
    with pytest.raises(ValueError, match="arch must be one of"):
        BackboneArch(arch="vgg")
    with pytest.raises(ValueError, match="expansion must be"):
        MobileNetV2Face(expansion=0)
    with pytest.raises(ValueError, match="x must be"):
        MobileNetV2Face(input_size=64)(torch.rand(1, 3, 32, 32))


def test_mobilenet_activations():
    from torch import nn

    from fastface.backbones.mobilenetv2 import mobilenetv2_face
    net = mobilenetv2_face(expansion=6, width_mult=0.35, input_size=32, stem_stride=1, activation="prelu").eval()
    assert any(isinstance(m, nn.PReLU) for m in net.modules()) and not any(isinstance(m, nn.ReLU6) for m in net.modules())
    emb, fmap = net(torch.rand(2, 3, 32, 32))
    assert emb.shape == (2, 256) and fmap.shape[-1] == 2
    with pytest.raises(ValueError, match="activation"):
        mobilenetv2_face(activation="gelu")

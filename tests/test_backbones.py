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


# ----------------------------------------------------------------------------- the official checkpoint
# A reimplementation of the official DeepFace-EMD model's structure, written from the facts of its
# public code (face_models/resnet.py: arcface-pytorch's resnet_face18), only to produce a state dict
# with the official names and shapes and the official forward's outputs.

class _OfficialSE(torch.nn.Module):
    def __init__(self, c, reduction=16):
        super().__init__()
        self.avg_pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Sequential(torch.nn.Linear(c, c // reduction), torch.nn.PReLU(),
                                      torch.nn.Linear(c // reduction, c), torch.nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(self.avg_pool(x).flatten(1))[:, :, None, None]


class _OfficialIRBlock(torch.nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None, use_se=False):
        super().__init__()
        conv = lambda a, b, s=1: torch.nn.Conv2d(a, b, 3, s, 1, bias=False)   # noqa: E731
        self.bn0, self.conv1, self.bn1 = torch.nn.BatchNorm2d(inplanes), conv(inplanes, inplanes), torch.nn.BatchNorm2d(inplanes)
        self.prelu = torch.nn.PReLU()
        self.conv2, self.bn2 = conv(inplanes, planes, stride), torch.nn.BatchNorm2d(planes)
        self.downsample, self.use_se = downsample, use_se
        if use_se:
            self.se = _OfficialSE(planes)

    def forward(self, x):
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        return self.prelu(out + (x if self.downsample is None else self.downsample(x)))


class _OfficialResNetFace(torch.nn.Module):
    def __init__(self, use_se=False, width=64):
        super().__init__()
        self.inplanes, self.use_se = width, use_se
        self.conv1 = torch.nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1, self.prelu, self.maxpool = torch.nn.BatchNorm2d(width), torch.nn.PReLU(), torch.nn.MaxPool2d(2, 2)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(2 * width, 2, 2)
        self.layer3 = self._make_layer(4 * width, 2, 2)
        self.layer4 = self._make_layer(8 * width, 2, 2)
        self.bn4, self.dropout = torch.nn.BatchNorm2d(8 * width), torch.nn.Dropout()
        self.fc5, self.bn5 = torch.nn.Linear(8 * width * 8 * 8, 512), torch.nn.BatchNorm1d(512)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = torch.nn.Sequential(torch.nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                             torch.nn.BatchNorm2d(planes))
        layers = [_OfficialIRBlock(self.inplanes, planes, stride, downsample, self.use_se)]
        self.inplanes = planes
        layers += [_OfficialIRBlock(planes, planes, use_se=self.use_se) for _ in range(1, blocks)]
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        embedding_88 = torch.nn.functional.adaptive_avg_pool2d(x, output_size=(8, 8))
        return {"fea": self.bn5(self.fc5(x.view(x.size(0), -1))), "embedding_88": embedding_88}


def _official_model(use_se=False, width=64, seed=0):
    torch.manual_seed(seed)
    model = _OfficialResNetFace(use_se, width)
    with torch.no_grad():   # trained-looking BN statistics and PReLU slopes, so that eval mode matters
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.1, 0.4)
    return model.eval()


@pytest.mark.parametrize("use_se,width", [(False, 64), (True, 16)])
def test_official_checkpoint_loads_and_computes_the_official_outputs(use_se, width, tmp_path):
    from fastface.backbones import arcface_from_official_state, load_encoder, load_official_arcface
    official = _official_model(use_se, width)
    state = torch.nn.DataParallel(official).state_dict()          # saved as the official file: module. prefix
    assert all(k.startswith("module.") for k in state) and any(".downsample." in k for k in state)
    path = tmp_path / "resnet18_110.pth"
    torch.save(state, path)
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        ref = official(x)
        for model in (arcface_from_official_state(state), load_official_arcface(path)):
            emb, fmap = model(x)
            torch.testing.assert_close(fmap, ref["embedding_88"], rtol=1e-4, atol=1e-4)   # (2, 8w, 8, 8)
            torch.testing.assert_close(emb, ref["fea"], rtol=1e-4, atol=1e-4)            # (2, 512)
    assert fmap.shape == (2, 8 * width, 8, 8) and emb.shape == (2, 512)
    # the encoder: RGB in [0, 1] -> luma (as OpenCV's grey read) -> [-1, 1]
    enc = load_encoder(f"arcface-official:{path}")
    assert (enc.image_size, enc.channels, enc.grid, enc.embedding_dim) == (128, 1, 8, 512)
    rgb = torch.rand(3, 3, 128, 128)
    grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]
    emb, fmap = enc.encode(rgb, batch_size=2)
    with torch.no_grad():
        ref = official(grey * 2 - 1)
    torch.testing.assert_close(emb, ref["fea"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fmap, ref["embedding_88"], rtol=1e-4, atol=1e-4)


def test_official_checkpoint_bad_files(tmp_path):
    from fastface.backbones import arcface_from_official_state, load_official_arcface
    state = torch.nn.DataParallel(_official_model(width=8)).state_dict()
    with pytest.raises(ValueError, match="does not exist"):
        load_official_arcface(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a state dict"):
        load_official_arcface(tmp_path / "junk.pth")
    broken = {k: v for k, v in state.items() if "layer3.1.conv2" not in k}
    with pytest.raises(ValueError, match=r"missing \['layer3.1.conv2.weight'\]"):
        arcface_from_official_state(broken)
    with pytest.raises(ValueError, match="no 'fc5.weight'"):
        arcface_from_official_state({k: v for k, v in state.items() if "fc5" not in k})
    with pytest.raises(TypeError, match="state dict"):
        arcface_from_official_state([1, 2])

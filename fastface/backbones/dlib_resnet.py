"""The real, pretrained dlib face-recognition ResNet (CC0) as a PyTorch module with spatial maps.

The weights come from the PyPI package `face-recognition-models` (the `fastface[dlib]` extra):
`dlib_face_recognition_resnet_model_v1.dat`, read with a parser of dlib's serialisation. Input: a
150x150 RGB chip from dlib.get_face_chip(img, shape_5, size=150, padding=0.25).
forward(x) returns (descriptor (B, 128), maps: dict of (B, C, H, W) at 35, 17, 8, 4 and 2 px).
"""
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN_RGB = (122.782, 117.001, 104.298)
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# (channels, down-sampling?) for each residual block, in forward order.
BLOCKS = [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2 \
    + [(256, True)] + [(256, False)] * 2 + [(256, True)]


def model_path(name=MODEL_FILE):
    """Return the path of a file of `face_recognition_models` (found without importing it:
    its __init__ needs pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the dlib models need the 'dlib' extra: pip install fastface[dlib] "
                          "(face-recognition-models, dlib-bin)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return path


class _Reader:
    """dlib's serialisation: ints as a header byte (low 4 bits: byte count, 0x80: negative) plus
    little-endian bytes; strings as length + bytes; tensors as version 2, 4 dims, raw float32."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def int(self):
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def tensor(self):
        version = self.int()
        if version != 2:
            raise ValueError(f"dlib tensor version {version} is not supported")
        dims = [self.int() for _ in range(4)]
        count = int(np.prod(dims))
        arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).copy()
        self.pos += 4 * count
        return arr, dims

    def seek_record(self, names):
        """Move past the next serialised string among `names`; return it (or None at the end)."""
        best = None
        for name in names:
            token = bytes([0x01, len(name)]) + name.encode()
            at = self.data.find(token, self.pos)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, name, len(token))
        if best is None:
            return None
        self.pos = best[0] + best[2]
        return best[1]


def read_dlib_layers(path):
    """Return [(kind, dict)] for the con_, affine_ and fc_ layers of a dlib network file, in forward order."""
    with open(path, "rb") as fh:
        r = _Reader(fh.read())
    layers = []
    while True:
        kind = r.seek_record(("con_4", "affine_", "fc_2"))
        if kind is None:
            return layers
        if kind == "con_4":
            params, _ = r.tensor()
            nf, rows, cols, sy, sx, py, px = (r.int() for _ in range(7))
            cin = (params.size - nf) // (nf * rows * cols)
            w = params[:nf * cin * rows * cols].reshape(nf, cin, rows, cols)
            layers.append(("con", dict(weight=w, bias=params[nf * cin * rows * cols:], stride=(sy, sx),
                                       padding=(py, px))))
        elif kind == "affine_":
            params, _ = r.tensor()
            k = params.size // 2
            layers.append(("affine", dict(gamma=params[:k], beta=params[k:])))
        else:
            n_out, n_in = r.int(), r.int()
            params, _ = r.tensor()
            layers.append(("fc", dict(weight=params[:n_in * n_out].reshape(n_in, n_out))))


class _Affine(nn.Module):
    def __init__(self, gamma, beta):
        super().__init__()
        self.register_buffer("gamma", torch.from_numpy(gamma).view(1, -1, 1, 1))
        self.register_buffer("beta", torch.from_numpy(beta).view(1, -1, 1, 1))

    def forward(self, x):
        return x * self.gamma + self.beta


def _conv(spec):
    w = torch.from_numpy(spec["weight"])
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], stride=spec["stride"], padding=spec["padding"])
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(torch.from_numpy(spec["bias"]))
    return conv


def _add_prev(a, b):
    """dlib's add_prev: the sum over the larger shape, zero-extending channels and bottom/right edges."""
    C, H, W = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    pad = lambda t: F.pad(t, (0, W - t.shape[3], 0, H - t.shape[2], 0, C - t.shape[1]))  # noqa: E731
    return pad(a) + pad(b)


class DlibResNet(nn.Module):
    """dlib_face_recognition_resnet_model_v1 in PyTorch (inference)."""

    def __init__(self, path=None):
        super().__init__()
        layers = read_dlib_layers(path or model_path())
        convs = [_conv(s) for k, s in layers if k == "con"]
        affines = [_Affine(s["gamma"], s["beta"]) for k, s in layers if k == "affine"]
        fcs = [s for k, s in layers if k == "fc"]
        if len(convs) != 1 + 2 * len(BLOCKS) or len(affines) != len(convs) or len(fcs) != 1:
            raise ValueError(f"unexpected dlib network: {len(convs)} convs, {len(affines)} affines, {len(fcs)} fc")
        self.convs, self.affines = nn.ModuleList(convs), nn.ModuleList(affines)
        self.register_buffer("fc", torch.from_numpy(fcs[0]["weight"]))                 # (256, 128)
        self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))

    def preprocess(self, chips):
        """uint8/float RGB chips (B, 150, 150, 3) in [0, 255] -> the network input (B, 3, 150, 150)."""
        x = torch.as_tensor(np.asarray(chips)).float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        return (x.permute(0, 3, 1, 2) - self.mean) / 256.0

    def forward(self, x):  # x (B, 3, 150, 150), preprocessed
        maps = {}
        x = F.max_pool2d(F.relu(self.affines[0](self.convs[0](x))), 3, 2)
        maps[x.shape[-1]] = x
        for i, (_, down) in enumerate(BLOCKS):
            c1, c2 = self.convs[1 + 2 * i], self.convs[2 + 2 * i]
            a1, a2 = self.affines[1 + 2 * i], self.affines[2 + 2 * i]
            out = a2(c2(F.relu(a1(c1(x)))))
            skip = F.avg_pool2d(x, 2, 2) if down else x
            x = F.relu(_add_prev(out, skip))
            maps[x.shape[-1]] = x
        descriptor = x.mean((2, 3)) @ self.fc
        return descriptor, maps

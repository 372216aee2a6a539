"""The official DeepFace-EMD ArcFace checkpoint (`resnet18_110.pth`) in fastface's ArcFaceResNet.

The official model is arcface-pytorch's `resnet_face18(use_se=False)` (ResNetFace with IRBlocks),
saved from nn.DataParallel: every key starts with `module.`, and the projection shortcut of a block
is called `downsample` (fastface: `shortcut`). The rest of the names and the forward agree:
conv1 -> bn1 -> prelu -> maxpool -> layer1..4 -> bn4 -> (dropout) -> 8x8 map; fc5 -> bn5 -> the
512-d embedding. Its input is one grey channel, 128 x 128, normalised to [-1, 1] ((x - 0.5) / 0.5).
"""
import os
import re

import torch

from .arcface import ArcFaceResNet

PREFIX = "module."


def official_to_fastface_keys(state):
    """Rename an official state dict's keys to fastface's (drop `module.`, downsample -> shortcut)."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entries must be str -> tensor, got {key!r}: {type(value).__name__}")
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        out[re.sub(r"\.downsample\.", ".shortcut.", name)] = value
    return out


def _architecture(state):
    """Infer ArcFaceResNet's arguments from the (renamed) parameter shapes."""
    for key in ("conv1.weight", "fc5.weight", "bn5.weight"):
        if key not in state:
            raise ValueError(f"not an official DeepFace-EMD ArcFace state dict: no {key!r} "
                             f"(keys start with {sorted(state)[:3]})")
    width, in_channels = state["conv1.weight"].shape[:2]
    embedding_dim, flat = state["fc5.weight"].shape
    layers = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m}
        if not blocks:
            raise ValueError(f"not an official DeepFace-EMD ArcFace state dict: no layer{i} blocks")
        layers.append(max(blocks) + 1)
    channels = 8 * width
    side = int(round((flat / channels) ** 0.5))
    if side * side * channels != flat:
        raise ValueError(f"fc5 takes {flat} inputs, not a square map of {channels} channels")
    use_se = any(".se." in k for k in state)
    return dict(layers=tuple(layers), in_channels=int(in_channels), width=int(width),
                embedding_dim=int(embedding_dim), use_se=use_se, input_size=16 * side, stem_pool=True)


def arcface_from_official_state(state):
    """Return fastface's ArcFaceResNet (eval mode) holding the official state dict's weights."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError(f"state must be a state dict (str -> tensor), got {type(state).__name__}")
    state = official_to_fastface_keys(state)
    model = ArcFaceResNet(**_architecture(state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"the state dict does not match the official ResNet-18 layout: missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return model.eval()


def load_official_arcface(path, map_location="cpu"):
    """Load `resnet18_110.pth` (the official DeepFace-EMD ArcFace weights) as an ArcFaceResNet."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"official ArcFace checkpoint {os.fspath(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:   # not a tensor-only pickle: refuse to run arbitrary code
        raise ValueError(f"{os.fspath(path)!r} is not a state dict saved with torch.save "
                         f"({type(e).__name__}: {e})") from e
    return arcface_from_official_state(state)

"""R³AN inference: load a trained transform (R³AN or the FC baseline) and map features through it,
in memory or streamed between .npy files of any size."""
import os

import numpy as np
import torch
from tqdm import tqdm


def load_transform(path, device="cpu"):
    """The eval-mode transform module (R3AN or FCTransform) of a `fastface train r3an` model.pt (or last.pt)."""
    from .serialization import load
    return load(path, device, kind="r3an")


@torch.no_grad()
def transform_features(model, features, batch_size=4096):
    """Transformed features (N, Dt) float32 of features (N, Ds) (a tensor or array) with an eval model."""
    if not hasattr(model, "transform"):
        raise TypeError(f"model must be an R3AN or FCTransform, got {type(model).__name__}")
    feats = torch.as_tensor(features)
    if feats.dim() != 2 or feats.shape[1] != model.source_dim:
        raise ValueError(f"features must have shape (N, {model.source_dim}), got {tuple(feats.shape)}")
    dev = next(model.parameters()).device
    outs = [model.transform(feats[s:s + batch_size].to(dev, torch.float32)).float().cpu()
            for s in range(0, feats.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, model.target_dim)


def transform_file(model_path, in_path, out_path, chunk=65536, batch_size=4096, device="cpu", progress=True):
    """Stream IN.npy (N, Ds) through a trained transform into OUT.npy (N, Dt) float32 in bounded memory
    (memory-mapped input, chunks of `chunk` rows, memory-mapped output); returns N."""
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not os.path.isfile(in_path):
        raise ValueError(f"features file {in_path!r} does not exist")
    model = load_transform(model_path, device)
    feats = np.load(in_path, mmap_mode="r")
    if feats.ndim != 2 or feats.shape[1] != model.source_dim:
        raise ValueError(f"features in {in_path!r} must have shape (N, {model.source_dim}), got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise TypeError(f"features in {in_path!r} must be floating point, got {feats.dtype}")
    n = feats.shape[0]
    tmp = f"{out_path}.partial.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, model.target_dim))
    with tqdm(total=n, disable=not progress, desc="transform", unit="feat", unit_scale=True) as bar:
        for s in range(0, n, chunk):
            block = torch.from_numpy(np.array(feats[s:s + chunk], dtype=np.float32))  # a copy: bounded, writable
            out[s:s + block.shape[0]] = transform_features(model, block, batch_size).numpy()
            bar.update(block.shape[0])
    out.flush()
    del out
    os.replace(tmp, out_path)
    return n

"""Sampling a trained face generator (`fastface train gan`'s model.pt) through FusedGenerator.

    images, z = sample_faces("runs/gan/model.pt", n=64, seed=0)     # (64, 3, S, S) in [0, 1], (64, 512)
    fastface sample --model runs/gan/model.pt --n 64 --out grid.png [--seed S] [--latents z.npy]

Latents are drawn on the CPU from torch.Generator().manual_seed(seed) (the same on every device), N(0, I).
"""
import os

import torch

from .ops.generator import IMPLS, FusedGenerator


def load_generator(path, device="cpu"):
    """The eval-mode Generator saved in path (kind "gan"; ValueError for another kind or a non-model file)."""
    from .models.serialization import load
    return load(path, device=device, kind="gan")


def draw_latents(n, latent_dim, seed=0):
    """n latents ~ N(0, I) (n, latent_dim) float32, from seed alone."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"--n must be a positive int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate(fg, z, device="cpu", impl="auto", batch_size=256):
    """FusedGenerator fg on latents z (N, D), in batches, on device -> images (N, C, S, S) in [0, 1] on the CPU."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out = [fg(z[s:s + batch_size].to(device), impl=impl).float().cpu() for s in range(0, z.shape[0], batch_size)]
    return (torch.cat(out) * 0.5 + 0.5).clamp(0, 1)


def sample_faces(model, n=64, seed=0, device="cpu", impl="auto", batch_size=256):
    """(images (n, C, S, S) in [0, 1], latents (n, D)) of a generator (a model.pt path or a Generator)."""
    generator = load_generator(model, device) if isinstance(model, (str, os.PathLike)) else model.eval().to(device)
    z = draw_latents(n, generator.latent_dim, seed)
    return generate(FusedGenerator.from_module(generator), z, device, impl, batch_size), z


def run_sample(model, out, n=64, seed=0, latents_out=None, device="cpu", impl="auto", nrow=8, batch_size=256):
    """`fastface sample`: write the grid of n generated faces to out (PNG) and, optionally, the latents
    (n, D) float32 to latents_out (.npy). Returns the images."""
    import numpy as np

    from .viz.grid import save_image_grid
    images, z = sample_faces(model, n, seed, device, impl, batch_size)
    save_image_grid(out, images, nrow=nrow)
    if latents_out:
        np.save(latents_out, z.numpy().astype(np.float32))
    return images


__all__ = ["load_generator", "draw_latents", "generate", "sample_faces", "run_sample"]

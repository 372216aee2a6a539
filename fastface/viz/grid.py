"""Image grids as PNG files (training samples: reconstructions, generated faces)."""
import math

import torch


def image_grid(images, nrow=8, pad=2):
    """images (N, C, H, W) in [0, 1] (C = 1 or 3) -> (3, rows*(H+pad)+pad, nrow*(W+pad)+pad), white padding."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (N, C, H, W) tensor with C = 1 or 3, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow <= 0:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    n, c, h, w = images.shape
    x = images.detach().float().cpu().nan_to_num(0.0).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if c == 1 else x
    cols, rows = min(nrow, max(n, 1)), max(1, math.ceil(n / nrow))
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    return grid


def save_image_grid(path, images, nrow=8, pad=2):
    """Write image_grid(images, nrow, pad) to path as PNG; returns path."""
    from .flows import save_png
    return save_png(path, image_grid(images, nrow, pad))

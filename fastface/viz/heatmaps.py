"""Cross-correlation heat maps (dissertation section 5.3.3, after [77]): how much each patch of one face
matches the other face as a whole."""
import torch

from .flows import weight_heatmap


def cross_correlation(tokens1, tokens2):
    """tokens1, tokens2 (B, n, D) patch embeddings of paired images -> (map1, map2) each (B, n): the dot
    product of every patch of image 1 with the global average pool of image 2, and the reverse."""
    if tokens1.dim() != 3 or tokens1.shape != tokens2.shape:
        raise ValueError(f"tokens1 and tokens2 must both be (B, n, D), got {tuple(tokens1.shape)} and "
                         f"{tuple(tokens2.shape)}")
    m1 = torch.einsum("bnd,bd->bn", tokens1, tokens2.mean(1))
    m2 = torch.einsum("bnd,bd->bn", tokens2, tokens1.mean(1))
    return m1, m2


def heatmap_grid(images1, images2, map1, map2, grid):
    """Tiles (4B, 3, H, W) for image_grid(nrow=4): image 1 | its heat map | image 2's heat map | image 2 for
    each pair. images (B, C, H, W) in [0, 1]; maps (B, grid * grid) (red = strongest match)."""
    tiles = []
    for b in range(images1.shape[0]):
        a, c = images1[b].float(), images2[b].float()
        a3, c3 = a.expand(3, -1, -1), c.expand(3, -1, -1)
        tiles += [a3, weight_heatmap(a, map1[b], grid), weight_heatmap(c, map2[b], grid), c3]
    return torch.stack(tiles)

"""Image reconstruction metrics for GAN inversion: PSNR, SSIM (Wang et al. 2004) and identity similarity.

Images are (B, C, H, W) tensors in [-1, 1] (the generator's range; data range 2) unless data_range says
otherwise. Every metric returns one value per image (B,); average them for a table.
"""
import torch
import torch.nn.functional as F


def _check_pair(images, targets):
    for name, t in (("images", images), ("targets", targets)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() != 4:
            raise ValueError(f"{name} must be a float (B, C, H, W) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if images.shape != targets.shape:
        raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} must have the same shape")


def psnr(images, targets, data_range=2.0):
    """Peak signal-to-noise ratio in dB (B,): 10 log10(data_range^2 / MSE) per image."""
    _check_pair(images, targets)
    mse = (images.double() - targets.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-20))).float()


def _gaussian_window(size, sigma, device):
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return g / g.sum()                                                                 # (size,)


def ssim(images, targets, data_range=2.0, window=11, sigma=1.5, k1=0.01, k2=0.03):
    """Structural similarity (B,): Wang et al.'s SSIM with an 11x11 Gaussian window (sigma 1.5), computed
    per channel over the valid window positions and averaged over positions and channels (as
    skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False))."""
    _check_pair(images, targets)
    B, C, H, W = images.shape
    if H < window or W < window:
        raise ValueError(f"images must be at least {window}x{window} for SSIM's window, got {H}x{W}")
    g = _gaussian_window(window, sigma, images.device)
    x, y = images.double().reshape(B * C, 1, H, W), targets.double().reshape(B * C, 1, H, W)

    def blur(t):                                         # separable Gaussian, valid positions
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(B, -1).mean(1).float()


def identity_similarity(embed, images, targets, batch_size=128):
    """Cosine (B,) between the face-network embeddings of each reconstruction and its target.
    embed: images (b, C, H, W) -> embeddings (b, D), e.g. FaceFeatures("dlib").embed (dlib's descriptor).
    (The GAN-inversion paper reports 1 - this, averaged, and calls it "FID".)"""
    _check_pair(images, targets)
    out = []
    for s in range(0, images.shape[0], batch_size):
        a, b = embed(images[s:s + batch_size]), embed(targets[s:s + batch_size])
        out.append(F.cosine_similarity(a.float(), b.float(), dim=1))
    return torch.cat(out) if out else torch.zeros(0)


__all__ = ["psnr", "ssim", "identity_similarity"]

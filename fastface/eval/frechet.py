"""The Fréchet distance between two feature sets (FID's formula on a face network's features).

    d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))

with mu, S the mean and covariance (unbiased) of each set. FID uses Inception-v3 pool features; fastface
uses a face network's embeddings (the shipped ArcFace backbone, or dlib's ResNet), so the figure is
"FID-style": comparable between runs on the same encoder only. The matrix square root is taken in
float64 through symmetric eigendecompositions: tr((S_a S_b)^(1/2)) = tr((A S_b A)^(1/2)) with
A = S_a^(1/2), and A S_b A is symmetric positive semi-definite, so no complex parts or scipy.sqrtm
instabilities (tiny negative eigenvalues from rounding are clamped to 0).
"""
import torch
import torch.nn.functional as F


def _check_features(name, feats):
    if not isinstance(feats, torch.Tensor):
        try:
            feats = torch.as_tensor(feats)
        except Exception:
            raise TypeError(f"{name} must be a (N, D) tensor or array of features, got {type(feats).__name__}") \
                from None
    if feats.dim() != 2 or feats.shape[0] < 2 or feats.shape[1] < 1:
        raise ValueError(f"{name} must be (N, D) features with N >= 2 (a covariance needs two rows), got shape "
                         f"{tuple(feats.shape)}")
    if feats.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {feats.dtype}")
    feats = feats.detach().to("cpu", torch.float64)
    if not torch.isfinite(feats).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return feats


def _sqrt_psd(m):
    """The symmetric square root of a symmetric PSD matrix (D, D), float64."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def trace_sqrt_product(cov_a, cov_b):
    """tr((cov_a cov_b)^(1/2)) for symmetric PSD cov_a, cov_b (D, D), in float64."""
    root_a = _sqrt_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    vals = torch.linalg.eigvalsh((inner + inner.T) / 2)
    return vals.clamp_min(0).sqrt().sum()


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b):
    """The squared Fréchet (2-Wasserstein) distance between N(mu_a, cov_a) and N(mu_b, cov_b)
    (mu (D,), cov (D, D)); a float."""
    mu_a, mu_b = (torch.as_tensor(m).to(torch.float64) for m in (mu_a, mu_b))
    cov_a, cov_b = (torch.as_tensor(c).to(torch.float64) for c in (cov_a, cov_b))
    d = mu_a.shape[-1]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"means must be (D,) and covariances (D, D) of one D, got mu_a {tuple(mu_a.shape)}, "
                         f"cov_a {tuple(cov_a.shape)}, mu_b {tuple(mu_b.shape)}, cov_b {tuple(cov_b.shape)}")
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) \
        - 2 * trace_sqrt_product(cov_a, cov_b)
    return max(float(value), 0.0)


def frechet_distance(feats_a, feats_b):
    """The Fréchet distance (squared, as FID reports it) between the Gaussians fitted to feats_a (N, D)
    and feats_b (M, D): means and unbiased covariances, in float64. Identical sets give ~0."""
    a, b = _check_features("feats_a", feats_a), _check_features("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feats_a and feats_b must have the same feature size D, got {a.shape[1]} and {b.shape[1]}")
    return gaussian_frechet_distance(a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1), b.mean(0),
                                     torch.cov(b.T).reshape(b.shape[1], -1))


@torch.no_grad()
def encoder_features(encoder, images, batch_size=128):
    """Embeddings (N, D) float32 on the CPU of images (N, C, H, W) in [0, 1] under a fastface encoder
    (fastface.backbones.load_encoder: "arcface", "arcface:CKPT", "dlib", ...). Images are brought to the
    encoder's channels (grey = channel mean; grey -> RGB repeated) and size (bilinear, antialiased)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (N, C, H, W) tensor with C = 1 or 3 in [0, 1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].float()
        if x.shape[1] != encoder.channels:
            x = x.mean(1, keepdim=True) if encoder.channels == 1 else x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (encoder.image_size, encoder.image_size):
            x = F.interpolate(x, size=(encoder.image_size, encoder.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        out.append(encoder.encode(x.clamp(0, 1).contiguous(), batch_size)[0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, encoder.embedding_dim)


def fid_style_score(encoder, images_a, images_b, batch_size=128):
    """frechet_distance of the encoder's embeddings of two image sets (N, C, H, W) / (M, C, H, W) in [0, 1]."""
    return frechet_distance(encoder_features(encoder, images_a, batch_size),
                            encoder_features(encoder, images_b, batch_size))


__all__ = ["frechet_distance", "gaussian_frechet_distance", "trace_sqrt_product", "encoder_features",
           "fid_style_score"]

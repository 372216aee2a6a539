"""GAN inversion: find the latent z with G(z) ~ a target face (GAN-inversion paper and its baselines).

- latent_loss / pixel_loss: the paper's z-loss (MAE, on the sphere of radius sqrt(D) because the generator's
  pixel-norm makes G(c z) = G(z)) and reconstruction loss (MAE); perceptual loss: fastface.models.perceptual.
- optimize_latents: gradient-descent inversion (Adam, lr 0.01, MAE, 200 steps in the paper), batched over
  faces: the loss is a sum of per-face losses, so every face follows exactly its own optimisation.
  clip=c is stochastic clipping (Lipton & Tripathi): after each step the entries outside [-c, c] are
  replaced, each by its own uniform draw in [-c, c], in the latent itself (the public code's version
  computes the clipped tensor and drops it).
- invert: the encoder's z, optionally refined by N steps of pixel + perceptual loss (the hybrid).
"""
import time

import torch
import torch.nn.functional as F

from .models.dcgan import check_images, unit_latent


def latent_loss(z_pred, z_true):
    """The z-loss on the sphere (B, D) -> scalar: MAE between sqrt(D) z_pred / |z_pred| and sqrt(D) z / |z|.

    Those are the latents the generator sees after its pixel-norm; the radius sqrt(D) (the typical |z| of
    z ~ N(0, I)) keeps the paper's scale of an MAE on raw z (on the unit sphere it would be sqrt(D) times
    smaller and vanish beside the pixel loss)."""
    d = z_true.shape[-1]
    return F.l1_loss(unit_latent(z_pred), unit_latent(z_true)) * d ** 0.5


def pixel_loss(images, targets):
    """The reconstruction loss: MAE between images and targets (B, C, S, S) (scalar)."""
    return F.l1_loss(images, targets)


def stochastic_clip_(z, c, generator=None):
    """Stochastic clipping in place: every entry of z outside [-c, c] becomes its own uniform draw in
    [-c, c]; the others are untouched. Returns the boolean mask of the entries redrawn."""
    with torch.no_grad():
        out = z.abs() > c
        draws = torch.empty(z.shape, device=z.device, dtype=z.dtype).uniform_(-c, c, generator=generator)
        z.copy_(torch.where(out, draws, z))
    return out


def _check_targets(generator, targets, name="targets"):
    check_images(name, targets, generator.cfg)


def optimize_latents(generator, targets, z0=None, *, steps=200, lr=0.01, clip=None, features=None,
                     perceptual_weight=0.0, pixel_weight=1.0, seed=0):
    """Latents (B, latent_dim) found by Adam on the per-face loss pixel_weight * MAE(G(z), target) +
    perceptual_weight * perceptual(G(z), target), from z0 (default: N(0, I) draws from seed).

    targets: (B, C, S, S) in [-1, 1] for this generator. clip: None, or c > 0 for stochastic clipping.
    features: a FaceFeatures (needed when perceptual_weight > 0). The generator stays frozen."""
    _check_targets(generator, targets)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be None or > 0, got {clip!r}")
    if perceptual_weight > 0 and features is None:
        raise ValueError("perceptual_weight > 0 needs features (a fastface.models.perceptual.FaceFeatures)")
    dev = targets.device
    rng = torch.Generator(device=dev).manual_seed(seed)
    if z0 is None:
        z0 = torch.randn(targets.shape[0], generator.cfg.latent_dim, generator=rng, device=dev)
    elif tuple(z0.shape) != (targets.shape[0], generator.cfg.latent_dim):
        raise ValueError(f"z0 must be ({targets.shape[0]}, {generator.cfg.latent_dim}) (one latent per target), "
                         f"got {tuple(z0.shape)}")
    was_training = generator.training
    generator.eval()
    params = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        z = z0.detach().clone().float().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        target_maps = None
        if perceptual_weight > 0:
            with torch.no_grad():
                target_maps = features(targets)
        for _ in range(steps):
            images = generator(z)
            per_face = pixel_weight * (images - targets).abs().flatten(1).mean(1)     # (B,)
            if perceptual_weight > 0:
                from .models.perceptual import perceptual_loss_per_image
                per_face = per_face + perceptual_weight * perceptual_loss_per_image(features, images, target_maps)
            opt.zero_grad(set_to_none=True)
            per_face.sum().backward()                                                 # faces independent
            opt.step()
            if clip is not None:
                stochastic_clip_(z, clip, rng)
    finally:
        for p, r in zip(generator.parameters(), params):
            p.requires_grad_(r)
        generator.train(was_training)
    return z.detach()


@torch.no_grad()
def encode(encoder, images, batch_size=256):
    """The encoder's latents (N, latent_dim) of images (N, C, S, S) in [-1, 1], in batches (eval mode)."""
    check_images("images", images, encoder.cfg)
    encoder.eval()
    dev = next(encoder.parameters()).device
    outs = [encoder(images[s:s + batch_size].to(dev)) for s in range(0, images.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0, encoder.cfg.latent_dim, device=dev)


def invert(encoder, generator, images, *, refine=0, lr=0.01, features=None, perceptual_weight=1.0,
           batch_size=256):
    """dict(latents (N, latent_dim), reconstructions (N, C, S, S) in [-1, 1], seconds): the encoder's z of
    images (in [-1, 1], for this generator), refined by `refine` Adam steps of pixel MAE + perceptual_weight
    x perceptual loss when refine > 0 (the hybrid; without features the refinement is pixel-only)."""
    from .models.inversion import check_pair
    check_pair(encoder, generator)
    check_images("images", images, generator.cfg)
    if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
        raise ValueError(f"refine must be an int >= 0 (optimisation steps), got {refine!r}")
    if not lr > 0 or not perceptual_weight >= 0:
        raise ValueError(f"lr must be > 0 and perceptual_weight >= 0, got lr={lr!r}, "
                         f"perceptual_weight={perceptual_weight!r}")
    t0 = time.perf_counter()
    z = encode(encoder, images, batch_size)
    if refine:
        z = torch.cat([optimize_latents(generator, images[s:s + batch_size].to(z.device), z[s:s + batch_size],
                                        steps=refine, lr=lr, features=features,
                                        perceptual_weight=perceptual_weight if features is not None else 0.0)
                       for s in range(0, images.shape[0], batch_size)])
    generator.eval()
    with torch.no_grad():
        rec = torch.cat([generator(z[s:s + batch_size]) for s in range(0, z.shape[0], batch_size)])
    return {"latents": z, "reconstructions": rec, "seconds": time.perf_counter() - t0}


def _recorded_generator(model_path):
    """The generator path a `fastface train inversion` model.pt was trained with (its train_config), or None."""
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    tc = state.get("train_config") if isinstance(state, dict) else None
    if not tc and isinstance(state, dict) and isinstance(state.get("config"), dict):
        tc = state["config"] if "generator" in state["config"] and "arch" in state["config"] else None
    return (tc or {}).get("generator") or None


def invert_folder(model, images, out, *, refine=0, generator=None, device="cpu", batch_size=64,
                  perceptual="auto", perceptual_weight=1.0, lr=0.01):
    """`fastface invert`: invert every image file under `images` (resized to the generator's size) with the
    encoder in `model`, refined by `refine` steps; writes OUT/reconstructions/<name>.png, OUT/latents.npy
    (N, latent_dim) with OUT/latents.txt (the source file of each row) and OUT/grid.png (rows of targets
    and reconstructions). generator: its model.pt (default: the one the encoder was trained with).
    Returns dict(n, seconds, out)."""
    import os

    import numpy as np

    from .data.folder import list_images, read_image
    from .models.serialization import load
    from .train.inversion import load_generator
    from .viz.flows import save_png
    from .viz.grid import save_image_grid
    try:
        encoder = load(model, device, kind="inversion")
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    generator = generator or _recorded_generator(model)
    if generator is None:
        raise ValueError(f"generator: {model!r} does not record the generator it was trained with; give --generator")
    gen = load_generator(generator, device, "generator")
    from .models.inversion import check_pair
    check_pair(encoder, gen, "model", "generator")
    files = list_images(images, "images")
    cfg = gen.cfg
    x = torch.stack([read_image(f, cfg.image_size, cfg.channels) for f in files]).to(device) * 2.0 - 1.0
    features = None
    if refine and perceptual_weight > 0:
        from .models.perceptual import FaceFeatures
        features = FaceFeatures(perceptual).to(device)
    res = invert(encoder, gen, x, refine=refine, lr=lr, features=features, perceptual_weight=perceptual_weight,
                 batch_size=batch_size)
    os.makedirs(os.path.join(out, "reconstructions"), exist_ok=True)
    rec = ((res["reconstructions"].float().cpu() + 1) / 2).clamp(0, 1)
    names = []
    for f, r in zip(files, rec):
        name = os.path.splitext(os.path.relpath(f, images))[0].replace(os.sep, "__") + ".png"
        save_png(os.path.join(out, "reconstructions", name), r)
        names.append(os.path.relpath(f, images))
    np.save(os.path.join(out, "latents.npy"), res["latents"].float().cpu().numpy())
    with open(os.path.join(out, "latents.txt"), "w") as fh:
        fh.write("\n".join(names) + "\n")
    n_show = min(len(files), 8)
    rows = []
    for s in range(0, min(len(files), 32), n_show):
        rows += [(x[s:s + n_show].float().cpu() + 1) / 2, rec[s:s + n_show]]
    save_image_grid(os.path.join(out, "grid.png"), torch.cat(rows), nrow=n_show)
    return {"n": len(files), "seconds": res["seconds"], "out": out}


__all__ = ["latent_loss", "pixel_loss", "stochastic_clip_", "optimize_latents", "encode", "invert", "invert_folder"]

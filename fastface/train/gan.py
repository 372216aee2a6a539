"""`fastface train gan`: the face generator fastface inverts (fastface/models/dcgan.py) on the shared loop.

Each step: one discriminator step, then one generator step (run.optimize each), with the non-saturating
loss (Goodfellow et al. 2014) and the R1 gradient penalty on real images (Mescheder et al. 2018):

    L_D = E[softplus(D(G(z)))] + E[softplus(-D(x))] + (gamma / 2) E[|grad_x D(x)|^2]
    L_G = E[softplus(-D(G(z)))]

R1 can be lazy (StyleGAN2): every r1_every-th step, weighted by r1_every. Adam (lr 2e-4, betas (0, 0.99)).
Images are the training faces scaled to [-1, 1] (the generator's Tanh range), held in memory as uint8.
Hooks: sample_every writes OUT/samples/samples_STEP.png from a fixed set of latents; eval_every logs an
FID-style score (fastface.eval.frechet: Fréchet distance between a face network's embeddings of
n_fid generated faces, from fixed latents, and n_fid training faces). Both use G in eval mode (running
BatchNorm statistics), the generator model.pt exports. model.pt holds the generator (kind "gan"); the
discriminator stays in last.pt.
"""
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models.dcgan import Discriminator, GANConfig, Generator
from .config import TrainConfig
from .loop import Trainer, fit, whole_batch


@dataclass
class GANTrainConfig(TrainConfig):
    """The GAN-inversion paper's generator to invert: pixel-norm DCGAN on SynthFaces or an image folder."""
    data: str = "synthfaces"          # "synthfaces" or an image folder DIR/<identity>/<image>
    n_identities: int = 1000          # synthfaces: identities (seed = config seed; other seeds: disjoint faces)
    images_per_identity: int = 5      # synthfaces: images of each
    latent_dim: int = 512
    image_size: int = 64              # a power of two >= 8 (128: the paper's ProGAN size)
    channels: int = 3
    width: int = 64                   # generator: channels before the image layer (doubling towards 4x4)
    max_width: int = 512
    d_width: int = 64                 # discriminator: channels of its first layer
    spectral_norm: bool = False       # discriminator: spectral norm on every conv (with or instead of R1)
    lr: float = 2e-4
    beta1: float = 0.0                # Adam betas (beta1, beta2): (0, 0.99) as StyleGAN, (0.5, 0.99) DCGAN-like
    beta2: float = 0.99
    r1_gamma: float = 1.0             # R1 penalty weight on real images (0 = off)
    r1_every: int = 4                 # lazy R1: every k-th step, weighted by k (1 = every step)
    n_fid: int = 500                  # eval_every: generated and real faces in the FID-style score
    fid_encoder: str = "arcface"      # face network of the FID-style score: arcface (shipped), arcface:CKPT, dlib
    n_samples: int = 64               # sample_every: faces in each grid (fixed latents)
    batch_size: int = 64
    epochs: int = 100
    checkpoint_every: int = 500

    def __post_init__(self):
        super().__post_init__()
        self.gan_config()   # validates the architecture fields
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0 (0 = off), got {self.r1_gamma!r}")
        for name in ("r1_every", "n_samples", "n_identities", "images_per_identity"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_fid < 2:
            raise ValueError(f"n_fid must be >= 2 (a covariance needs two faces), got {self.n_fid!r}")
        from ..backbones.encoders import check_backbone_spec
        check_backbone_spec(self.fid_encoder)

    def gan_config(self):
        return GANConfig(latent_dim=self.latent_dim, image_size=self.image_size, channels=self.channels,
                         width=self.width, max_width=self.max_width, d_width=self.d_width,
                         spectral_norm=self.spectral_norm)


# ------------------------------------------------------------------------------------- losses
def discriminator_loss(real_logits, fake_logits):
    """Non-saturating D loss: E[softplus(-D(x))] + E[softplus(D(G(z)))] (real (B,), fake (B,) logits)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits):
    """Non-saturating G loss: E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))] (fake (B,) logits)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(discriminator, real):
    """E[|grad_x D(x)|^2] over real images (B, C, S, S), with its graph (for D's update)."""
    x = real.detach().requires_grad_(True)
    logits = discriminator(x)
    grad, = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


# ------------------------------------------------------------------------------------- data
class ImageTensorDataset(torch.utils.data.Dataset):
    """Images (N, C, S, S) uint8 in memory; __getitems__ returns a batch dict {"image": (B, C, S, S) uint8}."""

    def __init__(self, images):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, S, S) uint8 tensor, got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        self.images = images

    def __len__(self):
        return self.images.shape[0]

    def __getitems__(self, indices):
        return {"image": self.images[torch.as_tensor(indices, dtype=torch.int64)]}

    def __getitem__(self, index):
        return {"image": self.images[index]}


def to_uint8(images):
    """(N, C, S, S) in [0, 1] -> uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def to_gan_range(images_u8):
    """uint8 (B, C, S, S) -> float (B, C, S, S) in [-1, 1]."""
    return images_u8.float() / 127.5 - 1.0


def load_training_images(cfg, progress=False, chunk=256):
    """The training faces of cfg (uint8 (N, channels, image_size, image_size)): SynthFaces rendered at
    image_size (at 16 and downsampled below 16, SynthFaces' smallest size) or an image folder read."""
    size = cfg.image_size
    if cfg.data == "synthfaces":
        from ..data import SynthFaces
        ds = SynthFaces(cfg.n_identities, cfg.images_per_identity, size=max(size, 16), channels=cfg.channels,
                        seed=cfg.seed)
        parts = []
        for s in tqdm(range(0, len(ds), chunk), disable=not progress, desc="render faces"):
            x = ds.render_batch(range(s, min(s + chunk, len(ds))))["image"]
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            parts.append(to_uint8(x))
        return torch.cat(parts)
    from ..data import ImageFolder
    folder = ImageFolder(cfg.data, size=size, channels=cfg.channels)
    return to_uint8(folder.load_all()[0])



# ------------------------------------------------------------------------------------- the trainer
class GANTrainer(Trainer):
    name, Config, model_kind = "gan", GANTrainConfig, "gan"
    in_memory = True
    collate = staticmethod(whole_batch)

    def __init__(self, cfg, run, images=None):
        """images: training faces (N, C, S, S) uint8 instead of rendering / reading cfg.data."""
        super().__init__(cfg, run)
        self._images = images
        self._encoder, self._real_features = None, None

    def dataset(self):
        if self._images is None:
            self._images = load_training_images(self.cfg, self.run.progress)
        gcfg = self.cfg.gan_config()
        want = (gcfg.channels, gcfg.image_size, gcfg.image_size)
        if self._images.dim() != 4 or tuple(self._images.shape[1:]) != want:
            raise ValueError(f"training images must be (N, {', '.join(map(str, want))}) for this config, got "
                             f"{tuple(self._images.shape)}")
        self.data = ImageTensorDataset(self._images)
        return self.data

    def build(self):
        cfg, dev = self.cfg, self.run.device
        self.gan = cfg.gan_config()
        self.generator = Generator(self.gan).to(dev)
        self.discriminator = Discriminator(self.gan).to(dev)
        self.modules = {"generator": self.generator, "discriminator": self.discriminator}
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {"d": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.lr, betas=betas),
                           "g": torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=betas)}
        self.net_g, self.net_d = self.run.ddp(self.generator), self.run.ddp(self.discriminator)
        # fixed latents of the sample grids and of the FID-style score (their own generators: the
        # training RNG stream, hence exact resume, does not depend on the hooks)
        self.sample_latents = torch.randn(cfg.n_samples, cfg.latent_dim,
                                          generator=torch.Generator().manual_seed(cfg.seed + 1))
        self.fid_latents = torch.randn(cfg.n_fid, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 2))

    def latents(self, n):
        return torch.randn(n, self.cfg.latent_dim, device=self.run.device)

    def train_step(self, batch):
        cfg = self.cfg
        real = to_gan_range(batch["image"])
        b = real.shape[0]
        # D step on the non-saturating loss (+ lazy R1 on real images)
        with torch.no_grad():
            fake = self.net_g(self.latents(b))
        loss_d = discriminator_loss(self.net_d(real).float(), self.net_d(fake).float())
        out = {"loss_d": loss_d.item()}
        total_d = loss_d
        if cfg.r1_gamma > 0 and self.run.step % cfg.r1_every == 0:
            r1 = r1_penalty(self.discriminator, real)
            total_d = loss_d + (cfg.r1_gamma / 2) * cfg.r1_every * r1
            out["r1"] = r1.item()
        self.run.optimize(self.optimizers["d"], total_d)
        # G step on fresh latents
        fake_logits = self.net_d(self.net_g(self.latents(b))).float()
        loss_g = generator_loss(fake_logits)
        self.run.optimize(self.optimizers["g"], loss_g)
        self.discriminator.zero_grad(set_to_none=True)   # L_G's backward filled D's grads; D steps in its step
        out["loss_g"] = loss_g.item()
        return out

    def hooks(self):
        return [(self.cfg.sample_every, self.sample), (self.cfg.eval_every, self.evaluate)]

    @torch.no_grad()
    def generate(self, z, batch_size=256):
        """Eval-mode G (running BatchNorm statistics, as exported) of z (N, D) -> images (N, C, S, S) in [0, 1]."""
        was = self.generator.training
        self.generator.eval()
        out = [self.generator(z[s:s + batch_size].to(self.run.device)).float().cpu()
               for s in range(0, z.shape[0], batch_size)]
        self.generator.train(was)
        return (torch.cat(out) * 0.5 + 0.5).clamp(0, 1)

    def sample(self, step):
        """OUT/samples/samples_STEP.png: G(z) of the fixed sample latents."""
        self.run.save_images("samples", self.generate(self.sample_latents))

    def evaluate(self, step):
        """Log {"event": "eval", "fid": ...}: frechet_distance of the encoder's embeddings of n_fid generated
        faces (fixed latents) and the first n_fid training faces."""
        from ..backbones import load_encoder
        from ..eval.frechet import encoder_features, frechet_distance
        if self._encoder is None:
            self._encoder = load_encoder(self.cfg.fid_encoder, device=self.run.device)
            real = self.data.images[:self.cfg.n_fid].float() / 255.0
            self._real_features = encoder_features(self._encoder, real)
        fake = encoder_features(self._encoder, self.generate(self.fid_latents))
        fid = frechet_distance(fake, self._real_features)
        self.run.log({"event": "eval", "fid": fid, "n_fake": fake.shape[0], "n_real": self._real_features.shape[0],
                      "encoder": self.cfg.fid_encoder, "time": time.time()})
        return fid

    def finish(self):
        self.generator.eval()

    def export(self):
        return self.gan.to_dict(), self.generator


def train_gan(cfg: GANTrainConfig, out_dir, device="cpu", resume=True, images=None, progress=True, stop_after=None):
    """Train the generator on the shared loop: OUT/last.pt (G, D, optimisers, RNG), log.jsonl, samples/ and, at
    the end, model.pt (fastface.load returns the eval-mode Generator). images: training faces (N, C, S, S)
    uint8 instead of cfg.data. Returns dict(generator, discriminator, step)."""
    t = fit(GANTrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after,
            images=images)
    return {"generator": t.generator.eval(), "discriminator": t.discriminator, "step": t.run.step}


__all__ = ["GANTrainConfig", "GANTrainer", "train_gan", "discriminator_loss", "generator_loss", "r1_penalty",
           "load_training_images"]

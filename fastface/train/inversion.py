"""`fastface train inversion --generator G.pt`: the GAN-inversion encoder (ResNet-18 + FC 2048, 1024, z) on
the shared loop.

The generator (a `fastface train gan` model.pt) is frozen and in eval mode: no parameter of it moves,
gradients pass through it to the encoder only. Losses (GAN-inversion paper):
  generated faces x = G(z), z ~ N(0, I) from a fixed set of `generated` latents:
      latent_weight * MAE(PN(z_hat), PN(z))  (the z-loss on the sphere of radius sqrt(D), PN = G's pixel-norm)
      + pixel_weight * MAE(G(z_hat), x) + perceptual_weight * perceptual(G(z_hat), x)
  real faces x (an image folder, or SynthFaces identities of another seed than the generator's data):
      pixel_weight * MAE(G(E(x)), x) + perceptual_weight * perceptual(G(E(x)), x)
schedule "alternate" (the paper): even epochs generated faces, odd epochs real faces, so the image->z
mapping is not forgotten; "generated": generated faces only. perceptual: MSE between the stage maps of a
frozen face network (fastface.models.perceptual.FaceFeatures: dlib ResNet when installed, else the shipped
ArcFace). Adam, lr 2e-4. Exports model.pt of kind "inversion" (fastface.load returns the encoder).
"""
from dataclasses import dataclass

import torch

from ..inversion import latent_loss, pixel_loss
from ..models.inversion import InversionConfig, InversionEncoder, check_pair
from ..models.perceptual import NETWORKS, FaceFeatures, perceptual_loss
from .config import TrainConfig, check_choice
from .loop import Trainer, fit, whole_batch

SCHEDULES = ("alternate", "generated")


@dataclass
class InversionTrainConfig(TrainConfig):
    """The inversion encoder of a trained generator (--generator G.pt or --set generator=G.pt)."""
    generator: str = ""               # the generator to invert: a `fastface train gan` model.pt (kind gan)
    arch: str = "resnet18"            # resnet18 (the paper) or resnet34 (the public code)
    width: int = 64                   # first-stage channels of the ResNet (64 = ResNet-18)
    fc: tuple = (2048, 1024)          # hidden FC layers before the latent layer
    schedule: str = "alternate"       # alternate (generated / real epochs, the paper) or generated (only)
    generated: int = 10000            # generated training faces (fixed latents drawn from the seed)
    real: str = "synthfaces"          # real faces: "synthfaces" or an image folder DIR/<identity>/<image>
    real_identities: int = 200        # synthfaces: identities (rendered with real_seed)
    real_images_per_identity: int = 5
    real_seed: int = 1                # synthfaces seed of the real set: not the generator's data (seed 0)
    latent_weight: float = 1.0        # z-loss on generated faces
    pixel_weight: float = 1.0         # MAE(G(E(x)), x)
    perceptual_weight: float = 1.0    # perceptual MSE (0 = the pixel-only encoder)
    perceptual: str = "auto"          # face network: auto (dlib when installed), dlib or arcface
    perceptual_size: int = 0          # dlib: side the images are resized to (0 = its 150 px chips)
    lr: float = 2e-4
    batch_size: int = 32
    checkpoint_every: int = 200

    def __post_init__(self):
        super().__post_init__()
        if not self.generator:
            raise ValueError("generator is required: --generator G.pt (a `fastface train gan` model.pt)")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("perceptual", self.perceptual, NETWORKS)
        InversionConfig(arch=self.arch, width=self.width, fc=self.fc)       # validates arch / width / fc
        for name in ("generated", "real_identities", "real_images_per_identity"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("latent_weight", "pixel_weight", "perceptual_weight", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.perceptual_size < 0 or self.real_seed < 0:
            raise ValueError("perceptual_size and real_seed must be >= 0")


def load_generator(path, device="cpu", name="generator"):
    """The eval-mode, frozen Generator in path (a model.pt of kind "gan"); ValueError naming `name` else."""
    from ..models.serialization import build_module, read_model
    try:
        saved = read_model(path)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: {e}") from None
    if saved.kind != "gan":
        raise ValueError(f"{name} must be a generator (a `fastface train gan` model.pt of kind 'gan'); "
                         f"{path!r} holds a model of kind {saved.kind!r}")
    return build_module(saved).to(device).eval().requires_grad_(False)


def load_real_faces(cfg, gcfg):
    """Real training faces (N, C, S, S) in [-1, 1] at the generator's size and channels."""
    if cfg.real == "synthfaces":
        from ..data import SynthFaces
        ds = SynthFaces(cfg.real_identities, cfg.real_images_per_identity, size=gcfg.image_size,
                        channels=gcfg.channels, seed=cfg.real_seed)
        images = ds.render_batch(range(len(ds)))["image"]
    else:
        from ..data import ImageFolder
        images, _ = ImageFolder(cfg.real, size=gcfg.image_size, channels=gcfg.channels).load_all()
    return images.float() * 2.0 - 1.0


class InversionData(torch.utils.data.Dataset):
    """Item i: the generated face's latent z[i] (latent_dim,) and the real face real[i % N_real]; batches
    through __getitems__ (a dict of stacked tensors)."""

    def __init__(self, latents, real):
        self.latents, self.real = latents, real

    def __len__(self):
        return self.latents.shape[0]

    def __getitems__(self, indices):
        i = torch.as_tensor(list(indices), dtype=torch.int64)
        return {"z": self.latents[i], "real": self.real[i % self.real.shape[0]]}

    def __getitem__(self, index):
        return {k: v[0] for k, v in self.__getitems__([index]).items()}



class InversionTrainer(Trainer):
    name, Config, model_kind = "inversion", InversionTrainConfig, "inversion"
    in_memory = True
    collate = staticmethod(whole_batch)

    def dataset(self):
        cfg = self.cfg
        self.generator = load_generator(cfg.generator, self.run.device, "generator")
        gcfg = self.generator.cfg
        rng = torch.Generator().manual_seed(cfg.seed)
        latents = torch.randn(cfg.generated, gcfg.latent_dim, generator=rng)
        self.data = InversionData(latents, load_real_faces(cfg, gcfg))
        # held-out generated faces for evaluation and sample grids (another seed than the training latents)
        self.held_out = torch.randn(16, gcfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed + 10007))
        return self.data

    def arch(self):
        g = self.generator.cfg
        return InversionConfig(arch=self.cfg.arch, width=self.cfg.width, fc=self.cfg.fc, latent_dim=g.latent_dim,
                               image_size=g.image_size, channels=g.channels)

    def build(self):
        cfg, dev = self.cfg, self.run.device
        self.encoder = InversionEncoder(self.arch()).to(dev)
        check_pair(self.encoder, self.generator)
        self.modules = {"encoder": self.encoder}
        self.optimizers = {"adam": torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr)}
        self.net = self.run.ddp(self.encoder)
        self.features = None
        if cfg.perceptual_weight > 0:
            self.features = FaceFeatures(cfg.perceptual, cfg.perceptual_size or None).to(dev)

    def phase(self, epoch=None):
        """"generated" or "real": what the epoch trains on."""
        epoch = self.run.epoch if epoch is None else epoch
        return "real" if self.cfg.schedule == "alternate" and epoch % 2 == 1 else "generated"

    def _reconstruction_losses(self, rec, target, out):
        cfg = self.cfg
        loss = 0.0
        if cfg.pixel_weight > 0:
            pix = pixel_loss(rec.float(), target)
            out["loss_pixel"] = pix.item()
            loss = loss + cfg.pixel_weight * pix
        if cfg.perceptual_weight > 0:
            perc = perceptual_loss(self.features, rec.float(), target)
            out["loss_perceptual"] = perc.item()
            loss = loss + cfg.perceptual_weight * perc
        return loss

    def train_step(self, batch):
        cfg, out = self.cfg, {}
        phase = self.phase()
        if phase == "generated":
            z = batch["z"]
            with torch.no_grad():
                target = self.generator(z)
        else:
            z, target = None, batch["real"]
        z_hat = self.net(target)
        loss = 0.0
        if z is not None and cfg.latent_weight > 0:
            lz = latent_loss(z_hat.float(), z)
            out["loss_latent"] = lz.item()
            loss = loss + cfg.latent_weight * lz
        if cfg.pixel_weight > 0 or cfg.perceptual_weight > 0:
            loss = loss + self._reconstruction_losses(self.generator(z_hat), target, out)
        if not torch.is_tensor(loss):
            raise ValueError(f"no loss to train on in a {phase} epoch: latent_weight, pixel_weight and "
                             f"perceptual_weight are all 0 there")
        self.run.optimize(self.optimizers["adam"], loss)
        return {"loss": loss.item(), **out, "real_phase": float(phase == "real")}

    def hooks(self):
        return [(self.cfg.eval_every, self.evaluate), (self.cfg.sample_every, self.samples)]

    @torch.no_grad()
    def evaluate(self, step):
        """Logs eval_latent_error (the z-loss) and eval_psnr on 16 held-out generated faces."""
        from ..eval.reconstruction import psnr
        self.encoder.eval()
        z = self.held_out.to(self.run.device)
        target = self.generator(z)
        z_hat = self.encoder(target)
        record = {"event": "eval", "eval_latent_error": latent_loss(z_hat, z).item(),
                  "eval_psnr": psnr(self.generator(z_hat), target).mean().item()}
        self.encoder.train()
        self.run.log(record)
        return record

    @torch.no_grad()
    def samples(self, step):
        """OUT/samples/inversion_STEP.png: rows of 8 targets and their reconstructions, generated then real."""
        if not self.run.is_main:
            return
        self.encoder.eval()
        gen = self.generator(self.held_out[:8].to(self.run.device))
        real = self.data.real[:8].to(self.run.device)
        rows = [gen, self.generator(self.encoder(gen)), real, self.generator(self.encoder(real))]
        self.encoder.train()
        self.run.save_images("inversion", (torch.cat(rows).float().cpu() + 1) / 2, nrow=gen.shape[0])

    def export(self):
        return self.encoder.cfg.to_dict(), self.encoder


def train_inversion(cfg: InversionTrainConfig, out_dir, device="cpu", resume=True, progress=True, stop_after=None):
    """Train the inversion encoder on the shared loop; OUT/last.pt, log.jsonl and model.pt (fastface.load returns
    the InversionEncoder). Returns dict(encoder, generator, step)."""
    t = fit(InversionTrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after)
    return {"encoder": t.encoder.eval(), "generator": t.generator, "step": t.run.step}


__all__ = ["InversionTrainConfig", "InversionTrainer", "train_inversion", "load_generator", "load_real_faces"]

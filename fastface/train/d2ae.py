"""`fastface train d2ae`: the identity Distilling and Dispelling Autoencoder on the shared loop.

One optimiser step per batch on L = lambda_T L_I + lambda_P (L_I^adv + L_H) + lambda_X (L_X + L~_X), each loss
routed to its parameters (fastface/models/d2ae_losses.py). Data: SynthFaces (identities; their attributes are
the ground truth of the evaluation) or an image folder DIR/<identity>/<image>, held in memory as uint8 images
in [0, 1]. Ablations: --set adversary=false (w/o L_I^adv), confusion=false (w/o L_H), augment=false (no
statistical augmentation), baseline=true (the same encoder and B_T, no B_P, no decoder: Table 2's baseline).
Hooks: sample_every writes OUT/samples/reconstructions_STEP.png (rows: 8 fixed training faces, their
reconstructions, their reconstructions from augmented features). model.pt holds the whole D²AE (kind
"d2ae"): fastface.load returns it with encode(images) -> (f_T, f_P) and decode(f_T, f_P) -> images.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.d2ae import D2AE, D2AEConfig
from ..models.d2ae_losses import D2AELossConfig, D2AEObjective
from .config import TrainConfig, check_choice
from .loop import Trainer, fit, whole_batch

OPTIMIZERS = ("adam", "sgd")


@dataclass
class D2AETrainConfig(TrainConfig):
    """D²AE on SynthFaces or an image folder (the paper: Inception-ResNet at 235 px, SGD lr 0.01)."""
    data: str = "synthfaces"          # "synthfaces" or an image folder DIR/<identity>/<image>
    n_identities: int = 300           # synthfaces: identities
    images_per_identity: int = 8      # synthfaces: images of each
    image_size: int = 64              # a power of two >= 16
    channels: int = 3
    width: int = 32                   # encoder: first-stage channels
    blocks: int = 1                   # encoder: basic blocks per stage
    branch_width: int = 128           # B_T / B_P conv channels
    feature_dim: int = 256            # f_T and f_P dimensions (the paper's 256)
    decoder_width: int = 128          # decoder channels at 4x4
    sigma_momentum: float = 0.1       # running sigma of the statistical augmentation
    baseline: bool = False            # True: encoder + B_T + classifier only (no B_P, no decoder; Table 2)
    adversary: bool = True            # L_I^adv (False: w/o L_I^adv, L_H then updates the P classifier)
    confusion: bool = True            # L_H (False: w/o L_H)
    augment: bool = True              # statistical augmentation, L~_X (False: without it)
    lambda_t: float = 1.0
    lambda_p: float = 0.1
    lambda_x: float = 1.0             # per-pixel mean of 1/2 |x - x_hat|^2 (= the paper's 1.81e-5 on a sum)
    optimizer: str = "adam"           # adam or sgd (the paper: SGD, momentum 0.9, lr 0.01)
    lr: float = 1e-3
    adversary_lr_scale: float = 1.0   # the P classifier (the adversary) learns at lr x this: a faster adversary
    momentum: float = 0.9             # sgd
    weight_decay: float = 0.0
    n_samples: int = 8                # sample_every: faces in each reconstruction grid
    batch_size: int = 64
    epochs: int = 30
    checkpoint_every: int = 200

    def __post_init__(self):
        super().__post_init__()
        self.arch_config(1)           # validates the architecture fields
        self.loss_config()
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.adversary_lr_scale > 0:
            raise ValueError(f"adversary_lr_scale must be > 0, got {self.adversary_lr_scale!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"lr must be > 0, weight_decay >= 0 and momentum in [0, 1), got lr={self.lr!r}, "
                             f"weight_decay={self.weight_decay!r}, momentum={self.momentum!r}")
        for name in ("n_identities", "images_per_identity", "n_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")

    def arch_config(self, n_identities):
        return D2AEConfig(n_identities=n_identities, image_size=self.image_size, channels=self.channels,
                          width=self.width, blocks=self.blocks, branch_width=self.branch_width,
                          feature_dim=self.feature_dim, decoder_width=self.decoder_width,
                          p_branch=not self.baseline, decoder=not self.baseline, sigma_momentum=self.sigma_momentum)

    def loss_config(self):
        return D2AELossConfig(lambda_t=self.lambda_t, lambda_p=self.lambda_p, lambda_x=self.lambda_x,
                              adversary=self.adversary, confusion=self.confusion, augment=self.augment)


# ------------------------------------------------------------------------------------- data
class LabelledImages(torch.utils.data.Dataset):
    """Images (N, C, S, S) uint8 and identities (N,) in memory; __getitems__ returns a batch dict
    {"image": (B, C, S, S) uint8, "identity": (B,) int64}."""

    def __init__(self, images, identities):
        identities = torch.as_tensor(identities).long()
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, S, S) uint8 tensor, got "
                             f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
        if identities.shape != images.shape[:1]:
            raise ValueError(f"identities must be ({images.shape[0]},) like images, got {tuple(identities.shape)}")
        self.images, self.identities = images, identities
        self.n_identities = int(identities.max()) + 1 if identities.numel() else 0

    def __len__(self):
        return self.images.shape[0]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {"image": self.images[idx], "identity": self.identities[idx]}

    def __getitem__(self, index):
        return {"image": self.images[index], "identity": self.identities[index]}


def to_uint8(images):
    """(N, C, S, S) in [0, 1] -> uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def render_synthfaces(n_identities, images_per_identity, size, channels=3, seed=0, chunk=256):
    """dict(images (N, C, size, size) float in [0, 1], identities (N,), attributes (N, A)) of SynthFaces,
    rendered at max(size, 16) and resized below 16."""
    from ..data import SynthFaces
    ds = SynthFaces(n_identities, images_per_identity, size=max(size, 16), channels=channels, seed=seed)
    parts = [ds.render_batch(range(s, min(s + chunk, len(ds)))) for s in range(0, len(ds), chunk)]
    images = torch.cat([p["image"] for p in parts])
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return {"images": images, "identities": torch.cat([p["identity"] for p in parts]),
            "attributes": torch.cat([p["attributes"] for p in parts])}


def load_training_data(cfg):
    """(images uint8 (N, C, S, S), identities (N,)) of cfg.data."""
    if cfg.data == "synthfaces":
        out = render_synthfaces(cfg.n_identities, cfg.images_per_identity, cfg.image_size, cfg.channels, cfg.seed)
        return to_uint8(out["images"]), out["identities"]
    from ..data import ImageFolder
    images, labels = ImageFolder(cfg.data, size=cfg.image_size, channels=cfg.channels).load_all()[:2]
    return to_uint8(images), torch.as_tensor(labels).long()


# ------------------------------------------------------------------------------------- the trainer
class D2AETrainer(Trainer):
    name, Config, model_kind = "d2ae", D2AETrainConfig, "d2ae"
    in_memory = True
    collate = staticmethod(whole_batch)

    def __init__(self, cfg, run, data=None):
        """data: (images (N, C, S, S) uint8, identities (N,)) instead of rendering / reading cfg.data."""
        super().__init__(cfg, run)
        self._data = data

    def dataset(self):
        images, identities = self._data if self._data is not None else load_training_data(self.cfg)
        want = (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"training images must be (N, {', '.join(map(str, want))}) for this config, got "
                             f"{tuple(images.shape)}")
        self.data = LabelledImages(images, identities)
        return self.data

    def build(self):
        cfg, dev = self.cfg, self.run.device
        self.arch = cfg.arch_config(self.data.n_identities)
        self.losses = cfg.loss_config()
        self.model = D2AE(self.arch).to(dev)
        self.modules = {"model": self.model}
        params = self.model.parameters()
        if cfg.adversary_lr_scale != 1 and self.arch.p_branch:   # the adversary in its own group
            adversary = {id(p) for p in self.model.classifier_p.parameters()}
            params = [{"params": [p for p in self.model.parameters() if id(p) not in adversary]},
                      {"params": list(self.model.classifier_p.parameters()), "lr": cfg.lr * cfg.adversary_lr_scale}]
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.optimizers = {cfg.optimizer: opt}
        self.objective = self.run.ddp(D2AEObjective(self.model, self.losses))   # DDP wraps the whole objective
        # fixed faces of the reconstruction grids: evenly spread over the training set
        n = len(self.data)
        self.sample_ids = torch.linspace(0, n - 1, min(cfg.n_samples, n)).long()

    def train_step(self, batch):
        x, y = batch["image"].float() / 255.0, batch["identity"]
        out = self.objective(x, y)
        self.run.optimize(self.optimizers[self.cfg.optimizer], out["total"])
        return {(k if k.startswith("acc") else f"loss_{k}"): v.item() for k, v in out.items() if v.dim() == 0}

    def hooks(self):
        return [(self.cfg.sample_every, self.sample)] if self.arch.decoder else []

    @torch.no_grad()
    def reconstruct_samples(self):
        """(3 n, C, S, S): the sample faces, their eval-mode reconstructions and those from augmented features."""
        was = self.model.training
        self.model.eval()
        x = self.data.images[self.sample_ids].float().div(255.0).to(self.run.device)
        f_t, f_p = self.model.encode(x)
        recon = self.model.decode(f_t, f_p)
        aug = self.model.decode(*self.model.augment(f_t, f_p, torch.Generator(x.device).manual_seed(self.cfg.seed)))
        self.model.train(was)
        return torch.cat([x, recon, aug]).cpu()

    def sample(self, step):
        """OUT/samples/reconstructions_STEP.png: rows of faces, reconstructions, augmented reconstructions."""
        self.run.save_images("reconstructions", self.reconstruct_samples(), nrow=len(self.sample_ids))

    def finish(self):
        self.model.eval()

    def export(self):
        return self.arch.to_dict(), self.model


def train_d2ae(cfg: D2AETrainConfig, out_dir, device="cpu", resume=True, data=None, progress=True, stop_after=None):
    """Train D²AE on the shared loop: OUT/last.pt, log.jsonl, samples/ and model.pt (fastface.load returns the
    eval-mode D2AE). data: (images uint8 (N, C, S, S), identities (N,)) instead of cfg.data.
    Returns dict(model, step)."""
    t = fit(D2AETrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after,
            data=data)
    return {"model": t.model, "step": t.run.step}


__all__ = ["D2AETrainConfig", "D2AETrainer", "train_d2ae", "LabelledImages", "render_synthfaces",
           "load_training_data"]

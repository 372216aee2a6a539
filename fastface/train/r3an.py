"""`fastface train r3an`: R³AN (and its Table 3 ablations, and the FC baseline) by Algorithm 1.

Training data are triples (X, Y, I): the source model's feature X, the target model's feature Y
(L2-normalised: identification compares directions) and the face image I resized to 56x56 in
[-1, 1]. Every mini-batch runs the stages of Algorithm 1 that the config enables:
  1. D step on L_D (Eq. 5)                       -- use_adv
  2. G step on lambda_rec L_Rec + lambda_adv L_Adv -- use_rec or use_adv
  3. E step on L_Rep with real images (Eq. 8)     -- use_rep
  4. joint G + E step on L_Reg (Eq. 9)            -- use_reg
Each enabled stage has its own SGD optimiser (momentum 0.9, weight decay 1e-3, lr 0.08 divided by 10 at
30/50/70 % of training: the paper's 60k/100k/140k of 200k iterations, scaled to the data), after a
linear warm-up over the first 10 % (not in the paper). After the last step E's BatchNorm statistics
are re-estimated on G(X), its inference input (recalibrate_extractor_bn).
"""
import os
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models.r3an import (IMAGE_SIZE, adversarial_loss, build_transform, discriminator_loss, fc_hidden_for, l2_loss,
                           reconstruction_loss, regression_loss, representation_loss)
from ..models.transform import load_transform, transform_features, transform_file  # noqa: F401 (the old home)
from .config import TrainConfig
from .loop import Trainer, ddp_view, fit, whole_batch
from .schedules import make_scheduler

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# Table 3: which losses train each architecture (FC: an MLP regressed on Y, no G/E/D)
PRESETS = {
    "fc": dict(arch="fc", use_adv=False, use_rec=False, use_rep=False, use_reg=False),
    "arch1": dict(arch="r3an", use_adv=False, use_rec=True, use_rep=True, use_reg=False),
    "arch2": dict(arch="r3an", use_adv=True, use_rec=False, use_rep=True, use_reg=False),
    "arch3": dict(arch="r3an", use_adv=False, use_rec=False, use_rep=False, use_reg=True),
    "arch4": dict(arch="r3an", use_adv=False, use_rec=True, use_rep=False, use_reg=True),
    "arch5": dict(arch="r3an", use_adv=False, use_rec=True, use_rep=True, use_reg=True),
    "arch6": dict(arch="r3an", use_adv=True, use_rec=False, use_rep=False, use_reg=True),
    "arch7": dict(arch="r3an", use_adv=False, use_rec=False, use_rep=True, use_reg=True),
    "r3an": dict(arch="r3an", use_adv=True, use_rec=True, use_rep=True, use_reg=True),
}


@dataclass
class R3ANConfig(TrainConfig):
    """Base config: full R³AN with Table 1's layer sizes and the paper's optimiser settings."""
    data: str = "synthfaces"          # "synthfaces" or an image-folder path
    n_identities: int = 200           # synthfaces: identities
    images_per_identity: int = 10     # synthfaces: images of each
    render_size: int = 64             # images are rendered (or read) at this size for the prior models
    source: str = ""                  # source feature model: "arcface:CKPT", a backbone checkpoint path, "dlib"
    target: str = ""                  # target feature model (same forms)
    arch: str = "r3an"                # "r3an" or "fc"
    use_adv: bool = True              # Table 3 columns: Rec:Adv, Rec:L2, Rep:L2, Reg:L2
    use_rec: bool = True
    use_rep: bool = True
    use_reg: bool = True
    # The paper gives no lambda values. L_Rec is a norm over 3x56x56 pixels (~45 for a face against
    # the mean face) whose gradient has norm 1 per sample: at lambda_rec = 1 and lr 0.08 G diverged
    # on SynthFaces (L_Rec 50 -> 85 in 150 steps, tanh saturated); 0.01 ~ 1/sqrt(3*56*56) makes it
    # a per-pixel RMS error, and L_Adv keeps the 1:10 ratio to it
    lambda_rec: float = 0.01
    lambda_adv: float = 0.001
    lambda_rep: float = 1.0
    lambda_reg: float = 1.0
    image_channels: int = 3
    g_width: float = 1.0              # 1.0 = Table 1; smaller = CPU-sized
    e_width: float = 1.0
    e_expansion: float = 6
    e_activation: str = "relu6"       # E's activation: relu6 (the paper's MobileNetV2) or prelu
    e_repeats: tuple = (1, 2, 2, 2, 1)
    d_width: float = 1.0
    # Re-estimate E's BatchNorm statistics on G(X) after training (see recalibrate_extractor_bn)
    recalibrate_bn: bool = True
    fc_hidden: int = 0                # 0: as many parameters as R³AN's G + E
    fc_layers: int = 2
    lr: float = 0.08
    momentum: float = 0.9
    weight_decay: float = 1e-3
    milestones: tuple = (0.3, 0.5, 0.7)
    # linear lr warm-up over this fraction of the steps (not in the paper: at lr 0.08 without it,
    # every ReLU6 of E died within the first 150 steps of full R³AN on SynthFaces)
    warmup: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.arch not in ("r3an", "fc"):
            raise ValueError(f"arch must be 'r3an' or 'fc', got {self.arch!r}")
        if self.arch == "r3an" and not (self.use_adv or self.use_rec or self.use_rep or self.use_reg):
            raise ValueError("an r3an config needs at least one of use_adv, use_rec, use_rep, use_reg")
        for name in ("n_identities", "images_per_identity"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction of the steps in [0, 1), got {self.warmup!r}")

    @classmethod
    def from_file(cls, path, **overrides):
        """Config from a JSON file, or a packaged one by name ("arch3" or "r3an_arch3": configs/r3an_arch3.json)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            name = path if path.startswith("r3an_") else f"r3an_{path}"
            packaged = os.path.join(CONFIG_DIR, f"{name}.json")
            if not os.path.isfile(packaged):
                raise ValueError(f"config {path!r} is neither a file nor one of the packaged configs "
                                 f"{', '.join(sorted(PRESETS))}")
            path = packaged
        return super().from_file(path, **overrides)

    @classmethod
    def preset(cls, name, **overrides):
        """The Table 3 architecture `name` (fc, arch1..arch7, r3an) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})


# what a checkpoint written before each of these keys existed was trained with
LEGACY_CONFIG = {"warmup": 0.0, "recalibrate_bn": False, "e_activation": "relu6", "amp": False,
                 "clip_grad_norm": 0.0, "sync_bn": False}


def config_from_dict(values):
    """R3ANConfig from a checkpoint's config dict (lists back to tuples)."""
    return R3ANConfig(**{k: v for k, v in values.items() if k in {f.name for f in fields(R3ANConfig)}})


def model_spec(cfg, source_dim, target_dim):
    """The build_transform spec of a config: R³AN's G/E/D sizes or the FC baseline matched to G + E."""
    r3an = dict(kind="r3an", source_dim=source_dim, target_dim=target_dim, image_channels=cfg.image_channels,
                g_width=cfg.g_width, e_width=cfg.e_width, e_expansion=cfg.e_expansion,
                e_repeats=list(cfg.e_repeats), d_width=cfg.d_width, e_activation=cfg.e_activation)
    if cfg.arch == "r3an":
        return r3an
    hidden = cfg.fc_hidden or fc_hidden_for(build_transform(r3an).transform_parameters(), source_dim, target_dim,
                                            cfg.fc_layers)
    return dict(kind="fc", source_dim=source_dim, target_dim=target_dim, hidden=hidden, n_hidden=cfg.fc_layers)


# ---------------------------------------------------------------------------------------------
# Data: (X, Y, I) triples
# ---------------------------------------------------------------------------------------------
def feature_encoder(spec, device="cpu"):
    """The encoder a spec names: "arcface:CKPT" (any `fastface train backbone` arch), a checkpoint path, "dlib"."""
    from ..backbones import load_encoder
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"source and target must name a feature model ('arcface:CKPT', a checkpoint path or "
                         f"'dlib'), got {spec!r}")
    if os.path.isfile(spec):
        spec = f"arcface:{spec}"
    return load_encoder(spec, device=device)


def to_recon_images(images, channels=3):
    """(N, C, S, S) in [0, 1] -> (N, channels, 56, 56) uint8 (stored compactly; see recon_batch)."""
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True) if channels == 1 else images.expand(-1, channels, -1, -1)
    if images.shape[-1] != IMAGE_SIZE:
        images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                               antialias=True)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def recon_batch(images_u8):
    """uint8 (B, C, 56, 56) -> float (B, C, 56, 56) in [-1, 1] (the generator's Tanh range)."""
    return images_u8.float() / 127.5 - 1.0


@torch.no_grad()
def encode_images(encoder, images, batch_size=128):
    """Embeddings (N, D) of images (N, C, S, S) in [0, 1] with an encoder."""
    return torch.cat([encoder.encode(images[s:s + batch_size], batch_size)[0].float().cpu()
                      for s in range(0, images.shape[0], batch_size)])


def render_images(dataset, batch_size=256, progress=False):
    """(N, C, S, S) images and (N,) identities of a SynthFaces / ImageFolder-like data set."""
    from torch.utils.data import DataLoader
    imgs, ids = [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), disable=not progress, desc="render"):
        imgs.append(batch["image"])
        ids.append(torch.as_tensor(batch["identity"]))
    return torch.cat(imgs), torch.cat(ids)


def make_triples(images, identities, source, target, channels=3, batch_size=128):
    """Return dict(x (N, Ds), y (N, Dt) unit rows, images (N, C, 56, 56) uint8, identity (N,)) from
    images (N, C, S, S) in [0, 1] and two encoders (objects with .encode)."""
    x = encode_images(source, images, batch_size)
    y = F.normalize(encode_images(target, images, batch_size), dim=1)
    return dict(x=x, y=y, images=to_recon_images(images, channels), identity=identities.long())


def make_training_triples(cfg, device="cpu", progress=True):
    if cfg.data == "synthfaces":
        from ..data import SynthFaces
        ds = SynthFaces(cfg.n_identities, cfg.images_per_identity, size=cfg.render_size, channels=3, seed=cfg.seed)
    else:
        from ..data import ImageFolder
        ds = ImageFolder(cfg.data, size=cfg.render_size, channels=3)
    images, ids = render_images(ds, progress=progress)
    return make_triples(images, ids, feature_encoder(cfg.source, device), feature_encoder(cfg.target, device),
                        cfg.image_channels)


def _check_triples(triples):
    if not isinstance(triples, dict) or not {"x", "y", "images"} <= set(triples):
        raise ValueError("triples must be a dict with 'x' (N, Ds), 'y' (N, Dt) and 'images' (N, C, 56, 56)")
    n = triples["x"].shape[0]
    if triples["y"].shape[0] != n or triples["images"].shape[0] != n:
        raise ValueError(f"triples disagree in length: x {tuple(triples['x'].shape)}, y {tuple(triples['y'].shape)}, "
                         f"images {tuple(triples['images'].shape)}")
    if tuple(triples["images"].shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"triples['images'] must be (N, C, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                         f"got {tuple(triples['images'].shape)}")


# ---------------------------------------------------------------------------------------------
# Algorithm 1, one stage per function
# ---------------------------------------------------------------------------------------------
def _sgd(params, cfg):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_optimizers(model, cfg):
    """One SGD optimiser per stage cfg enables: of {"d", "g", "e", "ge"} for R³AN, {"fc"} for the baseline."""
    if model.kind == "fc":
        return {"fc": _sgd(model.parameters(), cfg)}
    g, e = list(model.generator.parameters()), list(model.extractor.parameters())
    stages = {"d": (cfg.use_adv, list(model.discriminator.parameters())), "g": (cfg.use_rec or cfg.use_adv, g),
              "e": (cfg.use_rep, e), "ge": (cfg.use_reg, g + e)}
    return {k: _sgd(params, cfg) for k, (on, params) in stages.items() if on}


def lr_schedule(opt, cfg, total):
    """lr x (linear warm-up over cfg.warmup of the steps) x 0.1 per milestone passed (cfg.milestones of total)."""
    return make_scheduler(opt, total, schedule="multistep", warmup=cfg.warmup, milestones=cfg.milestones)


def plain_step(opt, loss):
    """zero_grad, backward, step (the shared loop passes its own: AMP, clipping)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def d_step(model, opt_d, fake, real, optimize=plain_step):
    """Line 6: D descends on L_D (Eq. 5). fake, real (B, C, 56, 56); fake is detached here."""
    loss = discriminator_loss(model.discriminator(real), model.discriminator(fake.detach()))
    optimize(opt_d, loss)
    return loss.item()


def g_step(model, opt_g, fake, real, cfg, optimize=plain_step):
    """Line 8: G descends on lambda_rec L_Rec + lambda_adv L_Adv (Eq. 7) for the enabled terms.
    fake = G(X) (B, C, 56, 56) with its graph; returns (L_Rec, L_Adv) (None when disabled)."""
    rec = reconstruction_loss(fake, real) if cfg.use_rec else None
    adv = adversarial_loss(model.discriminator(fake)) if cfg.use_adv else None
    loss = sum(lam * term for lam, term in ((cfg.lambda_rec, rec), (cfg.lambda_adv, adv)) if term is not None)
    optimize(opt_g, loss)
    if cfg.use_adv:  # L_Adv's backward also filled D's grads; D steps only in d_step
        model.discriminator.zero_grad(set_to_none=True)
    return (None if rec is None else rec.item()), (None if adv is None else adv.item())


def e_step(model, opt_e, real, y, cfg, optimize=plain_step):
    """Line 10: E descends on lambda_rep L_Rep (Eq. 8) with real images (B, C, 56, 56), y (B, Dt)."""
    loss = representation_loss(model.extractor(real), y)
    optimize(opt_e, cfg.lambda_rep * loss)
    return loss.item()


def reg_step(model, opt_ge, x, y, cfg, optimize=plain_step):
    """Line 12: G and E descend together on lambda_reg L_Reg (Eq. 9); x (B, Ds), y (B, Dt)."""
    loss = regression_loss(model.extractor(model.generator(x)), y)
    optimize(opt_ge, cfg.lambda_reg * loss)
    return loss.item()


def fc_step(model, opt, x, y, optimize=plain_step):
    """The FC baseline: the MLP descends on E[||Y - FC(X)||_2]."""
    loss = l2_loss(model.transform(x), y)
    optimize(opt, loss)
    return loss.item()


def algorithm1_step(model, opts, x, y, real, cfg, optimize=plain_step):
    """One mini-batch of Algorithm 1 (the stages cfg enables); returns the losses as a dict.
    model: an R3AN / FCTransform, or any object with its kind and sub-modules (DDP-wrapped ones)."""
    if model.kind == "fc":
        return {"loss_fc": fc_step(model, opts["fc"], x, y, optimize)}
    out = {}
    if cfg.use_rec or cfg.use_adv:
        fake = model.generator(x)  # G(X) with theta_g before this iteration's G step (lines 6 and 9)
        if cfg.use_adv:
            out["loss_d"] = d_step(model, opts["d"], fake, real, optimize)
        out["loss_rec"], out["loss_adv"] = g_step(model, opts["g"], fake, real, cfg, optimize)
    if cfg.use_rep:
        out["loss_rep"] = e_step(model, opts["e"], real, y, cfg, optimize)
    if cfg.use_reg:
        out["loss_reg"] = reg_step(model, opts["ge"], x, y, cfg, optimize)
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def recalibrate_extractor_bn(model, x, batch_size=256):
    """Set E's BatchNorm running statistics to those of its inference input G(x) (G in eval mode).

    x (N, Ds) source features, in order (deterministic). During training E normalises each batch by
    its own statistics, on two inputs: real faces (E step) and G(X) (joint step). Its running
    statistics average both, and when G reconstructs poorly (on SynthFaces G(X) varies 100x less
    than real faces) transform(x) = E(G(x)) normalises G(x) by real-face statistics and is nearly
    constant: every R³AN with the representation path scored 0 % top-1 before this step. This is
    "precise BN" (equal-weight average over batches) on the transform path; only buffers change.
    """
    if model.kind != "r3an":
        return model
    bns = [m for m in model.extractor.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or x.shape[0] == 0:
        return model
    device = next(model.parameters()).device
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None                            # cumulative average over the batches
    model.generator.eval()
    model.extractor.train()
    for chunk in torch.split(x, batch_size):
        model.extractor(model.generator(chunk.float().to(device)))
    for bn, m in zip(bns, saved):
        bn.momentum = m
    return model.eval()


class TripleDataset(torch.utils.data.Dataset):
    """(X, Y, I) triples held in memory; __getitems__ returns a whole batch as one dict of tensors."""

    def __init__(self, triples):
        _check_triples(triples)
        self.x, self.y, self.images = triples["x"].float(), triples["y"].float(), triples["images"]

    def __len__(self):
        return self.x.shape[0]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return {"x": self.x[idx], "y": self.y[idx], "images": self.images[idx]}

    def __getitem__(self, index):
        return {"x": self.x[index], "y": self.y[index], "images": self.images[index]}



class R3ANTrainer(Trainer):
    name, Config, model_kind = "r3an", R3ANConfig, "r3an"
    legacy_config = LEGACY_CONFIG
    in_memory = True
    collate = staticmethod(whole_batch)

    def __init__(self, cfg, run, triples=None):
        super().__init__(cfg, run)
        self._triples = triples

    def dataset(self):
        if self._triples is None:
            self._triples = make_training_triples(self.cfg, self.run.device, self.run.progress)
        self.data = TripleDataset(self._triples)
        return self.data

    def build(self):
        cfg = self.cfg
        self.spec = model_spec(cfg, self.data.x.shape[1], self.data.y.shape[1])
        self.model = build_transform(self.spec).to(self.run.device).train()
        self.modules = {"model": self.model}
        self.optimizers = make_optimizers(self.model, cfg)
        if self.model.kind == "fc":
            self.net = ddp_view(self.run, kind="fc", transform=self.model)
        else:
            self.net = ddp_view(self.run, kind="r3an", generator=self.model.generator,
                                extractor=self.model.extractor, discriminator=self.model.discriminator)

    def schedule(self, optimizer):
        return lr_schedule(optimizer, self.cfg, self.run.total)

    def train_step(self, batch):
        real = recon_batch(batch["images"])
        return algorithm1_step(self.net, self.optimizers, batch["x"], batch["y"], real, self.cfg, self.run.optimize)

    def hooks(self):
        return [(self.cfg.sample_every, self.sample)] if self.model.kind == "r3an" else []

    @torch.no_grad()
    def sample(self, step):
        """OUT/samples/reconstruction_STEP.png: 8 real faces (top) and G(X) of their source features (bottom)."""
        n = min(8, len(self.data))
        real = recon_batch(self.data.images[:n])
        self.model.generator.eval()
        fake = self.model.generator(self.data.x[:n].to(self.run.device)).float().cpu()
        self.model.generator.train()
        self.run.save_images("reconstruction", torch.cat([real, fake]) * 0.5 + 0.5, nrow=n)

    def finish(self):
        if self.cfg.recalibrate_bn:
            recalibrate_extractor_bn(self.model, self.data.x, 4 * self.cfg.batch_size)
        self.model.eval()

    def export(self):
        return self.spec, self.model


def train_r3an(cfg: R3ANConfig, out_dir, device="cpu", resume=True, triples=None, progress=True, stop_after=None):
    """Train by Algorithm 1 on the shared loop; write out_dir/last.pt (full state), log.jsonl and, at the end,
    model.pt (fastface.load returns the transform).

    triples: precomputed dict(x, y, images) (see make_triples); otherwise rendered and encoded
    from cfg.data with cfg.source / cfg.target. Resumes exactly from out_dir/last.pt; stop_after=N
    ends the run after step N (as if killed). Returns dict(model, step, spec).
    """
    if not isinstance(cfg, R3ANConfig):
        raise TypeError(f"cfg must be an R3ANConfig, got {type(cfg).__name__}")
    t = fit(R3ANTrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after,
            triples=triples)
    t.model.eval()
    return {"model": t.model, "step": t.run.step, "spec": t.spec}

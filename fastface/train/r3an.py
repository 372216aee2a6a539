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
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..models.r3an import (IMAGE_SIZE, adversarial_loss, build_transform, count_parameters, discriminator_loss,
                           fc_hidden_for, l2_loss, reconstruction_loss, regression_loss, representation_loss)
from .checkpoint import check_same_config, load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger("fastface.train")

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
class R3ANConfig:
    """Base config: full R³AN with Table 1's layer sizes and the paper's optimiser settings."""
    data: str = "synthfaces"          # "synthfaces" or an image-folder path
    n_identities: int = 200
    images_per_identity: int = 10
    render_size: int = 64             # images are rendered (or read) at this size for the prior models
    seed: int = 0
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
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.08
    momentum: float = 0.9
    weight_decay: float = 1e-3
    milestones: tuple = (0.3, 0.5, 0.7)
    # linear lr warm-up over this fraction of the steps (not in the paper: at lr 0.08 without it,
    # every ReLU6 of E died within the first 150 steps of full R³AN on SynthFaces)
    warmup: float = 0.1
    max_steps: int = 0                # stop after this many steps (0 = all epochs)
    checkpoint_every: int = 200
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.arch not in ("r3an", "fc"):
            raise ValueError(f"arch must be 'r3an' or 'fc', got {self.arch!r}")
        if self.arch == "r3an" and not (self.use_adv or self.use_rec or self.use_rep or self.use_reg):
            raise ValueError("an r3an config needs at least one of use_adv, use_rec, use_rep, use_reg")
        for name in ("batch_size", "epochs", "n_identities", "images_per_identity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a fraction of the steps in [0, 1), got {self.warmup!r}")
        self.milestones, self.e_repeats = tuple(self.milestones), tuple(self.e_repeats)

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
        with open(path) as fh:
            values = json.load(fh)
        values.update(overrides)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys in {path}: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def preset(cls, name, **overrides):
        """The Table 3 architecture `name` (fc, arch1..arch7, r3an) with overrides."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k != "extra"}


# what a checkpoint written before each of these keys existed was trained with
LEGACY_CONFIG = {"warmup": 0.0, "recalibrate_bn": False, "e_activation": "relu6"}


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
    milestones = [max(1, int(f * total)) for f in cfg.milestones]
    warm = max(1, round(cfg.warmup * total))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.1 ** sum(s >= m for m in milestones))


def _step(opt, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def d_step(model, opt_d, fake, real):
    """Line 6: D descends on L_D (Eq. 5). fake, real (B, C, 56, 56); fake is detached here."""
    loss = discriminator_loss(model.discriminator(real), model.discriminator(fake.detach()))
    _step(opt_d, loss)
    return loss.item()


def g_step(model, opt_g, fake, real, cfg):
    """Line 8: G descends on lambda_rec L_Rec + lambda_adv L_Adv (Eq. 7) for the enabled terms.
    fake = G(X) (B, C, 56, 56) with its graph; returns (L_Rec, L_Adv) (None when disabled)."""
    rec = reconstruction_loss(fake, real) if cfg.use_rec else None
    adv = adversarial_loss(model.discriminator(fake)) if cfg.use_adv else None
    loss = sum(lam * term for lam, term in ((cfg.lambda_rec, rec), (cfg.lambda_adv, adv)) if term is not None)
    _step(opt_g, loss)
    if cfg.use_adv:  # L_Adv's backward also filled D's grads; D steps only in d_step
        model.discriminator.zero_grad(set_to_none=True)
    return (None if rec is None else rec.item()), (None if adv is None else adv.item())


def e_step(model, opt_e, real, y, cfg):
    """Line 10: E descends on lambda_rep L_Rep (Eq. 8) with real images (B, C, 56, 56), y (B, Dt)."""
    loss = representation_loss(model.extractor(real), y)
    _step(opt_e, cfg.lambda_rep * loss)
    return loss.item()


def reg_step(model, opt_ge, x, y, cfg):
    """Line 12: G and E descend together on lambda_reg L_Reg (Eq. 9); x (B, Ds), y (B, Dt)."""
    loss = regression_loss(model.extractor(model.generator(x)), y)
    _step(opt_ge, cfg.lambda_reg * loss)
    return loss.item()


def fc_step(model, opt, x, y):
    """The FC baseline: the MLP descends on E[||Y - FC(X)||_2]."""
    loss = l2_loss(model.transform(x), y)
    _step(opt, loss)
    return loss.item()


def algorithm1_step(model, opts, x, y, real, cfg):
    """One mini-batch of Algorithm 1 (the stages cfg enables); returns the losses as a dict."""
    if model.kind == "fc":
        return {"loss_fc": fc_step(model, opts["fc"], x, y)}
    out = {}
    if cfg.use_rec or cfg.use_adv:
        fake = model.generator(x)  # G(X) with theta_g before this iteration's G step (lines 6 and 9)
        if cfg.use_adv:
            out["loss_d"] = d_step(model, opts["d"], fake, real)
        out["loss_rec"], out["loss_adv"] = g_step(model, opts["g"], fake, real, cfg)
    if cfg.use_rep:
        out["loss_rep"] = e_step(model, opts["e"], real, y, cfg)
    if cfg.use_reg:
        out["loss_reg"] = reg_step(model, opts["ge"], x, y, cfg)
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


def export_transform(out_path, model, cfg, spec):
    """Write the inference checkpoint (config, spec, weights) that `fastface transform` loads."""
    save_checkpoint(out_path, {"config": cfg.to_dict(), "spec": spec,
                               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})


def load_transform(path, device="cpu"):
    """Return the eval-mode transform module (R3AN or FCTransform) of a model.pt or last.pt."""
    if not os.path.isfile(path):
        raise ValueError(f"model checkpoint {path!r} does not exist")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or "spec" not in state or "model" not in state:
        raise ValueError(f"{path!r} is not a fastface R³AN checkpoint (needs 'spec' and 'model')")
    model = build_transform(dict(state["spec"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def train_r3an(cfg: R3ANConfig, out_dir, device="cpu", resume=True, triples=None, progress=True, stop_after=None):
    """Train by Algorithm 1; write out_dir/last.pt (full state), log.jsonl and, at the end, model.pt.

    triples: precomputed dict(x, y, images) (see make_triples); otherwise rendered and encoded
    from cfg.data with cfg.source / cfg.target. Resumes exactly from out_dir/last.pt; stop_after=N
    ends the run after step N (as if killed). Returns dict(model, step, spec).
    """
    if not isinstance(cfg, R3ANConfig):
        raise TypeError(f"cfg must be an R3ANConfig, got {type(cfg).__name__}")
    device = torch.device(device)
    if triples is None:
        triples = make_training_triples(cfg, device, progress)
    _check_triples(triples)
    x_all, y_all, img_all = triples["x"].float(), triples["y"].float(), triples["images"]
    n = x_all.shape[0]
    steps_per_epoch = n // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {n} training triples")
    total = cfg.epochs * steps_per_epoch
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    torch.manual_seed(cfg.seed)
    spec = model_spec(cfg, x_all.shape[1], y_all.shape[1])
    model = build_transform(spec).to(device).train()
    opts = make_optimizers(model, cfg)
    scheds = {k: lr_schedule(o, cfg, total) for k, o in opts.items()}
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "last.pt")
    step = 0
    if resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, map_location=device)
        check_same_config(state.get("config"), cfg.to_dict(), ckpt_path, LEGACY_CONFIG)
        model.load_state_dict(state["model"])
        if any("lr_lambdas" not in sched for sched in state["schedulers"].values()):
            raise ValueError(f"{ckpt_path} was written by a fastface without the lr warm-up: its schedule state "
                             f"(MultiStepLR) does not load into today's; train into a new out_dir")
        for k in opts:
            opts[k].load_state_dict(state["optimizers"][k])
            scheds[k].load_state_dict(state["schedulers"][k])
        set_rng_state(state["rng"])
        step = state["step"]
        log.info("resumed from %s at step %d", ckpt_path, step)

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "spec": spec,
                                    "optimizers": {k: o.state_dict() for k, o in opts.items()},
                                    "schedulers": {k: s.state_dict() for k, s in scheds.items()},
                                    "rng": rng_state(), "step": step, "config": cfg.to_dict()})

    bar = tqdm(total=total, initial=step, disable=not progress, desc=f"train {cfg.arch}")
    with open(os.path.join(out_dir, "log.jsonl"), "a") as log_file:
        while step < total and step != stop_after:
            epoch, skip = divmod(step, steps_per_epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1000003 + epoch))
            for i in range(skip, steps_per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                x, y = x_all[idx].to(device), y_all[idx].to(device)
                real = recon_batch(img_all[idx]).to(device)
                losses = algorithm1_step(model, opts, x, y, real, cfg)
                for s in scheds.values():
                    s.step()
                step += 1
                record = {"step": step, "epoch": epoch, **losses, "lr": next(iter(opts.values())).param_groups[0]["lr"]}
                log_file.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix({k[5:]: f"{v:.3f}" for k, v in losses.items()})
                if step % cfg.checkpoint_every == 0 or step == total:
                    checkpoint()
                if step >= total or step == stop_after:
                    break
    bar.close()
    if step >= total:
        if cfg.recalibrate_bn:
            recalibrate_extractor_bn(model, x_all, 4 * cfg.batch_size)
        export_transform(os.path.join(out_dir, "model.pt"), model, cfg, spec)
    model.eval()
    return {"model": model, "step": step, "spec": spec}


@torch.no_grad()
def transform_features(model, features, batch_size=4096):
    """Transformed features (N, Dt) float32 of features (N, Ds) (a tensor or array) with an eval model."""
    if not hasattr(model, "transform"):
        raise TypeError(f"model must be an R3AN or FCTransform, got {type(model).__name__}")
    feats = torch.as_tensor(features)
    if feats.dim() != 2 or feats.shape[1] != model.source_dim:
        raise ValueError(f"features must have shape (N, {model.source_dim}), got {tuple(feats.shape)}")
    dev = next(model.parameters()).device
    outs = [model.transform(feats[s:s + batch_size].to(dev, torch.float32)).float().cpu()
            for s in range(0, feats.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, model.target_dim)


def transform_file(model_path, in_path, out_path, chunk=65536, batch_size=4096, device="cpu", progress=True):
    """Stream IN.npy (N, Ds) through a trained transform into OUT.npy (N, Dt) float32 in bounded memory
    (memory-mapped input, chunks of `chunk` rows, memory-mapped output); returns N."""
    import numpy as np
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk <= 0:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not os.path.isfile(in_path):
        raise ValueError(f"features file {in_path!r} does not exist")
    model = load_transform(model_path, device)
    feats = np.load(in_path, mmap_mode="r")
    if feats.ndim != 2 or feats.shape[1] != model.source_dim:
        raise ValueError(f"features in {in_path!r} must have shape (N, {model.source_dim}), got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise TypeError(f"features in {in_path!r} must be floating point, got {feats.dtype}")
    n = feats.shape[0]
    tmp = f"{out_path}.partial.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, model.target_dim))
    with tqdm(total=n, disable=not progress, desc="transform", unit="feat", unit_scale=True) as bar:
        for s in range(0, n, chunk):
            block = torch.from_numpy(np.array(feats[s:s + chunk], dtype=np.float32))  # a copy: bounded, writable
            out[s:s + block.shape[0]] = transform_features(model, block, batch_size).numpy()
            bar.update(block.shape[0])
    out.flush()
    del out
    os.replace(tmp, out_path)
    return n

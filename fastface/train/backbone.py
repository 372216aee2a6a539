"""`fastface train backbone`: a face backbone (ArcFace IR ResNet-18, MobileNetV2, ResNet-50) + ArcFace
margin head on SynthFaces or an image folder."""
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..backbones import ArcMarginHead, arcface_resnet18, mobilenetv2_face, resnet50_face
from .checkpoint import check_same_config, load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger("fastface.train")


@dataclass
class BackboneConfig:
    """Base config; the paper trains ArcFace with SGD, momentum 0.9, lr 0.1 divided by 10 at
    fixed fractions of training (scaled here to the data by `milestones`)."""
    data: str = "synthfaces"          # "synthfaces" or an image-folder path
    arch: str = "arcface_resnet18"    # or "mobilenetv2", "resnet50" (R³AN's prior models)
    expansion: float = 6              # mobilenetv2: bottleneck expansion T (Mb-6, Mb-10, Mb-16)
    width_mult: float = 1.0           # mobilenetv2: channel multiplier
    activation: str = "relu6"         # mobilenetv2: relu6 (the paper's), relu or prelu
    n_identities: int = 200
    images_per_identity: int = 20
    image_size: int = 64
    channels: int = 1
    width: int = 16                   # arcface: 64 = the paper's 512x8x8 network; resnet50: base width
    stem_pool: bool = True            # False: no stem down-sampling (64x64 input -> 8x8 map for arcface)
    embedding_dim: int = 128
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple = (0.5, 0.75)   # fractions of all steps where lr /= 10
    s: float = 64.0
    m: float = 0.5
    margin_warmup: float = 0.0        # fraction of all steps over which m ramps linearly from 0 (0 = off)
    seed: int = 0
    max_steps: int = 0                # stop after this many steps (0 = all epochs)
    checkpoint_every: int = 100
    amp: bool = True                  # on CUDA only
    extra: dict = field(default_factory=dict)

    def to_dict(self):
        """The config as saved in checkpoints (without `extra`)."""
        return {k: v for k, v in asdict(self).items() if k != "extra"}

    @classmethod
    def from_file(cls, path, **overrides):
        with open(path) as fh:
            values = json.load(fh)
        values.update(overrides)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys in {path}: {sorted(unknown)}")
        return cls(**values)


def make_dataset(cfg):
    if cfg.data == "synthfaces":
        from ..data import SynthFaces
        return SynthFaces(n_identities=cfg.n_identities, images_per_identity=cfg.images_per_identity,
                          size=cfg.image_size, channels=cfg.channels, seed=cfg.seed)
    from ..data import ImageFolder
    return ImageFolder(cfg.data, size=cfg.image_size, channels=cfg.channels)


ARCHS = ("arcface_resnet18", "mobilenetv2", "resnet50")


def build_model(cfg):
    """The backbone a config describes (also used to load trained checkpoints); forward(x) -> (emb, map)."""
    if cfg.arch == "arcface_resnet18":
        return arcface_resnet18(in_channels=cfg.channels, width=cfg.width, embedding_dim=cfg.embedding_dim,
                                input_size=cfg.image_size, stem_pool=cfg.stem_pool)
    stem_stride = 2 if cfg.stem_pool else 1
    if cfg.arch == "mobilenetv2":
        return mobilenetv2_face(expansion=cfg.expansion, in_channels=cfg.channels, width_mult=cfg.width_mult,
                                activation=cfg.activation,
                                embedding_dim=cfg.embedding_dim, input_size=cfg.image_size, stem_stride=stem_stride)
    if cfg.arch == "resnet50":
        return resnet50_face(in_channels=cfg.channels, width=cfg.width, embedding_dim=cfg.embedding_dim,
                             input_size=cfg.image_size, stem_stride=stem_stride)
    raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {cfg.arch!r}")


def export_model(out_path, model, cfg):
    """Write the inference-only checkpoint (config + backbone weights) that `arcface:CKPT` loads."""
    save_checkpoint(out_path, {"config": cfg.to_dict(),
                               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})


def margin_at(cfg, step, total):
    """The ArcFace margin at `step` of `total`: m, ramped linearly from 0 over margin_warmup * total steps
    (without a margin the network starts learning sooner in short runs; the margin then tightens it)."""
    ramp = cfg.margin_warmup * total
    return cfg.m if ramp <= 0 else cfg.m * min(1.0, step / ramp)


def _batches(dataset, cfg, epoch):
    gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)  # same order on resume
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=True)


def train_backbone(cfg: BackboneConfig, out_dir, device="cpu", resume=True, dataset=None, progress=True,
                   stop_after=None):
    """Train; write out_dir/last.pt (full state) and out_dir/log.jsonl; return the final state.

    Resumes exactly from out_dir/last.pt. stop_after=N ends the run after step N (as if killed).
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    dataset = dataset if dataset is not None else make_dataset(cfg)
    n_classes = dataset.n_identities
    model = build_model(cfg).to(device)
    head = ArcMarginHead(cfg.embedding_dim, n_classes, s=cfg.s, m=cfg.m).to(device)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=cfg.lr,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(dataset) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={cfg.batch_size} exceeds the {len(dataset)} training images")
    total = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, int(f * total)) for f in cfg.milestones], 0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "last.pt")
    step = 0
    if resume and os.path.exists(ckpt_path):
        state = load_checkpoint(ckpt_path, map_location=device)
        check_same_config(state.get("config"), cfg.to_dict(), ckpt_path)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = state["step"]
        log.info("resumed from %s at step %d", ckpt_path, step)

    def checkpoint():
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "head": head.state_dict(),
                                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                    "scaler": scaler.state_dict(), "rng": rng_state(), "step": step,
                                    "config": cfg.to_dict()})

    bar = tqdm(total=total, initial=step, disable=not progress, desc="train backbone")
    with open(os.path.join(out_dir, "log.jsonl"), "a") as log_file:
        while step < total:
            epoch, skip = divmod(step, steps_per_epoch)
            model.train()
            for i, batch in enumerate(_batches(dataset, cfg, epoch)):
                if i < skip:
                    continue
                x, y = batch["image"].to(device), batch["identity"].long().to(device)
                head.set_margin(margin_at(cfg, step, total))
                with torch.autocast(device.type, enabled=scaler.is_enabled()):
                    emb, _ = model(x)
                    logits = head(emb.float(), y)
                    loss = torch.nn.functional.cross_entropy(logits, y)
                with torch.no_grad():  # batch accuracy of the margin-free logits, before the step
                    acc = (head(emb.float()).argmax(1) == y).float().mean().item()
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                record = {"step": step, "epoch": epoch, "loss": loss.item(), "acc": acc,
                          "lr": opt.param_groups[0]["lr"], "m": head.m}
                log_file.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{acc:.2f}")
                if step % cfg.checkpoint_every == 0 or step == total:
                    checkpoint()
                if step >= total or step == stop_after:
                    break
            if step == stop_after:
                break
    bar.close()
    if step >= total:
        export_model(os.path.join(out_dir, "model.pt"), model, cfg)
    return {"model": model, "head": head, "step": step}

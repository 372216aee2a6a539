"""`fastface train backbone`: a face backbone (ArcFace IR ResNet-18, MobileNetV2, ResNet-50) + ArcFace
margin head on SynthFaces or an image folder, on the shared loop."""
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..backbones import ArcMarginHead
from ..backbones.build import BackboneArch, build_backbone
from .config import TrainConfig
from .loop import Trainer, fit
from .schedules import make_scheduler


@dataclass
class BackboneConfig(TrainConfig):
    """The paper trains ArcFace with SGD, momentum 0.9, lr 0.1 divided by 10 at fixed fractions of
    training (scaled here to the data by `milestones`)."""
    data: str = "synthfaces"          # "synthfaces" or an image-folder path DIR/<identity>/<image>
    arch: str = "arcface_resnet18"    # or "mobilenetv2", "resnet50" (R³AN's prior models)
    expansion: float = 6              # mobilenetv2: bottleneck expansion T (Mb-6, Mb-10, Mb-16)
    width_mult: float = 1.0           # mobilenetv2: channel multiplier
    activation: str = "relu6"         # mobilenetv2: relu6 (the paper's), relu or prelu
    n_identities: int = 200           # synthfaces: training identities
    images_per_identity: int = 20     # synthfaces: images of each
    image_size: int = 64
    channels: int = 1                 # 1 = grayscale, 3 = RGB (image folders are converted)
    width: int = 16                   # arcface: 64 = the paper's 512x8x8 network; resnet50: base width
    stem_pool: bool = True            # False: no stem down-sampling (64x64 input -> 8x8 map for arcface)
    embedding_dim: int = 128
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "multistep"       # multistep, cosine or constant (after the warm-up)
    warmup: float = 0.0               # linear lr warm-up over this fraction of the steps
    milestones: tuple = (0.5, 0.75)   # multistep: fractions of all steps where lr /= 10
    s: float = 64.0
    m: float = 0.5
    margin_warmup: float = 0.0        # fraction of all steps over which m ramps linearly from 0 (0 = off)
    checkpoint_every: int = 100
    eval_identities: int = 0          # eval_every: P@1 / MAP@R on this many held-out SynthFaces identities

    def __post_init__(self):
        super().__post_init__()
        self.arch_config()            # validates arch

    def arch_config(self):
        return BackboneArch.from_dict(self.to_dict())


LEGACY = {"schedule": "multistep", "warmup": 0.0, "clip_grad_norm": 0.0, "sync_bn": False, "eval_identities": 0}


def make_dataset(cfg):
    if cfg.data == "synthfaces":
        from ..data import SynthFaces
        return SynthFaces(n_identities=cfg.n_identities, images_per_identity=cfg.images_per_identity,
                          size=cfg.image_size, channels=cfg.channels, seed=cfg.seed)
    from ..data import ImageFolder
    return ImageFolder(cfg.data, size=cfg.image_size, channels=cfg.channels, on_unreadable="substitute")


def margin_at(cfg, step, total):
    """The ArcFace margin at `step` of `total`: m, ramped linearly from 0 over margin_warmup * total steps
    (without a margin the network starts learning sooner in short runs; the margin then tightens it)."""
    ramp = cfg.margin_warmup * total
    return cfg.m if ramp <= 0 else cfg.m * min(1.0, step / ramp)


def dataloader_order(n, seed, epoch):
    """The order torch's DataLoader(shuffle=True, generator=G) gives with G seeded by (seed, epoch), as
    this trainer drew it before the shared loop (the iterator takes one int64 from G before the sampler)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g)


class BackboneTrainer(Trainer):
    name, Config, model_kind = "backbone", BackboneConfig, "backbone"
    legacy_config = LEGACY
    permutation = staticmethod(dataloader_order)

    def __init__(self, cfg, run, dataset=None):
        super().__init__(cfg, run)
        self._data = dataset

    def dataset(self):
        if self._data is None:
            self._data = make_dataset(self.cfg)
        return self._data

    def build(self):
        cfg, dev = self.cfg, self.run.device
        self.modules = {"model": build_backbone(cfg.arch_config()).to(dev),
                        "head": ArcMarginHead(cfg.embedding_dim, self._data.n_identities, s=cfg.s, m=cfg.m).to(dev)}
        params = list(self.modules["model"].parameters()) + list(self.modules["head"].parameters())
        self.optimizers = {"sgd": torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                                  weight_decay=cfg.weight_decay)}
        self.net, self.head = self.run.ddp(self.modules["model"]), self.run.ddp(self.modules["head"])

    def schedule(self, optimizer):
        return make_scheduler(optimizer, self.run.total, schedule=self.cfg.schedule, warmup=self.cfg.warmup,
                              milestones=self.cfg.milestones)

    def train_step(self, batch):
        x, y = batch["image"], batch["identity"].long()
        head = self.modules["head"]
        head.set_margin(margin_at(self.cfg, self.run.step, self.run.total))
        emb, _ = self.net(x)
        loss = F.cross_entropy(self.head(emb.float(), y), y)
        with torch.no_grad():  # batch accuracy of the margin-free logits, before the step
            acc = (head(emb.float()).argmax(1) == y).float().mean().item()
        self.run.optimize(self.optimizers["sgd"], loss)
        return {"loss": loss.item(), "acc": acc}

    def log_values(self):
        return {**super().log_values(), "m": self.modules["head"].m}

    def hooks(self):
        return [(self.cfg.eval_every, self.evaluate)] if self.cfg.eval_identities else []

    def evaluate(self, step):
        """Stage-1 leave-one-out identification on eval_identities held-out SynthFaces identities (every
        image counted once across the processes); logged as eval_p1 and eval_map_r."""
        from ..data import SynthFaces
        from ..eval.metrics import retrieval_metrics
        cfg = self.cfg
        held_out = SynthFaces(cfg.eval_identities, cfg.images_per_identity, size=cfg.image_size,
                              channels=cfg.channels, seed=cfg.seed + 10007)
        model = self.modules["model"]
        model.eval()
        out = self.run.map(held_out, lambda b: {"emb": F.normalize(model(b["image"])[0].float(), dim=1),
                                                "id": b["identity"]})
        model.train()
        sims = out["emb"] @ out["emb"].T
        sims.fill_diagonal_(-float("inf"))
        ranked = sims.argsort(1, descending=True)[:, :-1]        # every other image, the query itself last
        scores = retrieval_metrics(ranked, out["id"], out["id"], exclude_self=True)
        self.run.log({"event": "eval", "eval_p1": scores["p_at_1"], "eval_map_r": scores["map_at_r"],
                      "eval_images": int(out["id"].numel())})
        return scores

    def export(self):
        return self.cfg.arch_config().to_dict(), self.modules["model"]


def train_backbone(cfg: BackboneConfig, out_dir, device="cpu", resume=True, dataset=None, progress=True,
                   stop_after=None, workers=None):
    """Train; write out_dir/last.pt (full state), log.jsonl and model.pt; return dict(model, head, step).

    Resumes exactly from out_dir/last.pt. stop_after=N ends the run after step N (as if killed)."""
    t = fit(BackboneTrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after,
            workers=workers, dataset=dataset)
    return {"model": t.modules["model"], "head": t.modules["head"], "step": t.run.step}

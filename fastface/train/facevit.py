"""`fastface train facevit`: Face-ViT (H2L and the variants C/V/H1/H2 of Table 4.1) on the shared loop.

The backbone is frozen and in eval mode: every training image is encoded once into its patch tokens
(N, n, C) before the first step (the cache), and every step reads pairs from the cache, never the CNN.
Pairs are positives and negatives 1:1 from the identity labels, drawn from (seed, pair index) alone.
H2L / H1 / V learn with the ArcFace loss on both images' features (Eq. 4.7); H2 with binary
cross-entropy on "same person". The lr is warmed up at a tenth of its value for the first
`warmup_epochs` epochs, then constant (section 5.3.1: 1e-6 for one epoch, then 1e-5).
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import ArcMarginHead
from ..models.facevit import FaceViT, FaceViTConfig
from .config import TrainConfig
from .loop import Trainer, fit, whole_batch

VARIANTS = ("h2l", "h2", "h1", "v")


@dataclass
class FaceViTTrainConfig(TrainConfig):
    """Face-ViT on SynthFaces or an image folder, on the patch tokens of a frozen backbone."""
    variant: str = "h2l"              # h2l (the dissertation's), h2, h1 or v (C needs no training)
    depth: int = 1
    heads: int = 1
    dim: int = 512                    # model width
    dim_head: int = 64
    mlp_dim: int = 2048
    dropout: float = 0.1
    out_dim: int = 512
    layout: str = "paper"             # paper or public (the public code's departures)
    backbone: str = "arcface"         # arcface (shipped), arcface:CKPT, arcface-official:PTH, dlib
    data: str = "synthfaces"          # "synthfaces" or an image folder DIR/<identity>/<image>
    n_identities: int = 200           # synthfaces: identities
    images_per_identity: int = 10     # synthfaces: images of each
    pairs: int = 0                    # training pairs (half positive); 0 = 2 x the number of images
    image_size: int = 64              # v: input size (images resized); hybrid variants use the backbone's
    patch_size: int = 8               # v: pixel patch side
    batch_size: int = 64              # pairs per step and process
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0        # epochs at lr / 10 before the constant lr (section 5.3.1)
    s: float = 30.0                   # ArcFace scale (the text's 30; the public code's 64)
    m: float = 0.5                    # ArcFace margin
    eval_identities: int = 0          # eval_every: verification accuracy on held-out SynthFaces pairs
    checkpoint_every: int = 200

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r} (C, the CNN "
                             f"alone, is the backbone's cosine: nothing to train)")
        if self.pairs < 0 or self.warmup_epochs < 0:
            raise ValueError("pairs and warmup_epochs must be >= 0")
        from ..backbones.encoders import check_backbone_spec
        check_backbone_spec(self.backbone)


# ------------------------------------------------------------------------------------- data
def load_faces(data, encoder, n_identities=200, images_per_identity=10, seed=0, occlusion=None, progress=False):
    """(images (N, C, S, S) in [0, 1] at the encoder's input, identities (N,)) of SynthFaces or an image folder
    (read as the encoder reads folders: dlib aligns). occlusion: a SynthFaces occlusion kind or None."""
    if data == "synthfaces":
        from ..data import SynthFaces
        ds = SynthFaces(n_identities, images_per_identity, size=encoder.image_size, channels=encoder.channels,
                        seed=seed, occlusion=occlusion)
        out = ds.render_batch(range(len(ds)))
        return out["image"], torch.as_tensor(out["identity"]).long()
    from ..data import ImageFolder
    folder = ImageFolder(data, size=encoder.image_size, channels=encoder.channels)
    loaded = encoder.load_images(folder.paths, progress=progress, landmarks=False)
    return loaded["images"], folder.labels[loaded["source"]]


@torch.no_grad()
def encode_tokens(encoder, images, batch_size=128):
    """Frozen-backbone outputs of images (N, C, S, S): (embeddings (N, D), patch tokens (N, g*g, C'))."""
    emb, fmap = encoder.encode(images, batch_size)
    return emb.float().cpu(), fmap.float().flatten(2).transpose(1, 2).contiguous().cpu()


def sample_pair(labels_by_id, eligible, n_ids, seed, index):
    """Pair `index`: (i, j, same). Even indices are positives (two images of one identity with >= 2 images),
    odd ones negatives (one image of each of two identities); drawn from (seed, index) alone."""
    g = np.random.default_rng([seed, index])
    if index % 2 == 0:
        ident = eligible[g.integers(len(eligible))]
        members = labels_by_id[ident]
        a, b = g.choice(len(members), 2, replace=False)
        return int(members[a]), int(members[b]), True
    a, b = g.choice(n_ids, 2, replace=False)
    ma, mb = labels_by_id[a], labels_by_id[b]
    return int(ma[g.integers(len(ma))]), int(mb[g.integers(len(mb))]), False


class PairDataset(torch.utils.data.Dataset):
    """n_pairs pairs over inputs (N, ...) (cached tokens or images) with identities (N,), half positive;
    __getitems__ returns a batch: x1, x2 (B, ...), y1, y2 (B,), same (B,) float."""

    def __init__(self, inputs, identities, n_pairs, seed=0):
        identities = torch.as_tensor(identities).long()
        if inputs.shape[0] != identities.shape[0]:
            raise ValueError(f"inputs ({inputs.shape[0]}) and identities ({identities.shape[0]}) differ in length")
        ids, inverse = torch.unique(identities, return_inverse=True)
        self.inputs, self.identities, self.labels = inputs, identities, inverse
        self.by_id = [torch.nonzero(inverse == k).flatten().numpy() for k in range(len(ids))]
        self.eligible = np.array([k for k, m in enumerate(self.by_id) if len(m) >= 2])
        if len(self.by_id) < 2 or len(self.eligible) == 0:
            raise ValueError(f"pairs need at least 2 identities and one with 2 images; got {len(self.by_id)} "
                             f"identities, {len(self.eligible)} with 2 or more images")
        self.n_pairs, self.seed = int(n_pairs), int(seed)

    def __len__(self):
        return self.n_pairs

    def pair(self, index):
        return sample_pair(self.by_id, self.eligible, len(self.by_id), self.seed, index)

    def __getitems__(self, indices):
        i, j, same = zip(*(self.pair(int(p)) for p in indices))
        i, j = torch.tensor(i), torch.tensor(j)
        return {"x1": self.inputs[i], "x2": self.inputs[j], "y1": self.labels[i], "y2": self.labels[j],
                "same": torch.tensor(same, dtype=torch.float32)}

    def __getitem__(self, index):
        return {k: v[0] for k, v in self.__getitems__([index]).items()}



# ------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def pair_scores(model, x1, x2, batch_size=256):
    """Similarities (N,) of the pairs (x1[i], x2[i]) under a FaceViT (eval mode, the model's device)."""
    dev = next(model.parameters()).device
    outs = [model.similarity(x1[s:s + batch_size].to(dev), x2[s:s + batch_size].to(dev)).float().cpu()
            for s in range(0, x1.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def verification_pairs(identities, n_pairs, seed):
    """(i, j, same) index tensors of n_pairs evaluation pairs, half positive (the training sampler's rule)."""
    ds = PairDataset(torch.zeros(len(identities), 1), identities, n_pairs, seed)
    i, j, same = zip(*(ds.pair(p) for p in range(n_pairs)))
    return torch.tensor(i), torch.tensor(j), torch.tensor(same)


# ------------------------------------------------------------------------------------- the trainer
class FaceViTTrainer(Trainer):
    name, Config, model_kind = "facevit", FaceViTTrainConfig, "facevit"
    in_memory = True
    collate = staticmethod(whole_batch)

    def __init__(self, cfg, run, cache=None):
        """cache: precomputed dict(inputs (N, n, C) tokens or (N, C, S, S) images for v, identities (N,),
        token_dim, grid) instead of rendering and encoding cfg.data with cfg.backbone."""
        super().__init__(cfg, run)
        self.cache = cache

    def arch(self):
        cfg, c = self.cfg, self.cache
        return FaceViTConfig(variant=cfg.variant, token_dim=c["token_dim"], grid=c["grid"], dim=cfg.dim,
                             depth=cfg.depth, heads=cfg.heads, dim_head=cfg.dim_head, mlp_dim=cfg.mlp_dim,
                             dropout=cfg.dropout, out_dim=cfg.out_dim, layout=cfg.layout,
                             image_size=cfg.image_size, patch_size=cfg.patch_size, channels=c.get("channels", 3),
                             backbone=cfg.backbone if cfg.variant != "v" else "")

    def dataset(self):
        if self.cache is None:
            self.cache = build_cache(self.cfg, self.run.device, self.run.progress)
        n = self.cache["inputs"].shape[0]
        self.data = PairDataset(self.cache["inputs"], self.cache["identities"], self.cfg.pairs or 2 * n,
                                self.cfg.seed)
        return self.data

    def build(self):
        cfg, dev = self.cfg, self.run.device
        self.model = FaceViT(self.arch()).to(dev)
        self.modules = {"model": self.model}
        params = list(self.model.parameters())
        if cfg.variant != "h2":
            self.modules["arcface"] = ArcMarginHead(cfg.out_dim, len(self.data.by_id), s=cfg.s, m=cfg.m).to(dev)
            params += list(self.modules["arcface"].parameters())
        self.optimizers = {"adamw": torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)}
        self.net = self.run.ddp(self.model)
        self.arc = self.run.ddp(self.modules["arcface"]) if "arcface" in self.modules else None

    def schedule(self, optimizer):
        warm = round(self.cfg.warmup_epochs * self.run.steps_per_epoch)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 if step < warm else 1.0)

    def train_step(self, batch):
        x1, x2, y1, y2, same = batch["x1"], batch["x2"], batch["y1"], batch["y2"], batch["same"]
        cfg = self.cfg
        if cfg.variant == "h2":
            logit = self.net(x1, x2).float()
            loss = F.binary_cross_entropy_with_logits(logit, same)
            self.run.optimize(self.optimizers["adamw"], loss)
            with torch.no_grad():
                acc = ((logit > 0).float() == same).float().mean().item()
            return {"loss": loss.item(), "pair_acc": acc}
        if cfg.variant == "h2l":
            f1, f2 = self.net(x1, x2)
        else:   # 1-image variants: both images through the same network, one pass
            f1, f2 = self.net(torch.cat([x1, x2])).float().chunk(2)
        f, y = torch.cat([f1, f2]).float(), torch.cat([y1, y2])
        loss = F.cross_entropy(self.arc(f, y), y)                  # Eq. 4.7: ArcFace on f1 and f2
        self.run.optimize(self.optimizers["adamw"], loss)
        with torch.no_grad():
            cos = F.cosine_similarity(f1.float(), f2.float(), dim=-1)
            acc = ((self.modules["arcface"](f.detach()).argmax(1) == y).float().mean().item())
            pos, neg = cos[same > 0], cos[same == 0]
        return {"loss": loss.item(), "acc": acc, "cos_pos": pos.mean().item() if pos.numel() else float("nan"),
                "cos_neg": neg.mean().item() if neg.numel() else float("nan")}

    def hooks(self):
        out = []
        if self.cfg.eval_identities:
            out.append((self.cfg.eval_every, self.evaluate))
        if self.cfg.variant in ("h2l", "h2"):
            out.append((self.cfg.sample_every, self.heat_maps))
        return out

    def held_out(self):
        """Held-out SynthFaces identities (seed offset 10007): cached inputs, clean and masked."""
        if getattr(self, "_held_out", None) is None:
            cfg = self.cfg
            sets = {}
            for occ in (None, "mask"):
                sets[occ or "clean"] = build_cache(cfg, self.run.device, False, n_identities=cfg.eval_identities,
                                                   images_per_identity=4, seed=cfg.seed + 10007, occlusion=occ)
            self._held_out = sets
        return self._held_out

    def evaluate(self, step):
        """Verification accuracy (10-fold best threshold) on 1:1 held-out pairs, clean and masked queries
        (the first image of each pair occluded); logged as eval_acc_clean / eval_acc_mask."""
        from ..eval.metrics import verification_accuracy
        sets = self.held_out()
        i, j, same = verification_pairs(sets["clean"]["identities"], 400, self.cfg.seed + 1)
        self.model.eval()
        record = {"event": "eval"}
        for name in ("clean", "mask"):
            scores = pair_scores(self.model, sets[name]["inputs"][i], sets["clean"]["inputs"][j])
            record[f"eval_acc_{name}"] = verification_accuracy(scores, same)["accuracy"]
        self.model.train()
        self.run.log(record)
        return record

    @torch.no_grad()
    def heat_maps(self, step):
        """OUT/samples/heatmaps_STEP.png: cross-correlation heat maps (section 5.3.3) of 4 training pairs."""
        from ..viz.heatmaps import cross_correlation, heatmap_grid
        if not self.run.is_main or self.cache.get("images") is None:
            return
        pairs = [self.data.pair(p) for p in range(4)]
        i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        self.model.eval()
        z1, z2 = self.model.output_tokens(self.cache["inputs"][i].to(self.run.device),
                                          self.cache["inputs"][j].to(self.run.device))
        self.model.train()
        maps = cross_correlation(z1.float().cpu(), z2.float().cpu())
        tiles = heatmap_grid(self.cache["images"][i], self.cache["images"][j], *maps, self.cache["grid"])
        self.run.save_images("heatmaps", tiles, nrow=4)

    def export(self):
        return self.model.cfg.to_dict(), self.model


def build_cache(cfg, device="cpu", progress=False, n_identities=None, images_per_identity=None, seed=None,
                occlusion=None):
    """The training inputs of a config: dict(inputs, identities, token_dim, grid, channels, images, embeddings).
    Hybrid variants: the frozen backbone's patch tokens (N, g*g, C), computed once. V: the images themselves
    (N, C, image_size, image_size)."""
    from ..backbones import load_encoder
    encoder = load_encoder(cfg.backbone, device=device)
    images, ids = load_faces(cfg.data if n_identities is None else "synthfaces", encoder,
                             n_identities or cfg.n_identities, images_per_identity or cfg.images_per_identity,
                             cfg.seed if seed is None else seed, occlusion, progress)
    if images.shape[0] == 0:
        raise ValueError(f"no readable face images in {cfg.data!r}")
    keep = images if images.shape[-1] <= 64 else F.interpolate(images, size=(64, 64), mode="bilinear",
                                                               antialias=True, align_corners=False)
    if cfg.variant == "v":
        x = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                          align_corners=False) if images.shape[-1] != cfg.image_size else images
        return {"inputs": x.float(), "identities": ids, "token_dim": 1, "grid": 1, "channels": x.shape[1],
                "images": keep}
    emb, tokens = encode_tokens(encoder, images)
    grid = int(round(tokens.shape[1] ** 0.5))
    return {"inputs": tokens, "identities": ids, "token_dim": tokens.shape[2], "grid": grid, "channels": 3,
            "images": keep, "embeddings": emb}


def train_facevit(cfg: FaceViTTrainConfig, out_dir, device="cpu", resume=True, cache=None, progress=True,
                  stop_after=None):
    """Train Face-ViT on the shared loop; OUT/last.pt, log.jsonl and model.pt (fastface.load returns the
    FaceViT). cache: see FaceViTTrainer. Returns dict(model, arcface, step)."""
    t = fit(FaceViTTrainer, cfg, out_dir, device=device, resume=resume, progress=progress, stop_after=stop_after,
            cache=cache)
    return {"model": t.model.eval(), "arcface": t.modules.get("arcface"), "step": t.run.step}

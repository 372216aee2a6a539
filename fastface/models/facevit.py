"""Face-ViT (dissertation ch. 4): the 2-image hybrid ViT H2L and the variants of its Table 4.1.

Hybrid variants read the patch embeddings of a frozen CNN (e.g. ArcFace ResNet-18's 512 x 8 x 8 map) as
tokens, (B, n, C) with n = grid x grid in row-major order (a Faces' patches) or (B, C, g, g) maps:
  H2L  [CLS] tokens(1) [SEP] tokens(2) + positions (Eq. 4.1) -> L pre-norm encoder layers (Eq. 4.2-4.3)
       -> f1 = LayerNorm(Linear1(z1)), f2 = LayerNorm(Linear2(z2)) over each image's flattened output
       tokens (Eq. 4.5-4.6); similarity cos(f1, f2); trained with ArcFace on f1 and f2 (Eq. 4.7)
  H2   the same sequence; the [CLS] output -> one "same person" logit (binary cross-entropy)
  H1   [CLS] tokens of one image; f = LayerNorm(Linear([CLS] output)); similarity cos(f(x1), f(x2))
  V    H1 on learned pixel-patch embeddings of the image (a plain ViT)
(C, the CNN alone, is the cosine of the backbone's embeddings: nothing to build.)

Eq. 4.2 as printed has no residual around the attention; the encoder adds it (standard pre-norm ViT,
as the public code does). layout="public" reproduces the public code (anguyen8/face-vit) so its
checkpoints load (public_state_dict_names / load_public_state_dict): no LayerNorm before attention, the
attention scaled by dim^-0.5 over the model width, no token projection (tokens must be `dim` wide), the
H2L heads Linear + BatchNorm1d, and the H2 head a 2-way Linear on LayerNorm([CLS]).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._arch import ArchConfig

VARIANTS = ("h2l", "h2", "h1", "v")
TWO_IMAGE = ("h2l", "h2")
LAYOUTS = ("paper", "public")


@dataclass
class FaceViTConfig(ArchConfig):
    """The architecture of a Face-ViT model (what model.pt records)."""
    variant: str = "h2l"          # h2l (the dissertation's), h2, h1 or v
    token_dim: int = 512          # channels of the backbone's patch map (hybrid variants)
    grid: int = 8                 # the patch map is grid x grid: grid^2 tokens per image
    dim: int = 512                # model width
    depth: int = 1                # encoder layers (1-8)
    heads: int = 1                # attention heads (1-8)
    dim_head: int = 64            # width of one head (the public code's 64)
    mlp_dim: int = 2048
    dropout: float = 0.1
    emb_dropout: float = 0.0
    out_dim: int = 512            # width of f1, f2 (and of H1 / V features)
    layout: str = "paper"         # paper or public (see the module docstring)
    backbone: str = ""            # the encoder whose patch maps it was trained on (a record; not used to build)
    image_size: int = 64          # v: input images image_size x image_size
    patch_size: int = 8           # v: pixel patches patch_size x patch_size
    channels: int = 3             # v: image channels

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        for name in ("token_dim", "grid", "dim", "depth", "heads", "dim_head", "mlp_dim", "out_dim", "image_size",
                     "patch_size", "channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("dropout", "emb_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.variant == "v" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.layout == "public" and self.variant != "v" and self.token_dim != self.dim:
            raise ValueError(f"layout='public' has no token projection: token_dim ({self.token_dim}) must equal "
                             f"dim ({self.dim})")
        if self.layout == "public" and self.variant == "h1" and self.out_dim != self.dim:
            raise ValueError(f"the public H1 normalises its [CLS] output as the feature: out_dim ({self.out_dim}) "
                             f"must equal dim ({self.dim})")

    @property
    def n_tokens(self):
        """Tokens per image."""
        return (self.image_size // self.patch_size) ** 2 if self.variant == "v" else self.grid ** 2

    @property
    def two_image(self):
        return self.variant in TWO_IMAGE



class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention; inner width heads * dim_head; dropout
    after the output projection (none on the attention weights, as in ViT and the public code)."""

    def __init__(self, dim, heads, dim_head, dropout, scale):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, scale
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.proj = nn.Linear(heads * dim_head, dim)
        self.drop = nn.Dropout(dropout)

    def split(self, qkv):
        """(B, N, 3 * inner) -> q, k, v each (B, heads, N, dim_head)."""
        b, n, _ = qkv.shape
        return qkv.view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)

    def attend(self, q, k, v):
        """q (B, h, Nq, d), k, v (B, h, N, d) -> (B, Nq, dim)."""
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.drop(self.proj(out.transpose(1, 2).flatten(2)))

    def forward(self, x):  # x (B, N, dim)
        return self.attend(*self.split(self.qkv(x)))


class Block(nn.Module):
    """x + Attn(LN(x)) (no LN in the public layout), then x + MLP(LN(x))."""

    def __init__(self, cfg):
        super().__init__()
        public = cfg.layout == "public"
        scale = cfg.dim ** -0.5 if public else cfg.dim_head ** -0.5
        self.norm_attn = not public
        self.norm1 = nn.LayerNorm(cfg.dim)     # kept in the public layout (its checkpoints hold it), unused there
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dim_head, cfg.dropout, scale)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_dim, cfg.dim), nn.Dropout(cfg.dropout))

    def attn_input(self, x):
        return self.norm1(x) if self.norm_attn else x

    def finish(self, x, attn_out):
        """The rest of the block after the attention output: residual, then the MLP and its residual."""
        x = x + attn_out
        return x + self.mlp(self.norm2(x))

    def forward(self, x):  # x (B, N, dim)
        return self.finish(x, self.attn(self.attn_input(x)))


class FeatureHead(nn.Module):
    """A feature of out_dim from in_dim values: LayerNorm(Linear(x)) (paper) or BatchNorm1d(Linear(x)) (public)."""

    def __init__(self, in_dim, out_dim, public):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = nn.BatchNorm1d(out_dim) if public else nn.LayerNorm(out_dim)

    def forward(self, x):  # x (B, in_dim)
        return self.norm(self.linear(x))


class FaceViT(nn.Module):
    """A Face-ViT model of any variant; see the module docstring. Inputs are tokens (B, n, token_dim) or
    maps (B, token_dim, grid, grid) for hybrid variants, images (B, channels, S, S) for V."""

    def __init__(self, cfg=None, **kw):
        super().__init__()
        cfg = cfg if isinstance(cfg, FaceViTConfig) else FaceViTConfig(**{**(cfg or {}), **kw})
        self.cfg = cfg
        public = cfg.layout == "public"
        n = cfg.n_tokens
        if cfg.variant == "v":
            self.embed = nn.Linear(cfg.channels * cfg.patch_size ** 2, cfg.dim)
        else:
            self.embed = nn.Identity() if public else nn.Linear(cfg.token_dim, cfg.dim)   # E of Eq. 4.1
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        if cfg.two_image:
            self.sep_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.seq_len = 2 * n + 2 if cfg.two_image else n + 1
        self.pos_embedding = nn.Parameter(torch.randn(1, self.seq_len, cfg.dim) * 0.02)
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        if cfg.variant == "h2l":
            self.head1 = FeatureHead(n * cfg.dim, cfg.out_dim, public)
            self.head2 = FeatureHead(n * cfg.dim, cfg.out_dim, public)
        elif cfg.variant == "h2":
            self.cls_norm = nn.LayerNorm(cfg.dim)
            self.cls_head = nn.Linear(cfg.dim, 2 if public else 1)
        else:
            self.head = FeatureHead(cfg.dim, cfg.out_dim, False)

    # ------------------------------------------------------------------ inputs
    def tokens(self, x, name="x"):
        """Validated input tokens (B, n, token_dim) (maps and single images accepted; V: pixel patches)."""
        cfg = self.cfg
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if cfg.variant == "v":
            want = (cfg.channels, cfg.image_size, cfg.image_size)
            if x.dim() != 4 or tuple(x.shape[1:]) != want:
                raise ValueError(f"{name} must be images (B, {', '.join(map(str, want))}) for variant v, "
                                 f"got {tuple(x.shape)}")
            p = cfg.patch_size
            return F.unfold(x, p, stride=p).transpose(1, 2)            # (B, n, C p p)
        if x.dim() == 4:
            if tuple(x.shape[1:]) != (cfg.token_dim, cfg.grid, cfg.grid):
                raise ValueError(f"{name} maps must be (B, {cfg.token_dim}, {cfg.grid}, {cfg.grid}) for this model "
                                 f"(trained on {cfg.grid}x{cfg.grid}x{cfg.token_dim} patch maps), got "
                                 f"{tuple(x.shape)}")
            x = x.flatten(2).transpose(1, 2)
        if x.dim() != 3 or tuple(x.shape[1:]) != (cfg.n_tokens, cfg.token_dim):
            raise ValueError(f"{name} must be tokens (B, {cfg.n_tokens}, {cfg.token_dim}) for this model (trained on "
                             f"{cfg.grid}x{cfg.grid}x{cfg.token_dim} patch maps), got {tuple(x.shape)}")
        return x

    def embed_tokens(self, x, slot=0):
        """Embedded tokens of one image with their positions (Eq. 4.1): (B, n, token_dim) -> (B, n, dim).
        slot 0: the first image (after [CLS]), 1: the second (after [SEP])."""
        n = self.cfg.n_tokens
        lo = 1 + slot * (n + 1)
        return self.embed(x.to(self.pos_embedding.dtype)) + self.pos_embedding[:, lo:lo + n]

    def special(self, b, which):
        """[CLS] (which=0) or [SEP] (which=1) with its position, (b, 1, dim)."""
        tok, pos = (self.cls_token, 0) if which == 0 else (self.sep_token, self.cfg.n_tokens + 1)
        return (tok + self.pos_embedding[:, pos:pos + 1]).expand(b, 1, -1)

    def sequence(self, x1, x2=None):
        """z_0 of Eq. 4.1 from validated tokens: (B, seq_len, dim)."""
        b = x1.shape[0]
        parts = [self.special(b, 0), self.embed_tokens(x1, 0)]
        if self.cfg.two_image:
            parts += [self.special(b, 1), self.embed_tokens(x2, 1)]
        return self.emb_drop(torch.cat(parts, 1))

    def encode(self, z):
        for block in self.blocks:
            z = block(z)
        return z

    # ------------------------------------------------------------------ outputs
    def outputs(self, z):
        """Variant outputs of the encoder output z (B, seq_len, dim): h2l (f1, f2); h2 the logit (B,);
        h1 / v the feature (B, out_dim)."""
        cfg, n = self.cfg, self.cfg.n_tokens
        if cfg.variant == "h2l":
            return self.head1(z[:, 1:n + 1].flatten(1)), self.head2(z[:, n + 2:].flatten(1))
        if cfg.variant == "h2":
            logits = self.cls_head(self.cls_norm(z[:, 0]))
            return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
        return self.head(z[:, 0])

    def output_tokens(self, x1, x2):
        """Encoder output tokens of each image of a pair, (B, n, dim) twice (2-image variants): what the
        cross-correlation heat maps of section 5.3.3 read."""
        if not self.cfg.two_image:
            raise ValueError(f"output_tokens needs a 2-image variant, this one is {self.cfg.variant}")
        n = self.cfg.n_tokens
        z = self.encode(self.sequence(self.tokens(x1, "x1"), self.tokens(x2, "x2")))
        return z[:, 1:n + 1], z[:, n + 2:]

    def forward(self, x1, x2=None):
        """h2l: (f1, f2) each (B, out_dim); h2: the "same person" logit (B,); h1 / v: the feature of x1."""
        t1 = self.tokens(x1, "x1")
        t2 = None
        if self.cfg.two_image:
            if x2 is None:
                raise ValueError(f"variant {self.cfg.variant} compares two images: give x1 and x2")
            t2 = self.tokens(x2, "x2")
            if t2.shape[0] != t1.shape[0]:
                raise ValueError(f"x1 and x2 must hold the same number of images, got {t1.shape[0]} and {t2.shape[0]}")
        elif x2 is not None:
            raise ValueError(f"variant {self.cfg.variant} reads one image: compare features with similarity()")
        return self.outputs(self.encode(self.sequence(t1, t2)))

    def similarity(self, x1, x2):
        """(B,) similarity of image pairs: cos(f1, f2) (h2l), sigmoid(logit) (h2), cos(f(x1), f(x2)) (h1, v)."""
        if self.cfg.variant == "h2l":
            f1, f2 = self(x1, x2)
            return F.cosine_similarity(f1.float(), f2.float(), dim=-1)
        if self.cfg.variant == "h2":
            return torch.sigmoid(self(x1, x2).float())
        return F.cosine_similarity(self(x1).float(), self(x2).float(), dim=-1)

    # ------------------------------------------------------------------ pairs from per-image parts (vit_rerank)
    def image_parts(self, x, slot=0):
        """What one image contributes to any pair, computed once per image: the embedded sequence piece
        [CLS] tokens(1) (slot 0) or [SEP] tokens(2) (slot 1) with positions, e (B, n + 1, dim), and the first
        layer's (q, k, v) of it, each (B, heads, n + 1, dim_head). x: validated tokens (B, n, token_dim)."""
        e = self.emb_drop(torch.cat([self.special(x.shape[0], slot), self.embed_tokens(x, slot)], 1))
        first = self.blocks[0]
        q, k, v = first.attn.split(first.attn.qkv(first.attn_input(e)))
        return e, q, k, v

    def pair_outputs(self, part1, part2):
        """outputs() of the pairs whose image parts (image_parts, gathered per pair: e (*P, n + 1, dim), q, k, v
        (*P, heads, n + 1, dim_head); *P any batch shape, expanded views welcome) are part1 (slot 0) and part2
        (slot 1), flattened to P pairs: the first layer goes on from its attention; equal to forward(x1, x2)."""
        z = torch.cat([part1[0], part2[0]], -2).flatten(0, -3)                 # (P, 2n + 2, dim)
        q, k, v = (torch.cat([a, b], -2).flatten(0, -4) for a, b in zip(part1[1:], part2[1:]))  # (P, h, 2n + 2, d)
        first = self.blocks[0]
        z = first.finish(z, first.attn.attend(q, k, v))
        for block in self.blocks[1:]:
            z = block(z)
        return self.outputs(z)

    def extra_repr(self):
        c = self.cfg
        return f"variant={c.variant}, depth={c.depth}, heads={c.heads}, dim={c.dim}, layout={c.layout}"


def build_facevit(config):
    """The FaceViT a FaceViTConfig (or its dict) describes (fastface.load's builder)."""
    return FaceViT(config if isinstance(config, FaceViTConfig) else FaceViTConfig.from_dict(config))


def count_flops(cfg, pairs=1):
    """Multiply-adds x 2 of one forward of `pairs` image pairs (h2l/h2) or images (h1/v), the heads included."""
    cfg = cfg if isinstance(cfg, FaceViTConfig) else FaceViTConfig.from_dict(cfg)
    n, d, inner = cfg.n_tokens, cfg.dim, cfg.heads * cfg.dim_head
    seq = 2 * n + 2 if cfg.two_image else n + 1
    images = 2 if cfg.two_image else 1
    in_dim = cfg.channels * cfg.patch_size ** 2 if cfg.variant == "v" else cfg.token_dim
    embed = 0 if (cfg.layout == "public" and cfg.variant != "v") else images * n * in_dim * d
    per_layer = seq * d * 3 * inner + 2 * seq * seq * inner + seq * inner * d + 2 * seq * d * cfg.mlp_dim
    heads = {"h2l": 2 * n * d * cfg.out_dim, "h2": d, "h1": d * cfg.out_dim, "v": d * cfg.out_dim}[cfg.variant]
    return 2 * pairs * (embed + cfg.depth * per_layer + heads)


# ---------------------------------------------------------------------- the public code's checkpoints
def public_state_dict_names(cfg, n_classes=None):
    """{public parameter name: our name} of a layout="public" model (anguyen8/face-vit's ViT_face_model for
    h2l / h2, Hybrid_ViT for h1). n_classes: also map its ArcFace weight "loss.weight" to "arcface.weight"."""
    cfg = cfg if isinstance(cfg, FaceViTConfig) else FaceViTConfig.from_dict(cfg)
    names = {"cls_token": "cls_token", "pos_embedding": "pos_embedding"}
    if cfg.two_image:
        names["sep"] = "sep_token"
    for i in range(cfg.depth):
        a, f = f"transformer.layers.{i}.0.fn", f"transformer.layers.{i}.1.fn"
        names.update({f"{a}.norm.weight": f"blocks.{i}.norm1.weight", f"{a}.norm.bias": f"blocks.{i}.norm1.bias",
                      f"{a}.fn.to_qkv.weight": f"blocks.{i}.attn.qkv.weight",
                      f"{a}.fn.to_out.0.weight": f"blocks.{i}.attn.proj.weight",
                      f"{a}.fn.to_out.0.bias": f"blocks.{i}.attn.proj.bias",
                      f"{f}.norm.weight": f"blocks.{i}.norm2.weight", f"{f}.norm.bias": f"blocks.{i}.norm2.bias",
                      f"{f}.fn.net.0.weight": f"blocks.{i}.mlp.0.weight", f"{f}.fn.net.0.bias": f"blocks.{i}.mlp.0.bias",
                      f"{f}.fn.net.3.weight": f"blocks.{i}.mlp.3.weight", f"{f}.fn.net.3.bias": f"blocks.{i}.mlp.3.bias"})
    if cfg.variant == "h2l":
        for k in (1, 2):
            names.update({f"fc{k}.weight": f"head{k}.linear.weight", f"fc{k}.bias": f"head{k}.linear.bias"})
            names.update({f"bn{k}.{p}": f"head{k}.norm.{p}" for p in
                          ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
    elif cfg.variant == "h2":
        names.update({"mlp_head.0.weight": "cls_norm.weight", "mlp_head.0.bias": "cls_norm.bias",
                      "fc.weight": "cls_head.weight", "fc.bias": "cls_head.bias"})
    elif cfg.variant == "h1":
        names.update({"mlp_head.0.weight": "head.norm.weight", "mlp_head.0.bias": "head.norm.bias"})
    if n_classes:
        names["loss.weight"] = "arcface.weight"
    return names


def load_public_state_dict(model, state, strict=True):
    """Load a state dict of the public Face-ViT code (its parameter names and shapes) into a layout="public"
    FaceViT. The public H1's pos_embedding has 2n + 1 rows of which it uses n + 1; "module." prefixes (from
    DataParallel) are dropped. Returns the entries the model has no place for (its ArcFace weight, ...)."""
    cfg = model.cfg
    if cfg.layout != "public":
        raise ValueError("the public code's checkpoints load into layout='public' models only")
    if cfg.variant == "v":
        raise ValueError("variant v has no public-code layout here (its public ViT_face reads 112x112 pixels)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    names = public_state_dict_names(cfg)
    ours = {}
    for k, v in state.items():
        if k in names:
            ours[names[k]] = v
    if "pos_embedding" in ours and ours["pos_embedding"].shape[1] > model.seq_len:
        ours["pos_embedding"] = ours["pos_embedding"][:, :model.seq_len]
    if cfg.variant == "h1":   # Hybrid_ViT has no Linear before its LayerNorm: an identity keeps its numbers
        eye = torch.eye(cfg.out_dim, cfg.dim)
        ours.setdefault("head.linear.weight", eye)
        ours.setdefault("head.linear.bias", torch.zeros(cfg.out_dim))
    missing = sorted(set(model.state_dict()) - set(ours))
    if strict and missing:
        raise ValueError(f"the public state dict lacks {missing[:6]}{' ...' if len(missing) > 6 else ''} "
                         f"for a {cfg.variant} model of depth {cfg.depth}")
    for k, v in ours.items():
        want = model.state_dict()[k].shape
        if tuple(v.shape) != tuple(want):
            raise ValueError(f"public parameter for {k} has shape {tuple(v.shape)}, this model needs {tuple(want)} "
                             f"(depth {cfg.depth}, heads {cfg.heads}, dim_head {cfg.dim_head}, dim {cfg.dim})")
    model.load_state_dict(ours, strict=strict)
    return sorted(set(state) - set(names))


def attention_scale(cfg):
    """The softmax temperature the layout uses: dim_head^-0.5 (paper) or dim^-0.5 (public)."""
    return cfg.dim ** -0.5 if cfg.layout == "public" else cfg.dim_head ** -0.5


__all__ = ["FaceViTConfig", "FaceViT", "build_facevit", "count_flops", "public_state_dict_names",
           "load_public_state_dict", "attention_scale", "VARIANTS", "LAYOUTS"]

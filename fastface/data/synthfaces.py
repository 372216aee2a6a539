"""SynthFaces: a deterministic procedural face renderer (the embedded, download-free data set).

Every image is a pure function of (seed, index): identity traits are drawn once per identity from
``default_rng([seed, 1, identity])`` and the identity-irrelevant variation (expression, glasses,
hat, pose, lighting, background, blur, noise) from ``default_rng([seed, 2, index])``. Rendering is
vectorised over a batch with torch (soft masks of ellipses / curves on a coordinate grid). The 68
landmarks (iBUG layout) come exactly from the same geometry and the same pose transform.

Coordinates: a canonical face frame (u, v), v pointing down, face centred at 0, the image spanning
about [-1, 1]. Pose maps it to pixels: p = c + t + s * (size / 2) * R(roll) (u, v), with c the image
centre ((size - 1) / 2) and pixel (row i, column j) centred at (x, y) = (j, i).
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from . import occlusions as _occ
from ._args import as_int as _as_int

__all__ = ["SynthFaces", "export_image_folder", "LANDMARKS5_FROM_68"]

# ---------------------------------------------------------------------------------------------
# Attributes
# ---------------------------------------------------------------------------------------------
_ID_ATTRS = ["wide_face", "dark_skin", "wide_set_eyes", "big_eyes", "light_eyes", "long_nose",
             "wide_nose", "wide_mouth", "thick_lips", "thick_brows", "slanted_brows", "black_hair",
             "brown_hair", "blond_hair", "grey_hair", "bald", "short_hair", "long_hair", "fringe",
             "older_like", "masculine_like"]
_IMG_ATTRS = ["smiling", "mouth_open", "eyes_closed", "eyeglasses", "wearing_hat", "yaw_left",
              "yaw_right", "head_tilted", "bright_lighting", "side_lit", "blurry", "noisy",
              "textured_background", "dark_background", "small_face"]

# 5-point subset from the 68: image-left eye centre, image-right eye centre, nose tip, mouth corners
LANDMARKS5_FROM_68 = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))

_HAIR_PALETTE = np.array([[0.08, 0.06, 0.05], [0.26, 0.16, 0.09], [0.45, 0.30, 0.16],
                          [0.86, 0.73, 0.46], [0.62, 0.27, 0.12], [0.66, 0.66, 0.66],
                          [0.90, 0.90, 0.88]], dtype=np.float64)
_HAIR_NAMES = ["black", "darkbrown", "brown", "blond", "red", "grey", "white"]
_IRIS_PALETTE = np.array([[0.40, 0.24, 0.10], [0.15, 0.10, 0.07], [0.28, 0.50, 0.78],
                          [0.33, 0.55, 0.28], [0.50, 0.56, 0.62]], dtype=np.float64)
_STYLES = ["short", "long", "fringe", "bald"]
_SKIN_LIGHT = np.array([0.96, 0.82, 0.71])
_SKIN_DARK = np.array([0.42, 0.28, 0.20])


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def identity_traits(seed, identity):
    """The identity's traits (a dict of floats / small arrays), drawn from (seed, identity)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 1, int(identity)])
    d = rng.normal(size=3)            # demographic-like: d0 age-like, d1 tone-like, d2 sex-like
    z = rng.normal(size=16)
    t = _sigmoid(1.4 * d[1] + 0.4 * z[2])
    skin = np.clip(_SKIN_LIGHT * (1 - t) + _SKIN_DARK * t + 0.03 * rng.normal(size=3), 0.05, 1.0)
    tr = {}
    tr["d"] = d
    tr["tone"] = t
    tr["skin"] = skin
    tr["face_ax"] = float(np.clip(0.58 + 0.04 * z[0] + 0.02 * d[2], 0.48, 0.68))
    tr["face_ay"] = float(np.clip(0.76 + 0.04 * z[1] + 0.015 * d[2] + 0.01 * d[0], 0.66, 0.86))
    tr["eye_sep"] = float(np.clip(0.24 + 0.025 * z[3], 0.18, 0.30))
    tr["eye_y"] = float(np.clip(-0.10 + 0.03 * z[4], -0.18, -0.03))
    tr["eye_rx"] = float(np.clip(0.085 + 0.012 * z[5] - 0.005 * d[2], 0.06, 0.11))
    tr["eye_ry"] = tr["eye_rx"] * float(np.clip(0.55 + 0.08 * z[6], 0.38, 0.75))
    light_p = 0.55 * (1 - t)
    if rng.random() < light_p:
        iris = int(rng.choice([2, 3, 4], p=[0.5, 0.25, 0.25]))
    else:
        iris = int(rng.choice([0, 1], p=[0.6, 0.4]))
    tr["iris_idx"] = iris
    tr["iris"] = _IRIS_PALETTE[iris]
    tr["brow_thick"] = float(np.clip(0.03 + 0.008 * z[7] + 0.006 * d[2], 0.015, 0.05))
    tr["brow_angle"] = float(np.clip(0.15 * z[8], -0.35, 0.35))
    tr["brow_gap"] = float(np.clip(0.10 + 0.015 * z[9], 0.07, 0.14))
    tr["nose_len"] = float(np.clip(0.22 + 0.03 * z[10] + 0.01 * d[0], 0.15, 0.30))
    tr["nose_w"] = float(np.clip(0.075 + 0.012 * z[11] + 0.01 * d[1], 0.05, 0.11))
    tr["mouth_w"] = float(np.clip(0.19 + 0.025 * z[12], 0.13, 0.26))
    tr["lip_thick"] = float(np.clip(0.035 + 0.008 * z[13] - 0.004 * d[2], 0.018, 0.055))
    mouth_y = tr["eye_y"] + tr["nose_len"] + 0.13 + 0.02 * z[14]
    tr["mouth_y"] = float(min(mouth_y, 0.72 * tr["face_ay"]))
    tr["lip"] = np.clip(skin * np.array([0.80, 0.55, 0.55]) + np.array([0.12, 0.0, 0.0]), 0, 1)
    # hair colour: older -> grey/white; darker tone -> black/dark brown
    if d[0] > 0.9 and rng.random() < 0.7:
        hair = int(rng.choice([5, 6]))
    else:
        p = np.array([0.25 + 0.4 * t, 0.25, 0.2, 0.2 * (1 - t), 0.1 * (1 - t)])
        hair = int(rng.choice(5, p=p / p.sum()))
    tr["hair_idx"] = hair
    tr["hair"] = np.clip(_HAIR_PALETTE[hair] + 0.03 * rng.normal(size=3), 0, 1)
    ps = np.array([0.35, 0.30 * (1.0 - 0.6 * (d[2] > 0)), 0.25, 0.05 + 0.15 * (d[2] > 0) * (d[0] > 0)])
    tr["style"] = int(rng.choice(4, p=ps / ps.sum()))
    tr["hairline"] = float(np.clip(0.55 + 0.05 * z[15], 0.45, 0.65))
    a = np.array([
        tr["face_ax"] / tr["face_ay"] > 0.77, t > 0.5, tr["eye_sep"] > 0.24, tr["eye_rx"] > 0.085,
        iris >= 2, tr["nose_len"] > 0.22, tr["nose_w"] > 0.075, tr["mouth_w"] > 0.19,
        tr["lip_thick"] > 0.035, tr["brow_thick"] > 0.03, abs(tr["brow_angle"]) > 0.12, hair == 0,
        hair in (1, 2), hair == 3, hair in (5, 6), tr["style"] == 3, tr["style"] == 0,
        tr["style"] == 1, tr["style"] == 2, d[0] > 0.6, d[2] > 0], dtype=np.float32)
    tr["attributes"] = a
    return tr


def image_params(seed, index, size):
    """The per-image (identity-irrelevant) variation, drawn from (seed, index)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 2, int(index)])
    p = {}
    p["smile"] = rng.uniform(-0.3, 1.0)
    p["open"] = rng.uniform(0.03, 0.08) if rng.random() < 0.25 else 0.0
    p["closed"] = rng.random() < 0.12
    p["glasses"] = rng.random() < 0.2
    p["glasses_col"] = rng.uniform(0.05, 0.5, size=3)
    p["hat"] = rng.random() < 0.15
    p["hat_col"] = rng.uniform(0.05, 0.95, size=3)
    p["yaw"] = rng.uniform(-0.12, 0.12)
    p["roll"] = float(np.clip(rng.normal(0, 10), -25, 25))   # degrees
    p["scale"] = rng.uniform(0.82, 1.05)
    p["tx"], p["ty"] = rng.uniform(-0.06, 0.06, size=2) * size
    p["light_angle"] = rng.uniform(0, 2 * math.pi)
    p["light_strength"] = rng.uniform(0.0, 0.35)
    p["brightness"] = rng.uniform(0.7, 1.2)
    p["bg"] = rng.uniform(0.05, 0.95, size=3)
    p["shirt"] = rng.uniform(0.05, 0.95, size=3)
    p["tex_amp"] = rng.uniform(0.1, 0.35) if rng.random() < 0.5 else 0.0
    p["tex"] = rng.normal(size=(6, 6))
    p["stripe_amp"] = rng.uniform(0.05, 0.2) if rng.random() < 0.3 else 0.0
    p["stripe_freq"] = rng.uniform(0.2, 0.8)
    p["stripe_ang"] = rng.uniform(0, math.pi)
    p["stripe_phase"] = rng.uniform(0, 2 * math.pi)
    p["blur"] = rng.uniform(0.4, 1.3) if rng.random() < 0.5 else 0.0
    p["noise_sigma"] = rng.uniform(0.0, 0.05)
    p["noise"] = rng.standard_normal((3, size, size), dtype=np.float32)
    p["crop_uv"] = rng.random(2)
    p["attributes"] = np.array([
        p["smile"] > 0.45, p["open"] > 0, p["closed"], p["glasses"], p["hat"], p["yaw"] < -0.06,
        p["yaw"] > 0.06, abs(p["roll"]) > 10, p["brightness"] > 1.05, p["light_strength"] > 0.2,
        p["blur"] > 0.8, p["noise_sigma"] > 0.03, p["tex_amp"] > 0 or p["stripe_amp"] > 0,
        float(np.mean(p["bg"])) < 0.35, p["scale"] < 0.9], dtype=np.float32)
    return p


# ---------------------------------------------------------------------------------------------
# Rendering helpers (all tensors (B, H, W) unless noted)
# ---------------------------------------------------------------------------------------------
def _cov(d, pix):
    """Coverage of a soft shape from a signed distance d (negative inside), pixel size pix."""
    return (0.5 - d / pix).clamp_(0, 1)


def _ellipse_sd(u, v, cx, cy, a, b):
    r = torch.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return (r - 1) * torch.minimum(a, b), r


def _comp(img, m, col):
    """img (B, 3, H, W) <- img over col with coverage m (B, H, W); col (B, 3)."""
    img.add_((col[:, :, None, None] - img) * m[:, None])


def _b(x):
    return x.view(-1, 1, 1)


class SynthFaces(torch.utils.data.Dataset):
    """Deterministic procedural faces with identities, exact 68/5 landmarks and attributes.

    Index i belongs to identity i // images_per_identity. Items are dicts: image (C, S, S) float32
    in [0, 1]; identity int; landmarks68 (68, 2) and landmarks5 (5, 2) float32 pixel (x, y);
    attributes (A,) float32 in {0, 1}; plus pose (yaw, roll_degrees, scale, tx, ty) and background
    (3,) colour.
    """

    ATTRIBUTES = _ID_ATTRS + _IMG_ATTRS
    IDENTITY_RELATED = [True] * len(_ID_ATTRS) + [False] * len(_IMG_ATTRS)

    def __init__(self, n_identities=100, images_per_identity=10, size=64, channels=3, seed=0,
                 occlusion=None):
        n_identities = _as_int("n_identities", n_identities, min_value=1)
        images_per_identity = _as_int("images_per_identity", images_per_identity, min_value=1)
        size = _as_int("size", size, min_value=16)
        if _as_int("channels", channels) not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        seed = _as_int("seed", seed, min_value=0)   # numpy's generators take non-negative seeds
        if occlusion is not None and occlusion not in _occ.KINDS:
            raise ValueError(f"occlusion must be None or one of {', '.join(repr(k) for k in _occ.KINDS)}, "
                             f"got {occlusion!r}")
        self.n_identities, self.images_per_identity = int(n_identities), int(images_per_identity)
        self.size, self.channels, self.seed = int(size), int(channels), int(seed)
        self.occlusion = occlusion
        self._traits = {}

    def __len__(self):
        return self.n_identities * self.images_per_identity

    def _index(self, index, name="index"):
        """An int in [-len, len) -> the non-negative index; IndexError outside, TypeError for non-ints."""
        index, n = _as_int(name, index), len(self)
        if not -n <= index < n:
            raise IndexError(f"{name} {index} out of range for SynthFaces of length {n}")
        return index % n

    def identity_of(self, index):
        return self._index(index) // self.images_per_identity

    def traits(self, identity):
        identity = _as_int("identity", identity, min_value=0, max_value=self.n_identities - 1)
        tr = self._traits.get(identity)
        if tr is None:
            tr = self._traits[identity] = identity_traits(self.seed, identity)
        return tr

    def __getitem__(self, index):
        out = self.render_batch([self._index(index)])
        return {k: (int(v[0]) if k == "identity" else v[0]) for k, v in out.items()}

    def __getitems__(self, indices):
        """Batched fetch for DataLoader: one render_batch call instead of len(indices) renders."""
        out = self.render_batch(indices)
        return [{k: (int(v[j]) if k == "identity" else v[j]) for k, v in out.items()} for j in range(len(indices))]

    # -----------------------------------------------------------------------------------------
    def _params(self, indices):
        S = self.size
        T = [self.traits(self.identity_of(i)) for i in indices]
        P = [image_params(self.seed, i, S) for i in indices]
        f = lambda key, src: torch.tensor(np.array([s[key] for s in src], dtype=np.float32))
        q = {k: f(k, T) for k in ("face_ax", "face_ay", "eye_sep", "eye_y", "eye_rx", "eye_ry",
                                   "brow_thick", "brow_angle", "brow_gap", "nose_len", "nose_w",
                                   "mouth_w", "lip_thick", "mouth_y", "skin", "iris", "lip", "hair",
                                   "style", "hairline")}
        q.update({k: f(k, P) for k in ("smile", "open", "closed", "glasses", "glasses_col", "hat",
                                        "hat_col", "yaw", "roll", "scale", "tx", "ty", "light_angle",
                                        "light_strength", "brightness", "bg", "shirt", "tex_amp", "tex",
                                        "stripe_amp", "stripe_freq", "stripe_ang", "stripe_phase",
                                        "blur", "noise_sigma", "noise", "crop_uv")})
        q["attributes"] = torch.from_numpy(np.stack([np.concatenate([t["attributes"], p["attributes"]])
                                                     for t, p in zip(T, P)]))
        return q

    @staticmethod
    def _landmarks_canonical(q):
        """(B, 68, 2) canonical landmarks (after the yaw warp of the features)."""
        B = q["yaw"].shape[0]
        yaw = q["yaw"]
        out = torch.zeros(B, 68, 2)
        # jaw 0..16: on the face ellipse from the image-left (above centre) round the chin
        al = 0.15
        t = (math.pi + al) - torch.arange(17, dtype=torch.float32) * (math.pi + 2 * al) / 16
        out[:, 0:17, 0] = q["face_ax"][:, None] * torch.cos(t)[None]
        out[:, 0:17, 1] = q["face_ay"][:, None] * torch.sin(t)[None]
        # brows 17..21 (image-left, outer -> inner), 22..26 (image-right, inner -> outer)
        for side, sl in ((-1, slice(17, 22)), (1, slice(22, 27))):
            cx = side * q["eye_sep"] + 0.5 * yaw
            cy = q["eye_y"] - q["brow_gap"]
            L = 1.4 * q["eye_rx"]
            ang = side * q["brow_angle"]
            s = torch.tensor([-0.9, -0.45, 0.0, 0.45, 0.9]) * (1 if side > 0 else 1)
            ordr = s if side < 0 else s  # both left -> right in the image
            out[:, sl, 0] = cx[:, None] + ordr[None] * L[:, None] * torch.cos(ang)[:, None]
            out[:, sl, 1] = cy[:, None] + ordr[None] * L[:, None] * torch.sin(ang)[:, None]
        # nose bridge 27..30 (depth grows to the tip), nostrils 31..35
        tip_y = q["eye_y"] + q["nose_len"]
        k = torch.arange(4, dtype=torch.float32) / 3
        out[:, 27:31, 0] = yaw[:, None] * (0.6 + 0.4 * k[None])
        out[:, 27:31, 1] = q["eye_y"][:, None] + k[None] * q["nose_len"][:, None]
        xs = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
        out[:, 31:36, 0] = 0.85 * yaw[:, None] + xs[None] * q["nose_w"][:, None] * 0.8
        out[:, 31:36, 1] = tip_y[:, None] + q["nose_w"][:, None] * torch.tensor([0.25, 0.4, 0.45, 0.4, 0.25])[None]
        # eyes 36..41 and 42..47
        open_f = torch.where(q["closed"] > 0, torch.full_like(yaw, 0.08), torch.ones_like(yaw))
        ang = torch.deg2rad(torch.tensor([180.0, 120.0, 60.0, 0.0, -60.0, -120.0]))
        for side, sl in ((-1, slice(36, 42)), (1, slice(42, 48))):
            ex = side * q["eye_sep"] + 0.55 * yaw
            out[:, sl, 0] = ex[:, None] + q["eye_rx"][:, None] * torch.cos(ang)[None]
            out[:, sl, 1] = q["eye_y"][:, None] - (q["eye_ry"] * open_f)[:, None] * torch.sin(ang)[None]
        # mouth 48..67
        mx, mw, my = 0.6 * yaw, q["mouth_w"], q["mouth_y"]
        sm, op, th = q["smile"], q["open"], q["lip_thick"]

        def mid(xn):
            return my[:, None] - 0.05 * sm[:, None] * xn ** 2

        def w(xn):
            return torch.sqrt((1 - xn ** 2).clamp(min=0))

        def put(sl, xn, off):
            xn = xn[None].expand(B, -1)
            out[:, sl, 0] = mx[:, None] + xn * mw[:, None]
            out[:, sl, 1] = mid(xn) + off(xn)

        up_o = lambda xn: -(0.5 * op[:, None] + 0.8 * th[:, None]) * w(xn)
        lo_o = lambda xn: (0.5 * op[:, None] + th[:, None]) * w(xn)
        up_i = lambda xn: -0.5 * op[:, None] * w(xn)
        lo_i = lambda xn: 0.5 * op[:, None] * w(xn)
        put(slice(48, 49), torch.tensor([-1.0]), up_o)
        put(slice(49, 54), torch.tensor([-0.66, -0.33, 0.0, 0.33, 0.66]), up_o)
        put(slice(54, 55), torch.tensor([1.0]), up_o)
        put(slice(55, 60), torch.tensor([0.66, 0.33, 0.0, -0.33, -0.66]), lo_o)
        put(slice(60, 61), torch.tensor([-0.85]), lambda xn: 0 * xn)
        put(slice(61, 64), torch.tensor([-0.4, 0.0, 0.4]), up_i)
        put(slice(64, 65), torch.tensor([0.85]), lambda xn: 0 * xn)
        put(slice(65, 68), torch.tensor([0.4, 0.0, -0.4]), lo_i)
        return out

    def _pose(self, q):
        S = self.size
        th = torch.deg2rad(q["roll"])
        scale = q["scale"] * (S / 2)
        c = (S - 1) / 2
        return torch.cos(th), torch.sin(th), scale, c + q["tx"], c + q["ty"]

    def render_batch(self, indices, chunk=64):
        """Render the given indices at once (in chunks of `chunk`); returns a dict of stacked tensors."""
        chunk = _as_int("chunk", chunk, min_value=1)
        if isinstance(indices, torch.Tensor):
            if indices.dim() != 1:
                raise ValueError(f"indices must be one-dimensional, got shape {tuple(indices.shape)}")
            indices = list(indices.unbind()) if indices.numel() else []
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"indices must be a sequence of ints, got {type(indices).__name__}")
        indices = [self._index(i, "indices") for i in indices]
        if not indices:
            raise ValueError("indices must not be empty")
        parts = [self._render_chunk(indices[s:s + chunk]) for s in range(0, len(indices), chunk)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _render_chunk(self, indices):
        q = self._params(indices)
        B, S = len(indices), self.size
        cos_t, sin_t, sc, ox, oy = self._pose(q)
        cb, sb, scb, oxb, oyb = _b(cos_t), _b(sin_t), _b(sc), _b(ox), _b(oy)

        def coords(xs, ys):          # pixel coordinates (B, 1, w), (B, h, 1) -> canonical u, v
            X, Y = xs - oxb, ys - oyb
            return (cb * X + sb * Y) / scb, (-sb * X + cb * Y) / scb

        ar = torch.arange(S, dtype=torch.float32)
        u, v = coords(ar.view(1, 1, S), ar.view(1, S, 1))
        pix = _b(1.0 / sc)
        yaw = _b(q["yaw"])
        g = {k: _b(q[k]) for k in ("face_ax", "face_ay", "eye_sep", "eye_y", "eye_rx", "eye_ry",
                                   "brow_thick", "brow_angle", "brow_gap", "nose_len", "nose_w",
                                   "mouth_w", "lip_thick", "mouth_y", "smile", "open", "hairline")}
        ax, ay = g["face_ax"], g["face_ay"]
        style = q["style"].long()
        skin = q["skin"]

        # 1. background: colour * (1 + low-frequency texture + stripes)
        tex = F.interpolate(q["tex"][:, None], size=(S, S), mode="bicubic", align_corners=True)[:, 0]
        xn = ar.view(1, 1, S) / (S - 1) * 2 - 1
        yn = ar.view(1, S, 1) / (S - 1) * 2 - 1
        stripes = torch.sin(_b(q["stripe_freq"]) * S * 0.5 * (xn * _b(torch.cos(q["stripe_ang"]))
                                                              + yn * _b(torch.sin(q["stripe_ang"])))
                            + _b(q["stripe_phase"]))
        mod = 1 + _b(q["tex_amp"]) * tex + _b(q["stripe_amp"]) * stripes
        img = (q["bg"][:, :, None, None] * mod[:, None]).clamp_(0, 1)

        # 2. shirt / shoulders and neck
        sd, _ = _ellipse_sd(u, v, 0.0, ay + 0.75, torch.full_like(ax, 0.95), torch.full_like(ax, 0.5))
        _comp(img, _cov(sd, pix), q["shirt"])
        neck = torch.maximum((u.abs() - 0.45 * ax), (-v))
        _comp(img, _cov(neck, pix), skin * 0.85)

        # 3. hair (back): long style -> big ellipse down to the shoulders; short/fringe -> rim
        long_ = _b((style == 1).float())
        rim = _b(((style == 0) | (style == 2)).float())
        sd_l, _ = _ellipse_sd(u, v, 0.0, 0.08, ax * 1.32, ay * 1.12)
        sd_l = torch.maximum(sd_l, v - 0.55)
        sd_r, _ = _ellipse_sd(u, v, 0.0, -0.06, ax * 1.1, ay * 1.0)
        sd_r = torch.maximum(sd_r, v - 0.0)
        _comp(img, _cov(sd_l, pix) * long_ + _cov(sd_r, pix) * rim, q["hair"])

        # 4. face (with radial shading)
        sd_f, r_f = _ellipse_sd(u, v, 0.0, 0.0, ax, ay)
        shade = (1 - 0.18 * r_f.clamp(max=1) ** 3)
        m_face = _cov(sd_f, pix)
        img.add_((skin[:, :, None, None] * shade[:, None] - img) * m_face[:, None])

        # Small facial parts are drawn in per-image windows around them (same pixel coordinates,
        # so the result equals a full-frame render: coverage is exactly 0 outside the window).
        img_flat = img.view(B, 3, S * S)
        warange = None

        def window(cu, cv, radius):
            nonlocal warange
            px = ox + sc * (cos_t * cu - sin_t * cv)
            py = oy + sc * (sin_t * cu + cos_t * cv)
            w = min(S, int(math.ceil(2 * float((radius * sc).max()))) + 4)
            x0 = torch.clamp(torch.round(px - w / 2), 0, S - w).long()
            y0 = torch.clamp(torch.round(py - w / 2), 0, S - w).long()
            aw = torch.arange(w)
            xi, yi = x0[:, None] + aw[None], y0[:, None] + aw[None]          # (B, w)
            idx = (yi[:, :, None] * S + xi[:, None, :]).view(B, 1, w * w).expand(B, 3, w * w)
            uw, vw = coords(xi.float()[:, None, :], yi.float()[:, :, None])
            patch = img_flat.gather(2, idx).view(B, 3, w, w)
            return patch, uw, vw, idx

        def put(patch, idx):
            img_flat.scatter_(2, idx, patch.reshape(B, 3, -1))

        closed = _b(q["closed"])
        open_f = 1 - 0.92 * closed
        gl = _b(q["glasses"])
        any_glasses = bool(q["glasses"].any())
        for side in (-1, 1):
            # 5-6. eye, brow (and glasses rim) of one side
            ex = side * g["eye_sep"] + 0.55 * yaw
            ey = g["eye_y"]
            rad = torch.maximum(0.05 + 1.55 * q["eye_rx"],
                                torch.hypot(0.05 * q["yaw"].abs(), q["brow_gap"] - 0.05)
                                + 1.5 * q["eye_rx"] + q["brow_thick"]) + 2.0 / sc
            P, uu, vv, idx = window(side * q["eye_sep"] + 0.55 * q["yaw"], q["eye_y"] - 0.05, rad)
            ry = g["eye_ry"] * open_f
            sd_o, _ = _ellipse_sd(uu, vv, ex, ey, g["eye_rx"] + 0.6 * pix, ry + 0.6 * pix)
            _comp(P, _cov(sd_o, pix) * 0.8, skin * 0.35)
            sd_w, _ = _ellipse_sd(uu, vv, ex, ey, g["eye_rx"], ry)
            m_w = _cov(sd_w, pix) * (1 - closed)
            _comp(P, m_w, torch.tensor([[0.95, 0.95, 0.93]]).expand(B, 3))
            ir = g["eye_ry"] * 0.95
            sd_i = torch.sqrt((uu - ex - 0.25 * yaw) ** 2 + (vv - ey) ** 2) - ir
            _comp(P, _cov(sd_i, pix) * m_w, q["iris"])
            sd_p = sd_i + 0.55 * ir
            _comp(P, _cov(sd_p, pix) * m_w, torch.tensor([[0.03, 0.03, 0.03]]).expand(B, 3))
            cx = side * g["eye_sep"] + 0.5 * yaw
            cy = g["eye_y"] - g["brow_gap"]
            ang = side * g["brow_angle"]
            ca, sa = torch.cos(ang), torch.sin(ang)
            du, dv = uu - cx, vv - cy
            pu, pv = ca * du + sa * dv, -sa * du + ca * dv
            L = 1.4 * g["eye_rx"] * 1.05
            sd_b, _ = _ellipse_sd(pu, pv, 0.0, 0.0, L, g["brow_thick"])
            _comp(P, _cov(sd_b, pix), q["hair"] * 0.8 + skin * 0.1)
            if any_glasses:   # clear glasses: faint tint and thin rim
                sd_g, _ = _ellipse_sd(uu, vv, ex, ey, 1.55 * g["eye_rx"], 1.25 * g["eye_rx"])
                _comp(P, _cov(sd_g, pix) * gl * 0.12, torch.tensor([[0.8, 0.9, 1.0]]).expand(B, 3))
                _comp(P, _cov(sd_g.abs() - 0.6 * pix, pix) * gl, q["glasses_col"])
            put(P, idx)

        # 7. nose: bridge shadow, alae, nostrils (+ the glasses bridge)
        tip_y = g["eye_y"] + g["nose_len"]
        nx = 0.85 * yaw
        rad = torch.hypot(q["nose_w"] + 0.3 * q["yaw"].abs(), 0.5 * q["nose_len"] + 0.75 * q["nose_w"]) + 2.0 / sc
        if any_glasses:
            rad = torch.maximum(rad, torch.hypot(q["eye_sep"] - 1.0 * q["eye_rx"] + 0.3 * q["yaw"].abs(),
                                                 0.5 * q["nose_len"] + 0.3 * q["eye_rx"]) + 2.0 / sc)
        P, uu, vv, idx = window(0.85 * q["yaw"], q["eye_y"] + 0.5 * q["nose_len"], rad)
        sd_br = torch.maximum((uu - (0.6 * yaw + 0.4 * yaw * (vv - g["eye_y"]) / g["nose_len"])
                               - 0.35 * g["nose_w"]).abs() - 0.012,
                              (vv - (g["eye_y"] + g["nose_len"] * 0.5)).abs() - g["nose_len"] * 0.45)
        _comp(P, _cov(sd_br, pix) * 0.5, skin * 0.7)
        sd_al, _ = _ellipse_sd(uu, vv, nx, tip_y + 0.2 * g["nose_w"], g["nose_w"], 0.5 * g["nose_w"])
        _comp(P, _cov(sd_al, pix) * 0.6, skin * 0.8)
        for side in (-1, 1):
            sd_n, _ = _ellipse_sd(uu, vv, nx + side * 0.45 * g["nose_w"], tip_y + 0.35 * g["nose_w"],
                                  0.22 * g["nose_w"], 0.13 * g["nose_w"])
            _comp(P, _cov(sd_n, pix), skin * 0.3)
        if any_glasses:
            inner = g["eye_sep"] - 1.55 * g["eye_rx"]
            sd_gb = torch.maximum((uu - 0.55 * yaw).abs() - inner,
                                  (vv - g["eye_y"] + 0.3 * g["eye_rx"]).abs() - 0.6 * pix)
            _comp(P, _cov(sd_gb, pix) * gl, q["glasses_col"])
        put(P, idx)

        # 8. mouth: lips (smile curvature), open -> dark interior with teeth, closed -> lip line
        rad = torch.hypot(q["mouth_w"], 0.06 + 0.5 * q["open"] + q["lip_thick"]) + 2.0 / sc
        P, uu, vv, idx = window(0.6 * q["yaw"], q["mouth_y"], rad)
        mx, mw, my = 0.6 * yaw, g["mouth_w"], g["mouth_y"]
        xm = (uu - mx) / mw
        wq = torch.sqrt((1 - xm ** 2).clamp(min=0))
        d = vv - (my - 0.05 * g["smile"] * xm ** 2)
        ho = 0.5 * g["open"] * wq
        outside_x = (xm.abs() - 1) * mw
        sd_lip = torch.maximum(torch.maximum(-(d + ho + 0.8 * g["lip_thick"] * wq), d - (ho + g["lip_thick"] * wq)),
                               outside_x)
        _comp(P, _cov(sd_lip, pix), q["lip"])
        is_open = (_b(q["open"]) > 0).float()
        if bool(q["open"].gt(0).any()):
            sd_in = torch.maximum(d.abs() - ho, outside_x)
            _comp(P, _cov(sd_in, pix) * is_open, torch.tensor([[0.22, 0.05, 0.05]]).expand(B, 3))
            sd_teeth = torch.maximum(sd_in, d + ho - 0.4 * 2 * ho)
            _comp(P, _cov(sd_teeth, pix) * is_open, torch.tensor([[0.93, 0.92, 0.88]]).expand(B, 3))
        sd_line = torch.maximum(d.abs() - 0.35 * pix, outside_x)
        _comp(P, _cov(sd_line, pix) * (1 - is_open) * 0.7, q["lip"] * 0.5)
        put(P, idx)

        # 9. hair (front): cap above the hairline (style-dependent), fringe lower and straighter
        hl = torch.where(_b(style == 2), -0.32 * ay + 0.04 * (u / ax) ** 2,
                         -g["hairline"] * ay + 0.12 * (u / ax) ** 2 + 0.05 * (u / ax).abs())
        sd_cap, _ = _ellipse_sd(u, v, 0.0, -0.02, ax * 1.07, ay * 1.04)
        sd_front = torch.maximum(sd_cap, v - hl)
        has_hair = _b((style != 3).float())
        _comp(img, _cov(sd_front, pix) * has_hair, q["hair"])

        # 11. hat: crown + brim
        if bool(q["hat"].any()):
            hat = _b(q["hat"])
            brim_y = -0.62 * ay
            sd_crown, _ = _ellipse_sd(u, v, 0.0, brim_y, ax * 0.98, ay * 0.62)
            sd_crown = torch.maximum(sd_crown, v - brim_y)
            sd_brim, _ = _ellipse_sd(u, v, 0.0, brim_y, ax * 1.3, 0.06 + 0 * ax)
            m_hat = torch.maximum(_cov(sd_crown, pix), _cov(sd_brim, pix)) * hat
            _comp(img, m_hat, q["hat_col"])

        # 12. lighting, blur, noise
        la = q["light_angle"]
        xg = ar.view(1, 1, S) / (S - 1) * 2 - 1
        yg = ar.view(1, S, 1) / (S - 1) * 2 - 1
        light = _b(q["brightness"]) * (1 + _b(q["light_strength"]) * (xg * _b(torch.cos(la)) + yg * _b(torch.sin(la))))
        img.mul_(light[:, None])
        img = _blur(img, q["blur"])
        img.add_(q["noise"] * _b(q["noise_sigma"])[:, None])
        img.clamp_(0, 1)

        # landmarks: canonical -> pixels by the same transform
        lc = self._landmarks_canonical(q)
        lx = ox[:, None] + sc[:, None] * (cos_t[:, None] * lc[..., 0] - sin_t[:, None] * lc[..., 1])
        ly = oy[:, None] + sc[:, None] * (sin_t[:, None] * lc[..., 0] + cos_t[:, None] * lc[..., 1])
        lm68 = torch.stack([lx, ly], -1)

        if self.occlusion is not None and self.occlusion != "none":
            if self.occlusion == "crop":
                side = max(1, int(round(_occ.CROP_FRACTION * S)))
                tops = [int(cu[0] * (S - side + 1)) for cu in q["crop_uv"].tolist()]
                lefts = [int(cu[1] * (S - side + 1)) for cu in q["crop_uv"].tolist()]
                img, lm68 = _occ.crop_at(img, lm68, tops, lefts)
            else:
                img = _occ.occlude(img, lm68, self.occlusion)

        if self.channels == 1:
            img = (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3])
        lm5 = torch.stack([lm68[:, list(ix)].mean(1) for ix in LANDMARKS5_FROM_68], 1)
        pose = torch.stack([q["yaw"], q["roll"], q["scale"], q["tx"], q["ty"]], 1)
        ids = torch.tensor([self.identity_of(i) for i in indices], dtype=torch.long)
        return {"image": img.contiguous().float(), "identity": ids, "landmarks68": lm68.float(),
                "landmarks5": lm5.float(), "attributes": q["attributes"].float(), "pose": pose,
                "background": q["bg"], "index": torch.tensor(indices, dtype=torch.long)}


def _blur(img, sigma):
    """Per-image separable Gaussian blur (radius 2); sigma 0 -> identity."""
    B, C, H, W = img.shape
    if not bool((sigma > 0).any()):
        return img
    k = torch.arange(-2, 3, dtype=torch.float32)
    s = sigma.clamp(min=1e-3).view(-1, 1)
    ker = torch.exp(-0.5 * (k[None] / s) ** 2)
    ker = torch.where((sigma > 0).view(-1, 1), ker, (k[None] == 0).float())
    ker = ker / ker.sum(1, keepdim=True)
    ker = ker.repeat_interleave(C, 0)                      # (B*C, 5)
    x = img.reshape(1, B * C, H, W)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), ker.view(B * C, 1, 1, 5), groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), ker.view(B * C, 1, 5, 1), groups=B * C)
    return x.view(B, C, H, W)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def export_image_folder(dataset, root, batch_size=256):
    """Write every image of a SynthFaces data set as root/<identity>/<index>.png; return the count."""
    from PIL import Image
    os.makedirs(root, exist_ok=True)
    n = len(dataset)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        if hasattr(dataset, "render_batch"):
            out = dataset.render_batch(idx)
            items = [(int(out["identity"][j]), out["image"][j]) for j in range(len(idx))]
        else:
            items = [(int(it["identity"]), it["image"]) for it in (dataset[i] for i in idx)]
        for i, (ident, im) in zip(idx, items):
            d = os.path.join(root, str(ident))
            os.makedirs(d, exist_ok=True)
            arr = (im.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(os.path.join(d, f"{i}.png"))
    return n

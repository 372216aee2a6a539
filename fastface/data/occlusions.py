"""Occlusions of the OOD face-identification protocols, placed from 68 facial landmarks.

``occlude(images, landmarks68, kind)`` with kind in {"none", "mask", "sunglasses", "crop"}. Only
the landmarks are used (iBUG-68 layout, pixel coordinates x, y), so this works on any aligned face,
real photographs included, not just SynthFaces.
"""
import math

import torch
import torch.nn.functional as F

KINDS = ("none", "mask", "sunglasses", "crop")
CROP_FRACTION = 0.7

_MASK_RGB = (0.70, 0.84, 0.93)     # light-blue surgical mask
_MASK_PLEAT_RGB = (0.60, 0.74, 0.85)
_SUNGLASSES_RGB = (0.05, 0.05, 0.07)


def _check(images, landmarks68, generator):
    """Validate occlude's inputs; return the landmarks as a float tensor of the images' dtype."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = type(images).__name__ + (f" {images.dtype}" if isinstance(images, torch.Tensor) else "")
        raise TypeError(f"images must be a floating torch.Tensor of shape (B, C, H, W), got {got}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images must be at least 1x1 pixels, got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if not isinstance(landmarks68, torch.Tensor):
        raise TypeError(f"landmarks68 must be a torch.Tensor of shape (B, 68, 2), got {type(landmarks68).__name__}")
    if landmarks68.dtype.is_complex or landmarks68.dtype == torch.bool:
        raise TypeError(f"landmarks68 must hold real pixel coordinates, got {landmarks68.dtype}")
    if landmarks68.dim() != 3 or tuple(landmarks68.shape[1:]) != (68, 2) or landmarks68.shape[0] != images.shape[0]:
        raise ValueError(f"landmarks68 must have shape ({images.shape[0]}, 68, 2) to match images "
                         f"{tuple(images.shape)}, got shape {tuple(landmarks68.shape)}")
    lm = landmarks68.to(images.dtype)
    bad = ~torch.isfinite(lm).flatten(1).all(1)                      # (B,)
    if bool(bad.any()):   # a NaN polygon draws nothing: refuse instead of returning the face unoccluded
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"landmarks68 must be finite, got NaN or inf in {len(rows)} face(s), "
                         f"first at index {rows[0]}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return lm


def _colour(rgb, C, ref):
    c = torch.tensor(rgb, dtype=ref.dtype, device=ref.device)
    if C == 1:
        c = (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]).reshape(1)
    return c.view(1, C, 1, 1)


def _grid(images):
    B, _, H, W = images.shape
    ys = torch.arange(H, dtype=images.dtype, device=images.device).view(1, H, 1)
    xs = torch.arange(W, dtype=images.dtype, device=images.device).view(1, 1, W)
    return xs, ys


def _polygon_mask(xs, ys, poly):
    """Even-odd point-in-polygon test for (B, N, 2) polygons over the pixel grid -> (B, H, W) bool."""
    inside = None
    N = poly.shape[1]
    for k in range(N):
        x0, y0 = poly[:, k, 0].view(-1, 1, 1), poly[:, k, 1].view(-1, 1, 1)
        x1, y1 = poly[:, (k + 1) % N, 0].view(-1, 1, 1), poly[:, (k + 1) % N, 1].view(-1, 1, 1)
        cond = (y0 > ys) != (y1 > ys)
        denom = torch.where((y1 - y0).abs() < 1e-12, torch.full_like(y1, 1e-12), y1 - y0)
        xint = x0 + (ys - y0) * (x1 - x0) / denom
        cross = cond & (xs < xint)
        inside = cross if inside is None else inside ^ cross
    return inside


def mask_region(images, landmarks68):
    """(B, H, W) bool region of the surgical mask: jaw points 2..14 (pushed a little outwards and
    below the chin) closed through nose point 29."""
    lm = landmarks68.to(images.dtype)
    jaw = lm[:, 2:15]
    nose = lm[:, 29:30]
    centre = lm[:, 27:36].mean(1, keepdim=True)       # nose centre: pushes jaw points outwards/down
    jaw = centre + (jaw - centre) * 1.08
    face_h = (lm[:, 8, 1] - lm[:, 27, 1]).abs().view(-1, 1)
    jaw = jaw.clone()
    jaw[:, :, 1] = jaw[:, :, 1] + 0.04 * face_h
    poly = torch.cat([jaw, nose], dim=1)
    xs, ys = _grid(images)
    return _polygon_mask(xs, ys, poly)


def sunglasses_region(images, landmarks68):
    """(B, H, W) bool region: a dark ellipse over each eye (1.6x the eye-box width, at least 1.1x its
    half-width tall so closed eyes are covered too) plus a bridge."""
    lm = landmarks68.to(images.dtype)
    xs, ys = _grid(images)
    region = torch.zeros(images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool, device=images.device)
    eyes = [lm[:, 36:42], lm[:, 42:48]]
    widths = []
    for eye in eyes:
        lo, hi = eye.min(1).values, eye.max(1).values
        c = (lo + hi) / 2
        hw = (hi[:, 0] - lo[:, 0]) / 2
        rx = (1.6 * hw).clamp(min=1.0)                       # 1.6x the half-width
        ry = torch.maximum(1.6 * (hi[:, 1] - lo[:, 1]) / 2, 1.1 * hw).clamp(min=1.0)
        widths.append(ry)
        # ellipse aligned with the eye axis (outer -> inner corner), so it follows head roll
        d = eye[:, 3] - eye[:, 0]
        ang = torch.atan2(d[:, 1], d[:, 0])
        ca, sa = torch.cos(ang).view(-1, 1, 1), torch.sin(ang).view(-1, 1, 1)
        dx, dy = xs - c[:, 0].view(-1, 1, 1), ys - c[:, 1].view(-1, 1, 1)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        region |= (u / rx.view(-1, 1, 1)) ** 2 + (v / ry.view(-1, 1, 1)) ** 2 <= 1
    # bridge: thick segment between the inner corners 39 and 42
    a, b = lm[:, 39], lm[:, 42]
    ab = b - a
    L2 = (ab ** 2).sum(-1).clamp(min=1e-9).view(-1, 1, 1)
    px, py = xs - a[:, 0].view(-1, 1, 1), ys - a[:, 1].view(-1, 1, 1)
    t = ((px * ab[:, 0].view(-1, 1, 1) + py * ab[:, 1].view(-1, 1, 1)) / L2).clamp(0, 1)
    qx, qy = px - t * ab[:, 0].view(-1, 1, 1), py - t * ab[:, 1].view(-1, 1, 1)
    thick = (0.25 * torch.minimum(widths[0], widths[1])).clamp(min=0.75).view(-1, 1, 1)
    region |= (qx ** 2 + qy ** 2) <= thick ** 2
    return region


def crop_at(images, landmarks68, tops, lefts, fraction=CROP_FRACTION):
    """Crop each image to a square of side round(fraction*H) at (top, left), resize back (bilinear).
    Returns (images, landmarks68) with the landmarks mapped through the same crop+resize."""
    B, C, H, W = images.shape
    sh, sw = max(1, int(round(fraction * H))), max(1, int(round(fraction * W)))
    out = torch.empty_like(images)
    lm = landmarks68.to(images.dtype).clone()
    for i in range(B):
        t, l = int(tops[i]), int(lefts[i])
        patch = images[i:i + 1, :, t:t + sh, l:l + sw]
        out[i] = F.interpolate(patch, size=(H, W), mode="bilinear", align_corners=False)[0]
        # pixel-centre convention: x_out + 0.5 = (x_in - l + 0.5) * W / sw
        lm[i, :, 0] = (lm[i, :, 0] - l + 0.5) * (W / sw) - 0.5
        lm[i, :, 1] = (lm[i, :, 1] - t + 0.5) * (H / sh) - 0.5
    return out.clamp_(0, 1), lm


def occlude(images, landmarks68, kind, generator=None, return_landmarks=False):
    """Occlude a batch of aligned faces.

    images: (B, C, H, W) float in [0, 1], C in {1, 3}; landmarks68: (B, 68, 2) pixel (x, y).
    kind: "none" | "mask" | "sunglasses" | "crop". generator: a torch.Generator for "crop"
    (random position of the 70 % crop; seeded -> deterministic). Returns a new tensor (and, with
    return_landmarks=True, the landmarks in the occluded image's coordinates).
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
    lm = _check(images, landmarks68, generator)
    B, C, H, W = images.shape
    if kind == "none":
        out = images.clone()
    elif kind == "mask":
        region = mask_region(images, lm)
        ys = torch.arange(H, dtype=images.dtype, device=images.device).view(1, H, 1)
        # horizontal pleats: three darker lines
        pleat = (torch.sin(ys * (2 * math.pi / max(4.0, H / 10.0))) > 0.85).expand(B, H, W)
        colour = torch.where(pleat[:, None], _colour(_MASK_PLEAT_RGB, C, images), _colour(_MASK_RGB, C, images))
        out = torch.where(region[:, None], colour.expand(B, C, H, W), images)
    elif kind == "sunglasses":
        region = sunglasses_region(images, lm)
        out = torch.where(region[:, None], _colour(_SUNGLASSES_RGB, C, images).expand(B, C, H, W), images)
    else:  # crop
        sh, sw = max(1, int(round(CROP_FRACTION * H))), max(1, int(round(CROP_FRACTION * W)))
        tops = torch.randint(0, H - sh + 1, (B,), generator=generator)
        lefts = torch.randint(0, W - sw + 1, (B,), generator=generator)
        out, lm = crop_at(images, lm, tops.tolist(), lefts.tolist())
    return (out, lm) if return_landmarks else out

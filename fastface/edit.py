"""D²AE face editing (paper section 4.3, Figs. 6, 9, 10): attribute editing along linear-SVM directions,
identity swap and identity / attribute interpolation, all in the feature space of a trained D²AE.

- fit_directions: one LinearSVC per attribute, on f_P for identity-irrelevant attributes and on f_T for
  identity-related ones; w_n is its unit normal in feature space.
- edit_attributes: f* = f + sum_n alpha_n sigma_n w_n, with sigma_n = sqrt(sum_i w_ni^2 sigma_i^2) the learned
  running standard deviation (statistical augmentation, Eq. 5) along w_n: alpha is in units of that sigma and
  bounded by alpha_max (3 = the 99.7 % interval of the learned Gaussian), so the edit stays in the valid range.
- swap_identity: decode(f_T of B, f_P of A). interpolation_grid: f_T from A to B down the rows, f_P from A to
  B along the columns (Fig. 9). attribute_sweep: one attribute at several alphas (Fig. 10 b).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AttributeDirections:
    """Unit SVM directions (A, D) per attribute, the branch each lives on ("t" or "p"), and the SVM's
    decision function in raw feature space (score(f) = coef . f + intercept)."""
    names: list
    branches: list                    # "t" (identity-related) or "p" (identity-irrelevant) per attribute
    directions: torch.Tensor          # (A, D) unit rows
    coef: torch.Tensor                # (A, D)
    intercept: torch.Tensor           # (A,)

    def index(self, name):
        if name not in self.names:
            raise ValueError(f"unknown attribute {name!r}; known attributes: {', '.join(self.names)}")
        return self.names.index(name)

    def score(self, name, f_t, f_p):  # f_t, f_p (B, D)
        """(B,) the SVM decision value of attribute `name` (positive = has it)."""
        a = self.index(name)
        f = f_t if self.branches[a] == "t" else f_p
        return f.float() @ self.coef[a].to(f.device) + float(self.intercept[a])

    def save(self, path):
        np.savez(path, names=np.array(self.names), branches=np.array(self.branches),
                 directions=self.directions.numpy(), coef=self.coef.numpy(), intercept=self.intercept.numpy())

    @classmethod
    def load(cls, path):
        z = np.load(path, allow_pickle=False)
        return cls([str(n) for n in z["names"]], [str(b) for b in z["branches"]], torch.from_numpy(z["directions"]),
                   torch.from_numpy(z["coef"]), torch.from_numpy(z["intercept"]))


def fit_directions(model, images, attributes, names, identity_related, C=0.1, seed=0):
    """AttributeDirections of a D²AE from labelled images (N, C, S, S) in [0, 1] and attributes (N, A) in {0, 1}:
    a LinearSVC per attribute on f_T (identity_related[a]) or f_P (otherwise), on features divided by the
    learned sigma; attributes with one class only are left out."""
    try:
        from sklearn.svm import LinearSVC
    except ImportError:
        raise ImportError("D²AE attribute directions need scikit-learn: pip install scikit-learn") from None

    from .eval.d2ae import extract_features
    if not model.cfg.p_branch:
        raise ValueError("editing needs a D²AE with a P branch and a decoder (this one is the baseline)")
    attributes = torch.as_tensor(attributes)
    if (attributes.dim() != 2 or attributes.shape != (images.shape[0], len(names))
            or len(identity_related) != len(names)):
        raise ValueError(f"attributes must be (N={images.shape[0]}, A={len(names)}) with one identity_related flag "
                         f"per name, got {tuple(attributes.shape)} and {len(identity_related)} flags")
    feats = extract_features(model, images)
    sigma = {"t": model.sigma_t.float().cpu(), "p": model.sigma_p.float().cpu()}
    kept, branches, dirs, coefs, icpts = [], [], [], [], []
    for a, name in enumerate(names):
        y = attributes[:, a].numpy() > 0.5
        if y.all() or not y.any():
            continue
        b = "t" if identity_related[a] else "p"
        x = (feats[b] / sigma[b].clamp_min(1e-8)).double().numpy()
        svm = LinearSVC(C=C, max_iter=5000, random_state=seed).fit(x, y)
        coef = torch.from_numpy(svm.coef_[0]).float() / sigma[b].clamp_min(1e-8)     # raw feature space
        kept.append(name)
        branches.append(b)
        coefs.append(coef)
        dirs.append(coef / coef.norm().clamp_min(1e-12))
        icpts.append(float(svm.intercept_[0]))
    if not kept:
        raise ValueError("no attribute has both classes among the images: nothing to fit")
    return AttributeDirections(kept, branches, torch.stack(dirs), torch.stack(coefs), torch.tensor(icpts))


def check_edits(edits, directions, alpha_max):
    """{name: alpha} -> [(index, alpha)]; ValueError for unknown names, non-finite or out-of-range alphas."""
    if not isinstance(edits, dict) or not edits:
        raise TypeError(f"edits must be a non-empty dict {{attribute: alpha}}, got {edits!r}")
    if not isinstance(alpha_max, (int, float)) or isinstance(alpha_max, bool) or not alpha_max > 0:
        raise ValueError(f"alpha_max must be a number > 0, got {alpha_max!r}")
    out = []
    for name, alpha in edits.items():
        a = directions.index(name)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"alpha of {name!r} must be a finite number, got {alpha!r}")
        if abs(alpha) > alpha_max:
            raise ValueError(f"alpha of {name!r} must be in [-{alpha_max}, {alpha_max}] (units of the learned "
                             f"sigma along its direction), got {alpha}")
        out.append((a, float(alpha)))
    return out


def direction_sigma(model, directions, index):
    """The learned standard deviation along direction `index`: sqrt(sum_i w_i^2 sigma_i^2)."""
    sigma = model.sigma_t if directions.branches[index] == "t" else model.sigma_p
    w = directions.directions[index].to(sigma.device)
    return float((w.pow(2) * sigma.float().pow(2)).sum().sqrt())


def edit_features(model, f_t, f_p, directions, edits, alpha_max=3.0):  # f_t, f_p (B, D)
    """(f_T*, f_P*): the features moved by sum_n alpha_n sigma_n w_n on each attribute's branch."""
    f_t, f_p = f_t.clone(), f_p.clone()
    for a, alpha in check_edits(edits, directions, alpha_max):
        step = alpha * direction_sigma(model, directions, a) * directions.directions[a].to(f_t.device, f_t.dtype)
        if directions.branches[a] == "t":
            f_t += step
        else:
            f_p += step
    return f_t, f_p


@torch.no_grad()
def edit_attributes(model, images, directions, edits, alpha_max=3.0):  # images (B, C, S, S)
    """Images (B, C, S, S) decoded from the features of images edited by edits {attribute: alpha} (several
    at once); alpha in units of the learned sigma along the attribute's direction, |alpha| <= alpha_max."""
    check_edits(edits, directions, alpha_max)
    f_t, f_p = model.encode(images)
    return model.decode(*edit_features(model, f_t, f_p, directions, edits, alpha_max))


@torch.no_grad()
def swap_identity(model, images_a, images_b):  # (B, C, S, S) each
    """Images (B, C, S, S) with the identity (f_T) of images_b and everything else (f_P) of images_a."""
    if images_a.shape != images_b.shape:
        raise ValueError(f"images_a and images_b must have the same shape, got {tuple(images_a.shape)} and "
                         f"{tuple(images_b.shape)}")
    f_ta, f_pa = model.encode(images_a)
    f_tb, _ = model.encode(images_b)
    return model.decode(f_tb, f_pa)


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")


@torch.no_grad()
def interpolation_grid(model, image_a, image_b, steps=5):  # image_a, image_b (C, S, S)
    """(steps * steps, C, S, S), row-major: row r takes f_T = (1 - r/(steps-1)) f_T^A + r/(steps-1) f_T^B,
    column c the same for f_P (Fig. 9): A top-left, B bottom-right, A's identity with B's rest top-right."""
    _check_steps(steps)
    for name, im in (("image_a", image_a), ("image_b", image_b)):
        if not isinstance(im, torch.Tensor) or im.dim() != 3:
            raise ValueError(f"{name} must be one image (C, S, S), got "
                             f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
    if image_a.shape != image_b.shape:
        raise ValueError(f"image_a and image_b must have the same shape, got {tuple(image_a.shape)} and "
                         f"{tuple(image_b.shape)}")
    f_t, f_p = model.encode(torch.stack([image_a, image_b]))
    beta = torch.linspace(0, 1, steps, device=f_t.device, dtype=f_t.dtype)[:, None]
    ts = (1 - beta) * f_t[0] + beta * f_t[1]                       # (steps, D)
    ps = (1 - beta) * f_p[0] + beta * f_p[1]
    return model.decode(ts.repeat_interleave(steps, 0), ps.repeat(steps, 1))


@torch.no_grad()
def attribute_sweep(model, images, directions, name, alphas, alpha_max=3.0):  # images (B, C, S, S)
    """(B * len(alphas), C, S, S), row-major: each image edited along one attribute at each alpha (Fig. 10 b)."""
    rows = [edit_attributes(model, images, directions, {name: float(a)}, alpha_max) for a in alphas]
    return torch.stack(rows, 1).flatten(0, 1)


__all__ = ["AttributeDirections", "fit_directions", "edit_features", "edit_attributes", "swap_identity",
           "interpolation_grid", "attribute_sweep", "direction_sigma", "check_edits"]


# ------------------------------------------------------------------------------------- `fastface edit`
def parse_edits(items):
    """["name=alpha", ...] (the CLI's --attribute) -> {name: alpha}."""
    out = {}
    for item in items or ():
        name, sep, text = str(item).partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(text)
        except ValueError:
            raise ValueError(f"--attribute must be NAME=ALPHA (e.g. smiling=2.5), got {item!r}") from None
    return out


def load_editable(path, device="cpu"):
    """The eval-mode D²AE in path; ValueError unless it is a D²AE with a P branch and a decoder."""
    from .models.serialization import build_module, read_model
    saved = read_model(path)
    if saved.kind != "d2ae":
        raise ValueError(f"model must be a `fastface train d2ae` model.pt, got a model of kind {saved.kind!r}")
    model = build_module(saved).to(device)
    if not model.cfg.decoder:
        raise ValueError(f"{path!r} is a D²AE baseline (no P branch, no decoder): it cannot edit faces")
    return model


def run_edit(model_path, out_dir, images=None, edits=None, n=8, alpha_max=3.0, fit_identities=100, fit_images=5,
             steps=5, seed=0, device="cpu"):
    """The `fastface edit` job: fit attribute directions on SynthFaces rendered at the model's size, then write
    to out_dir: directions.npz; edits.png (rows: faces, reconstructions, all edits at once, then each edit
    alone) and edit.json (each attribute's SVM score before / after, on the re-encoded edits) when edits are
    given; swap.png (rows: A, B, A with B's identity); interpolation.png (Fig. 9 grid between the first two
    faces). images: a folder DIR/<identity>/<image> (default: n held-out SynthFaces faces). Returns a dict."""
    import json
    import os

    from .data import SynthFaces
    from .train.d2ae import render_synthfaces
    from .viz.grid import save_image_grid
    model = load_editable(model_path, device)
    cfg = model.cfg
    edits = dict(edits or {})
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (faces to edit), got {n!r}")
    fit = render_synthfaces(fit_identities, fit_images, cfg.image_size, cfg.channels, seed=seed)
    directions = fit_directions(model, fit["images"].to(device), fit["attributes"], SynthFaces.ATTRIBUTES,
                                SynthFaces.IDENTITY_RELATED, seed=seed)
    if edits:
        check_edits(edits, directions, alpha_max)                  # names and alphas, before any work
    if images is None:
        faces = render_synthfaces(n, 1, cfg.image_size, cfg.channels, seed=seed + 30011)["images"]
    else:
        from .data import ImageFolder
        faces = ImageFolder(images, size=cfg.image_size, channels=cfg.channels).load_all()[0][:n]
        if faces.shape[0] < 2:
            raise ValueError(f"images: {images!r} must hold at least 2 images, got {faces.shape[0]}")
    x = faces.to(device).float()
    os.makedirs(out_dir, exist_ok=True)
    directions.save(os.path.join(out_dir, "directions.npz"))
    report = {"n": int(x.shape[0]), "attributes": directions.names, "branches": directions.branches}
    with torch.no_grad():
        f_t, f_p = model.encode(x)
        recon = model.decode(f_t, f_p)
        if edits:
            rows = [x, recon, edit_attributes(model, x, directions, edits, alpha_max)]
            rows += [edit_attributes(model, x, directions, {k: v}, alpha_max) for k, v in edits.items()]
            save_image_grid(os.path.join(out_dir, "edits.png"), torch.cat(rows).cpu(), nrow=x.shape[0])
            r_t, r_p = model.encode(recon)
            e_t, e_p = model.encode(rows[2])
            report["edits"] = {k: {"alpha": v, "branch": directions.branches[directions.index(k)],
                                   "score_before": directions.score(k, r_t, r_p).mean().item(),
                                   "score_after": directions.score(k, e_t, e_p).mean().item()}
                               for k, v in edits.items()}
        b = x.roll(1, 0)
        save_image_grid(os.path.join(out_dir, "swap.png"), torch.cat([x, b, swap_identity(model, x, b)]).cpu(),
                        nrow=x.shape[0])
        save_image_grid(os.path.join(out_dir, "interpolation.png"),
                        interpolation_grid(model, x[0], x[1], steps).cpu(), nrow=steps)
    with open(os.path.join(out_dir, "edit.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    return report

"""D²AE's losses (Eq. 2-4, 6) and their gradient routing, for one optimiser step on their weighted sum.

    L_I     = CE(classifier_t(f_T), y)                 -> E_enc, B_T, classifier_t
    L_I^adv = CE(classifier_p(f_P.detach()), y)        -> classifier_p only (the features are detached)
    L_H     = -(1/N) sum_j log softmax(classifier_p(f_P))_j, classifier_p's parameters detached (frozen)
                                                       -> E_enc, B_P only
    L_X     = 1/2 |x - D(f_T, f_P)|^2 / (H W)          -> E_enc, B_T, B_P, decoder (not the classifiers)
    L~_X    = the same on the augmented f~_T, f~_P (Eq. 5)
    L = lambda_T L_I + lambda_P (L_I^adv + L_H) + lambda_X (L_X + L~_X)

Two corrections to the paper as printed. Eq. 3 writes L_H = (1/N) sum_j log y_P^j, whose minimum drives y_P
to a one-hot; it is meant as the cross-entropy to the uniform distribution, -(1/N) sum_j log y_P^j (minimal
when y_P is uniform). lambda_X = 1.81e-5 = 1/235^2 turns the paper's sum over pixels into a per-pixel mean:
L_X here is that mean (summed over channels), so lambda_X = 1 is the paper's weight at any image size.

Each loss reaches only its parameters by construction (detach, and torch.func.functional_call with the P
classifier's parameters detached for L_H), so a single backward of L sends every gradient where the paper
routes it. Ablations (Table 1): adversary=False drops L_I^adv and lets L_H update the P classifier too (the
paper's "w/o L_I^adv"); confusion=False drops L_H; augment=False drops L~_X; a model without a decoder / P
branch (the baseline) has only L_I.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call


@dataclass
class D2AELossConfig:
    """Weights and switches of the D²AE objective (Eq. 6)."""
    lambda_t: float = 1.0             # L_I
    lambda_p: float = 0.1             # L_I^adv and L_H
    lambda_x: float = 1.0             # L_X and L~_X (per-pixel mean: the paper's 1.81e-5 = 1/235^2 of a sum)
    adversary: bool = True            # L_I^adv (False: the w/o L_I^adv ablation, L_H then updates the classifier)
    confusion: bool = True            # L_H (False: the w/o L_H ablation)
    augment: bool = True              # L~_X on statistically augmented features

    def __post_init__(self):
        for name in ("lambda_t", "lambda_p", "lambda_x"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        for name in ("adversary", "confusion", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


def confusion_loss(logits):  # logits (B, N)
    """L_H: cross-entropy of softmax(logits) to the uniform distribution, -(1/N) sum_j log y^j, batch mean."""
    return -F.log_softmax(logits.float(), dim=1).mean(1).mean()


def reconstruction_loss(images, targets):  # (B, C, H, W) each
    """L_X: 1/2 |x - x_hat|^2 per pixel (summed over channels, mean over pixels and the batch)."""
    return 0.5 * (images.float() - targets.float()).pow(2).sum(1).mean()


def frozen_classifier(classifier, f):  # f (B, D)
    """classifier(f) with its parameters detached: gradients reach f (and what made it), never the classifier."""
    params = {k: v.detach() for k, v in classifier.named_parameters()}
    return functional_call(classifier, params, (f,))


def d2ae_losses(model, images, identities, cfg=None, generator=None):  # images (B, C, S, S), identities (B,)
    """{name: scalar tensor} of the unweighted losses L_I ("identity"), L_I^adv ("adversary"), L_H ("confusion"),
    L_X ("reconstruction"), L~_X ("reconstruction_aug") that cfg and the model have, plus "total", the
    weighted sum whose backward routes each gradient as the module doc says; "reconstructions" (B, C, S, S)
    holds D(f_T, f_P) (detached), "acc_t" / "acc_p" the batch accuracies of the two classifiers (no grad).
    In training mode the running feature statistics are updated first."""
    cfg = cfg or D2AELossConfig()
    f_t, f_p = model.features(images)
    if model.training:
        model.track_statistics(f_t, f_p)
    logits_t = model.classifier_t(f_t).float()
    out = {"identity": F.cross_entropy(logits_t, identities),
           "acc_t": (logits_t.detach().argmax(1) == identities).float().mean()}
    total = cfg.lambda_t * out["identity"]
    if model.cfg.p_branch:
        if cfg.adversary:
            logits_p = model.classifier_p(f_p.detach()).float()
            out["adversary"] = F.cross_entropy(logits_p, identities)
            out["acc_p"] = (logits_p.detach().argmax(1) == identities).float().mean()
            total = total + cfg.lambda_p * out["adversary"]
        if cfg.confusion:
            logits = frozen_classifier(model.classifier_p, f_p) if cfg.adversary else model.classifier_p(f_p)
            out["confusion"] = confusion_loss(logits)
            total = total + cfg.lambda_p * out["confusion"]
    if model.cfg.decoder:
        b = images.shape[0]
        if cfg.augment:
            f_ta, f_pa = model.augment(f_t, f_p, generator)
            recon = model.reconstruct(torch.cat([f_t, f_ta]), torch.cat([f_p, f_pa]))   # one decoder pass
            out["reconstruction"] = reconstruction_loss(recon[:b], images)
            out["reconstruction_aug"] = reconstruction_loss(recon[b:], images)
            total = total + cfg.lambda_x * (out["reconstruction"] + out["reconstruction_aug"])
        else:
            recon = model.reconstruct(f_t, f_p)
            out["reconstruction"] = reconstruction_loss(recon, images)
            total = total + cfg.lambda_x * out["reconstruction"]
        out["reconstructions"] = recon[:b].detach()
    out["total"] = total
    return out


class D2AEObjective(torch.nn.Module):
    """d2ae_losses as a module's forward, so that DistributedDataParallel can wrap the whole objective (its
    hooks need a forward through the wrapper; the losses call the D²AE's parts directly)."""

    def __init__(self, model, cfg=None):
        super().__init__()
        self.model, self.cfg = model, cfg or D2AELossConfig()

    def forward(self, images, identities):  # images (B, C, S, S), identities (B,)
        return d2ae_losses(self.model, images, identities, self.cfg)


__all__ = ["D2AELossConfig", "D2AEObjective", "d2ae_losses", "confusion_loss", "reconstruction_loss", "frozen_classifier"]

"""D²AE evaluation (the structure of the paper's Tables 1-3 and Figs. 4, 8) on labelled face images.

- verification: cosine similarity of f_T, f_P or [f_T, f_P]; accuracy (10-fold best threshold) on balanced
  pairs and TPR at FPR = 1e-3 over every pair of the set (fastface.eval.metrics).
- identity_probe: a fresh classifier trained after the fact on features of part of each identity's images,
  tested on the rest: how much identity a feature still carries (chance = 1 / identities).
- attribute_svms: one LinearSVC per attribute on f_T, f_P and [f_T, f_P], trained on some identities and
  tested on the others, averaged over several identity splits (identity-related attributes are constant
  per identity, so splitting by image would let f_T recognise them by recognising the person).
- channel_gaussianity: adj-R^2 of a Gaussian fitted to each channel's histogram (Fig. 8).
- reconstruction_psnr: PSNR of D(E(x)) against x (images in [0, 1]).
"""
import numpy as np
import torch

from .metrics import tpr_at_fpr, verification_accuracy
from .reconstruction import psnr


@torch.no_grad()
def extract_features(model, images, batch_size=256):  # images (N, C, S, S) in [0, 1]
    """dict(t (N, D), p (N, D) or None, tp (N, 2D) or None) of an eval-mode D²AE, on the CPU."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    ts, ps = [], []
    for s in range(0, images.shape[0], batch_size):
        f_t, f_p = model.encode(images[s:s + batch_size].to(dev).float())
        ts.append(f_t.float().cpu())
        ps.append(None if f_p is None else f_p.float().cpu())
    model.train(was)
    t = torch.cat(ts)
    p = None if ps[0] is None else torch.cat(ps)
    return {"t": t, "p": p, "tp": None if p is None else torch.cat([t, p], 1)}


def _pairs(identities, n_pairs, seed):
    """(i, j, same) of n_pairs balanced pairs (half of one identity), drawn from seed."""
    ids = torch.as_tensor(identities).long()
    g = np.random.default_rng(seed)
    by_id = {int(k): torch.nonzero(ids == k).flatten().numpy() for k in torch.unique(ids)}
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    if len(by_id) < 2 or not multi:
        raise ValueError(f"verification needs 2 identities and one with 2 images, got {len(by_id)} identities")
    keys = list(by_id)
    out = []
    for p in range(n_pairs):
        if p % 2 == 0:
            a, b = g.choice(by_id[multi[g.integers(len(multi))]], 2, replace=False)
            out.append((a, b, True))
        else:
            ka, kb = g.choice(len(keys), 2, replace=False)
            out.append((g.choice(by_id[keys[ka]]), g.choice(by_id[keys[kb]]), False))
    i, j, same = zip(*out)
    return torch.tensor(i), torch.tensor(j), torch.tensor(same)


def verification(features, identities, n_pairs=6000, seed=0, fpr=1e-3):  # features (N, D), identities (N,)
    """dict(accuracy, tpr): cosine verification accuracy on n_pairs balanced pairs (10 folds) and TPR at
    FPR = fpr over every unordered pair of the set."""
    f = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
    ids = torch.as_tensor(identities).long()
    i, j, same = _pairs(ids, n_pairs, seed)
    acc = verification_accuracy((f[i] * f[j]).sum(1), same)["accuracy"]
    iu, ju = torch.triu_indices(len(ids), len(ids), offset=1)
    tpr = tpr_at_fpr((f[iu] * f[ju]).sum(1), ids[iu] == ids[ju], fprs=(fpr,))[fpr]
    return {"accuracy": acc, "tpr": tpr}


def _standardise(train, test):
    mu, sd = train.mean(0, keepdims=True), train.std(0, keepdims=True) + 1e-8
    return (train - mu) / sd, (test - mu) / sd


def identity_probe(features, identities, train_per_identity=None, seed=0, max_iter=500):
    """dict(accuracy, chance, n_train, n_test): a fresh multinomial logistic regression trained on the first
    train_per_identity images of every identity (default: all but 2), tested on the others."""
    from sklearn.linear_model import LogisticRegression
    x = torch.as_tensor(features).double().numpy()
    ids = torch.as_tensor(identities).long().numpy()
    train = np.zeros(len(ids), bool)
    for k in np.unique(ids):
        members = np.flatnonzero(ids == k)
        n = train_per_identity if train_per_identity is not None else max(1, len(members) - 2)
        train[members[:n]] = True
    if train.all():
        raise ValueError("identity_probe needs identities with more images than train_per_identity")
    xtr, xte = _standardise(x[train], x[~train])
    clf = LogisticRegression(max_iter=max_iter, C=1.0, random_state=seed).fit(xtr, ids[train])
    return {"accuracy": float((clf.predict(xte) == ids[~train]).mean()), "chance": 1.0 / len(np.unique(ids)),
            "n_train": int(train.sum()), "n_test": int((~train).sum())}


def identity_split(identities, fraction=0.5, seed=0):
    """(N,) bool mask of the images whose identity falls in a random `fraction` of the identities."""
    ids = torch.as_tensor(identities).long().numpy()
    uniq = np.unique(ids)
    chosen = np.random.default_rng(seed).permutation(uniq)[:max(1, int(round(fraction * len(uniq))))]
    return np.isin(ids, chosen)


def attribute_svms(features, attributes, identities, names, fraction=0.5, seed=0, C=0.1, splits=1):
    """{name: {feature_key: dict(accuracy, balanced_accuracy, balanced_std), "majority": rate} or None} per
    attribute: a LinearSVC on each feature set in features ({key: (N, D)}), trained on the images of a
    `fraction` of the identities and tested on the others, averaged over `splits` random identity splits
    (seeds seed, seed + 1, ...; balanced_std: the spread over the splits). None for an attribute with one
    class in the training or test part of a split."""
    from sklearn.svm import LinearSVC
    attrs = torch.as_tensor(attributes).numpy() > 0.5
    feats = {k: torch.as_tensor(f).double().numpy() for k, f in features.items()}
    masks = [identity_split(identities, fraction, seed + s) for s in range(splits)]
    out = {}
    for a, name in enumerate(names):
        y = attrs[:, a]
        if any(len(np.unique(y[m])) < 2 or len(np.unique(y[~m])) < 2 for m in masks):
            out[name] = None
            continue
        row = {}
        for key, f in feats.items():
            accs, bals = [], []
            for train in masks:
                xtr, xte = _standardise(f[train], f[~train])
                pred = LinearSVC(C=C, max_iter=5000, random_state=seed).fit(xtr, y[train]).predict(xte)
                yt = y[~train]
                accs.append((pred == yt).mean())
                bals.append(0.5 * ((pred[yt] == 1).mean() + (pred[~yt] == 0).mean()))
            row[key] = {"accuracy": float(np.mean(accs)), "balanced_accuracy": float(np.mean(bals)),
                        "balanced_std": float(np.std(bals))}
        row["majority"] = float(np.mean([max(y[~m].mean(), 1 - y[~m].mean()) for m in masks]))
        out[name] = row
    return out


def channel_gaussianity(features, bins=30):  # features (N, D)
    """(D,) adj-R^2 of each channel's density histogram (bins over its range) against the Gaussian with the
    channel's mean and standard deviation (2 fitted parameters); 1 = exactly Gaussian."""
    x = torch.as_tensor(features).double().numpy()
    out = np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        v = x[:, c]
        mu, sd = v.mean(), v.std() + 1e-12
        hist, edges = np.histogram(v, bins=bins, density=True)
        centres = 0.5 * (edges[1:] + edges[:-1])
        g = np.exp(-0.5 * ((centres - mu) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
        ss_res, ss_tot = ((hist - g) ** 2).sum(), ((hist - hist.mean()) ** 2).sum()
        r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 0.0
        out[c] = 1 - (1 - r2) * (bins - 1) / (bins - 2 - 1)
    return out


@torch.no_grad()
def reconstruction_psnr(model, images, batch_size=256):  # images (N, C, S, S) in [0, 1]
    """(N,) PSNR in dB of the eval-mode reconstructions D(E(x)) against x."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size].to(dev).float()
        out.append(psnr(model.decode(*model.encode(x)).float().cpu(), x.cpu(), data_range=1.0))
    model.train(was)
    return torch.cat(out)


def tsne(features, seed=0, perplexity=30.0):  # features (N, D)
    """(N, 2) Barnes-Hut t-SNE embedding (scikit-learn) of the standardised features."""
    from sklearn.manifold import TSNE
    x = torch.as_tensor(features).double().numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return TSNE(2, perplexity=min(perplexity, (len(x) - 1) / 3), random_state=seed, init="pca").fit_transform(x)


__all__ = ["extract_features", "verification", "identity_probe", "identity_split", "attribute_svms",
           "channel_gaussianity", "reconstruction_psnr", "tsne"]

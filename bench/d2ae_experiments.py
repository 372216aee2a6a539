"""D²AE experiments on SynthFaces (docs/D2AE_RESULTS.md): the full model, the baseline (no decoder, no P
branch) and the three ablations (w/o L_H, w/o L_I^adv, w/o statistical augmentation), then Tables 1-3, the
Fig. 8 Gaussianity statistic, Fig. 4 t-SNE and the editing figures (Fig. 9-10 style).

    python bench/d2ae_experiments.py train --out runs/d2ae        # 5 runs at once, 1 thread each, nice'd
    python bench/d2ae_experiments.py eval --out runs/d2ae         # tables -> runs/d2ae/results.{json,md}
    python bench/d2ae_experiments.py figures --out runs/d2ae --figures docs/figures
    python bench/d2ae_experiments.py floor --out runs/d2ae         # the probe on pixels / an untrained D²AE
    python bench/d2ae_experiments.py leakage --out runs/d2ae       # the leakage goal on five held-out sets
    (--size 64: the 64 px set-up; --runs strong_adversary strong_confusion: the stronger-adversary runs)

Rerunning `train` resumes unfinished runs (the shared loop's last.pt) and skips finished ones.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# the SynthFaces set-up of every run, per image size: 32 px ~10 CPU-minutes a run on one thread, 64 px ~35
SIZES = {
    32: {"n_identities": 300, "images_per_identity": 8, "image_size": 32, "width": 16, "branch_width": 64,
         "decoder_width": 64, "feature_dim": 256, "batch_size": 64, "lr": 1e-3, "sample_every": 500,
         "checkpoint_every": 250, "epochs": 30},
    64: {"n_identities": 300, "images_per_identity": 8, "image_size": 64, "width": 16, "branch_width": 64,
         "decoder_width": 64, "feature_dim": 256, "batch_size": 64, "lr": 1e-3, "sample_every": 500,
         "checkpoint_every": 250, "epochs": 30},
}
COMMON = SIZES[32]
STEPS = 1500                                    # a cap: 30 epochs of 37 batches end at step 1110
RUNS = {
    "full": {},
    "baseline": {"baseline": True},
    "no_confusion": {"confusion": False},       # w/o L_H
    "no_adversary": {"adversary": False},       # w/o L_I^adv (L_H then updates the P classifier)
    "no_augment": {"augment": False},           # w/o statistical augmentation
    # beyond the paper (--runs): the adversary at 10x the learning rate; and also L_H at 10x the weight
    "strong_adversary": {"adversary_lr_scale": 10},
    "strong_confusion": {"adversary_lr_scale": 10, "lambda_p": 1.0},
}
DEFAULT_RUNS = ["full", "baseline", "no_confusion", "no_adversary", "no_augment"]


def use_size(size):
    """Make SIZES[size] the set-up of every run (train, eval and figures)."""
    global COMMON
    COMMON = SIZES[size]


def _value(v):
    return str(v).lower() if isinstance(v, bool) else str(v)


def train_command(name, out, steps=STEPS):
    sets = {**COMMON, **RUNS[name]}
    cmd = ["nice", "-n", "5", sys.executable, "-m", "fastface", "train", "d2ae", "--out", os.path.join(out, name),
           "--steps", str(steps), "--device", "cpu", "--quiet"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={_value(v)}"]
    return cmd


def train(out, names, steps=STEPS):
    """Start every run not yet finished as its own single-thread process; wait for all; print their times."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    os.makedirs(out, exist_ok=True)
    for name in names:
        if os.path.exists(os.path.join(out, name, "model.pt")):
            print(f"{name}: done already")
            continue
        os.makedirs(os.path.join(out, name), exist_ok=True)
        log = open(os.path.join(out, name, "stdout.txt"), "a")
        procs[name] = (subprocess.Popen(train_command(name, out, steps), env=env, stdout=log, stderr=log),
                       time.time(), log)
        print(f"{name}: started (pid {procs[name][0].pid})")
    while procs:                                   # report each run when it ends (not in start order)
        for name, (p, t0, log) in list(procs.items()):
            if p.poll() is not None:
                log.close()
                print(f"{name}: exit {p.returncode} after {time.time() - t0:.0f} s", flush=True)
                del procs[name]
        time.sleep(5)


EVAL = {"n_identities": 200, "images_per_identity": 5, "seed": 10007}   # held-out SynthFaces identities
SVM_SPLITS = 5                                  # attribute SVMs: mean over this many identity splits
TSNE = {"n_identities": 20, "images_per_identity": 10, "seed": 20011}


def load_run(out, name, partial=False):
    """The run's model.pt (or, with partial, its last.pt) as an eval-mode D2AE, and the step it holds."""
    import torch

    import fastface
    path = os.path.join(out, name, "model.pt")
    if not os.path.exists(path) and partial:
        path = os.path.join(out, name, "last.pt")
    step = torch.load(os.path.join(out, name, "last.pt"), weights_only=True)["step"]
    return fastface.load(path, kind="d2ae"), step


def evaluate(out, names, partial=False):
    """Every metric of every run on the held-out set -> OUT/results.json (and the t-SNE coordinates)."""
    import numpy as np
    import torch

    from fastface.data import SynthFaces
    from fastface.eval import d2ae as ev
    from fastface.train.d2ae import render_synthfaces
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    size = COMMON["image_size"]
    data = render_synthfaces(EVAL["n_identities"], EVAL["images_per_identity"], size, seed=EVAL["seed"])
    tsne_data = render_synthfaces(TSNE["n_identities"], TSNE["images_per_identity"], size, seed=TSNE["seed"])
    names_a, related = SynthFaces.ATTRIBUTES, SynthFaces.IDENTITY_RELATED
    results = {"eval_set": EVAL, "common": COMMON, "runs": {}}
    for name in names:
        t0 = time.time()
        model, step = load_run(out, name, partial)
        feats = ev.extract_features(model, data["images"])
        keys = [k for k in ("t", "p", "tp") if feats[k] is not None]
        r = {"step": step, "verification": {}, "probe": {}, "gaussianity": {}}
        for k in keys:
            r["verification"][k] = ev.verification(feats[k], data["identities"])
            r["probe"][k] = ev.identity_probe(feats[k], data["identities"])
        for k in ("t", "p"):
            if feats[k] is not None:
                r["gaussianity"][k] = ev.channel_gaussianity(feats[k]).tolist()
        r["attributes"] = ev.attribute_svms({k: feats[k] for k in keys}, data["attributes"], data["identities"],
                                            names_a, splits=SVM_SPLITS)
        if model.cfg.decoder:
            r["psnr"] = float(ev.reconstruction_psnr(model, data["images"]).mean())
        tf = ev.extract_features(model, tsne_data["images"])
        r["tsne"] = {k: ev.tsne(tf[k]).tolist() for k in ("t", "p") if tf[k] is not None}
        r["tsne_identities"] = tsne_data["identities"].tolist()
        r["sigma"] = {"t": model.sigma_t.tolist(), **({"p": model.sigma_p.tolist()} if model.cfg.p_branch else {})}
        r["seconds"] = time.time() - t0
        results["runs"][name] = r
        print(f"{name}: evaluated (step {step}) in {r['seconds']:.0f} s", flush=True)
    # a Gaussian reference for the adj-R^2 statistic at the same sample size (its sampling floor)
    g = np.random.default_rng(0).standard_normal((len(data["identities"]), COMMON["feature_dim"]))
    results["gaussian_reference"] = ev.channel_gaussianity(torch.from_numpy(g)).tolist()
    results["attribute_names"], results["identity_related"] = names_a, related
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(results, fh)
    return results


def probe_floor(out):
    """What the fresh identity probe finds in features nobody trained: pooled pixels and an untrained
    D²AE (the set-up's architecture, seed 0) -> OUT/probe_floor.json."""
    import torch
    import torch.nn.functional as F

    from fastface.eval import d2ae as ev
    from fastface.models.d2ae import D2AE, D2AEConfig
    from fastface.train.d2ae import render_synthfaces
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    data = render_synthfaces(EVAL["n_identities"], EVAL["images_per_identity"], COMMON["image_size"],
                             seed=EVAL["seed"])
    torch.manual_seed(0)
    arch = {k: COMMON[k] for k in ("image_size", "width", "branch_width", "decoder_width", "feature_dim")}
    model = D2AE(D2AEConfig(n_identities=COMMON["n_identities"], **arch)).eval()
    feats = ev.extract_features(model, data["images"])
    rows = {"pixels pooled to 8x8": F.adaptive_avg_pool2d(data["images"], 8).flatten(1),
            "untrained f_T": feats["t"], "untrained f_P": feats["p"]}
    res = {name: {"probe": ev.identity_probe(f, data["identities"]), "verification": ev.verification(f, data["identities"])}
           for name, f in rows.items()}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "probe_floor.json"), "w") as fh:
        json.dump(res, fh)
    for name, r in res.items():
        print(f"{name}: fresh probe {100 * r['probe']['accuracy']:.1f} % (chance {100 * r['probe']['chance']:.1f} %), "
              f"verification {100 * r['verification']['accuracy']:.1f} %")
    return res


LEAK_SEEDS = (10007, 10009, 10037, 10039, 10061)  # five held-out sets of EVAL's size (the first is EVAL's)


def leakage(out, names):
    """The leakage goal with its statistics: on five held-out sets (200 identities x 5 images each), the
    fresh probe on f_P (pooled correct / tested, one-sided binomial test against chance) and f_T's
    verification accuracy, paired with the baseline's on the same sets -> OUT/leakage.json."""
    import numpy as np
    import torch
    from scipy.stats import binomtest

    from fastface.eval import d2ae as ev
    from fastface.train.d2ae import render_synthfaces
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sets = [render_synthfaces(EVAL["n_identities"], EVAL["images_per_identity"], COMMON["image_size"], seed=s)
            for s in LEAK_SEEDS]
    res = {"seeds": LEAK_SEEDS, "runs": {}}
    for name in names:
        model, step = load_run(out, name)
        r = {"step": step, "verification_t": [], "probe_p": []}
        for data in sets:
            feats = ev.extract_features(model, data["images"])
            r["verification_t"].append(ev.verification(feats["t"], data["identities"])["accuracy"])
            if feats["p"] is not None:
                r["probe_p"].append(ev.identity_probe(feats["p"], data["identities"]))
        if r["probe_p"]:
            correct = sum(round(p["accuracy"] * p["n_test"]) for p in r["probe_p"])
            tested = sum(p["n_test"] for p in r["probe_p"])
            chance = r["probe_p"][0]["chance"]
            r["pooled_p"] = {"correct": correct, "tested": tested, "accuracy": correct / tested, "chance": chance,
                             "p_value": binomtest(correct, tested, chance, alternative="greater").pvalue}
        res["runs"][name] = r
        print(f"{name}: done", flush=True)
    base = res["runs"].get("baseline")
    lines = [f"Leakage over {len(LEAK_SEEDS)} held-out sets of {EVAL['n_identities']} identities x "
             f"{EVAL['images_per_identity']} images ({COMMON['image_size']} px); probe: 3 images per identity, "
             f"tested on 2; p: one-sided binomial test of the pooled probe hits against chance.", "",
             "| run | f_P probe, pooled | p (vs chance) | f_T verification, mean ± sd | f_T - baseline (paired) |",
             "|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        v = np.array(r["verification_t"]) * 100
        pp = r.get("pooled_p")
        probe = f"{100 * pp['accuracy']:.2f} % ({pp['correct']} / {pp['tested']})" if pp else "–"
        pv = f"{pp['p_value']:.2g}" if pp else "–"
        diff = "–"
        if base is not None and name != "baseline":
            d = v - np.array(base["verification_t"]) * 100
            diff = f"{d.mean():+.2f} ± {d.std(ddof=1):.2f}"
        lines.append(f"| {name} | {probe} | {pv} | {v.mean():.2f} ± {v.std(ddof=1):.2f} | {diff} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "leakage.json"), "w") as fh:
        json.dump(res, fh)
    with open(os.path.join(out, "leakage.md"), "w") as fh:
        fh.write(text)
    print(text)
    return res


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def attribute_summary(run, key, names, related, metric="balanced_accuracy"):
    """(all, identity-related, identity-irrelevant) mean of an attribute metric for one feature key."""
    per = {n: (run["attributes"][n][key][metric] if run["attributes"].get(n) else None) for n in names}
    return (_mean(per.values()), _mean(per[n] for n, r in zip(names, related) if r),
            _mean(per[n] for n, r in zip(names, related) if not r), per)


def train_stats(out, name, last=37):
    """Mean batch accuracies of the two classifiers over the last epoch of training."""
    from fastface.train.loop import read_log
    recs = read_log(os.path.join(out, name))[-last:]
    return {k: _mean(r.get(k) for r in recs) for k in ("acc_t", "acc_p")}


def report(out):
    """OUT/results.md: Tables 1-3 in the paper's structure, per-attribute table, Gaussianity, PSNR."""
    import numpy as np
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    runs, names, related = res["runs"], res["attribute_names"], res["identity_related"]
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"Held-out SynthFaces: {res['eval_set']['n_identities']} identities x "
             f"{res['eval_set']['images_per_identity']} images (seed {res['eval_set']['seed']}), "
             f"{res['common']['image_size']} px. Verification: balanced pairs (6000, 10-fold accuracy) and TPR at "
             f"FPR = 1e-3 over all pairs. Probe: fresh logistic regression on 3 images per identity, tested on 2 "
             f"(chance {pct(1 / res['eval_set']['n_identities'])} %). Attributes: LinearSVC trained on half the "
             f"identities, balanced accuracy on the other half (mean of {SVM_SPLITS} identity splits), mean over the "
             f"{len(names)} attributes "
             f"({sum(related)} identity-related, {len(related) - sum(related)} identity-irrelevant).", ""]
    rows = [("D2AE-T (f_T)", "full", "t"), ("D2AE-P (f_P)", "full", "p"),
            ("D2AE-P w/o L_H", "no_confusion", "p"), ("D2AE-P w/o L_I^adv", "no_adversary", "p"),
            ("D2AE-P w/o augmentation", "no_augment", "p"), ("D2AE ([f_T, f_P])", "full", "tp"),
            ("Baseline (f_T, no decoder / P branch)", "baseline", "t")]
    ref = attribute_summary(runs["full"], "p", names, related)[3] if "full" in runs else None
    lines += ["**Table 1** (identity and attribute power of each branch; #drop = attributes below D2AE-P's)", "",
              "| features | verif. acc % | TPR@1e-3 % | fresh probe top-1 % | attr. all % | id-related % | "
              "id-irrelevant % | #drop |", "|---|---|---|---|---|---|---|---|"]
    for label, run, key in rows:
        if run not in runs or key not in runs[run]["verification"]:
            continue
        r = runs[run]
        allm, rel, irr, per = attribute_summary(r, key, names, related)
        drop = "–"
        if ref is not None and key == "p" and run != "full":
            pairs = [(per[n], ref[n]) for n in names if per[n] is not None and ref[n] is not None]
            drop = f"{sum(a < b for a, b in pairs)}/{len(pairs)}"
        v, pr = r["verification"][key], r["probe"][key]
        lines.append(f"| {label} | {pct(v['accuracy'])} | {pct(v['tpr'])} | {pct(pr['accuracy'])} | {pct(allm)} | "
                     f"{pct(rel)} | {pct(irr)} | {drop} |")
    lines += ["", "**Table 2** (verification: baseline vs D2AE and the ablations; f_T and [f_T, f_P])", "",
              "| model | steps | f_T acc % | f_T TPR % | [f_T,f_P] acc % | [f_T,f_P] TPR % | f_P probe % | "
              "train acc_t % | train acc_p % | PSNR dB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r, ts = runs[run], train_stats(out, run)
        tp = r["verification"].get("tp")
        lines.append(f"| {run} | {r['step']} | {pct(r['verification']['t']['accuracy'])} | "
                     f"{pct(r['verification']['t']['tpr'])} | {pct(tp['accuracy']) if tp else '–'} | "
                     f"{pct(tp['tpr']) if tp else '–'} | "
                     f"{pct(r['probe']['p']['accuracy']) if 'p' in r['probe'] else '–'} | {pct(ts['acc_t'])} | "
                     f"{pct(ts['acc_p']) if ts['acc_p'] == ts['acc_p'] else '–'} | "
                     f"{r['psnr']:.2f} |" if 'psnr' in r else
                     f"| {run} | {r['step']} | {pct(r['verification']['t']['accuracy'])} | "
                     f"{pct(r['verification']['t']['tpr'])} | – | – | – | {pct(ts['acc_t'])} | – | – |")
    if "full" in runs:
        r = runs["full"]
        lines += ["", "**Per attribute** (D2AE, balanced accuracy %, mean ± spread over the identity splits; plain "
                      "accuracy in Table 3 below)", "",
                  "| attribute | identity-related | f_T | f_P | [f_T,f_P] | majority % | better of f_T / f_P |",
                  "|---|---|---|---|---|---|---|"]
        wins = {True: [0, 0], False: [0, 0]}
        for n, rel in zip(names, related):
            a = r["attributes"].get(n)
            if not a:
                lines.append(f"| {n} | {'yes' if rel else 'no'} | – | – | – | – | (one class only) |")
                continue
            t, p_ = a["t"]["balanced_accuracy"], a["p"]["balanced_accuracy"]
            better = "f_T" if t > p_ else "f_P"
            wins[rel][0 if better == "f_T" else 1] += 1
            sd = lambda k: f" ± {pct(a[k]['balanced_std'])}" if "balanced_std" in a[k] else ""  # noqa: E731
            lines.append(f"| {n} | {'yes' if rel else 'no'} | {pct(t)}{sd('t')} | {pct(p_)}{sd('p')} | "
                         f"{pct(a['tp']['balanced_accuracy'])} | {pct(a['majority'])} | {better} |")
        lines += ["", f"f_T better on {wins[True][0]} of {sum(wins[True])} identity-related attributes; f_P better "
                      f"on {wins[False][1]} of {sum(wins[False])} identity-irrelevant ones.", ""]
        acc = attribute_summary(r, "tp", names, related, "accuracy")
        lines += ["**Table 3** (attribute recognition, plain accuracy %, mean over attributes, [f_T, f_P])", "",
                  "| model | all | identity-related | identity-irrelevant | majority-class rate |",
                  "|---|---|---|---|---|",
                  f"| D2AE | {pct(acc[0])} | {pct(acc[1])} | {pct(acc[2])} | "
                  f"{pct(_mean(a['majority'] for a in r['attributes'].values() if a))} |"]
        if "baseline" in runs:
            b = attribute_summary(runs["baseline"], "t", names, related, "accuracy")
            lines.append(f"| Baseline (f_T) | {pct(b[0])} | {pct(b[1])} | {pct(b[2])} | same |")
    lines += ["", "**Fig. 8** (adj-R^2 of a Gaussian fitted to each channel's histogram; 30 bins, "
                  f"{res['eval_set']['n_identities'] * res['eval_set']['images_per_identity']} faces)", "",
              "| features | median adj-R^2 | channels > 0.99 | channels > 0.95 |", "|---|---|---|---|"]
    g = np.array(res["gaussian_reference"])
    lines.append(f"| N(0, 1) samples (the statistic's floor at this n) | {np.median(g):.3f} | "
                 f"{(g > 0.99).mean() * 100:.0f} % | {(g > 0.95).mean() * 100:.0f} % |")
    for run in RUNS:
        for key in ("t", "p"):
            if run in runs and key in runs[run]["gaussianity"]:
                v = np.array(runs[run]["gaussianity"][key])
                lines.append(f"| {run} f_{key.upper()} | {np.median(v):.3f} | {(v > 0.99).mean() * 100:.0f} % | "
                             f"{(v > 0.95).mean() * 100:.0f} % |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    print(text)
    return text


def figures(out, fig_dir):
    """The PNGs of docs/D2AE_RESULTS.md: t-SNE (Fig. 4), adj-R^2 histograms (Fig. 8), f_P - f_T per attribute
    (Fig. 5a), reconstructions, and the editing figures (Figs. 9-10) of the full model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from fastface.data import SynthFaces
    from fastface.edit import attribute_sweep, edit_attributes, fit_directions, interpolation_grid, swap_identity
    from fastface.train.d2ae import render_synthfaces
    from fastface.viz.grid import save_image_grid
    os.makedirs(fig_dir, exist_ok=True)
    with open(os.path.join(out, "results.json")) as fh:
        res = json.load(fh)
    full = res["runs"]["full"]
    ids = np.array(full["tsne_identities"])
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, key, title in zip(axes, ("t", "p"), ("D2AE-T: f_T", "D2AE-P: f_P")):
        xy = np.array(full["tsne"][key])
        ax.scatter(xy[:, 0], xy[:, 1], c=ids, cmap="tab20", s=10)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of {len(set(ids.tolist()))} held-out identities x {int(len(ids) / len(set(ids.tolist())))} "
                 f"images (colour = identity)")
    fig.tight_layout()
    fig.savefig(os.path.join(fig_dir, "d2ae_tsne.png"), dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    bins = np.linspace(0.5, 1.0, 26)
    for ax, key in zip(axes, ("t", "p")):
        for run, colour in (("full", "C0"), ("no_augment", "C1")):
            if run in res["runs"] and key in res["runs"][run]["gaussianity"]:
                ax.hist(np.clip(res["runs"][run]["gaussianity"][key], 0.5, 1), bins=bins, alpha=0.6, color=colour,
                        label=run)
        ax.hist(np.clip(res["gaussian_reference"], 0.5, 1), bins=bins, histtype="step", color="k",
                label="N(0,1) reference")
        ax.set_title(f"adj-R^2 per channel of f_{key.upper()}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(fig_dir, "d2ae_gaussianity.png"), dpi=80)
    plt.close(fig)
    names, related = res["attribute_names"], res["identity_related"]
    keep = [(n, r) for n, r in zip(names, related) if full["attributes"].get(n)]
    diff = [100 * (full["attributes"][n]["p"]["balanced_accuracy"] - full["attributes"][n]["t"]["balanced_accuracy"])
            for n, _ in keep]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.bar(range(len(keep)), diff, color=["C3" if r else "C0" for _, r in keep])
    ax.set_xticks(range(len(keep)))
    ax.set_xticklabels([n for n, _ in keep], rotation=90, fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("f_P - f_T (balanced acc. points)")
    ax.set_title("Attribute SVMs: f_P minus f_T (red: identity-related, blue: identity-irrelevant)")
    fig.tight_layout()
    fig.savefig(os.path.join(fig_dir, "d2ae_attributes.png"), dpi=80)
    plt.close(fig)
    # images from the full model
    model, _ = load_run(out, "full")
    size = COMMON["image_size"]
    fit = render_synthfaces(EVAL["n_identities"], EVAL["images_per_identity"], size, seed=EVAL["seed"])
    dirs = fit_directions(model, fit["images"], fit["attributes"], SynthFaces.ATTRIBUTES, SynthFaces.IDENTITY_RELATED)
    x = render_synthfaces(8, 1, size, seed=30011)["images"]
    edits = {"smiling": 3.0, "dark_background": 3.0, "eyeglasses": 3.0, "dark_skin": 3.0, "black_hair": 3.0}
    edits = {k: v for k, v in edits.items() if k in dirs.names}
    with torch.no_grad():
        rows = [x, model.decode(*model.encode(x))] + [edit_attributes(model, x, dirs, {k: v}) for k, v in edits.items()]
        rows.append(edit_attributes(model, x, dirs, edits))
        save_image_grid(os.path.join(fig_dir, "d2ae_edits.png"), torch.cat(rows), nrow=8)
        b = x.roll(1, 0)
        save_image_grid(os.path.join(fig_dir, "d2ae_swap.png"), torch.cat([x, b, swap_identity(model, x, b)]), nrow=8)
        save_image_grid(os.path.join(fig_dir, "d2ae_interpolation.png"), interpolation_grid(model, x[0], x[3], 6),
                        nrow=6)
        sweep = torch.cat([attribute_sweep(model, x[:4], dirs, k, [-3, -1.5, 0, 1.5, 3])
                           for k in ("smiling", "dark_skin") if k in dirs.names])
        save_image_grid(os.path.join(fig_dir, "d2ae_sweep.png"), sweep, nrow=5)
    with open(os.path.join(out, "edit_rows.json"), "w") as fh:
        json.dump({"rows": ["faces", "reconstructions"] + [f"{k}={v:+g}" for k, v in edits.items()] + ["all at once"],
                   "branches": {k: dirs.branches[dirs.index(k)] for k in edits}}, fh)
    print("figures ->", fig_dir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["train", "eval", "figures", "floor", "leakage"])
    ap.add_argument("--out", default="runs/d2ae")
    ap.add_argument("--runs", nargs="*", default=DEFAULT_RUNS, choices=list(RUNS))
    ap.add_argument("--size", type=int, default=32, choices=sorted(SIZES), help="image size of the set-up")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--partial", action="store_true", help="eval: runs without model.pt use their last.pt")
    args = ap.parse_args(argv)
    use_size(args.size)
    if args.job == "train":
        train(args.out, args.runs, args.steps)
    elif args.job == "eval":
        evaluate(args.out, args.runs, args.partial)
        report(args.out)
    elif args.job == "floor":
        probe_floor(args.out)
    elif args.job == "leakage":
        leakage(args.out, args.runs)
    else:
        figures(args.out, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

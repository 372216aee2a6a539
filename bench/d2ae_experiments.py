"""D²AE experiments on SynthFaces (docs/D2AE_RESULTS.md): the full model, the baseline (no decoder, no P
branch) and the three ablations (w/o L_H, w/o L_I^adv, w/o statistical augmentation), then Tables 1-3, the
Fig. 8 Gaussianity statistic, Fig. 4 t-SNE and the editing figures (Fig. 9-10 style).

    python bench/d2ae_experiments.py train --out runs/d2ae        # 5 runs at once, 1 thread each, nice'd
    python bench/d2ae_experiments.py eval --out runs/d2ae         # tables -> runs/d2ae/results.{json,md}
    python bench/d2ae_experiments.py figures --out runs/d2ae --figures docs/figures

Rerunning `train` resumes unfinished runs (the shared loop's last.pt) and skips finished ones.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# the SynthFaces set-up of every run: small enough for ~10 CPU-minutes a run on one thread
COMMON = {"n_identities": 300, "images_per_identity": 8, "image_size": 32, "width": 16, "branch_width": 64,
          "decoder_width": 64, "feature_dim": 256, "batch_size": 64, "lr": 1e-3, "sample_every": 500,
          "checkpoint_every": 250, "epochs": 30}
STEPS = 1500                                    # a cap: 30 epochs of 37 batches end at step 1110
RUNS = {
    "full": {},
    "baseline": {"baseline": True},
    "no_confusion": {"confusion": False},       # w/o L_H
    "no_adversary": {"adversary": False},       # w/o L_I^adv (L_H then updates the P classifier)
    "no_augment": {"augment": False},           # w/o statistical augmentation
}


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
    for name, (p, t0, log) in procs.items():
        rc = p.wait()
        log.close()
        print(f"{name}: exit {rc} after {time.time() - t0:.0f} s")


EVAL = {"n_identities": 200, "images_per_identity": 5, "seed": 10007}   # held-out SynthFaces identities
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
                                            names_a)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["train", "eval", "figures"])
    ap.add_argument("--out", default="runs/d2ae")
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--partial", action="store_true", help="eval: runs without model.pt use their last.pt")
    args = ap.parse_args(argv)
    if args.job == "train":
        train(args.out, args.runs, args.steps)
    elif args.job == "eval":
        evaluate(args.out, args.runs, args.partial)
    return 0


if __name__ == "__main__":
    sys.exit(main())

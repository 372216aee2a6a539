"""Summarise a `fastface train gan` run for docs/GAN_RESULTS.md: the FID-style curve (PNG) and a table.

  python bench/gan_results.py RUN_DIR --figure docs/figures/gan_fid.png

Prints markdown: the FID-style score at every evaluation (with its wall-clock time when the log has it)
and the losses averaged over the steps since the previous evaluation.
"""
import argparse
import json
import os
import statistics


def read(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    start = next(r for r in records if r.get("event") == "start")
    evals = {}
    for r in records:                      # a resumed run may log a step twice: keep the last
        if r.get("event") == "eval":
            evals[r["step"]] = r
    steps = {}
    for r in records:
        if "event" not in r:
            steps[r["step"]] = r
    return start, [evals[s] for s in sorted(evals)], [steps[s] for s in sorted(steps)]


def window_mean(steps, key, lo, hi):
    vals = [r[key] for r in steps if lo < r["step"] <= hi and key in r]
    return statistics.fmean(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--figure", help="write the FID-style curve here (PNG)")
    args = ap.parse_args()
    start, evals, steps = read(args.run_dir)
    cfg = start["config"]
    keys = ("image_size", "latent_dim", "width", "max_width", "d_width", "batch_size", "lr", "beta1", "beta2",
            "r1_gamma", "r1_every", "n_fid", "fid_encoder")
    print(f"Config: {json.dumps({k: cfg.get(k) for k in keys})}\n")
    t0 = evals[0].get("time") if evals else None
    print("| step | FID-style score | mean loss_d | mean loss_g | minutes since the first evaluation |")
    print("|---|---|---|---|---|")
    prev = 0
    for e in evals:
        s = e["step"]
        minutes = f"{(e['time'] - t0) / 60:.1f}" if t0 and "time" in e else ""
        print(f"| {s} | {e['fid']:.1f} | {window_mean(steps, 'loss_d', prev, s):.3f} | "
              f"{window_mean(steps, 'loss_g', prev, s):.3f} | {minutes} |")
        prev = s
    if args.figure and evals:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        ax.plot([e["step"] for e in evals], [e["fid"] for e in evals], marker="o", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(f"FID-style ({cfg['fid_encoder']} embeddings)")
        ax.set_title(f"fastface train gan, {cfg['image_size']}x{cfg['image_size']} SynthFaces, CPU")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        fig.savefig(args.figure)
        print(f"\n(figure: {args.figure})")


if __name__ == "__main__":
    main()

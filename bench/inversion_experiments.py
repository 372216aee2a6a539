"""GAN-inversion experiments (GAN-inversion paper, Table 1 and Figs. 4-5 structure) on the CPU.

    python bench/inversion_experiments.py --generator G.pt --out runs/inversion [--steps-pixel N]
        [--steps-perceptual N] [--n 64] [--threads 1]

1. Trains two encoders on the shared loop (each resumes from its folder): "pixel" (z-loss + pixel MAE) and
   "pixel+perceptual" (z-loss + pixel MAE + dlib-stage perceptual MSE), both on the paper's alternating
   schedule (generated / real epochs; real = SynthFaces seed 1, not the generator's seed-0 data).
2. Test sets: n generated faces (latents from seed 424242) and n "real" faces (SynthFaces seed 2: identities
   neither the generator nor the encoders saw).
3. Methods, each batched over the whole set on the same device in the same run: GD-200 (Adam lr 0.01, MAE),
   stochastic clipping (the same + entries outside [-1, 1] redrawn), the two encoders, and the hybrid (the
   pixel+perceptual encoder's z refined by N Adam steps: pixel MAE, and pixel + perceptual).
4. Metrics: PSNR, SSIM, identity similarity (cosine of dlib descriptors, target vs reconstruction), the
   Fréchet distance between the dlib descriptors of the target set and the reconstruction set, the latent
   cosine on the sphere (generated faces), wall time per face.
5. Throughput: encoder + generator, faces/s, eager PyTorch vs FusedGenerator for the generator.
Writes OUT/results.json, OUT/tables.md and the grids OUT/fig4_generated.png, OUT/fig5_real.png.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch

import fastface
from fastface.eval.frechet import frechet_distance
from fastface.eval.reconstruction import identity_similarity, psnr, ssim
from fastface.inversion import encode, optimize_latents
from fastface.models.dcgan import unit_latent
from fastface.models.inversion import check_pair
from fastface.models.perceptual import FaceFeatures
from fastface.train.inversion import InversionTrainConfig, load_generator, train_inversion
from fastface.viz.grid import save_image_grid


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def train_encoders(args):
    common = dict(generator=args.generator, generated=args.generated, real_identities=300,
                  real_images_per_identity=4, batch_size=args.batch_size, perceptual="dlib", perceptual_size=112,
                  checkpoint_every=50, sample_every=100, eval_every=50, epochs=1000)
    paths = {}
    for name, weight, steps in (("pixel", 0.0, args.steps_pixel), ("pixel+perceptual", 1.0, args.steps_perceptual)):
        out = os.path.join(args.out, "enc_" + name.replace("+", "_"))
        cfg = InversionTrainConfig(**common, perceptual_weight=weight, max_steps=steps)
        t0 = time.perf_counter()
        train_inversion(cfg, out, progress=False)
        print(f"trained {name}: {steps} steps, {time.perf_counter() - t0:.0f} s (this call)", flush=True)
        paths[name] = os.path.join(out, "model.pt")
    return paths


def test_sets(gen, n):
    from fastface.data import SynthFaces
    z = torch.randn(n, gen.cfg.latent_dim, generator=torch.Generator().manual_seed(424242))
    with torch.no_grad():
        generated = gen(z)
    ds = SynthFaces(n, 1, size=gen.cfg.image_size, channels=gen.cfg.channels, seed=2)
    real = ds.render_batch(range(n))["image"] * 2 - 1
    return {"generated": (generated, z), "real": (real, None)}


def _lr(lr):
    return "" if lr == 0.01 else f", lr {lr:g}"


def run_methods(gen, encoders, features, x, args):
    """{method: (latents, reconstructions, seconds)} for the target faces x (N, C, S, S)."""
    out = {}

    def finish(z):
        with torch.no_grad():
            return z, gen(z)

    for lr in args.gd_lrs:
        out[f"GD-200{_lr(lr)}"] = timed(lambda: finish(optimize_latents(gen, x, steps=200, lr=lr, seed=7)))
    out["Stochastic clipping-200"] = timed(lambda: finish(optimize_latents(gen, x, steps=200, lr=0.01, clip=1.0,
                                                                             seed=7)))
    for name, enc in encoders.items():
        out[f"Encoder ({name})"] = timed(lambda: finish(encode(enc, x)))
    enc = encoders[args.hybrid_encoder]
    for lr in args.refine_lrs:
        for steps in args.refine:
            out[f"Hybrid (encoder + {steps} pixel steps{_lr(lr)})"] = timed(
                lambda: finish(optimize_latents(gen, x, encode(enc, x), steps=steps, lr=lr)))
    for steps in args.refine_perceptual:
        out[f"Hybrid (encoder + {steps} pixel+perceptual steps)"] = timed(
            lambda: finish(optimize_latents(gen, x, encode(enc, x), steps=steps, lr=0.01, features=features,
                                            perceptual_weight=1.0)))
    return {k: (v[0][0], v[0][1], v[1]) for k, v in out.items()}


def metrics(features, x, z_true, z, rec, seconds):
    embed = features.embed
    e_x = torch.cat([embed(x[s:s + 64]) for s in range(0, x.shape[0], 64)])
    e_r = torch.cat([embed(rec[s:s + 64]) for s in range(0, rec.shape[0], 64)])
    row = {"psnr": psnr(rec, x).mean().item(), "ssim": ssim(rec, x).mean().item(),
           "identity_similarity": identity_similarity(embed, rec, x).mean().item(),
           "frechet": frechet_distance(e_x, e_r), "ms_per_face": 1000 * seconds / x.shape[0]}
    if z_true is not None:
        row["latent_cosine"] = (unit_latent(z) * unit_latent(z_true)).sum(1).mean().item()
    return row


@torch.no_grad()
def throughput(gen, enc, batch, repeats=7):
    """faces/s of encoder + generator on a batch of generated faces: eager vs FusedGenerator (median)."""
    x = gen(torch.randn(batch, gen.cfg.latent_dim, generator=torch.Generator().manual_seed(1)))
    fused, how = fastface.FusedGenerator.from_module(gen), "FusedGenerator.from_module(generator)"
    torch.testing.assert_close(fused(enc(x)), gen(enc(x)), atol=1e-4, rtol=1e-4)
    res = {"how": how}
    for name, g in (("eager", gen), ("fused", fused)):
        g(enc(x))                                                   # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            g(enc(x))
            times.append(time.perf_counter() - t0)
        res[name] = batch / statistics.median(times)
        gt = []
        z = enc(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            g(z)
            gt.append(time.perf_counter() - t0)
        res[name + "_generator_only"] = batch / statistics.median(gt)
    return res


def grid(path, rows, n=8):
    save_image_grid(path, (torch.cat([r[:n] for r in rows]).float().cpu() + 1) / 2, nrow=n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=64, help="faces per test set")
    ap.add_argument("--generated", type=int, default=2048, help="generated training faces of the encoders")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps-pixel", type=int, default=1000)
    ap.add_argument("--steps-perceptual", type=int, default=300)
    ap.add_argument("--refine", type=int, nargs="*", default=[25, 50])
    ap.add_argument("--refine-perceptual", type=int, nargs="*", default=[10])
    ap.add_argument("--gd-lrs", type=float, nargs="*", default=[0.01], help="GD-200 rows (the paper: 0.01)")
    ap.add_argument("--refine-lrs", type=float, nargs="*", default=[0.01], help="hybrid refinement Adam lrs")
    ap.add_argument("--hybrid-encoder", default="pixel+perceptual", choices=["pixel", "pixel+perceptual"])
    ap.add_argument("--figure-hybrid", help="the hybrid row drawn in the figures (default: the first)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-train", action="store_true", help="use the encoders already in OUT")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    gen = load_generator(args.generator)
    paths = ({n: os.path.join(args.out, "enc_" + n.replace("+", "_"), "model.pt")
              for n in ("pixel", "pixel+perceptual")} if args.skip_train else train_encoders(args))
    encoders = {n: fastface.load(p, kind="inversion") for n, p in paths.items()}
    for enc in encoders.values():
        check_pair(enc, gen)
    features = FaceFeatures("dlib", size=112)
    sets = test_sets(gen, args.n)
    results = {"hardware": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                           f"{torch.get_num_threads()} thread(s)", "n": args.n, "sets": {}}
    recs = {}
    for set_name, (x, z_true) in sets.items():
        outs = run_methods(gen, encoders, features, x, args)
        results["sets"][set_name] = {m: metrics(features, x, z_true, z, rec, sec) for m, (z, rec, sec) in outs.items()}
        recs[set_name] = [x] + [outs[m][1] for m in outs]
        gd = results["sets"][set_name]["GD-200"]["ms_per_face"]             # the paper's GD: lr 0.01
        for m, row in results["sets"][set_name].items():
            row["speedup_vs_gd200"] = gd / row["ms_per_face"]
            print(set_name, m, {k: round(v, 4) for k, v in row.items()}, flush=True)
        results["methods"] = list(outs)
    # Fig. 4 / Fig. 5 rows: targets, GD, SC, pixel encoder, pixel+perceptual encoder, hybrid (first refine)
    methods = results["methods"]
    hybrid = args.figure_hybrid or next(m for m in methods if m.startswith("Hybrid"))
    rows = ["GD-200", "Stochastic clipping-200", "Encoder (pixel)", "Encoder (pixel+perceptual)", hybrid]
    order = [0] + [1 + methods.index(m) for m in rows]
    results["figure_rows"] = ["targets"] + rows
    grid(os.path.join(args.out, "fig4_generated.png"), [recs["generated"][i] for i in order])
    grid(os.path.join(args.out, "fig5_real.png"), [recs["real"][i] for i in order])
    results["throughput"] = {b: throughput(gen, encoders["pixel+perceptual"], b) for b in (64, 256)}
    print(results["throughput"], flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    lines = []
    for set_name, rows in results["sets"].items():
        lines += [f"### {set_name} faces (n = {args.n})", "",
                  "| method | PSNR (dB) | SSIM | identity similarity | Fréchet (dlib) | latent cosine | ms / face | "
                  "speed-up vs GD-200 |", "|---|---|---|---|---|---|---|---|"]
        for m, r in rows.items():
            lc = f"{r['latent_cosine']:.3f}" if "latent_cosine" in r else "–"
            lines.append(f"| {m} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['identity_similarity']:.3f} | "
                         f"{r['frechet']:.4f} | {lc} | {r['ms_per_face']:.2f} | {r['speedup_vs_gd200']:.1f}x |")
        lines.append("")
    with open(os.path.join(args.out, "tables.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

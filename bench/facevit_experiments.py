"""Face-ViT experiments on SynthFaces (dissertation Tables 5.10-5.14 structure, section 5.3.3's heat maps).

    python bench/facevit_experiments.py --out runs/facevit          # CPU subset (5 models), ~20 min on 2 idle cores
    python bench/facevit_experiments.py --out runs/facevit --all    # depth {1,2,4,8} x heads {1,2,4}: a GPU job

1. Encodes the training identities (SynthFaces seed 0, the shipped backbone's training seed; the paper's
   ViTs are also trained on their backbone's data set, CASIA) once with the frozen backbone, and trains
   H2L, H1 and H2 on those tokens and V on the pixels, all on the shared loop (each resumes from its folder).
2. Verification (Tables 5.10-5.11): 1:1 pairs of held-out identities (seed 1), accuracy with the best
   10-fold threshold, both images clean and with the first one masked; C = the backbone's cosine.
3. Identification (Tables 5.12 and 5.14): the held-out split of `fastface demo` (100 identities, 10 gallery
   faces and 2 queries each), occlusions none / mask / sunglasses / crop; ST1 (cosine) vs ST2 with
   DeepFace-EMD (APC, alpha 0.7) and with H2L (alpha 0.7), P@1 / R-Precision / MAP@R and the stage-2 time
   of the whole query set.
4. Heat maps (section 5.3.3): for masked queries and their true match, the cross-correlation maps of C and
   H2L beside the EMD flow, OUT/heatmaps.png.
Writes OUT/results.json and OUT/facevit_results.md (tables); docs/FACEVIT_RESULTS.md discusses them.
"""
import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from fastface.backbones import load_encoder
from fastface.eval.identification import evaluate_identification, extract_features
from fastface.eval.jobs import make_faces, occlude_queries, public, synthfaces_split
from fastface.eval.metrics import verification_accuracy
from fastface.train.facevit import (FaceViTTrainConfig, build_cache, encode_tokens, pair_scores, train_facevit,
                                    verification_pairs)

OCCLUSIONS = ("none", "mask", "sunglasses", "crop")


def model_grid(all_settings, with_v=False):
    """(name, variant, depth, heads) of the models to train: the CPU subset, or Tables 5.10-5.11 in full."""
    if all_settings:
        h2l = [(d, h) for d in (1, 2, 4, 8) for h in (1, 2, 4)]
        return ([("H2L", "h2l", d, h) for d, h in h2l] + [("H1", "h1", d, h) for d, h in h2l]
                + [("H2", "h2", d, h) for d in (1, 2) for h in (1, 2, 4)] + [("V", "v", 8, 4)])
    subset = [("H2L", "h2l", d, h) for d, h in ((1, 1), (1, 2), (2, 1))] + [("H1", "h1", 1, 1), ("H2", "h2", 1, 1)]
    return subset + ([("V", "v", 2, 2)] if with_v else [])


def base_config(args):
    return dict(backbone=args.backbone, n_identities=args.identities, images_per_identity=args.images,
                dim=args.dim, dim_head=args.dim // 4, mlp_dim=4 * args.dim, out_dim=args.dim, dropout=0.1,
                epochs=args.epochs, batch_size=64, lr=args.lr, warmup_epochs=1.0, s=30.0, m=0.5,
                checkpoint_every=500, image_size=64, patch_size=8)


def held_out(enc, args):
    """The held-out split (seed 1) as images, labels, tokens and embeddings; the queries also masked."""
    split = synthfaces_split(n_identities=args.test_identities, size=enc.image_size, channels=enc.channels)
    out = {}
    for part in ("gallery", "queries"):
        img, lm, lab = split[part]
        emb, fmap = extract_features(enc, img)
        out[part] = dict(images=img, landmarks=lm, labels=lab, emb=emb, fmap=fmap,
                         tokens=fmap.flatten(2).transpose(1, 2).contiguous())
    return out


def verification(models, data, args):
    """Accuracy of each model on 1:1 gallery pairs: clean-clean and masked-clean (image 1 masked)."""
    g = data["gallery"]
    i, j, same = verification_pairs(g["labels"], args.pairs, seed=123)
    masked_img, _ = occlude_queries(g["images"], g["landmarks"], "mask", seed=7)
    enc = load_encoder(args.backbone)
    m_emb, m_tok = encode_tokens(enc, masked_img)
    small = lambda x: F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    inputs = {"clean": {"tokens": g["tokens"], "emb": g["emb"], "pixels": small(g["images"])},
              "mask": {"tokens": m_tok, "emb": m_emb, "pixels": small(masked_img)}}
    rows = []
    for name, variant, depth, heads, model in [("C", "c", 0, 0, None)] + models:
        row = {"model": name, "variant": variant, "depth": depth, "heads": heads}
        for setting, first in inputs.items():
            if model is None:
                scores = F.cosine_similarity(first["emb"][i], g["emb"][j])
            else:
                key = "pixels" if variant == "v" else "tokens"
                scores = pair_scores(model, first[key][i], inputs["clean"][key][j])
            row[f"acc_{setting}"] = 100 * verification_accuracy(scores, same)["accuracy"]
        rows.append(row)
        print(f"verification {name} d{depth} h{heads}: clean {row['acc_clean']:.2f}  mask {row['acc_mask']:.2f}")
    return rows


def identification(h2l, data, enc, args):
    """ST1 vs ST2 (EMD, H2L) per occlusion; the stage-2 times cover the whole query set."""
    g, q = data["gallery"], data["queries"]
    gallery = make_faces(g["emb"], g["fmap"], g["landmarks"], enc.image_size, 8)
    rows = []
    for occ in OCCLUSIONS:
        img, lm = occlude_queries(q["images"], q["landmarks"], occ)
        emb, fmap = extract_features(enc, img)
        query = make_faces(emb, fmap, lm, enc.image_size, 8)
        for method, kw in (("DeepFace-EMD", {}), ("H2L", {"reranker": h2l})):
            res = evaluate_identification(query, gallery, q["labels"], g["labels"], k=args.k, alpha=0.7,
                                          weighting="apc", **kw)
            row = {"occlusion": occ, "method": method, **public(res)}
            rows.append(row)
            print(f"identify {occ:10s} {method:12s} ST1 P@1 {res['stage1']['p_at_1'] * 100:.1f}  ST2 P@1 "
                  f"{res['stage2']['p_at_1'] * 100:.1f}  stage 2 {res['time_stage2_s']:.2f} s")
    return rows


def heat_maps(h2l, data, enc, path, n=4):
    """Masked queries and their first gallery face of the same identity: C and H2L cross-correlation maps
    beside the EMD flow (query | C q | C g | H2L q | H2L g | flow reconstruction | gallery)."""
    import fastface as ff
    from fastface.viz import save_png
    from fastface.viz.flows import _compose, flow_reconstruction, weight_heatmap
    from fastface.viz.heatmaps import cross_correlation
    g, q = data["gallery"], data["queries"]
    img, lm = occlude_queries(q["images"][:2 * n:2], q["landmarks"][:2 * n:2], "mask")
    emb, tok = encode_tokens(enc, img)
    match = [int((g["labels"] == lab).nonzero()[0]) for lab in q["labels"][:2 * n:2]]
    gt = g["tokens"][match]
    c1, c2 = cross_correlation(tok, gt)
    with torch.no_grad():
        z1, z2 = h2l.output_tokens(tok, gt)
    v1, v2 = cross_correlation(z1.float(), z2.float())
    plans = ff.emd(tok, gt, weighting="apc", x_embedding=emb, y_embedding=g["emb"][match], return_plan=True).plan
    rows = []
    for b in range(len(match)):
        qi, gi, flow = img[b], g["images"][match[b]], plans[b]
        tiles = [qi.expand(3, -1, -1), weight_heatmap(qi, c1[b], 8), weight_heatmap(gi, c2[b], 8),
                 weight_heatmap(qi, v1[b], 8), weight_heatmap(gi, v2[b], 8),
                 flow_reconstruction(gi, flow, 8), gi.expand(3, -1, -1)]
        rows.append([t.float() for t in tiles])
    h, w = img.shape[-2:]
    save_png(path, _compose(rows, h, w))
    return path


def markdown(results):
    lines = ["## Verification (Tables 5.10-5.11 structure): accuracy %, 1:1 held-out pairs", "",
             "| model | depth | heads | clean | image 1 masked |", "|---|---|---|---|---|"]
    for r in results["verification"]:
        lines.append(f"| {r['model']} | {r['depth'] or '-'} | {r['heads'] or '-'} | {r['acc_clean']:.2f} | "
                     f"{r['acc_mask']:.2f} |")
    lines += ["", f"## Identification (Tables 5.12 / 5.14 structure), H2L d{results['h2l']['depth']} "
              f"h{results['h2l']['heads']}, k = {results['k']}, alpha 0.7", "",
              "| occlusion | stage 2 | ST1 P@1 | ST1 RP | ST1 M@R | ST2 P@1 | ST2 RP | ST2 M@R | stage-2 time (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results["identification"]:
        s1, s2 = r["stage1"], r["stage2"]
        lines.append(f"| {r['occlusion']} | {r['method']} | {100 * s1['p_at_1']:.2f} | {100 * s1['r_precision']:.2f} | "
                     f"{100 * s1['map_at_r']:.2f} | {100 * s2['p_at_1']:.2f} | {100 * s2['r_precision']:.2f} | "
                     f"{100 * s2['map_at_r']:.2f} | {r['time_stage2_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--all", action="store_true", help="every depth x heads setting (a GPU job)")
    p.add_argument("--with-v", action="store_true", help="also train V (a plain ViT on pixels) in the CPU subset")
    p.add_argument("--backbone", default="arcface")
    p.add_argument("--identities", type=int, default=300, help="training identities (SynthFaces seed 0)")
    p.add_argument("--images", type=int, default=8, help="training images per identity")
    p.add_argument("--test-identities", type=int, default=100)
    p.add_argument("--pairs", type=int, default=2000, help="verification pairs (half positive)")
    p.add_argument("--dim", type=int, default=128, help="model width (the paper: 512)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    enc = load_encoder(args.backbone, device=args.device)
    base = base_config(args)
    caches = {}
    for kind in ("tokens", "pixels"):
        cfg = FaceViTTrainConfig(**base, variant="h2l" if kind == "tokens" else "v")
        caches[kind] = build_cache(cfg, args.device, progress=True)
    print(f"caches: {caches['tokens']['inputs'].shape[0]} training images, tokens "
          f"{tuple(caches['tokens']['inputs'].shape[1:])} ({time.perf_counter() - t0:.0f} s)")
    models, times = [], {}
    for name, variant, depth, heads in model_grid(args.all, args.with_v):
        folder = os.path.join(args.out, f"{variant}_d{depth}_h{heads}")
        cfg = FaceViTTrainConfig(**base, variant=variant, depth=depth, heads=heads)
        t = time.perf_counter()
        out = train_facevit(cfg, folder, device=args.device, cache=caches["pixels" if variant == "v" else "tokens"],
                            progress=False)
        times[folder] = time.perf_counter() - t
        models.append((name, variant, depth, heads, out["model"].cpu().eval()))
        print(f"trained {name} d{depth} h{heads}: {out['step']} steps, {times[folder]:.0f} s")
    data = held_out(enc, args)
    ver = verification(models, data, args)
    h2l_rows = [r for r in ver if r["variant"] == "h2l"]
    best = max(h2l_rows, key=lambda r: r["acc_mask"] + r["acc_clean"])
    h2l = next(m[4] for m in models if (m[1], m[2], m[3]) == ("h2l", best["depth"], best["heads"]))
    ident = identification(h2l, data, enc, args)
    fig = heat_maps(h2l, data, enc, os.path.join(args.out, "heatmaps.png"))
    results = {"args": vars(args), "verification": ver, "identification": ident, "k": args.k,
               "h2l": {"depth": best["depth"], "heads": best["heads"]}, "train_seconds": times,
               "total_seconds": time.perf_counter() - t0, "heatmaps": fig}
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    with open(os.path.join(args.out, "facevit_results.md"), "w") as fh:
        fh.write(markdown(results))
    print(markdown(results))
    print(f"total {results['total_seconds'] / 60:.1f} min; {args.out}/results.json, facevit_results.md, heatmaps.png")


if __name__ == "__main__":
    main()

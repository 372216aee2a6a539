"""DeepFace-EMD's experiments (dissertation tables 5.2-5.4) on SynthFaces or an image folder.

`fastface eval emd-experiments --out DIR` writes DIR/experiments.md, DIR/results.json and plots:
- Table 5.2: ST1 vs ST2 for each weighting x grid (8x8, 4x4), on clean and cropped queries;
- the alpha sweep {0, 0.3, 0.5, 0.7, 1} per occlusion;
- Table 5.3: EMD at stage 1 (whole gallery ranked by EMD) vs the 2-stage method, accuracy and time;
- Table 5.4: occlusions none / mask / sunglasses / crop, ST1 vs ST2 (8x8, APC, alpha 0.7).
"""
import json
import os
import time

import torch

from .identification import evaluate_identification, extract_features
from .jobs import WEIGHTINGS, format_report, make_faces, occlude_queries, public, synthfaces_split

OCCLUSIONS = ("none", "mask", "sunglasses", "crop")
ALPHAS = (0.0, 0.3, 0.5, 0.7, 1.0)


def _load(backbone, images, n_identities, device, progress):
    """Encoder, gallery (images, landmarks, labels) and query base set; exclude_self for folders."""
    from ..backbones import load_encoder
    from ..data import scan_image_folder
    enc = load_encoder(backbone, device)
    if images is None:
        sp = synthfaces_split(n_identities=n_identities, size=enc.image_size, channels=enc.channels)
        return enc, sp["gallery"], sp["queries"], False, f"SynthFaces held-out split ({n_identities} identities)"
    paths, labels, _ = scan_image_folder(images)
    data = enc.load_images(paths, progress=progress)
    g = (data["images"], data["landmarks68"], torch.tensor(labels)[data["source"]])
    return enc, g, g, True, f"{images} (leave-one-out, {len(g[2])} faces)"


def synthfaces_check(enc, n_identities=200, train_per_identity=20, test_per_identity=4, seed=0):
    """Is SynthFaces identity learnable but not trivial? Closed-set identification of held-out images
    of the training identities (seed 0): a linear (ridge) classifier on pixels and nearest class
    mean (NCM) on pixels vs NCM on the backbone's embedding, clean and occluded. Returns rows."""
    from ..data import SynthFaces
    per = train_per_identity + test_per_identity
    ds = SynthFaces(n_identities=n_identities, images_per_identity=per, size=enc.image_size,
                    channels=enc.channels, seed=seed)
    tr = [i * per + j for i in range(n_identities) for j in range(train_per_identity)]
    te = [i * per + j for i in range(n_identities) for j in range(train_per_identity, per)]
    a, b = ds.render_batch(tr), ds.render_batch(te)
    ytr, yte = a["identity"].long(), b["identity"].long()

    def ncm(ftr, fte):
        f = torch.nn.functional.normalize
        means = f(torch.zeros(n_identities, ftr.shape[1], dtype=ftr.dtype).index_add_(0, ytr, f(ftr, dim=1)), dim=1)
        return ((f(fte, dim=1) @ means.T).argmax(1) == yte).float().mean().item()

    xtr, xte = a["image"].flatten(1).double(), b["image"].flatten(1).double()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    # a linear classifier on standardised pixels: one-vs-all ridge regression, solved in the dual
    # (n x n system; n = training images) with ridge = 1e-2 * mean squared norm
    gram = xtr @ xtr.T
    lam = 1e-2 * gram.diagonal().mean()
    onehot = torch.nn.functional.one_hot(ytr, n_identities).double()
    coef = torch.linalg.solve(gram + lam * torch.eye(len(ytr), dtype=gram.dtype), onehot)
    lin_train = ((gram @ coef).argmax(1) == ytr).float().mean().item()
    lin_test = ((xte @ xtr.T @ coef).argmax(1) == yte).float().mean().item()
    rows = [("linear (ridge) classifier on pixels (train accuracy %.1f %%)" % (100 * lin_train), "none", lin_test),
            ("nearest class mean on pixels", "none", ncm(a["image"].flatten(1), b["image"].flatten(1)))]
    emb_tr, _ = extract_features(enc, a["image"])
    for occ in OCCLUSIONS:
        img, _ = occlude_queries(b["image"], b["landmarks68"], occ)
        emb_te, _ = extract_features(enc, img)
        rows.append((f"nearest class mean on {enc.name.split('/')[-1]} embeddings", occ, ncm(emb_tr, emb_te)))
    return rows


def run_emd_experiments(out_dir, backbone="arcface", images=None, n_identities=100, k=100, device="cpu",
                        progress=True, plots=True, check_identities=200, echo=print, protocol="official"):
    """Run all tables; return the results dict (also written to out_dir/results.json).
    protocol: "official" (default: the tables are compared with the dissertation's) or "strict"
    (eval.identification); the tables say which."""
    t_start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    enc, (g_img, g_lm, g_lab), (q_img0, q_lm0, q_lab), loo, what = _load(backbone, images, n_identities,
                                                                            device, progress)
    g_emb, g_map = extract_features(enc, g_img, progress=progress, desc="gallery features")
    queries = {}
    for occ in OCCLUSIONS:
        q_img, q_lm = occlude_queries(q_img0, q_lm0, occ)
        queries[occ] = extract_features(enc, q_img, progress=False) + (q_lm,)
    grids = [gr for gr in (8, 4) if enc.grid % gr == 0]

    def run(occ, grid=8, weighting="apc", alpha=0.7, emd_stage1=False, setting=""):
        qe, qm, ql = queries[occ]
        res = evaluate_identification(make_faces(qe, qm, ql, enc.image_size, grid),
                                      make_faces(g_emb, g_map, g_lm, enc.image_size, grid), q_lab, g_lab,
                                      k=k, alpha=alpha, weighting=weighting,
                                      exclude_self=loo and (protocol == "strict" or occ == "none"),
                                      emd_stage1=emd_stage1, protocol=protocol)
        res.update(setting=setting, occlusion=occ, grid=grid, weighting=weighting, alpha=alpha)
        return public(res)

    def usable(weighting):  # CC needs embeddings with as many dims as the patches have channels
        return weighting != "cc" or g_emb.shape[1] == g_map.shape[1]

    check = synthfaces_check(enc, check_identities) if images is None and check_identities else []
    results = {"data": what, "backbone": enc.name, "k": k, "protocol": protocol, "table_5_2": [], "alpha_sweep": [],
               "table_5_3": [], "table_5_4": []}
    sections = [f"# DeepFace-EMD experiments: {what}, backbone {enc.name}, k = {k}", "",
                f"Stage 1 = cosine on the embedding; stage 2 = re-rank of the top-{k} by "
                f"alpha*EMD + (1-alpha)*(1-cos). Metrics in %. `max prec.` = P@1 of a perfect re-ranking.",
                "", f"Protocol: **{protocol}** (" + ("each query's top-k list is scored; leave-one-out removes the "
                "query" if protocol == "strict" else "as the official DeepFace-EMD code: the whole ranking is scored, "
                "the query counts in R and is ranked last, occluded queries keep their clean original") + ")."]
    if check:
        results["synthfaces_check"] = [{"model": m, "occlusion": o, "accuracy": acc} for m, o, acc in check]
        sections += ["", f"### SynthFaces check: closed-set identification of held-out images ({check_identities} "
                     f"training identities, 20 images each to fit, 4 to test; chance {100 / check_identities:.1f} %)", "",
                     "| model | test queries | accuracy % |", "|---|---|---|"]
        sections += [f"| {m} | {o} | {100 * acc:.1f} |" for m, o, acc in check]
        echo("\n".join(sections[-len(check) - 3:]))
    for occ in ("none", "crop"):
        rows = [run(occ, grid, w, setting=f"{w} {grid}x{grid}") for grid in grids for w in WEIGHTINGS
                if usable(w)]
        results["table_5_2"] += rows
        sections += ["", format_report(rows, f"Table 5.2 structure: weighting x grid, queries: {occ}")]
        echo(sections[-1])
    for occ in OCCLUSIONS:
        rows = [run(occ, alpha=a, setting=f"{occ}, alpha {a}") for a in ALPHAS]
        results["alpha_sweep"] += rows
    sections += ["", format_report(results["alpha_sweep"], "alpha sweep (8x8, APC)")]
    echo(sections[-1])
    rows = []
    for w in ("uniform", "apc", "sc"):
        rows.append(run("none", weighting=w, alpha=1.0, emd_stage1=True, setting=f"EMD at stage 1, {w}"))
        rows.append(run("none", weighting=w, setting=f"2-stage (alpha 0.7), {w}"))
    results["table_5_3"] = rows
    sections += ["", format_report(rows, "Table 5.3 structure: EMD at stage 1 vs 2-stage (8x8, clean queries)"),
                 "", "For EMD at stage 1 the `stage 2` columns are the ranking by EMD alone over the whole "
                 "gallery and its time; `stage 1` columns are the cosine baseline."]
    echo(sections[-3])
    rows = [run(occ, setting=f"{occ}") for occ in OCCLUSIONS]
    results["table_5_4"] = rows
    sections += ["", format_report(rows, "Table 5.4 structure: occluded queries (8x8, APC, alpha 0.7)")]
    echo(sections[-1])
    if plots:
        sections += ["", *_plots(out_dir, results)]
    results["total_s"] = time.perf_counter() - t_start
    sections += ["", f"Total time {results['total_s']:.1f} s."]
    with open(os.path.join(out_dir, "experiments.md"), "w") as fh:
        fh.write("\n".join(sections) + "\n")
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    echo(f"\nwrote {out_dir}/experiments.md and results.json ({results['total_s']:.1f} s)")
    return results


def _plots(out_dir, results):
    """alpha-sweep lines and ST1-vs-ST2 bars (matplotlib); returns markdown lines."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(plots skipped: matplotlib is not installed)"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for occ in OCCLUSIONS:
        rows = [r for r in results["alpha_sweep"] if r["occlusion"] == occ]
        ax.plot([r["alpha"] for r in rows], [100 * r["stage2"]["p_at_1"] for r in rows], "o-", label=occ)
    ax.set_xlabel("alpha (weight of EMD)")
    ax.set_ylabel("P@1 (%)")
    ax.set_title("alpha sweep, 8x8 APC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "alpha_sweep.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    rows = results["table_5_4"]
    x = torch.arange(len(rows)).float()
    ax.bar(x - 0.2, [100 * r["stage1"]["p_at_1"] for r in rows], 0.4, label="ST1 (cosine)")
    ax.bar(x + 0.2, [100 * r["stage2"]["p_at_1"] for r in rows], 0.4, label="ST2 (EMD re-rank)")
    ax.set_xticks(x.tolist(), [r["occlusion"] for r in rows])
    ax.set_ylabel("P@1 (%)")
    ax.set_title("occluded queries")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "occlusions.png"), dpi=120)
    plt.close(fig)
    return ["![alpha sweep](alpha_sweep.png) ![occlusions](occlusions.png)"]

"""The jobs behind `fastface identify` and `fastface demo`: data -> features -> ST1 vs ST2 -> report."""
import json
import os
import time

import torch

from .identification import evaluate_identification, landmarks_to_grid, pool_patches


def make_faces(emb, fmap, landmarks68, image_size, grid):
    """Faces with patches pooled to grid x grid and landmarks in patch-grid units."""
    from ..ops.rerank import Faces
    patches = pool_patches(fmap, grid)
    lm = None if landmarks68 is None else landmarks_to_grid(landmarks68, image_size, grid).to(emb.device)
    return Faces(emb, patches, lm)


def occlude_queries(images, landmarks68, kind, seed=0):
    from ..data import occlude
    if kind in (None, "none"):
        return images, landmarks68
    gen = torch.Generator().manual_seed(seed)
    return occlude(images, landmarks68, kind, generator=gen, return_landmarks=True)


def format_report(rows, title):
    """Markdown table of ST1 vs ST2 rows (dicts from evaluate_identification, plus 'setting')."""
    lines = [f"### {title}", "",
             "| setting | ST1 P@1 | ST1 R-Prec | ST1 MAP@R | ST2 P@1 | ST2 R-Prec | ST2 MAP@R | max prec. | "
             "stage 1 s | stage 2 s |", "|---" * 10 + "|"]
    for r in rows:
        a, b = r["stage1"], r["stage2"]
        lines.append(f"| {r['setting']} | {100 * a['p_at_1']:.2f} | {100 * a['r_precision']:.2f} | "
                     f"{100 * a['map_at_r']:.2f} | {100 * b['p_at_1']:.2f} | {100 * b['r_precision']:.2f} | "
                     f"{100 * b['map_at_r']:.2f} | {100 * r['max_precision']:.2f} | {r['time_stage1_s']:.3f} | "
                     f"{r['time_stage2_s']:.3f} |")
    return "\n".join(lines)


def public(result):
    """The JSON-able part of an evaluate_identification result."""
    return {k: v for k, v in result.items() if not isinstance(v, torch.Tensor)}


def pair_weights(query, i, gallery, indices, weighting):
    """Patch weights of query i against gallery rows `indices` (k,): (wq (k, n), wg (k, m)), as EMD used them."""
    from ..ops.weights import patch_weights
    idx = torch.as_tensor(indices, device=gallery.patches.device).long()
    k = idx.shape[0]
    lm = {}
    if weighting == "lmk":
        lm = dict(x_landmarks=query.landmarks[i:i + 1].expand(k, -1, -1), y_landmarks=gallery.landmarks[idx],
                  grid=query.grid)
    return patch_weights(query.patches[i:i + 1].expand(k, -1, -1), gallery.patches[idx], weighting,
                         x_embedding=query.embeddings[i:i + 1].expand(k, -1), y_embedding=gallery.embeddings[idx], **lm)


def write_flow_figures(out_dir, result, query_images, gallery_images, query_labels, gallery_labels,
                       grid, n, query=None, gallery=None, weighting="apc", prefix="query"):
    """Write rerank figures (ST1 row, ST2 row, flow reconstructions, and the patch-weight heat maps
    when the Faces are given) for the first n queries."""
    from ..viz import rerank_figure, save_png
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(min(n, result["flows"].shape[0])):
        weights = None if query is None else pair_weights(query, i, gallery, result["stage2_indices"][i], weighting)
        fig = rerank_figure(query_images[i], gallery_images, result["stage1_indices"][i],
                            result["stage2_indices"][i], result["flows"][i], grid, weights=weights,
                            query_label=int(query_labels[i]), gallery_labels=gallery_labels)
        path = os.path.join(out_dir, f"{prefix}_{i:04d}.png")
        save_png(path, fig)
        paths.append(path)
    return paths


def vit_output_tokens(model, x1, x2):
    """The model's encoder output tokens of each image of the pairs (x1[i], x2[i]), (P, n, dim) twice: the
    2-image variants see both images at once; h1 encodes each image alone."""
    if model.cfg.two_image:
        return model.output_tokens(x1, x2)
    return tuple(model.encode(model.sequence(model.tokens(x, name)))[:, 1:] for x, name in ((x1, "x1"), (x2, "x2")))


def write_heatmap_figures(out_dir, result, query_images, gallery_images, query_labels, gallery_labels, grid, n,
                          query, gallery, model, top=5, prefix="query"):
    """The Face-ViT counterpart of write_flow_figures: ST1 row, ST2 row and the cross-correlation heat maps
    (section 5.3.3) of the query and each of its top stage-2 candidates from the model's output tokens."""
    from ..viz import save_png
    from ..viz.heatmaps import cross_correlation, rerank_heatmap_figure
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    device = next(model.parameters()).device
    for i in range(min(n, result["stage2_indices"].shape[0])):
        cand = result["stage2_indices"][i][:top]
        x2 = gallery.patches[cand.to(gallery.patches.device)].to(device)               # (t, n, C)
        x1 = query.patches[i:i + 1].to(device).expand(len(cand), -1, -1)
        with torch.no_grad():
            maps_q, maps_g = cross_correlation(*vit_output_tokens(model, x1, x2))      # (t, n) each
        fig = rerank_heatmap_figure(query_images[i], gallery_images, result["stage1_indices"][i], cand,
                                    maps_q.cpu(), maps_g.cpu(), grid, query_label=int(query_labels[i]),
                                    gallery_labels=gallery_labels, top=top)
        path = os.path.join(out_dir, f"{prefix}_{i:04d}.png")
        save_png(path, fig)
        paths.append(path)
    return paths


def load_reranker(spec, enc, grid, device):
    """None for "emd"; the FaceViT of "facevit:MODEL" on device, after checking that it reads the tokens
    --backbone and --grid give (grid x grid patches of the encoder's channels). Reads no image."""
    if not isinstance(spec, str) or not (spec == "emd" or spec.startswith("facevit:")):
        raise ValueError(f"reranker must be emd or facevit:MODEL (a `fastface train facevit` model.pt), got {spec!r}")
    if spec == "emd":
        return None
    path = spec.split(":", 1)[1]
    if not os.path.isfile(path):
        raise ValueError(f"reranker {spec}: no such file {path!r}")
    from ..models.serialization import load
    from ..ops.vit_rerank import check_vit_model
    model = load(path, device, kind="facevit")
    cfg = check_vit_model(model, f"reranker {spec}")
    if (cfg.token_dim, cfg.grid) != (enc.map_channels, grid):
        raise ValueError(f"reranker {spec} was trained on {cfg.grid}x{cfg.grid}x{cfg.token_dim} tokens (backbone "
                         f"{cfg.backbone or 'not recorded'}), but --backbone {enc.name} with --grid {grid} gives "
                         f"{grid}x{grid}x{enc.map_channels} patches")
    return model


def pick_fixed_query(result, query_labels, gallery_labels):
    """Index of a query that stage 2 gets right and stage 1 wrong (else one both get right, else 0)."""
    g = torch.as_tensor(gallery_labels)
    q = torch.as_tensor(query_labels)
    ok1 = g[result["stage1_indices"][:, 0]] == q
    ok2 = g[result["stage2_indices"][:, 0]] == q
    for mask in (ok2 & ~ok1, ok2):
        hits = mask.nonzero().flatten()
        if len(hits):
            return int(hits[0])
    return 0


WEIGHTINGS = ("uniform", "apc", "sc", "cc", "lmk")


def check_identify_args(enc, *, k, alpha, weighting, grid, eps, max_iter, batch_size, n_flows, occlude,
                        protocol, all_faces):
    """Validate identify's arguments against the encoder before any image is decoded."""
    import math

    from ..data import OCCLUSIONS
    from ..data._args import as_int
    from .identification import PROTOCOLS
    as_int("k", k, min_value=1)
    as_int("max_iter", max_iter, min_value=1)
    as_int("batch_size", batch_size, min_value=1)
    as_int("n_flows", n_flows, min_value=0)
    grid = as_int("grid", grid, min_value=1)
    for name, value, lo, hi in (("alpha", alpha, 0.0, 1.0), ("eps", eps, 0.0, math.inf)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not (lo <= value <= hi and math.isfinite(value)) or (name == "eps" and value <= 0):
            raise ValueError(f"{name} must be {'in [0, 1]' if name == 'alpha' else 'a finite number > 0'}, got {value}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if occlude not in OCCLUSIONS:
        raise ValueError(f"occlude must be one of {OCCLUSIONS}, got {occlude!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if enc.grid % grid:
        raise ValueError(f"grid {grid} does not divide backbone {enc.name}'s {enc.grid}x{enc.grid} patch map "
                         f"(use --grid {enc.grid} or a divisor of it)")
    if weighting == "cc" and enc.embedding_dim != enc.map_channels:
        raise ValueError(f"weighting 'cc' needs embeddings with as many dimensions as the patches have channels; "
                         f"backbone {enc.name} has {enc.embedding_dim} and {enc.map_channels}")
    if all_faces and not enc.detects:
        raise ValueError(f"all_faces needs face detection: backbone {enc.name} reads aligned faces "
                         "(use --backbone dlib or --align dlib)")


def ranked_lists(res, i, names, paths, labels, stage2_score="emd"):
    """Query i's top-k of both stages: [{identity, path, score...}] in rank order; stage2_score names the
    stage-2 distance (emd, or vit: the Face-ViT's 1 - s)."""
    def item(j, **scores):
        return {"identity": names[int(labels[j])], "path": paths[j], **{k: float(v) for k, v in scores.items()}}
    s1 = [item(int(j), cosine=c) for j, c in zip(res["stage1_indices"][i], res["stage1_cosine"][i])]
    s2 = [item(int(j), distance=d, **{stage2_score: e}, cosine=c) for j, d, e, c in
          zip(res["stage2_indices"][i], res["stage2_distance"][i], res["stage2_emd"][i], res["stage2_cosine"][i])]
    return s1, s2


def run_identify(gallery, queries=None, backbone="dlib", occlude="none", k=100, alpha=0.7,
                 weighting="apc", grid=8, eps=0.05, max_iter=100, device="cpu", batch_size=64,
                 json_out=None, flows_dir=None, n_flows=8, impl="auto", progress=True, echo=print,
                 protocol="strict", all_faces=False, align="none", reranker="emd"):
    """`fastface identify`: image folders (DIR/<identity>/<image>); leave-one-out when queries is None.

    Unreadable files are skipped and counted (n_unreadable), as are files without a detected face
    (n_unaligned); all_faces uses every detected face of a file (each labelled with its folder's
    identity), else the largest. protocol "official" scores as the public DeepFace-EMD code does
    (eval.identification); with occlusions in leave-one-out it keeps each query's clean original in
    the gallery, as the official protocol does. reranker: "emd" or "facevit:MODEL" (fastface.vit_rerank at
    stage 2; --flows then draws the model's cross-correlation heat maps)."""
    from ..backbones import load_encoder
    from ..data import scan_image_folder
    enc = load_encoder(backbone, device, align)
    check_identify_args(enc, k=k, alpha=alpha, weighting=weighting, grid=grid, eps=eps, max_iter=max_iter,
                        batch_size=batch_size, n_flows=n_flows, occlude=occlude, protocol=protocol,
                        all_faces=all_faces)
    model = load_reranker(reranker, enc, grid, device)
    g_paths, g_labels, g_names = scan_image_folder(gallery)
    if queries is not None:
        q_paths, q_lab, q_names = scan_image_folder(queries)
    need_landmarks = occlude != "none" or weighting == "lmk"
    load = lambda paths: enc.load_images(paths, progress=progress, all_faces=all_faces, landmarks=need_landmarks)
    t0 = time.perf_counter()
    g = load(g_paths)
    names = list(g_names)
    if queries is None:
        q, q_paths = g, g_paths
        q_labels = g_labels = torch.tensor(g_labels)[g["source"]]
    else:
        # identities are matched by folder name; unknown names get fresh labels (no relevant faces)
        names += sorted(set(q_names) - set(g_names))
        label_of = {n: i for i, n in enumerate(names)}
        q = load(q_paths)
        q_labels = torch.tensor([label_of[q_names[l]] for l in q_lab], dtype=torch.int64)[q["source"]]
        g_labels = torch.tensor(g_labels)[g["source"]]
    n_unreadable = len(g["unreadable"]) + (0 if queries is None else len(q["unreadable"]))
    n_dropped = g["n_no_face"] + (0 if queries is None else q["n_no_face"])
    if len(g_labels) == 0 or len(q_labels) == 0:
        raise ValueError(f"no usable faces: {n_unreadable} unreadable files, {n_dropped} without a detected face")
    t_load = time.perf_counter() - t0
    q_images, q_lm = occlude_queries(q["images"], q["landmarks68"], occlude)
    # leave-one-out: strict removes the query; official keeps an occluded query's clean original
    exclude_self = queries is None and not (protocol == "official" and occlude != "none")
    t0 = time.perf_counter()
    from .identification import extract_features
    g_emb, g_map = extract_features(enc, g["images"], batch_size, progress, "gallery features")
    if queries is None and occlude in (None, "none"):
        q_emb, q_map = g_emb, g_map
    else:
        q_emb, q_map = extract_features(enc, q_images, batch_size, progress, "query features")
    t_feat = time.perf_counter() - t0
    gallery_faces = make_faces(g_emb, g_map, g["landmarks68"], enc.image_size, grid)
    query_faces = make_faces(q_emb, q_map, q_lm, enc.image_size, grid)
    res = evaluate_identification(query_faces, gallery_faces, q_labels, g_labels, k=k, alpha=alpha,
                                  weighting=weighting, eps=eps, max_iter=max_iter, exclude_self=exclude_self,
                                  batch_size=batch_size, impl=impl, progress=progress,
                                  keep_flows=n_flows if flows_dir else 0, protocol=protocol, reranker=model)
    stage2 = weighting if model is None else reranker
    res.update(setting=f"{enc.name} occlude={occlude} grid={grid} {stage2} alpha={alpha}", reranker=reranker,
               time_load_s=t_load, time_features_s=t_feat, n_unaligned=n_dropped, n_unreadable=n_unreadable,
               unreadable=g["unreadable"] + ([] if queries is None else q["unreadable"]),
               backbone=backbone, occlude=occlude, grid=grid, weighting=weighting, alpha=alpha,
               all_faces=all_faces, align=align)
    leave = " (leave-one-out)" if queries is None else ""
    echo(format_report([res], f"fastface identify: {len(q_labels)} queries, {len(g_labels)} gallery faces, "
                              f"k={res['k']}, protocol {protocol}{leave}"))
    skipped = [f"{n_dropped} images without a detected face skipped" if n_dropped else "",
               f"{n_unreadable} unreadable files skipped" if n_unreadable else ""]
    echo(f"\nload {t_load:.2f} s, features {t_feat:.2f} s, stage 1 {res['time_stage1_s']:.3f} s, "
         f"stage 2 {res['time_stage2_s']:.3f} s ({res['ms_per_query_stage2']:.2f} ms/query)"
         + "".join(f"; {m}" for m in skipped if m))
    q_face_paths = [q_paths[i] for i in q["source"].tolist()]
    g_face_paths = [g_paths[i] for i in g["source"].tolist()]
    if flows_dir and model is None:
        paths = write_flow_figures(flows_dir, res, q_images, g["images"], q_labels, g_labels, grid, n_flows,
                                   query_faces, gallery_faces, weighting)
        echo(f"flow figures: {len(paths)} PNGs in {flows_dir}")
    elif flows_dir:
        paths = write_heatmap_figures(flows_dir, res, q_images, g["images"], q_labels, g_labels, grid, n_flows,
                                      query_faces, gallery_faces, model)
        echo(f"heat-map figures: {len(paths)} PNGs in {flows_dir}")
    if json_out:
        out = public(res)
        out["queries"] = []
        for i in range(len(q_labels)):
            s1, s2 = ranked_lists(res, i, names, g_face_paths, g_labels, "emd" if model is None else "vit")
            out["queries"].append({"path": q_face_paths[i], "identity": names[int(q_labels[i])],
                                   "stage1": s1, "stage2": s2})
        with open(json_out, "w") as fh:
            json.dump(out, fh, indent=2)
        echo(f"wrote {json_out}")
    return res


def synthfaces_split(n_identities=100, gallery_per_identity=10, queries_per_identity=2, size=64, channels=3,
                     seed=1):
    """A held-out SynthFaces identification split: unseen identities (seed != the training seed).

    Returns dict(gallery=(images, landmarks68, labels), queries=(images, landmarks68, labels))."""
    from ..data import SynthFaces
    per = gallery_per_identity + queries_per_identity
    ds = SynthFaces(n_identities=n_identities, images_per_identity=per, size=size, channels=channels, seed=seed)
    g_idx = [i * per + j for i in range(n_identities) for j in range(gallery_per_identity)]
    q_idx = [i * per + j for i in range(n_identities) for j in range(gallery_per_identity, per)]
    g, q = ds.render_batch(g_idx), ds.render_batch(q_idx)
    return {"gallery": (g["image"], g["landmarks68"], g["identity"].long()),
            "queries": (q["image"], q["landmarks68"], q["identity"].long())}


def run_demo(out_dir="fastface-demo", backbone="arcface", images=None, occlusions=("none", "mask", "sunglasses", "crop"),
             k=100, alpha=0.7, weighting="apc", grid=8, device="cpu", n_identities=100, progress=True, echo=print):
    """`fastface demo`: SynthFaces gallery + occluded queries (or an image folder with --images),
    features from the shipped checkpoint (or dlib), ST1 vs ST2 per occlusion, a flow PNG."""
    from ..backbones import load_encoder
    t_start = time.perf_counter()
    enc = load_encoder(backbone, device)
    os.makedirs(out_dir, exist_ok=True)
    if images is not None:  # a real image folder: leave-one-out over it, per occlusion
        rows = []
        for occ in occlusions:
            rows.append(run_identify(images, None, backbone=backbone, occlude=occ, k=k, alpha=alpha,
                                     weighting=weighting, grid=min(grid, enc.grid), device=device,
                                     flows_dir=os.path.join(out_dir, f"flows_{occ}"), n_flows=2,
                                     progress=progress, echo=lambda *_: None))
            rows[-1]["setting"] = f"occlusion: {occ}"
        echo(format_report(rows, f"fastface demo on {images} ({backbone}, leave-one-out)"))
        _save_json(os.path.join(out_dir, "demo.json"), rows)
        echo(f"\ntotal {time.perf_counter() - t_start:.1f} s; figures and demo.json in {out_dir}")
        return rows
    split = synthfaces_split(n_identities=n_identities, size=enc.image_size, channels=enc.channels)
    g_img, g_lm, g_lab = split["gallery"]
    q_img0, q_lm0, q_lab = split["queries"]
    echo(f"SynthFaces held-out split (seed 1, identities unseen in training): {len(g_lab)} gallery faces, "
         f"{len(q_lab)} queries per occlusion; backbone {backbone}; grid {grid}x{grid}, {weighting}, "
         f"alpha {alpha}, k {k}")
    from .identification import extract_features
    t0 = time.perf_counter()
    g_emb, g_map = extract_features(enc, g_img, progress=progress, desc="gallery features")
    echo(f"gallery features: {time.perf_counter() - t0:.2f} s")
    gallery = make_faces(g_emb, g_map, g_lm, enc.image_size, grid)
    rows, figures = [], []
    for occ in occlusions:
        q_img, q_lm = occlude_queries(q_img0, q_lm0, occ)
        q_emb, q_map = extract_features(enc, q_img, progress=False)
        query = make_faces(q_emb, q_map, q_lm, enc.image_size, grid)
        res = evaluate_identification(query, gallery, q_lab, g_lab, k=k, alpha=alpha, weighting=weighting,
                                      progress=progress)
        res["setting"] = f"occlusion: {occ}"
        i = pick_fixed_query(res, q_lab, g_lab)   # flows of that one query only (B x k x n x m is large)
        from ..ops.rerank import Faces, emd_rerank
        one = emd_rerank(Faces(query.embeddings[i:i + 1], query.patches[i:i + 1], query.landmarks[i:i + 1]),
                         gallery, k=res["k"], alpha=alpha, weighting=weighting, return_flows=True)
        from ..viz import rerank_figure, save_png
        fig = rerank_figure(q_img[i], g_img, res["stage1_indices"][i], one.indices[0], one.flows[0], grid,
                            weights=pair_weights(query, i, gallery, one.indices[0], weighting),
                            query_label=int(q_lab[i]), gallery_labels=g_lab, scale=2)
        path = os.path.join(out_dir, f"flow_{occ}.png")
        save_png(path, fig)
        figures.append(path)
        rows.append(res)
    echo(format_report(rows, "ST1 (cosine) vs ST2 (EMD re-rank), %"))
    _save_json(os.path.join(out_dir, "demo.json"), rows)
    echo(f"\nflow figures: {', '.join(figures)}\ntotal {time.perf_counter() - t_start:.1f} s")
    return rows


def _save_json(path, rows):
    with open(path, "w") as fh:
        json.dump([public(r) for r in rows], fh, indent=2)

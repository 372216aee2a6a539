"""The `fastface` command."""
import argparse
import json
import sys


def cmd_info(args):
    import fastface
    info = fastface.backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastface {info['version']}  (torch {info['torch']}, {info['threads']} CPU threads)")
    print(f"  C++ CPU kernels : {'yes' if info['cpu'] else 'NO (' + str(info['cpu_error']) + ')'}"
          f"{'  [OpenMP]' if info['openmp'] else ''}")
    if info["cpu"]:
        path = info["cpu_isa"] or f"none: {info['cpu_isa_error']}"
        bf16 = ", bf16 dot products" if info["cpu_avx512_bf16"] else ""
        print(f"  CPU code path   : {path}{bf16} (built: {', '.join(info['cpu_isas_built'])}; this CPU runs: "
              f"{', '.join(info['cpu_isas_supported'])}; FASTFACE_CPU_ISA picks one)")
    built = f"yes (CUDA {info['cuda_version']}, archs {info['archs']})" if info["cuda_built"] else "no"
    driver = f"; driver for CUDA {info['cuda_driver_version']}" if info["cuda_driver_version"] else ""
    print(f"  CUDA kernels    : built {built}{driver}; usable now: {'yes' if info['cuda_available'] else 'no'}")
    if info["cuda_built"] and info["cuda_unusable_reason"]:
        print(f"    why not: {info['cuda_unusable_reason']}")
    for i, name in enumerate(info["cuda_devices"]):
        print(f"    cuda:{i} {name}")
    print(f"  Triton backend  : {'yes' if info['triton'] else 'no (pip install fastface[triton])'}")
    print(f"  impl='auto' on GPU uses: {info['auto_gpu_impl']}")
    return 0


def cmd_train(args):
    import logging

    from .train import TRAINERS, fit
    from .train.distributed import teardown
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trainer_cls = TRAINERS[args.model]
    try:
        overrides = trainer_cls.Config.parse_overrides(args.set)
        if args.steps is not None:
            overrides["max_steps"] = args.steps
        if args.seed is not None:
            overrides["seed"] = args.seed
        if getattr(args, "generator", None):
            overrides["generator"] = args.generator
        cfg = (trainer_cls.Config.from_file(args.config, **overrides) if args.config
               else trainer_cls.Config.from_dict(overrides, source="--set"))
        trainer = fit(trainer_cls, cfg, args.out, device=args.device, workers=args.workers, progress=not args.quiet)
    except (ValueError, TypeError) as e:   # bad arguments, config or data: one line, no traceback
        print(f"fastface train {args.model}: error: {e}", file=sys.stderr)
        teardown()
        return 2
    if trainer.run.is_main:
        done = trainer.run.step >= trainer.run.total
        print(f"trained {trainer.run.step} of {trainer.run.total} steps; checkpoint {args.out}/last.pt, log "
              f"{args.out}/log.jsonl{f', model {args.out}/model.pt' if done else ''}")
    teardown()
    return 0


def _train_parsers(sub):
    """`fastface train MODEL`, one sub-command per implemented trainer; --help lists its config fields."""
    import argparse

    from .train import TRAINERS
    p = sub.add_parser("train", help=f"train a model ({', '.join(TRAINERS)}); also under torchrun -m fastface",
                       description="Train on the shared loop: rerunning the same command resumes from OUT/last.pt; "
                                   "the run ends with OUT/model.pt (fastface.load). Multi-GPU / multi-node: "
                                   "torchrun --nproc_per_node N -m fastface train MODEL ... (batch_size is per "
                                   "process; the global batch is batch_size x processes).")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    for name, cls in TRAINERS.items():
        doc = (cls.Config.__doc__ or "").strip()
        q = models.add_parser(name, help=f"train {name}", formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=doc, epilog="config fields (--set KEY=VALUE):\n" + cls.Config.help_text())
        q.add_argument("--config", help="JSON file of config fields" +
                       (" (or a packaged name: fc, arch1..arch7, r3an)" if name == "r3an" else ""))
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (repeatable; typed; see the list below)")
        q.add_argument("--out", required=True, help="output folder: last.pt, log.jsonl, model.pt; reruns resume")
        q.add_argument("--steps", type=int, help="stop after this many steps (config max_steps)")
        q.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available; under torchrun "
                                        "cuda:LOCAL_RANK)")
        q.add_argument("--seed", type=int, help="config seed")
        q.add_argument("--workers", type=int, help="data-loader worker processes per process (default: from the "
                                                   "CPU count)")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "inversion":
            q.add_argument("--generator", help="the generator to invert: a `fastface train gan` model.pt "
                                               "(config generator)")
    p.set_defaults(func=cmd_train)


def cmd_transform(args):
    from .models.transform import transform_file
    n = transform_file(args.model, args.features, args.out, chunk=args.chunk, batch_size=args.batch_size,
                       device=_device(args.device), progress=not args.quiet)
    print(f"transformed {n} features -> {args.out}")
    return 0


def cmd_sample(args):
    from .gan_sampling import run_sample
    try:
        run_sample(args.model, args.out, n=args.n, seed=args.seed, latents_out=args.latents,
                   device=_device(args.device), impl=args.impl, nrow=args.nrow, batch_size=args.batch_size)
    except (ValueError, TypeError) as e:   # bad arguments or model file: one line, no traceback
        print(f"fastface sample: error: {e}", file=sys.stderr)
        return 2
    print(f"sampled {args.n} faces -> {args.out}{f', latents {args.latents}' if args.latents else ''}")
    return 0


def cmd_invert(args):
    from .inversion import invert_folder
    try:
        res = invert_folder(args.model, args.images, args.out, refine=args.refine, generator=args.generator,
                            device=_device(args.device), batch_size=args.batch_size, perceptual=args.perceptual,
                            perceptual_weight=args.perceptual_weight, lr=args.lr)
    except (ValueError, TypeError) as e:   # bad arguments or files: one line, no traceback
        print(f"fastface invert: error: {e}", file=sys.stderr)
        return 2
    print(f"inverted {res['n']} images in {res['seconds']:.2f} s -> {args.out}/reconstructions, latents.npy, "
          f"grid.png")
    return 0


def cmd_edit(args):
    from .edit import parse_edits, run_edit
    try:
        report = run_edit(args.model, args.out, images=args.images, edits=parse_edits(args.attribute), n=args.n,
                          alpha_max=args.alpha_max, fit_identities=args.fit_identities, fit_images=args.fit_images,
                          steps=args.steps, seed=args.seed, device=_device(args.device))
    except (ValueError, TypeError) as e:   # bad arguments or files: one line, no traceback
        print(f"fastface edit: error: {e}", file=sys.stderr)
        return 2
    for name, e in report.get("edits", {}).items():
        print(f"{name} (f_{e['branch'].upper()}, alpha {e['alpha']:+g}): SVM score {e['score_before']:+.3f} -> "
              f"{e['score_after']:+.3f}")
    print(f"edited {report['n']} faces -> {args.out}/edits.png, swap.png, interpolation.png, directions.npz")
    return 0


def _device(name):
    import torch
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def cmd_identify(args):
    from .eval.jobs import run_identify
    if args.queries and args.leave_one_out:
        print("fastface identify: give --queries DIR or --leave-one-out, not both", file=sys.stderr)
        return 2
    try:
        run_identify(args.gallery, args.queries, backbone=args.backbone, occlude=args.occlude, k=args.k,
                     alpha=args.alpha, weighting=args.weighting, grid=args.grid, eps=args.eps,
                     max_iter=args.max_iter, device=_device(args.device), batch_size=args.batch_size,
                     json_out=args.json, flows_dir=args.flows, n_flows=args.n_flows, impl=args.impl,
                     progress=not args.quiet, protocol=args.protocol, all_faces=args.all_faces, align=args.align,
                     reranker=args.reranker)
    except (ValueError, TypeError) as e:   # bad arguments or data: one line, no traceback
        print(f"fastface identify: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args):
    from .eval.jobs import run_demo
    run_demo(out_dir=args.out, backbone=args.backbone, images=args.images, k=args.k, alpha=args.alpha,
             weighting=args.weighting, grid=args.grid, device=_device(args.device), progress=not args.quiet)
    return 0


def cmd_eval(args):
    from .eval.experiments import run_emd_experiments
    run_emd_experiments(args.out, backbone=args.backbone, images=args.images, n_identities=args.identities,
                        k=args.k, device=_device(args.device), progress=not args.quiet, protocol=args.protocol)
    return 0


def _protocol_arg(p, default="strict"):
    p.add_argument("--protocol", default=default, choices=["strict", "official"],
                   help="strict: score each query's top k, leave-one-out removes the query; official: as the "
                        "DeepFace-EMD code (whole ranking, the query counts in R and goes last, occluded queries "
                        "keep their clean original in the gallery)")


def _retrieval_args(p):
    p.add_argument("--k", type=int, default=100, help="stage-1 candidates re-ranked by EMD (default 100)")
    p.add_argument("--alpha", type=float, default=0.7, help="distance = alpha*EMD + (1-alpha)*(1-cos)")
    p.add_argument("--weighting", default="apc", choices=["apc", "uniform", "sc", "cc", "lmk"])
    p.add_argument("--grid", type=int, default=8, choices=[8, 4], help="patch grid (4 = 8x8 average-pooled)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ---- persistent galleries: `fastface gallery build|add|info|remove`, `fastface search` ----------
def cmd_gallery(args):
    from .gallery import Gallery
    from .gallery.builder import build_gallery
    try:
        if args.action == "build":
            g = build_gallery(args.out, args.images, args.backbone, csv=args.csv, grid=args.grid, index=args.index,
                              nlist=args.nlist, nprobe=args.nprobe, pca=args.pca, chunk=args.chunk,
                              batch_size=args.batch_size, workers=args.workers, device=_device(args.device),
                              align=args.align, all_faces=args.all_faces, progress=not args.quiet)
            rep = g.manifest["build_report"]
            print(f"built gallery {args.out}: {len(g)} faces of {g.manifest['n_identities']} identities from "
                  f"{rep['photos']} photos ({len(rep['unreadable'])} unreadable, {rep['no_face']} without a face)")
        elif args.action == "add":
            g = Gallery.load(args.gallery, verify="quick")
            rep = g.add_images(args.images, csv=args.csv, batch_size=args.batch_size, workers=args.workers,
                               device=_device(args.device), align=args.align, all_faces=args.all_faces,
                               progress=not args.quiet)
            print(f"added {rep['added']} faces to {args.gallery} (now {len(g)}); {len(rep['unreadable'])} unreadable, "
                  f"{rep['no_face']} without a face")
        elif args.action == "remove":
            g = Gallery.load(args.gallery, verify="quick")
            n = g.remove(items=args.items or None, identity=args.identity)
            print(f"removed {n} faces from {args.gallery} (now {len(g)})")
        else:
            g = Gallery.load(args.gallery, verify="full" if args.verify else "quick")
            info = g.info()
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for key, value in info.items():
                    print(f"{key:16s}: {value}")
    except (ValueError, TypeError, ImportError) as e:   # bad arguments, files or gallery: one line
        print(f"fastface gallery {args.action}: error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_search(args):
    import csv as csvlib

    from .gallery import Gallery
    if args.json and args.csv:
        print("fastface search: give --json OUT or --csv OUT, not both", file=sys.stderr)
        return 2
    try:
        g = Gallery.load(args.gallery, verify="quick")
        k = min(args.k, len(g))
        res = g.search(args.images, k=k, alpha=args.alpha, weighting=args.weighting, threshold=args.threshold,
                       nprobe=args.nprobe, batch_size=args.batch_size, device=_device(args.device), align=args.align,
                       impl=args.impl, progress=not args.quiet)
    except (ValueError, TypeError, ImportError) as e:
        print(f"fastface search: error: {e}", file=sys.stderr)
        return 2
    records = [res.record(i) for i in range(len(res))]
    for r in records:
        top = ", ".join(f"{t['identity']} {t['distance']:.3f}" for t in r["top_identities"])
        print(f"{r['query']}: {r['identity']} (distance {r['score']:.3f}){'' if r['known'] else ' [unknown]'}  top-5: {top}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"gallery": args.gallery, "k": k, "threshold": args.threshold, "queries": records}, fh, indent=1)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csvlib.writer(fh)
            w.writerow(["query", "identity", "distance", "known"] + [f"top{j}_{c}" for j in range(1, 6)
                                                                     for c in ("identity", "distance")])
            for r in records:
                tops = [v for t in r["top_identities"][:5] for v in (t["identity"], f"{t['distance']:.6f}")]
                w.writerow([r["query"], r["identity"], f"{r['score']:.6f}", r["known"]] + tops)
    return 0


def _gallery_parsers(sub):
    from .gallery import INDEX_KINDS
    p = sub.add_parser("gallery", help="persistent face galleries: build, add, remove, info")
    acts = p.add_subparsers(dest="action", required=True)
    b = acts.add_parser("build", help="build a gallery from photos DIR/<identity>/<image> (resumes if killed)")
    b.add_argument("--images", required=True, help="photos DIR/<identity>/<image>, or a flat folder with --csv")
    b.add_argument("--backbone", required=True, help="dlib, dlib:LEVEL, arcface, arcface:CKPT or arcface-official:PTH")
    b.add_argument("--out", required=True, help="the gallery directory to create")
    b.add_argument("--grid", type=int, help="patch grid (default the backbone's; a divisor average-pools)")
    b.add_argument("--index", default="flat", help=f"stage-1 index: {', '.join(INDEX_KINDS)} or faiss:FACTORY")
    b.add_argument("--nlist", type=int, help="IVF lists (default 4 sqrt(n))")
    b.add_argument("--nprobe", type=int, default=32, help="IVF lists searched (default 32)")
    b.add_argument("--pca", type=int, help="store this many PCA channels of the patches (fitted on the gallery)")
    b.add_argument("--chunk", type=int, default=256, help="photos per committed chunk (default 256)")
    for q in (b, acts.add_parser("add", help="add photos to a gallery (one atomic commit)")):
        if q is not b:
            q.add_argument("gallery")
            q.add_argument("--images", required=True, help="photos DIR/<identity>/<image>, or a flat folder with --csv")
        q.add_argument("--csv", help="CSV with columns path (relative to --images) and identity")
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--workers", type=int, default=0, help="processes decoding/aligning photos (default 0)")
        q.add_argument("--align", default="none", choices=["none", "dlib"])
        q.add_argument("--all-faces", action="store_true", help="every detected face of a photo")
        q.add_argument("--device")
        q.add_argument("--quiet", action="store_true")
        q.set_defaults(func=cmd_gallery)
    r = acts.add_parser("remove", help="remove faces (by item id) or an identity")
    r.add_argument("gallery")
    r.add_argument("--identity")
    r.add_argument("--items", type=int, nargs="*")
    r.set_defaults(func=cmd_gallery)
    i = acts.add_parser("info", help="what a gallery holds")
    i.add_argument("gallery")
    i.add_argument("--json", action="store_true")
    i.add_argument("--verify", action="store_true", help="check every file's checksums (reads the whole gallery)")
    i.set_defaults(func=cmd_gallery)
    s = sub.add_parser("search", help="who is in these photos? search a gallery (stage 1 index + EMD re-rank)")
    s.add_argument("gallery")
    s.add_argument("--images", required=True, help="a photo or a folder of photos (searched recursively)")
    s.add_argument("--k", type=int, default=100, help="stage-1 candidates re-ranked (default 100)")
    s.add_argument("--threshold", type=float, help="open set: a best distance above it answers 'unknown'")
    s.add_argument("--alpha", type=float, default=0.7)
    s.add_argument("--weighting", default="apc", choices=["apc", "uniform", "sc", "cc"])
    s.add_argument("--nprobe", type=int, help="IVF lists searched (default: the gallery's)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--align", default="none", choices=["none", "dlib"])
    s.add_argument("--impl", default="auto", choices=["auto", "cpu", "cuda", "triton", "torch"])
    s.add_argument("--device")
    s.add_argument("--json", help="write every query's ranked identities and items to this JSON file")
    s.add_argument("--csv", help="write one row per query (best identity, distance, top 5) to this CSV")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_search)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastface", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, what was built, what is usable now")
    p.add_argument("--json", action="store_true", help="print the backend_info() dict as JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="the main job on the embedded default: SynthFaces, shipped backbone, "
                                     "ST1 vs ST2 under occlusions, a flow PNG")
    p.add_argument("--backbone", default="arcface", help="arcface (shipped checkpoint), arcface:CKPT or dlib")
    p.add_argument("--images", help="an image folder DIR/<identity>/<image> instead of SynthFaces")
    p.add_argument("--out", default="fastface-demo", help="folder for the flow PNGs and demo.json")
    _retrieval_args(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("identify", help="two-stage identification on image folders: ST1 vs ST2 metrics")
    p.add_argument("--gallery", required=True, help="gallery image folder DIR/<identity>/<image>")
    p.add_argument("--queries", help="query image folder (identities matched by folder name)")
    p.add_argument("--leave-one-out", action="store_true",
                   help="each gallery face queries the rest (the default without --queries)")
    p.add_argument("--backbone", default="dlib",
                   help="dlib, dlib:LEVEL, arcface (shipped), arcface:CKPT or arcface-official:PATH "
                        "(DeepFace-EMD's resnet18_110.pth)")
    p.add_argument("--align", default="none", choices=["none", "dlib"],
                   help="arcface backbones: none = the images are aligned faces; dlib = detect faces and warp "
                        "them to the ArcFace template from dlib's 5-point landmarks")
    p.add_argument("--all-faces", action="store_true",
                   help="use every detected face of a photograph (default: the largest); needs detection")
    p.add_argument("--occlude", default="none", choices=["none", "mask", "sunglasses", "crop"],
                   help="occlusion applied to the queries")
    p.add_argument("--reranker", default="emd",
                   help="stage 2: emd (DeepFace-EMD, default) or facevit:MODEL (a `fastface train facevit` "
                        "model.pt trained on this backbone's patch maps at this --grid)")
    _protocol_arg(p)
    _retrieval_args(p)
    p.add_argument("--eps", type=float, default=0.05, help="Sinkhorn entropic regularisation")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--impl", default="auto", choices=["auto", "cpu", "cuda", "triton", "torch"])
    p.add_argument("--json", help="write the metrics and timings to this JSON file")
    p.add_argument("--flows", help="write flow figures (ST1/ST2 rows + flow reconstructions; with "
                   "--reranker facevit:MODEL the model's cross-correlation heat maps) here")
    p.add_argument("--n-flows", type=int, default=8, help="queries to draw with --flows (default 8)")
    p.set_defaults(func=cmd_identify)
    p = sub.add_parser("eval", help="experiments: emd-experiments = DeepFace-EMD tables 5.2-5.4")
    p.add_argument("experiment", choices=["emd-experiments"])
    p.add_argument("--out", required=True, help="folder for experiments.md, results.json and plots")
    p.add_argument("--backbone", default="arcface", help="arcface (shipped), arcface:CKPT or dlib")
    p.add_argument("--images", help="an image folder (leave-one-out) instead of SynthFaces")
    p.add_argument("--identities", type=int, default=100, help="SynthFaces held-out identities (default 100)")
    p.add_argument("--k", type=int, default=100)
    _protocol_arg(p, default="official")   # its tables are compared with the dissertation's
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)
    _train_parsers(sub)
    p = sub.add_parser("transform", help="R³AN: map source-model features to the target model's space "
                                         "(streams .npy files of any size)")
    p.add_argument("--model", required=True, help="a `fastface train r3an` checkpoint (model.pt or last.pt)")
    p.add_argument("--features", required=True, help="input .npy (N, source_dim), memory-mapped")
    p.add_argument("--out", required=True, help="output .npy (N, target_dim) float32")
    p.add_argument("--chunk", type=int, default=65536, help="rows read per chunk (bounds memory)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_transform)
    p = sub.add_parser("sample", help="GAN: draw faces from a `fastface train gan` generator (FusedGenerator) "
                                      "into a grid PNG")
    p.add_argument("--model", required=True, help="a `fastface train gan` model.pt (or last.pt)")
    p.add_argument("--n", type=int, default=64, help="faces to draw (default 64)")
    p.add_argument("--out", required=True, help="grid PNG (images mapped from [-1, 1] to [0, 1])")
    p.add_argument("--seed", type=int, default=0, help="latents ~ N(0, I) from this seed (default 0)")
    p.add_argument("--latents", help="also write the latents (n, latent_dim) float32 to this .npy")
    p.add_argument("--nrow", type=int, default=8, help="faces per grid row (default 8)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--impl", default="auto", choices=["auto", "cpu", "cuda", "torch"],
                   help="FusedGenerator kernels (torch: the pure-PyTorch twin)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("invert", help="GAN inversion: the latents of face images under a trained generator "
                                      "(a `fastface train inversion` encoder, optionally refined)")
    p.add_argument("--model", required=True, help="the encoder: a `fastface train inversion` model.pt")
    p.add_argument("--images", required=True, help="folder of face images (searched recursively; resized to "
                                                   "the generator's size)")
    p.add_argument("--out", required=True, help="output folder: reconstructions/, latents.npy, latents.txt, grid.png")
    p.add_argument("--refine", type=int, default=0, help="refine the encoder's z by N Adam steps of pixel + "
                                                         "perceptual loss (the hybrid; default 0)")
    p.add_argument("--generator", help="the generator's model.pt (default: the one the encoder was trained with)")
    p.add_argument("--perceptual", default="auto", choices=["auto", "dlib", "arcface"],
                   help="face network of the refinement's perceptual loss (auto: dlib when installed)")
    p.add_argument("--perceptual-weight", type=float, default=1.0,
                   help="weight of the refinement's perceptual loss (0 = pixel MAE only, the fastest)")
    p.add_argument("--lr", type=float, default=0.01, help="the refinement's Adam lr (docs/INVERSION_RESULTS.md: "
                                                          "0.05 refines pixel-only faster)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device")
    p.set_defaults(func=cmd_invert)
    p = sub.add_parser("edit", help="D²AE: edit attributes along linear-SVM directions (f_P for identity-irrelevant, "
                                    "f_T for identity-related ones), swap identities, interpolate (PNG grids)")
    p.add_argument("--model", required=True, help="a `fastface train d2ae` model.pt (not the baseline)")
    p.add_argument("--out", required=True, help="output folder: edits.png, swap.png, interpolation.png, "
                                                "directions.npz, edit.json")
    p.add_argument("--images", help="faces to edit: a folder DIR/<identity>/<image> (default: held-out SynthFaces)")
    p.add_argument("--attribute", action="append", default=[], metavar="NAME=ALPHA",
                   help="an edit (repeatable, applied together and one by one): a SynthFaces attribute and alpha "
                        "in units of the learned sigma along its direction, |alpha| <= --alpha-max")
    p.add_argument("--alpha-max", type=float, default=3.0, help="bound on |alpha| (default 3: the 3-sigma interval)")
    p.add_argument("--n", type=int, default=8, help="faces to edit (default 8)")
    p.add_argument("--fit-identities", type=int, default=100,
                   help="SynthFaces identities the attribute SVMs are fitted on (default 100)")
    p.add_argument("--fit-images", type=int, default=5, help="images of each (default 5)")
    p.add_argument("--steps", type=int, default=5, help="interpolation grid side (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_edit)
    _gallery_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

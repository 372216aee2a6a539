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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

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
    built = f"yes (CUDA {info['cuda_version']}, archs {info['archs']})" if info["cuda_built"] else "no"
    print(f"  CUDA kernels    : built {built}; usable now: {'yes' if info['cuda_available'] else 'no'}")
    for i, name in enumerate(info["cuda_devices"]):
        print(f"    cuda:{i} {name}")
    print(f"  Triton backend  : {'yes' if info['triton'] else 'no (pip install fastface[triton])'}")
    print(f"  impl='auto' on GPU uses: {info['auto_gpu_impl']}")
    return 0


def cmd_train(args):
    import logging

    import torch

    from .train import BackboneConfig, train_backbone
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.model != "backbone":
        print(f"fastface train {args.model}: not implemented yet (see the issues); available: backbone",
              file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("data", args.data), ("epochs", args.epochs), ("max_steps", args.steps),
                                   ("batch_size", args.batch_size)) if v is not None}
    cfg = BackboneConfig.from_file(args.config, **overrides) if args.config else BackboneConfig(**overrides)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = train_backbone(cfg, args.out, device=device)
    print(f"trained {out['step']} steps; checkpoint {args.out}/last.pt, log {args.out}/log.jsonl")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastface", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, what was built, what is usable now")
    p.add_argument("--json", action="store_true", help="print the backend_info() dict as JSON")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("train", help="train a model (backbone: ArcFace ResNet on SynthFaces)")
    p.add_argument("model", choices=["backbone", "facevit", "r3an", "gan", "inversion", "d2ae"])
    p.add_argument("--config", help="JSON file of config overrides")
    p.add_argument("--data", help="synthfaces (default) or an image folder")
    p.add_argument("--out", required=True, help="output folder (checkpoint last.pt, log.jsonl); resumes")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="stop after this many steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device")
    p.set_defaults(func=cmd_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

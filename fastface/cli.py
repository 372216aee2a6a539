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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastface", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="version, what was built, what is usable now")
    p.add_argument("--json", action="store_true", help="print the backend_info() dict as JSON")
    p.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""R³AN transform vs ResNet-101 extraction (the paper: R³AN transforms a feature ~10x faster than
ResNet-101 extracts one). Same device, same run, medians after warm-up; prints a markdown line.

    python bench/bench_r3an.py [--device cuda] [--batch 32] [--repeats 5]

R³AN: Table 1's G + E (width 1), 256-d in and out, eval mode. ResNet-101: the bottleneck
ResNet-101 face backbone (layers 3, 4, 23, 3, width 64, 256-d embedding) on 3x224x224 images with
the standard total stride 32 (stem stride 4 + 4 stages -> 7x7 map).
"""
import argparse
import statistics
import sys
import time

import torch

from fastface.backbones import resnet101_face
from fastface.models.r3an import R3AN


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def median_seconds(fn, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    r3an = R3AN(256, 256).to(device).eval()
    resnet = resnet101_face(in_channels=3, width=64, embedding_dim=256, input_size=224, stem_stride=4).to(device).eval()
    feats = torch.randn(args.batch, 256, device=device)
    images = torch.rand(args.batch, 3, 224, 224, device=device)
    t_r3an = median_seconds(lambda: r3an.transform(feats), device, args.repeats)
    t_res = median_seconds(lambda: resnet(images), device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print("| device | batch | R³AN transform (ms / feature) | ResNet-101 224x224 (ms / image) | speed-up |")
    print("|---|---|---|---|---|")
    print(f"| {name} | {args.batch} | {1e3 * t_r3an / args.batch:.3f} | {1e3 * t_res / args.batch:.3f} | "
          f"{t_res / t_r3an:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The portable build (kernels dispatched at run time) against a -march=native build, in one process.

Build the native extension aside, then compare (the installed fastface is the portable one):
  FASTFACE_CUDA=OFF FASTFACE_CPU_NATIVE=ON python -m pip install --no-build-isolation --no-deps \\
      -Cbuild-dir=build/native --target /tmp/native .
  python bench/portable_vs_native.py /tmp/native [--threads 1] [--rounds 15]
Both extensions are loaded side by side (the native one as native_build._C) and called on the same
buffers, in interleaved rounds (best of each): fused re-rank kernel (one query x 100 candidates,
8x8x512, APC, 100 iterations), patch_cost and Sinkhorn.
"""
import argparse
import glob
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fastface import _C as portable  # noqa: E402
from fastface import _backend as be  # noqa: E402
from report import best_interleaved, cpu_clock, cpu_header  # noqa: E402
from cases import face_like, queries_from  # noqa: E402


def load_native(target):
    """fastface._C of the build installed under `target`, imported as native_build._C."""
    so = glob.glob(os.path.join(target, "fastface", "_C*.so"))
    if not so:
        raise SystemExit(f"no fastface/_C*.so under {target}: build it first (see the docstring)")
    pkg = Path(tempfile.mkdtemp()) / "native_build"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(so[0], pkg / Path(so[0]).name)
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module("native_build._C")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("native_target")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    native = load_native(args.native_target)
    assert native.cpu_isa() == "native", native.cpu_isa()
    T = args.threads
    emb, patches = face_like(2000)
    qe, qp = queries_from(emb, patches, 1)
    idx = (qe @ emb.T).topk(100, dim=1).indices.contiguous()         # (1, 100)
    x = qp.contiguous()                                               # (1, 64, 512)
    B, k, n, C = 1, 100, 64, 512
    outs = {name: [torch.empty(B * k), torch.empty(B * k, dtype=torch.int32), torch.empty(B * k, dtype=torch.uint8),
                   torch.zeros(B * k, dtype=torch.uint8)] for name in ("portable", "native")}

    def rerank(mod, o):
        mod.emd_pairs_cpu(x.data_ptr(), patches.data_ptr(), idx.data_ptr(), B, k, n, n, C, 0, 1, 0.05, 100, 1e-6, 0,
                          o[0].data_ptr(), 0, o[1].data_ptr(), o[2].data_ptr(), o[3].data_ptr(), T)

    y = patches[idx[0]].contiguous()                                   # (100, 64, 512)
    cost = {name: torch.empty(k, n, n) for name in outs}

    def patch_cost(mod, out):
        mod.patch_cost_cpu(x.data_ptr(), y.data_ptr(), out.data_ptr(), k, k, n, n, C, 0, T)

    g = torch.Generator().manual_seed(0)
    sk_cost = torch.rand(k, n, n, generator=g) * 0.6 + 0.2
    w = torch.full((k, n), 1 / n)
    sk_out = {name: [torch.empty(k), torch.empty(k, dtype=torch.int32), torch.empty(k, dtype=torch.uint8)] for name in outs}

    def sinkhorn(mod, o):
        mod.sinkhorn_cpu(sk_cost.data_ptr(), w.data_ptr(), w.data_ptr(), k, n, n, 0.05, 100, 0.0, 1, 1, 0,
                         o[0].data_ptr(), 0, 0, 0, o[1].data_ptr(), o[2].data_ptr(), T)

    print(f"### Portable build vs -march=native: {cpu_header()}\n")
    print(f"Kernels called directly on the same buffers, best of {args.rounds} interleaved rounds (one thread: "
          f"CPU time of the calling thread); portable = "
          f"the installed build (run-time dispatch, {portable.cpu_isa()} kernels), native = FASTFACE_CPU_NATIVE=ON.\n")
    print("| kernel | portable | -march=native | portable / native |\n|---|---|---|---|")
    for name, fn, arg in (("fused re-rank, 1 query x k = 100, 8x8x512, APC, 100 iterations", rerank, outs),
                          ("patch_cost, (64, 512) x (512, 6,400)", patch_cost, cost),
                          ("Sinkhorn, 100 x 64 x 64, 100 iterations", sinkhorn, sk_out)):
        tp, tn = best_interleaved([lambda: fn(portable, arg["portable"]), lambda: fn(native, arg["native"])], args.rounds,
                                  clock=cpu_clock())
        print(f"| {name} | {tp * 1e3:.2f} ms | {tn * 1e3:.2f} ms | {tp / tn:.3f} |")
    torch.testing.assert_close(outs["portable"][0], outs["native"][0], atol=1e-5, rtol=1e-4)
    print()


if __name__ == "__main__":
    main()

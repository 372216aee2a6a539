"""Face-ViT stage 2 (fastface.vit_rerank, H2L depth 1 and 8) vs fastface's fused EMD stage 2 (emd_rerank),
and the same batched ViT work in plain eager PyTorch and under torch.compile. Same Faces, same device,
one run; medians after warm-up; prints a markdown table.

    python bench/bench_facevit.py [--device cuda] [--queries B] [--k 100] [--depths 1 8] [--repeats 3]

Model: the dissertation's H2L (dim 512, heads 1, dim_head 64, MLP 2048) on 8x8x512 tokens (ArcFace
ResNet-18's map), eval mode, float32 with torch's default matmul precision. Faces: bench/cases.face_like
(G gallery faces, B queries). Stage-2 time = the whole call less the stage-1 top-k (timed alone);
"eager" and "compile" get the stage-1 candidates and run model.similarity over all B*k pairs in passes of
pair_batch pairs (the same bound vit_rerank uses). FLOPs: count_flops of B*k pairs (what eager does);
vit_rerank does less (the per-image parts once per image), its "work" column counts that. EMD FLOPs:
the cost matrices (2 k n m C per query) plus 4 n m per Sinkhorn iteration and pair (an estimate).
"""
import argparse
import os
import sys

import torch

import fastface as ff
from fastface.models.facevit import FaceViT, count_flops
from fastface.ops.rerank import topk_cosine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_r3an import median_seconds  # noqa: E402
from cases import face_like, queries_from  # noqa: E402




def h2l(depth, device):
    torch.manual_seed(depth)
    return FaceViT(variant="h2l", token_dim=512, grid=8, dim=512, depth=depth, heads=1, dim_head=64,
                   mlp_dim=2048, out_dim=512).to(device).eval()


def all_pairs(similarity, q_patches, g_patches, idx, pair_batch):
    """s (B, k) of every (query, candidate) pair through similarity(x1 (P, n, C), x2 (P, n, C)) in passes."""
    B, k = idx.shape
    qi = torch.arange(B, device=idx.device).repeat_interleave(k)
    gi = idx.reshape(-1)
    out = [similarity(q_patches[qi[s:s + pair_batch]], g_patches[gi[s:s + pair_batch]])
           for s in range(0, B * k, pair_batch)]
    return torch.cat(out).view(B, k)


def vit_work_flops(cfg, B, k, distinct):
    """FLOPs vit_rerank does: count_flops of B*k pairs less the per-image parts it shares."""
    n, d, inner = cfg.n_tokens, cfg.dim, cfg.heads * cfg.dim_head
    per_image = 2 * (n * cfg.token_dim * d + (n + 1) * d * 3 * inner)   # projection + first-layer q, k, v
    return count_flops(cfg, B * k) - (2 * B * k - (B + distinct)) * per_image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--queries", type=int, default=None, help="B (default 2 on the CPU, 64 on a GPU)")
    p.add_argument("--gallery", type=int, default=1000)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 8])
    p.add_argument("--pair-batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    B = args.queries or (64 if device.type == "cuda" else 2)
    emb, patches = face_like(args.gallery, seed=0)
    qe, qp = queries_from(emb, patches, B)
    gallery = ff.Faces(emb.to(device), patches.to(device))
    query = ff.Faces(qe.to(device), qp.to(device))
    k, n, C = args.k, 64, 512
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"

    cheap = max(args.repeats, 15)   # stage 1 and EMD take milliseconds: more repeats for a steady median
    t1 = median_seconds(lambda: topk_cosine(query.embeddings, gallery.embeddings, k), device, cheap)
    _, idx = topk_cosine(query.embeddings, gallery.embeddings, k)
    distinct = idx.unique().numel()
    rows = []
    t_emd = median_seconds(lambda: ff.emd_rerank(query, gallery, k=k), device, cheap) - t1
    res = ff.emd_rerank(query, gallery, k=k)
    emd_flops = 2 * B * k * n * n * C + 4 * int(res.n_iter.sum()) * n * n
    rows.append(("DeepFace-EMD, fused (emd_rerank)", t_emd, emd_flops, emd_flops))
    for depth in args.depths:
        model = h2l(depth, device)
        flops = count_flops(model.cfg, B * k)
        work = vit_work_flops(model.cfg, B, k, distinct)
        t = median_seconds(lambda: ff.vit_rerank(query, gallery, model, k=k, pair_batch=args.pair_batch),
                           device, args.repeats) - t1
        rows.append((f"H2L depth {depth}: vit_rerank", t, flops, work))
        eager = lambda x1, x2: model.similarity(x1, x2)  # noqa: E731
        t = median_seconds(lambda: all_pairs(eager, query.patches, gallery.patches, idx, args.pair_batch),
                           device, args.repeats)
        rows.append((f"H2L depth {depth}: eager PyTorch, all pairs", t, flops, flops))
        if not args.no_compile:
            try:
                compiled = torch.compile(model)
                sim = lambda x1, x2: torch.nn.functional.cosine_similarity(*compiled(x1, x2), dim=-1)  # noqa: E731
                t = median_seconds(lambda: all_pairs(sim, query.patches, gallery.patches, idx, args.pair_batch),
                                   device, args.repeats, warmup=2)
                rows.append((f"H2L depth {depth}: torch.compile, all pairs", t, flops, flops))
            except Exception as e:  # no compiler here: say so and go on
                rows.append((f"H2L depth {depth}: torch.compile skipped ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:80]})", None, flops, flops))

    print(f"Stage 2 at k = {k}, {B} queries, gallery {args.gallery}, 8x8x512 patches, {name}, "
          f"torch {torch.__version__}; stage 1 {1e3 * t1 / B:.2f} ms/query (not included)\n")
    print("| stage 2 | ms / query | vs EMD | GFLOP / query (model) | GFLOP / query (work) | achieved GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for label, t, flops, work in rows:
        if t is None:
            print(f"| {label} | - | - | {flops / B / 1e9:.2f} | {work / B / 1e9:.2f} | - |")
            continue
        print(f"| {label} | {1e3 * t / B:.1f} | {t / t_emd:.1f}x | {flops / B / 1e9:.2f} | {work / B / 1e9:.2f} | "
              f"{work / t / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure fastface against the pure-PyTorch twin and POT in one run; print a markdown report.

  python bench/report.py [--threads N]   # CPU: one query, k = 100, 8x8x512, eps = 0.05, vs the
                                         # matmul floor and the fastest pure PyTorch (FASTFACE_CPU_ISA=avx2
                                         # measures the AVX2 kernels on an AVX-512 machine)
  python bench/report.py --gpu      # GPU: LFW-scale stage 2 (13,233 queries x k = 100) + latency
  python bench/report.py [--gpu] --generator   # FusedGenerator vs eager vs torch.compile
  python bench/report.py --faces    # Faces from (n, C, H, W) maps vs contiguous, 10,000 faces
  python bench/report.py [--gpu] --gan [--gan-model M]   # GAN sampling: eager vs FusedGenerator
Medians of repeated, warmed-up, synchronised calls (CPU ratios: best of interleaved rounds).
Append the output to bench/RESULTS.md.
"""
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import fastface as ff  # noqa: E402
from cases import face_like, pot_rerank_one, queries_from  # noqa: E402


def timed(fn, repeat=7, warmup=2, sync=None, clock=time.perf_counter):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t = clock()
        fn()
        if sync:
            sync()
        times.append(clock() - t)
    return statistics.median(times)


def peak_rss_mb(fn):
    """Run fn and return the process's peak resident memory growth (MB), Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss("VmRSS")
        fn()
        return (_rss("VmHWM") - before) / 1024
    except OSError:
        return float("nan")


def _rss(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def cpu_header():
    """The machine line of a CPU report: processor, the kernel set that runs, threads, torch."""
    info = ff.backend_info()
    name = platform.processor() or platform.machine()
    try:
        name = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{name}; fastface CPU kernels: {info['cpu_isa']}"
            f"{' + bf16 dot products' if info['cpu_avx512_bf16'] else ''} (this CPU runs "
            f"{', '.join(info['cpu_isas_supported'])}); {torch.get_num_threads()} threads; torch {torch.__version__}")


def cpu_report(rounds=7):
    """Stage 2 on the CPU against its floor (torch's matmul of the same cost product) and the fastest
    pure-PyTorch formulation; patch_cost and Sinkhorn alone. Ratios come from interleaved rounds
    (best of each), so load from other jobs hits both sides alike."""
    from torch_rerank import compiled_rerank, torch_rerank, torch_search
    emb, patches = face_like(2000)
    gallery = ff.Faces(emb, patches)
    qe, qp = queries_from(emb, patches, 8)
    q1 = ff.Faces(qe[0], qp[0])
    res = ff.emd_rerank(q1, gallery, k=100, impl="cpu")
    idx = res.stage1_indices
    x, ys = qp[0].contiguous(), patches[idx].reshape(-1, patches.shape[-1]).contiguous()   # (64, C), (6400, C)
    compiled = compiled_rerank()
    eager = lambda: torch_search(qe[:1], qp[:1], emb, patches)  # noqa: E731
    comp = lambda: torch_search(qe[:1], qp[:1], emb, patches, rerank=compiled)  # noqa: E731
    with torch.no_grad():
        comp()  # compile outside the timing
        t_ff, t_mm, t_eager, t_comp = best_interleaved(
            [lambda: ff.emd_rerank(q1, gallery, k=100, impl="cpu"), lambda: x @ ys.T, eager, comp], rounds, clock=cpu_clock())
        _, e_torch = torch_search(qe[:1], qp[:1], emb, patches)
    t_twin = timed(lambda: ff.emd_rerank(q1, gallery, k=100, impl="torch"), repeat=3, warmup=1, clock=cpu_clock())
    t_pot = timed(lambda: pot_rerank_one(qp[0], patches[idx]), repeat=3, warmup=1, clock=cpu_clock())
    pot = torch.tensor(pot_rerank_one(qp[0], patches[idx]))
    err = (res.emd.sort().values.double() - pot.sort().values).abs().max().item()
    err_torch = (res.emd.sort().values - e_torch[0].sort().values).abs().max().item()
    print(f"### CPU: {cpu_header()}\n")
    print("One query, gallery 2,000, k = 100, 8x8 patches, C = 512, APC, eps = 0.05, max_iter = 100 "
          "(stage 1 + stage 2). Best of interleaved rounds for the first four rows"
          + ("; one thread: CPU time of the calling thread" if torch.get_num_threads() == 1 else "") + ".\n")
    print("| implementation | per query | vs fastface |")
    print("|---|---|---|")
    rows = [("fastface cpu (C++)", t_ff),
            ("floor: torch matmul of the cost product alone, (64, 512) x (512, 6400)", t_mm),
            ("fastest pure PyTorch, eager (bench/torch_rerank.py)", t_eager),
            ("fastest pure PyTorch, Sinkhorn under torch.compile", t_comp),
            ("fastface's pure-PyTorch twin (impl='torch', the test oracle)", t_twin),
            ("POT per pair (ot.sinkhorn2)", t_pot)]
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.2f} ms | {t / t_ff:.2f}x |")
    print(f"\nfastface / floor = {t_ff / t_mm:.2f} (goal <= 2); fastest pure PyTorch / fastface = "
          f"{min(t_eager, t_comp) / t_ff:.1f}x (goal >= 8).")
    it = res.n_iter.float()
    print(f"Iterations (tol 1e-6): median {it.median().item():.0f}, max {it.max().item():.0f}, converged "
          f"{res.converged.float().mean().item() * 100:.0f} %; max |EMD - POT| = {err:.2e}, "
          f"max |EMD - pure PyTorch| = {err_torch:.2e}.\n")
    batch = ff.Faces(qe, qp)
    with torch.no_grad():
        t1, t8 = best_interleaved([lambda: ff.emd_rerank(q1, gallery, k=100, impl="cpu"),
                                   lambda: ff.emd_rerank(batch, gallery, k=100, impl="cpu")], max(3, rounds // 2), clock=cpu_clock())
    print(f"Batch of 8 queries: {t8 * 1e3 / 8:.2f} ms per query; one query alone {t1 * 1e3:.2f} ms "
          f"(batch / single = {t8 / 8 / t1:.2f}).\n")
    patch_cost_report(rounds)
    sinkhorn_report(rounds)
    print("Peak memory growth of one call (MB, VmHWM):\n")
    print("| B x k | fastface cpu (fused) | pure-PyTorch twin |")
    print("|---|---|---|")
    for B, k in ((1, 100), (8, 100), (8, 400)):
        qb = ff.Faces(qe[:B], qp[:B])
        mc = peak_rss_mb(lambda: ff.emd_rerank(qb, gallery, k=k, impl="cpu"))
        mt = peak_rss_mb(lambda: ff.emd_rerank(qb, gallery, k=k, impl="torch"))
        print(f"| {B} x {k} | {mc:.1f} | {mt:.1f} |")


def patch_cost_report(rounds=7):
    """patch_cost (one query vs 100 candidates, 64 patches each) against torch's matmul of the same
    product, float32 and bfloat16."""
    g = torch.Generator().manual_seed(0)
    print("patch_cost, one query (64 patches) vs 100 candidates (64 patches each): the product "
          "(64, C) x (C, 6,400); floor = torch.matmul of that product alone (no norms, no 1 - cos).\n")
    print("| C | dtype | fastface patch_cost | torch matmul | matmul / patch_cost |")
    print("|---|---|---|---|---|")
    for C in (128, 256, 512):
        for dt in (torch.float32, torch.bfloat16):
            x, y = torch.randn(64, C, generator=g).to(dt), torch.randn(6400, C, generator=g).to(dt)
            xq, yc = x[None, None], y.view(1, 100, 64, C)
            t_pc, t_mm = best_interleaved([lambda: ff.patch_cost(xq, yc, impl="cpu"), lambda: x @ y.T], rounds, clock=cpu_clock())
            print(f"| {C} | {str(dt)[6:]} | {t_pc * 1e3:.2f} ms | {t_mm * 1e3:.2f} ms | {t_mm / t_pc:.2f}x |")
    print()


def sinkhorn_report(rounds=7):
    """Sinkhorn alone: 100 problems of 64 x 64, 100 iterations (tol 0: no early exit)."""
    from torch_rerank import _ten
    g = torch.Generator().manual_seed(0)
    cost = torch.rand(100, 64, 64, generator=g) * 0.6 + 0.2
    a, b = torch.full((100, 64), 1 / 64), torch.full((100, 64), 1 / 64)
    K = torch.exp(cost / -0.05)
    step = torch.compile(_ten, dynamic=False)

    def compiled():
        v = torch.ones(100, 64, 1)
        for _ in range(10):
            u, v = step(K, a[..., None], b[..., None], v)
        return u, v
    from fastface import _C
    out = [torch.empty(100), torch.empty(100, dtype=torch.int32), torch.empty(100, dtype=torch.uint8)]

    def kernel():  # the C++ kernel alone: no checks, no potentials (ff.sinkhorn's Python part)
        _C.sinkhorn_cpu(cost.data_ptr(), a.data_ptr(), b.data_ptr(), 100, 64, 64, 0.05, 100, 0.0, 0, 1, 0,
                        out[0].data_ptr(), 0, 0, 0, out[1].data_ptr(), out[2].data_ptr(), torch.get_num_threads())
    with torch.no_grad():
        compiled()
        t_ff, t_kernel, t_comp = best_interleaved([lambda: ff.sinkhorn(cost, a, b, tol=0.0, impl="cpu"), kernel, compiled],
                                                  rounds, clock=cpu_clock())
        t_twin = timed(lambda: ff.sinkhorn(cost, a, b, tol=0.0, impl="torch"), repeat=3, warmup=1, clock=cpu_clock())
    flops = 100 * 100 * 2 * 2 * 64 * 64
    print("Sinkhorn alone: 100 problems of 64 x 64, 100 iterations (tol = 0).\n")
    print("| implementation | time | GFLOP/s (mat-vecs) | vs fastface |\n|---|---|---|---|")
    for name, t in (("fastface cpu (ff.sinkhorn, impl='cpu')", t_ff),
                    ("its C++ kernel alone (fastface._C.sinkhorn_cpu)", t_kernel),
                    ("pure PyTorch bmm loop under torch.compile (exp and weights excluded)", t_comp),
                    ("fastface's pure-PyTorch twin (impl='torch')", t_twin)):
        print(f"| {name} | {t * 1e3:.2f} ms | {flops / t / 1e9:.0f} | {t / t_ff:.2f}x |")
    print()


def faces_report(G=10_000, B=8, k=100, H=8, W=8):
    """The path users take: Faces built from (n, C, H, W) maps vs contiguous (n, N, C) patches."""
    emb, patches = face_like(G, n=H * W)
    maps = patches.transpose(1, 2).reshape(G, -1, H, W).contiguous()
    qe, qp = queries_from(emb, patches, B)
    queries = ff.Faces(qe, qp)
    t_build = timed(lambda: ff.Faces(emb, maps), repeat=3, warmup=1)
    from_maps, contiguous = ff.Faces(emb, maps), ff.Faces(emb, patches)
    view = ff.Faces(emb, patches)
    view.patches = maps.flatten(2).transpose(1, 2)        # the old layout: a transposed view
    rows = [(name, timed(lambda g=g: ff.emd_rerank(queries, g, k=k, impl="cpu"), repeat=15))
            for name, g in (("contiguous (n, N, C) tensors", contiguous),
                            ("Faces from (n, C, H, W) maps", from_maps),
                            ("before: maps kept as a transposed view", view),
                            ("(embeddings, maps) tuple per call, no Faces", (emb, maps)))]
    base = rows[0][1]
    print(f"### Faces layout, CPU: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads\n")
    print(f"{B} queries, gallery {G:,}, k = {k}, {H}x{W} patches, C = {patches.shape[-1]}, APC, impl='cpu'.\n")
    print("| gallery | emd_rerank median | vs contiguous |\n|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.1f} ms | {t / base:.2f}x |")
    print(f"\nBuilding the Faces from maps (one contiguous copy + one finite check): {t_build * 1e3:.0f} ms.\n")


def gpu_report(impls):
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    print(f"### GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    emb, patches = face_like(13233, device=dev)
    gallery = ff.Faces(emb, patches)
    print("LFW-scale stage 2: 13,233 queries x k = 100, 8x8x512 float32, APC, eps = 0.05, "
          "max_iter = 100 (the paper: about 60 s).\n")
    print("| implementation | all 13,233 queries | one query (k = 100) |")
    print("|---|---|---|")
    all_q = ff.Faces(emb, patches)
    one = ff.Faces(emb[0], patches[0])
    results = {}
    for impl in impls:
        t_all = timed(lambda: ff.emd_rerank(all_q, gallery, k=100, impl=impl, exclude_self=True),
                      repeat=3, warmup=1, sync=sync)
        t_one = timed(lambda: ff.emd_rerank(one, gallery, k=100, impl=impl), repeat=51, sync=sync)
        results[impl] = (t_all, t_one)
        print(f"| fastface {impl} | {t_all:.3f} s | {t_one * 1e3:.3f} ms |")

    def torch_chunked():
        for s in range(0, 13233, 1024):
            ff.emd_rerank(ff.Faces(emb[s:s + 1024], patches[s:s + 1024]), gallery, k=100, impl="torch")

    t_twin = timed(torch_chunked, repeat=1, warmup=1, sync=sync)
    t_twin1 = timed(lambda: ff.emd_rerank(one, gallery, k=100, impl="torch"), repeat=11, sync=sync)
    print(f"| pure-PyTorch batched twin (1,024-query chunks) | {t_twin:.3f} s | {t_twin1 * 1e3:.3f} ms |")
    best = min(results, key=lambda i: results[i][0])
    print(f"\nBest GPU backend: {best}; speed-up over the twin: {t_twin / results[best][0]:.1f}x "
          f"(all queries), {t_twin1 / results[best][1]:.1f}x (one query).\n")
    print("Peak GPU memory (MB) by batch and k:\n\n| B x k | fastface | twin |\n|---|---|---|")
    for B, k in ((1, 100), (256, 100), (256, 400)):
        qb = ff.Faces(emb[:B], patches[:B])
        row = []
        for impl in (best, "torch"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ff.emd_rerank(qb, gallery, k=k, impl=impl)
            sync()
            row.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        print(f"| {B} x {k} | {row[0]:.1f} | {row[1]:.1f} |")
    res = ff.emd_rerank(ff.Faces(emb[:256], patches[:256]), gallery, k=100, impl=best)
    print(f"\nIterations: median {res.n_iter.float().median().item():.0f}, max {res.n_iter.max().item()}.")


# ---- FusedGenerator: eager vs fused vs torch.compile ------------------------------------------

def generator_models(device):
    """[(name, eval module, z shape without B)]: R³AN's G (Table 1) and DCGAN's, random weights."""
    from torch import nn
    from fastface.models.r3an import Generator
    torch.manual_seed(0)

    def up(cin, cout, s, p):
        return [nn.ConvTranspose2d(cin, cout, 4, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    dcgan = nn.Sequential(*up(100, 512, 1, 0), *up(512, 256, 2, 1), *up(256, 128, 2, 1), *up(128, 64, 2, 1),
                          nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh())
    models = [("R³AN G: 256 -> 512x4x4 -> 128x7x7 -> 32x14x14 -> 8x28x28 -> 3x56x56", Generator(), (256,)),
              ("DCGAN G: 100 -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 -> 3x64x64", dcgan, (100, 1, 1))]
    out = []
    for name, m, d in models:
        with torch.no_grad():
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm2d):  # trained-looking running statistics
                    bn.running_mean.normal_(0, 0.2)
                    bn.running_var.uniform_(0.5, 2.0)
        out.append((name, m.to(device).eval(), d))
    return out


def generator_report(device, batches, use_compile=True):
    """Print eager vs FusedGenerator (vs torch.compile) per batch size; medians, one run."""
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if gpu else None
    where = torch.cuda.get_device_name(dev) if gpu else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"### FusedGenerator on {where}, torch {torch.__version__}\n")
    print("Eager = `module.eval()` under `torch.inference_mode()` (torch defaults"
          + (", cuDNN TF32 allowed" if gpu and torch.backends.cudnn.allow_tf32 else "") + "); fused = "
          "`FusedGenerator.from_module(module)(z)`; medians of warmed-up, synchronised calls.\n")
    for name, module, zshape in generator_models(dev):
        fg = ff.FusedGenerator.from_module(module)
        compiled = torch.compile(module, dynamic=False) if use_compile else None
        extra = " fused chain path | fused per-layer path |" if gpu else ""
        print(f"{name}\n")
        print(f"| batch | eager | fused | fused vs eager | torch.compile | fused vs compile | max rel. err |{extra}")
        print("|---|---|---|---|---|---|---|" + ("---|---|" if gpu else ""))
        for B in batches:
            z = torch.randn(B, *zshape, device=dev)
            rep = 51 if B <= 8 else (15 if B <= 64 else 5)
            with torch.inference_mode():
                want, got = module(z), fg(z)
                err = ((got - want).abs().max() / want.abs().max()).item()
                te = timed(lambda: module(z), repeat=rep, warmup=3, sync=sync)
                tf = timed(lambda: fg(z), repeat=rep, warmup=3, sync=sync)
                tc = None
                if compiled is not None:
                    try:
                        tc = timed(lambda: compiled(z), repeat=rep, warmup=3, sync=sync)
                    except Exception as exc:  # inductor unavailable: report, keep going
                        print(f"<!-- torch.compile failed: {type(exc).__name__}: {exc} -->")
                        compiled = None
                paths = ""
                if gpu:
                    for path in ("chain", "layers"):
                        fg.cuda_path = path
                        try:
                            tp = timed(lambda: fg(z), repeat=rep, warmup=3, sync=sync)
                            paths += f" {tp * 1e3:.3f} ms |"
                        except ValueError:
                            paths += " n/a |"
                    fg.cuda_path = "auto"
            comp = f"{tc * 1e3:.3f} ms | {tc / tf:.2f}x" if tc else "n/a | n/a"
            print(f"| {B} | {te * 1e3:.3f} ms | {tf * 1e3:.3f} ms | {te / tf:.2f}x | {comp} | {err:.1e} |{paths}",
                  flush=True)
        print()


def gan_models(device, model_path=None):
    """[(name, eval Generator)]: `fastface train gan`'s default architecture (random weights, trained-looking BN
    statistics) and, with model_path, a trained model.pt."""
    from fastface.models.dcgan import GANConfig, Generator
    torch.manual_seed(0)
    g = Generator(GANConfig())
    with torch.no_grad():
        for bn in g.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
    out = [(f"GAN G, default config (latent 512, width 64): {sum(p.numel() for p in g.parameters()) / 1e6:.1f} M "
            f"parameters", g.eval().to(device))]
    if model_path:
        t = ff.load(model_path, kind="gan")
        size = f"{t.cfg.image_size}x{t.cfg.image_size}"
        n = sum(p.numel() for p in t.parameters()) / 1e6
        out.append((f"GAN G, {model_path} (latent {t.cfg.latent_dim}, width {t.cfg.width}, {size}): {n:.2f} M "
                    f"parameters", t.to(device)))
    return out


def cpu_clock():
    """The clock of CPU timings: with one thread, the thread's CPU time (the time the call ran, not the
    time other jobs on a shared machine held the core); with more threads, wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def best_interleaved(fns, repeat, sync=None, warmup=2, clock=time.perf_counter):
    """Best (minimum) time of each fn over `repeat` rounds that call them in turn: robust to other jobs
    sharing the cores (they slow both alike within a round; the minimum is the least disturbed call)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if sync:
                sync()
            t = clock()
            fn()
            if sync:
                sync()
            best[i] = min(best[i], clock() - t)
    return best


def gan_report(device, batches=(1, 64, 256), model_path=None):
    """Sampling throughput of the GAN generator: eager (PixelNorm + layers) vs FusedGenerator, faces/s
    (best of interleaved calls)."""
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    sync = torch.cuda.synchronize if gpu else None
    where = torch.cuda.get_device_name(dev) if gpu else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"### GAN sampling (`fastface sample`) on {where}, torch {torch.__version__}\n")
    for name, g in gan_models(dev, model_path):
        fg = ff.FusedGenerator.from_module(g)
        print(f"{name}\n")
        print("| batch | eager | fused | eager faces/s | fused faces/s | fused vs eager | max rel. err |")
        print("|---|---|---|---|---|---|---|")
        for B in batches:
            z = torch.randn(B, g.latent_dim, device=dev)
            rep = 41 if B <= 8 else (15 if B <= 64 else 7)
            with torch.inference_mode():
                want, got = g(z), fg(z)
                err = ((got - want).abs().max() / want.abs().max()).item()
                te, tf = best_interleaved([lambda: g(z), lambda: fg(z)], rep, sync)
            print(f"| {B} | {te * 1e3:.2f} ms | {tf * 1e3:.2f} ms | {B / te:.0f} | {B / tf:.0f} | {te / tf:.2f}x | "
                  f"{err:.1e} |", flush=True)
        print()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--generator", action="store_true", help="only the FusedGenerator section")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile in --generator")
    ap.add_argument("--faces", action="store_true", help="only the Faces-layout section")
    ap.add_argument("--gan", action="store_true", help="only GAN sampling: eager vs FusedGenerator, batch 1/64/256")
    ap.add_argument("--gan-model", help="with --gan: also a trained `fastface train gan` model.pt")
    ap.add_argument("--threads", type=int, help="torch (and fastface kernel) threads; default: torch's")
    ap.add_argument("--rounds", type=int, default=7, help="CPU report: interleaved timing rounds")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gan:
        gan_report("cuda" if args.gpu else "cpu", model_path=args.gan_model)
    elif args.faces:
        faces_report()
    elif args.generator:
        generator_report("cuda" if args.gpu else "cpu",
                         (1, 8, 64, 4096) if args.gpu else (1, 8, 64, 512), not args.no_compile)
    elif args.gpu:
        impls = ["cuda"] + (["triton"] if ff.backend_info()["triton"] else [])
        gpu_report(impls)
    else:
        cpu_report(args.rounds)

"""fastface.Gallery at scale: build time, disk size, RSS while searching, single-query latency (p50/p99)
and batch throughput end to end (stage 1 + candidate fetch + EMD re-rank), exact vs IVF stage 1,
IVF recall@100 against exact; and what the patch store's PCA costs in accuracy.

    nice -n 5 python bench/bench_gallery.py --sizes 10000 100000 1000000 --root /work/gbench
    python bench/bench_gallery.py --pca-accuracy

Synthetic face-like galleries (dlib-like shapes: D = 128 embeddings, 8x8x128 fp16 patch maps):
10 faces per identity; an identity has a centre embedding and a low-rank patch component on a
shared template, each face adds noise (bench/cases.py's face_like, made streamable). Queries are
new faces of gallery identities. Searching runs in a fresh subprocess, so its RSS is the search's.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

D, C, N, RANK, PER_ID = 128, 128, 64, 16, 10


class FaceModel:
    """Face-like embeddings (n, D) and patches (n, N, C) for faces of n_ids identities, made by chunks.

    Identity centres have a power-law spectrum (variance of principal axis j ~ 1/j, randomly
    rotated): face embeddings are not isotropic (the shipped backbone's decay much faster still);
    a face adds isotropic noise 0.35 per dimension (same-identity cosine ~0.9)."""

    def __init__(self, n_ids, seed=0):
        g = torch.Generator().manual_seed(seed)
        spectrum = 1.0 / torch.arange(1, D + 1, dtype=torch.float64)
        spectrum = spectrum / spectrum.sum() * D
        rotation, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        self.centres = ((torch.randn(n_ids, D, generator=g, dtype=torch.float64) * spectrum.sqrt()) @ rotation.T).float()
        self.codes = torch.randn(n_ids, RANK, generator=g)                         # low-rank identity parts
        self.basis = torch.randn(RANK, N * C, generator=g) / math.sqrt(RANK)
        self.template = torch.randn(N * C, generator=g)

    def faces(self, who, seed):
        g = torch.Generator().manual_seed(seed)
        emb = self.centres[who] + 0.35 * torch.randn(len(who), D, generator=g)
        pat = self.template + 0.8 * (self.codes[who] @ self.basis) + 0.6 * torch.randn(len(who), N * C, generator=g)
        return emb, pat.view(len(who), N, C)


def build(folder, n, chunk=16384, seed=0):
    """Stream n synthetic faces into a new gallery at folder; returns timings and sizes."""
    from fastface.gallery import Gallery
    model = FaceModel(max(1, n // PER_ID), seed)
    g = Gallery.create(folder, embedding_dim=D, grid=8, channels=C, build={"synthetic": n})
    t_gen = t_write = 0.0
    for s in range(0, n, chunk):
        t0 = time.perf_counter()
        who = torch.arange(s, min(n, s + chunk)) % model.centres.shape[0]
        emb, pat = model.faces(who, seed * 7919 + s)
        t1 = time.perf_counter()
        g.add((emb, pat), [f"id{int(i)}" for i in who], build={"synthetic": n, "done": int(s + len(who))})
        t_write += time.perf_counter() - t1
        t_gen += t1 - t0
    t0 = time.perf_counter()
    g._commit(None, build=None)
    t_write += time.perf_counter() - t0
    t0 = time.perf_counter()
    nlist = max(64, int(2 * math.sqrt(n)))
    g.set_index("ivf", nlist=nlist, nprobe=32)
    t_ivf = time.perf_counter() - t0
    return {"n": n, "generate_s": t_gen, "build_s": t_write, "ivf_train_add_s": t_ivf, "nlist": nlist,
            "disk_bytes": g.info()["disk_bytes"]}


def rss_mb():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def timed(fn, clock=time.perf_counter):
    """(seconds of clock, fn())."""
    t0 = clock()
    out = fn()
    return clock() - t0, out


def pct(seconds, q):
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


def measure(folder, n, queries=200, k=100, threads=2, seed=123):
    """In this (fresh) process: load, recall, single-query latency and batch throughput, exact and IVF."""
    import faiss

    import fastface as ff
    from fastface.gallery import Gallery
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    g = Gallery.load(folder, verify="quick")
    t_load = time.perf_counter() - t0
    model = FaceModel(max(1, n // PER_ID), 0)
    who = torch.randint(0, model.centres.shape[0], (queries,), generator=torch.Generator().manual_seed(seed))
    q_emb, q_pat = model.faces(who, seed)
    qn = torch.nn.functional.normalize(q_emb, dim=1).numpy()
    out = {"n": n, "load_quick_s": t_load, "rss_after_load_mb": rss_mb()["VmRSS"]}
    # stage 1 alone: exact vs IVF recall@k over every query, nprobe chosen as the smallest >= 0.95
    _, exact_ids = g._stage1(qn, k, exact=True)
    out["recall"] = {}
    chosen = None
    for nprobe in (8, 16, 32, 64, 128, 256):
        _, ivf_ids = g._stage1(qn, k, nprobe=nprobe)
        r = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ivf_ids.tolist(), exact_ids.tolist())]))
        out["recall"][nprobe] = r
        if chosen is None and r >= 0.95:
            chosen = nprobe
    chosen = chosen or 256
    out["nprobe"] = chosen
    for name in ("exact", "ivf"):
        kw = dict(exact=True) if name == "exact" else dict(nprobe=chosen)
        res = {}
        # wall time with `threads` threads on the shared machine (what a user would see now)
        order = [0, 1, 2, 3, 4] + list(range(min(queries, 100)))      # 5 warm-up calls first
        wall = [timed(lambda i=i: g.search((q_emb[i:i + 1], q_pat[i:i + 1]), k=k, **kw))[0] for i in order][5:]
        t0 = time.perf_counter()
        batch = g.search((q_emb, q_pat), k=k, batch_size=64, **kw)
        t_batch = time.perf_counter() - t0
        res.update(p50_ms=pct(wall, 50), p99_ms=pct(wall, 99), batch_queries_per_s=queries / t_batch,
                   top1_identity=float(np.mean([batch.identities[i][0] == f"id{int(w)}" for i, w in enumerate(who)])))
        # CPU time of one thread (torch and FAISS on 1 thread): the work itself, independent of the
        # other jobs on the machine; on an idle core the latency is this CPU time
        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        parts = {"cpu1": [], "cpu1_stage1": [], "cpu1_fetch": [], "cpu1_rerank": []}
        for i in order:
            parts["cpu1"].append(timed(lambda: g.search((q_emb[i:i + 1], q_pat[i:i + 1]), k=k, **kw), time.thread_time)[0])
            c, (_, ids) = timed(lambda: g._stage1(qn[i:i + 1], k, nprobe=chosen, exact=name == "exact"), time.thread_time)
            parts["cpu1_stage1"].append(c)
            uniq = np.unique(ids)
            c, cand = timed(lambda: ff.Faces(torch.from_numpy(g.embeddings[uniq]), torch.from_numpy(g.patches[uniq]).float()),
                            time.thread_time)
            parts["cpu1_fetch"].append(c)
            parts["cpu1_rerank"].append(timed(lambda: ff.emd_rerank((q_emb[i:i + 1], q_pat[i:i + 1]), cand, k=k),
                                              time.thread_time)[0])
        for key, values in parts.items():
            res[f"{key}_p50_ms"] = pct(values[5:], 50)
        res["cpu1_p99_ms"] = pct(parts["cpu1"][5:], 99)
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        out[name] = res
    mem = rss_mb()
    out.update({"rss_mb": mem["VmRSS"], "peak_rss_mb": mem["VmHWM"], "rss_anon_mb": mem["RssAnon"],
                "rss_file_mb": mem["RssFile"]})
    return out


def pca_accuracy(k=100):
    """Stage-2 P@1 on a held-out SynthFaces split (shipped ArcFace backbone, 8x8x128 maps), clean and
    mask-occluded queries, with the patch store at 128 (no PCA), 64, 32 and 16 channels."""
    import tempfile

    from fastface.backbones import load_encoder
    from fastface.eval.identification import extract_features
    from fastface.eval.jobs import occlude_queries, synthfaces_split
    from fastface.gallery import Gallery
    torch.set_num_threads(2)
    enc = load_encoder("arcface")
    split = synthfaces_split(n_identities=100)
    g_img, _, g_lab = split["gallery"]
    q_img, q_lm, q_lab = split["queries"]
    g_emb, g_map = extract_features(enc, g_img)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for occ in ("none", "mask"):
            qi, _ = occlude_queries(q_img, q_lm, occ)
            q_emb, q_map = extract_features(enc, qi)
            for pca in (None, 64, 32, 16):
                folder = os.path.join(tmp, f"{occ}-{pca}")
                g = Gallery.from_tensors(folder, g_emb, g_map, [str(int(x)) for x in g_lab], pca=pca)
                t0 = time.perf_counter()
                res = g.search((q_emb, q_map), k=k)
                t = (time.perf_counter() - t0) / len(q_lab)
                p1_2 = np.mean([res.identities[i][0] == str(int(q_lab[i])) for i in range(len(q_lab))])
                p1_1 = np.mean([g.identity_of([res.stage1_items[i, 0]])[0] == str(int(q_lab[i]))
                                for i in range(len(q_lab))])
                rows.append({"occlude": occ, "channels": pca or 128, "stage1_p1": float(p1_1),
                             "stage2_p1": float(p1_2), "ms_per_query": 1e3 * t,
                             "patch_store_bytes": os.path.getsize(os.path.join(folder, "patches.f16"))})
                print(rows[-1], flush=True)
    return rows


def index_options(n=100_000, queries=200, k=100, seed=123):
    """Stage 1 alone on n face-like embeddings: recall@k of each FAISS option against exact search,
    its build time and 1-thread CPU ms per single query."""
    import faiss

    from fastface.gallery.index import Stage1Index, check_index_spec
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    model = FaceModel(n // PER_ID, 0)
    who = torch.arange(n) % model.centres.shape[0]
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(model.centres[who] + 0.35 * torch.randn(n, D, generator=g), dim=1).numpy()
    qw = torch.randint(0, model.centres.shape[0], (queries,), generator=torch.Generator().manual_seed(seed))
    q = torch.nn.functional.normalize(model.centres[qw] + 0.35 * torch.randn(queries, D, generator=g), dim=1).numpy()
    exact = Stage1Index(check_index_spec("flat"), emb)
    _, want = exact.search(q, k)
    nlist = int(2 * math.sqrt(n))
    rows = []
    for kind, opts, search in (("flat", {}, [{}]),
                               ("ivf", dict(nlist=nlist), [dict(nprobe=p) for p in (32, 64, 128)]),
                               ("hnsw", dict(hnsw_m=32), [dict(ef_search=e) for e in (128, 256, 512)]),
                               ("ivf-pq", dict(nlist=nlist, pq=32), [dict(nprobe=p) for p in (64, 128)]),
                               ("hnsw-pq", dict(hnsw_m=32, pq=32), [dict(ef_search=e) for e in (256, 512)])):
        t0 = time.perf_counter()
        index = Stage1Index.train(check_index_spec(kind, **opts), emb)
        t_build = time.perf_counter() - t0
        for kw in search:
            _, got = index.search(q, k, **kw)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got.tolist(), want.tolist())]))
            cpu = [timed(lambda i=i: index.search(q[i:i + 1], k, **kw), time.thread_time)[0] for i in range(queries)]
            rows.append({"index": kind, **opts, **kw, "build_s": t_build, "recall": recall,
                         "cpu1_p50_ms": pct(cpu, 50)})
            print(rows[-1], flush=True)
    return rows


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = [r["n"] for r in results]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, style in (("exact", "o-"), ("ivf", "s-")):
        ax[0].plot(ns, [r["search"][name]["cpu1_p50_ms"] for r in results], style, label=f"{name}: 1-thread CPU p50")
        ax[0].plot(ns, [r["search"][name]["p50_ms"] for r in results], style, alpha=0.4,
                   label=f"{name}: wall p50, 2 threads, shared machine")
        ax[1].plot(ns, [r["search"][name]["batch_queries_per_s"] for r in results], style, label=name)
    ax[0].axhline(25, color="grey", ls=":", label="goal 25 ms")
    ax[0].set(xscale="log", yscale="log", xlabel="gallery faces", ylabel="ms per query (k = 100)",
              title="single query, end to end")
    ax[1].set(xscale="log", xlabel="gallery faces", ylabel="queries / s", title="batch throughput (64 per batch)")
    ax[2].plot(ns, [r["build"]["build_s"] for r in results], "o-", label="build (write + checksums)")
    ax[2].plot(ns, [r["build"]["disk_bytes"] / 2**30 for r in results], "s-", label="disk GiB")
    ax[2].plot(ns, [r["search"]["peak_rss_mb"] / 1024 for r in results], "^-", label="search peak RSS GiB")
    ax[2].set(xscale="log", yscale="log", xlabel="gallery faces", title="build seconds, disk, RSS")
    for a in ax:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)


def table(results):
    """Markdown tables of a results JSON (what bench/RESULTS.md shows)."""
    lines = ["| faces | build s | disk GiB | IVF train+add s (nlist) | load s | search RSS / peak MB | "
             "IVF nprobe: recall@100 |", "|---" * 7 + "|"]
    for r in results:
        b, s = r["build"], r["search"]
        rec = ", ".join(f"{p}: {v:.3f}" for p, v in s["recall"].items())
        lines.append(f"| {r['n']:,} | {b['build_s']:.0f} | {b['disk_bytes'] / 2**30:.2f} | "
                     f"{b['ivf_train_add_s']:.0f} ({b['nlist']}) | {s['load_quick_s']:.2f} | "
                     f"{s['rss_mb']:.0f} / {s['peak_rss_mb']:.0f} | {rec} |")
    lines += ["", "| faces | stage 1 | 1-thread CPU p50 / p99 ms | of which stage 1 / fetch / re-rank ms | "
              "wall p50 / p99 ms (2 threads, shared) | batch of 64: queries/s | top-1 identity |", "|---" * 7 + "|"]
    for r in results:
        for name in ("exact", "ivf"):
            x = r["search"][name]
            label = "exact" if name == "exact" else f"IVF, nprobe {r['search']['nprobe']}"
            lines.append(f"| {r['n']:,} | {label} | {x['cpu1_p50_ms']:.1f} / {x['cpu1_p99_ms']:.1f} | "
                         f"{x['cpu1_stage1_p50_ms']:.1f} / {x['cpu1_fetch_p50_ms']:.1f} / {x['cpu1_rerank_p50_ms']:.1f} | "
                         f"{x['p50_ms']:.0f} / {x['p99_ms']:.0f} | {x['batch_queries_per_s']:.1f} | "
                         f"{100 * x['top1_identity']:.1f} % |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--root", default="/work/gbench", help="scratch folder for the galleries (deleted after)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/gallery_results.json")
    p.add_argument("--plot", default="docs/figures/gallery_scaling.png")
    p.add_argument("--keep", action="store_true", help="keep the galleries")
    p.add_argument("--pca-accuracy", action="store_true")
    p.add_argument("--index-options", type=int, metavar="N", help="stage 1 alone: every FAISS option on N faces")
    p.add_argument("--table", action="store_true", help="print the markdown tables of --out")
    p.add_argument("--measure", nargs=2, metavar=("FOLDER", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.queries, threads=args.threads)))
        return
    if args.table:
        with open(args.out) as fh:
            print(table(json.load(fh)))
        return
    if args.index_options:
        rows = index_options(args.index_options)
        with open(args.out.replace(".json", "_index.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        return
    if args.pca_accuracy:
        rows = pca_accuracy()
        with open(args.out.replace(".json", "_pca.json"), "w") as fh:
            json.dump(rows, fh, indent=1)
        return
    torch.set_num_threads(args.threads)
    results = []
    for n in args.sizes:
        folder = os.path.join(args.root, f"g{n}")
        shutil.rmtree(folder, ignore_errors=True)
        b = build(folder, n)
        print("build", b, flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        proc = subprocess.run([sys.executable, __file__, "--measure", folder, str(n), "--queries", str(args.queries),
                               "--threads", str(args.threads)], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(proc.returncode)
        s = json.loads(proc.stdout.strip().splitlines()[-1])
        print("search", s, flush=True)
        results.append({"n": n, "build": b, "search": s})
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    plot(results, args.plot)


if __name__ == "__main__":
    main()

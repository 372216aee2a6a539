"""Stage 1 of a gallery: the k most similar embeddings (inner product of unit rows = cosine).

kind "flat" is exact: FAISS IndexFlatIP when faiss is installed, else fastface's chunked torch top-k
over the memory-mapped embeddings (no index file: the embeddings are the index). "ivf", "ivf-pq",
"hnsw", "hnsw-pq" (pq sub-quantizers of pq_bits bits) and "faiss:<factory string>" build a FAISS index with METRIC_INNER_PRODUCT, saved
with faiss.write_index (FAISS's own binary format; nothing is pickled). nprobe (IVF) and ef_search
(HNSW) trade recall for time at search. With faiss-gpu and CUDA devices, search_device="cuda"
shards the index over every GPU (index_cpu_to_all_gpus, shard=True).
"""
import math

import numpy as np
import torch

KINDS = ("flat", "ivf", "ivf-pq", "hnsw", "hnsw-pq")


def have_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss(what):
    try:
        import faiss
    except ImportError:
        raise ImportError(f"{what} needs FAISS: pip install faiss-cpu (or fastface[faiss])") from None
    return faiss


def check_index_spec(kind, nlist=None, nprobe=32, pq=None, hnsw_m=32, ef_search=128, pq_bits=8):
    """Validate a stage-1 index spec; return its params dict (what the manifest records)."""
    if not isinstance(kind, str) or not (kind in KINDS or (kind.startswith("faiss:") and len(kind) > 6)):
        raise ValueError(f"index must be one of {KINDS} or 'faiss:<factory string>', got {kind!r}")
    for name, value, lo in (("nlist", nlist, 1), ("nprobe", nprobe, 1), ("pq", pq, 1), ("hnsw_m", hnsw_m, 2),
                            ("ef_search", ef_search, 1), ("pq_bits", pq_bits, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo):
            raise ValueError(f"{name} must be an int >= {lo} or None, got {value!r}")
    return {"kind": kind, "nlist": nlist, "nprobe": int(nprobe), "pq": pq, "hnsw_m": int(hnsw_m),
            "ef_search": int(ef_search), "pq_bits": int(pq_bits)}


def factory_string(params, n, d):
    """The FAISS index_factory string of params for n vectors of dimension d."""
    kind = params["kind"]
    if kind.startswith("faiss:"):
        return kind[6:]
    nlist = params["nlist"] or max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39 or 1))
    pq = params["pq"] or max(1, d // 4)
    if kind in ("ivf-pq", "hnsw-pq") and d % pq:
        raise ValueError(f"pq={pq} sub-quantizers must divide the embedding dimension {d}")
    bits = params.get("pq_bits", 8)
    pq = f"PQ{pq}" if bits == 8 else f"PQ{pq}x{bits}"
    return {"flat": "Flat", "ivf": f"IVF{nlist},Flat", "ivf-pq": f"IVF{nlist},{pq}",
            "hnsw": f"HNSW{params['hnsw_m']},Flat", "hnsw-pq": f"HNSW{params['hnsw_m']}_{pq}"}[kind]


class Stage1Index:
    """Stage-1 search over a gallery's unit embeddings (n, D) (a memory map)."""

    def __init__(self, params, embeddings, faiss_index=None):
        self.params = params
        self.embeddings = embeddings            # (n, D) float32 unit rows, memory-mapped
        self.index = faiss_index                # an approximate FAISS index holding rows 0..n-1, or None
        self._flat = None                       # exact FAISS index, built from the embeddings on first use
        self._device_index = None

    @property
    def exact(self):
        """Exact search: kind "flat", or an approximate kind not trained yet (a build in progress)."""
        return self.params["kind"] == "flat" or self.index is None

    @classmethod
    def train(cls, params, embeddings, seed=0, chunk=65536):
        """Build the index of params over embeddings (n, D): train an approximate one on a sample."""
        if params["kind"] == "flat":
            return cls(params, embeddings)
        faiss = _faiss(f"index {params['kind']!r}")
        n, d = embeddings.shape
        if n == 0:
            raise ValueError(f"index {params['kind']!r} needs embeddings to train on; the gallery is empty")
        spec = factory_string(params, n, d)
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            # 40 points per IVF list (FAISS asks for >= 39); PQ codebooks want >= 256 per centroid
            n_train = min(n, max(10_000, 40 * getattr(faiss.try_extract_index_ivf(index), "nlist", 1)))
            rows = np.sort(np.random.default_rng(seed).choice(n, n_train, replace=False))
            index.train(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
        out = cls(params, embeddings, index)
        out.add(0, n, chunk)
        return out

    def add(self, start, stop, chunk=65536):
        """Index the embeddings rows [start, stop) (appended since the last add)."""
        target = self.index if self.index is not None else self._flat
        if target is None:
            return
        if target.d != self.embeddings.shape[1]:
            raise ValueError(f"index dimension {target.d} != embeddings dimension {self.embeddings.shape[1]}")
        for s in range(start, stop, chunk):
            target.add(np.ascontiguousarray(self.embeddings[s:min(stop, s + chunk)], dtype=np.float32))
        self._device_index = None

    def rebind(self, embeddings):
        """Point the index at the embeddings memory map after a commit grew it (the exact FAISS
        index, if built, takes the new rows)."""
        self.embeddings = embeddings
        if self._flat is not None and self._flat.ntotal != embeddings.shape[0]:
            if self._flat.ntotal > embeddings.shape[0]:
                self._flat = None
            else:
                for s in range(self._flat.ntotal, embeddings.shape[0], 65536):
                    self._flat.add(np.ascontiguousarray(embeddings[s:s + 65536], dtype=np.float32))
        self._device_index = None

    def save(self, path):
        faiss = _faiss("saving an approximate index")
        faiss.write_index(self.index, path)

    @classmethod
    def load(cls, params, embeddings, path):
        if params["kind"] == "flat" or path is None:
            return cls(params, embeddings)
        faiss = _faiss(f"gallery index {params['kind']!r}")
        return cls(params, embeddings, faiss.read_index(path))

    def _exact_faiss(self):
        import faiss
        if self._flat is None:
            self._flat = faiss.IndexFlatIP(self.embeddings.shape[1])
            self.rebind(self.embeddings)   # adds every row
        return self._flat

    def _search_index(self, device):
        """The FAISS index to search: on every GPU (sharded) when device is CUDA and faiss-gpu is here."""
        import faiss
        index = self.index if self.index is not None else self._exact_faiss()
        if torch.device(device).type != "cuda" or not hasattr(faiss, "index_cpu_to_all_gpus") \
                or faiss.get_num_gpus() == 0:
            return index
        if self._device_index is None:   # not exercised on the CPU-only development machine
            co = faiss.GpuMultipleClonerOptions()
            co.shard = True
            self._device_index = faiss.index_cpu_to_all_gpus(index, co=co)
        return self._device_index

    def search(self, queries, k, nprobe=None, ef_search=None, device="cpu", exact=False, chunk=65536):
        """queries (B, D) float32 unit rows -> (scores (B, k) float32, ids (B, k) int64), best first;
        an approximate index may return fewer than k (id -1, score -inf). exact=True: exact search
        whatever the kind."""
        n = self.embeddings.shape[0]
        k = min(k, n)
        exact = exact or self.exact
        if exact and not have_faiss():
            from ..ops.rerank import topk_cosine
            q = torch.from_numpy(queries)
            best_s, best_i = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.int64)
            for start in range(0, n, chunk):   # chunks read from disk: memory O(chunk)
                g = torch.from_numpy(self.embeddings[start:start + chunk])
                s, i = topk_cosine(q, g, min(k, g.shape[0]))
                best_s, order = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
                best_i = torch.cat([best_i, i + start], 1).gather(1, order)
            return best_s.numpy(), best_i.numpy()
        import faiss
        index = self._exact_faiss() if exact and self.index is not None else self._search_index(device)
        if not exact:
            ps = faiss.GpuParameterSpace() if index is self._device_index else faiss.ParameterSpace()
            base = faiss.downcast_index(self.index)
            if faiss.try_extract_index_ivf(self.index) is not None:
                ps.set_index_parameter(index, "nprobe", int(nprobe or self.params["nprobe"]))
            if isinstance(base, faiss.IndexHNSW):
                ps.set_index_parameter(index, "efSearch", max(k, int(ef_search or self.params["ef_search"])))
        threads = faiss.omp_get_max_threads()
        if len(queries) < 16 and threads > 1:   # one query: OpenMP hand-offs cost more than they save
            faiss.omp_set_num_threads(1)        # (10x slower with 2 threads on the shared 2-core machine)
        try:
            scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        finally:
            faiss.omp_set_num_threads(threads)
        scores[ids < 0] = -np.inf
        return scores, ids

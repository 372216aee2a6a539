"""Gallery builds and batch searches as Ray Data jobs: the same code on a laptop (ray.init()) and on
a cluster (ray.init("auto"); the gallery and shard folders then on storage every node sees).

Build: photos -> map_batches(encoder actor: detect/align/encode, one actor per CPU or GPU worker)
-> map_batches(shard writer: each block becomes a small gallery directory under shards/) -> the
driver merges the shards into one gallery in photo order (so the result equals Gallery.build's),
then trains the stage-1 index. Search: photos -> map_batches(search actor: encode with the gallery's
backbone, Gallery.search) -> one record per face, in photo order.
"""
import json
import os
import shutil
import uuid

import numpy as np
import torch


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("Ray jobs need Ray Data: pip install 'ray[data]'") from None
    return ray


class EncoderActor:
    """Ray Data actor: a batch of photos {i, path, identity} -> one row per photo: its face's embedding
    (D,) and patches (N, C) and status "ok", or zeros and "unreadable" / "no_face"."""

    def __init__(self, backbone, grid, align="none", device="cpu", batch_size=64):
        from ..backbones import load_encoder
        self.enc = load_encoder(backbone, device, align)
        self.grid, self.batch_size = grid, batch_size

    def __call__(self, batch):
        from .builder import encode_paths
        paths = [str(p) for p in batch["path"]]
        got = encode_paths(self.enc, paths, self.grid, self.batch_size)
        n, d = len(paths), self.enc.embedding_dim
        emb = np.zeros((n, d), dtype=np.float32)
        patches = np.zeros((n, self.grid * self.grid, self.enc.map_channels), dtype=np.float32)
        status = np.array(["no_face"] * n, dtype=object)
        bad = set(got["unreadable"])
        for j, p in enumerate(paths):
            if p in bad:
                status[j] = "unreadable"
        src = got["source"].numpy()
        emb[src] = got["embeddings"].numpy()
        patches[src] = got["patches"].flatten(2).transpose(1, 2).numpy()
        status[src] = "ok"
        return {"i": np.asarray(batch["i"]), "path": np.asarray(paths, dtype=object),
                "identity": np.asarray(batch["identity"], dtype=object), "embedding": emb, "patches": patches,
                "status": status}


def write_shard(batch, shards, grid):
    """Ray Data task: write a block's faces as a small gallery under shards/; return its summary."""
    from .gallery import Gallery
    ok = np.asarray(batch["status"]) == "ok"
    folder = os.path.join(shards, uuid.uuid4().hex)
    n = int(ok.sum())
    if n:
        emb = torch.from_numpy(np.ascontiguousarray(batch["embedding"][ok]))
        pat = torch.from_numpy(np.ascontiguousarray(batch["patches"][ok]))
        g = Gallery.create(folder, embedding_dim=emb.shape[1], grid=(grid, grid), channels=pat.shape[2])
        g.add((emb, pat), list(batch["identity"][ok]), [str(p) for p in batch["path"][ok]])
        with open(os.path.join(folder, "order.json"), "w") as fh:   # photo index of each row
            json.dump([int(i) for i in np.asarray(batch["i"])[ok]], fh)
    status = np.asarray(batch["status"])
    return {"shard": np.array([folder if n else ""], dtype=object), "faces": np.array([n]),
            "unreadable": np.array([json.dumps([str(p) for p in batch["path"][status == "unreadable"]])],
                                   dtype=object),
            "no_face": np.array([int((status == "no_face").sum())])}


def merge_shards(out, shards, *, backbone, weights_sha256, grid, index="flat", pca=None, chunk=4096,
                 report=None, **index_options):
    """One gallery at out from shard galleries (a list of folders, each with order.json), rows in photo order."""
    from .gallery import Gallery
    from .store import fit_pca
    def order_of(shard):
        with open(os.path.join(shard, "order.json")) as fh:
            return json.load(fh)
    parts = [(Gallery.load(s, verify="quick"), order_of(s)) for s in shards]
    if not parts:
        raise ValueError("no usable faces in any shard")
    keys = sorted((order, p, row) for p, (_, orders) in enumerate(parts) for row, order in enumerate(orders))
    first = parts[0][0]
    g = None
    for s in range(0, len(keys), chunk):
        take = np.array([(p, row) for _, p, row in keys[s:s + chunk]], dtype=np.int64)      # (n, 2)
        emb = np.empty((len(take), *first.embeddings.shape[1:]), dtype=np.float32)
        pat = np.empty((len(take), *first.patches.shape[1:]), dtype=np.float16)
        names, paths = [None] * len(take), [None] * len(take)
        for p in np.unique(take[:, 0]):          # one sorted read per shard and chunk
            where = np.flatnonzero(take[:, 0] == p)
            rows = take[where, 1]
            order = np.argsort(rows)
            shard = parts[p][0]
            emb[where[order]] = shard.embeddings[rows[order]]
            pat[where[order]] = shard.patches[rows[order]]
            for w, name, path in zip(where, shard.identity_of(rows), shard.paths.many(rows)):
                names[w], paths[w] = name, path
        pat_t = torch.from_numpy(pat).float()
        if g is None:
            comps = fit_pca(pat_t, pca) if pca is not None else None
            g = Gallery.create(out, embedding_dim=first.manifest["embedding_dim"], grid=grid,
                               channels=first.manifest["channels"], backbone=backbone, weights_sha256=weights_sha256,
                               index=index, pca=comps, build={"merging": True}, **index_options)
        g.add((torch.from_numpy(emb), pat_t), names, paths, build={"merging": True})
    g._commit(None, build=None, extra={"build_report": report} if report else None)
    return g


def ray_build(out, images, backbone, *, csv=None, grid=None, index="flat", pca=None, batch_size=64,
              num_encoders=2, num_gpus_per_encoder=0, align="none", shards=None, keep_shards=False,
              progress=True, **index_options):
    """Build the gallery out from photos (DIR/<identity>/<image>, or a flat folder with csv) as a Ray
    Data job on the running Ray cluster (ray.init() first; a local one is started otherwise).
    num_encoders actors encode in parallel (num_gpus_per_encoder > 0: on GPUs); shards (default
    out + ".shards") must be on storage every node sees. Returns the merged Gallery."""
    ray = _ray()
    from .._checks import check_int
    from ..backbones.encoders import check_backbone_spec
    from .builder import check_grid, gallery_photos
    from .fingerprint import weights_sha256
    check_backbone_spec(backbone)
    batch_size = check_int("batch_size", batch_size)
    num_encoders = check_int("num_encoders", num_encoders)
    images, paths, names = gallery_photos(images, csv)
    if os.path.exists(out):
        raise ValueError(f"out {os.fspath(out)!r} exists; a Ray build writes a new gallery")
    from ..backbones import load_encoder
    enc = load_encoder(backbone, "cpu", align)
    grid = check_grid(enc, grid)
    shards = os.fspath(shards or os.fspath(out) + ".shards")
    os.makedirs(shards, exist_ok=True)
    if not ray.is_initialized():
        ray.init()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    device = "cuda" if num_gpus_per_encoder else "cpu"
    ds = ray.data.from_items([{"i": i, "path": p, "identity": n} for i, (p, n) in enumerate(zip(paths, names))])
    ds = ds.map_batches(EncoderActor, fn_constructor_kwargs=dict(backbone=backbone, grid=grid, align=align,
                                                                 device=device, batch_size=batch_size),
                        batch_size=batch_size, concurrency=num_encoders, num_cpus=1, num_gpus=num_gpus_per_encoder,
                        batch_format="numpy")
    ds = ds.map_batches(write_shard, fn_kwargs=dict(shards=shards, grid=grid), batch_size=None, batch_format="numpy")
    summary = ds.take_all()
    folders = [r["shard"] for r in summary if r["shard"]]
    report = {"photos": len(paths), "faces": int(sum(r["faces"] for r in summary)),
              "unreadable": [p for r in summary for p in json.loads(r["unreadable"])],
              "no_face": int(sum(r["no_face"] for r in summary))}
    g = merge_shards(out, folders, backbone=backbone, weights_sha256=weights_sha256(backbone), grid=grid,
                     index=index, pca=pca, report=report, **index_options)
    if not keep_shards:
        shutil.rmtree(shards, ignore_errors=True)
    return g


class SearchActor:
    """Ray Data actor: a batch of query photos {i, path} -> one row per face found: query index, path
    and the JSON record of its search (SearchResults.record)."""

    def __init__(self, gallery, device="cpu", align="none", top=None, **search):
        from .gallery import Gallery
        self.g = Gallery.load(gallery, verify="none")   # the driver verified it once
        self.device, self.align, self.top, self.search = device, align, top, search

    def __call__(self, batch):
        paths = [str(p) for p in batch["path"]]
        faces, found, _, _ = self.g.encode_images(paths, device=self.device, align=self.align)
        index_of = {p: int(i) for p, i in zip(paths, batch["i"])}
        if len(faces) == 0:
            return {"i": np.zeros(0, dtype=np.int64), "record": np.zeros(0, dtype=object)}
        res = self.g.search(faces, device=self.device, **self.search)
        res.queries = found
        return {"i": np.array([index_of[p] for p in found], dtype=np.int64),
                "record": np.array([json.dumps(res.record(j, self.top)) for j in range(len(res))], dtype=object)}


def ray_search(gallery, images, *, k=100, alpha=0.7, weighting="apc", threshold=None, nprobe=None, batch_size=64,
               num_searchers=1, num_gpus_per_searcher=0, align="none", top=None, progress=True):
    """Search the photos `images` (a folder, searched recursively, or a list) in a gallery as a Ray Data
    job; returns one SearchResults.record per face found, in photo order."""
    ray = _ray()
    from .._checks import check_int
    from ..data.folder import list_images
    from .gallery import Gallery
    g = Gallery.load(gallery, verify="full")
    g.encoder("cpu", align)                        # checks the backbone's weights before any job starts
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(g):
        raise ValueError(f"k must be an int in [1, {len(g)}], got {k!r}")
    check_int("batch_size", batch_size)
    check_int("num_searchers", num_searchers)
    paths = list_images(images, "images")
    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = progress
    device = "cuda" if num_gpus_per_searcher else "cpu"
    ds = ray.data.from_items([{"i": i, "path": p} for i, p in enumerate(paths)])
    ds = ds.map_batches(SearchActor, fn_constructor_kwargs=dict(
        gallery=os.path.abspath(os.fspath(gallery)), device=device, align=align, top=top, k=k, alpha=alpha,
        weighting=weighting, threshold=threshold, nprobe=nprobe, batch_size=batch_size),
        batch_size=batch_size, concurrency=num_searchers, num_cpus=1, num_gpus=num_gpus_per_searcher,
        batch_format="numpy")
    rows = ds.take_all()
    rows.sort(key=lambda r: r["i"])
    return [json.loads(r["record"]) for r in rows]

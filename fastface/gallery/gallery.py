"""fastface.Gallery: a persistent face gallery (who is in this photo?) that outlives the process.

A gallery is a directory: manifest.json (manifest.py), the row files and the patch store
(store.py), the stage-1 index (index.py), identities.<gen>.json and removed.<gen>.u8. Searching
runs fastface's two stages: the stage-1 index's top k, then emd_rerank on those candidates, whose
patches are read (sorted, de-duplicated) from the memory-mapped store and moved to the device.
"""
import copy
import json
import os
import re
from contextlib import contextmanager

import numpy as np
import torch

from .. import __version__
from .._checks import check_bool, check_int, check_number
from . import manifest as mf
from .index import Stage1Index, check_index_spec
from .results import SearchResults
from .store import (ROW_FILES, Appender, PathColumn, fit_pca, load_pca, open_rows, project,
                    read_rows, save_pca)

SEARCH_WEIGHTINGS = ("apc", "uniform", "sc", "cc")   # "lmk" needs landmarks, which galleries do not store
GENERATION_FILE = re.compile(r"^(identities\.\d+\.json|removed\.\d+\.u8|index\.\d+\.faiss)$")


class Gallery:
    """A persistent gallery of faces: embeddings (n, D), patch maps (n, H*W, C) fp16 and, per item,
    an identity name and a source path. Item ids are row numbers; they never change (remove() marks
    rows removed). Create with Gallery.create / from_tensors / build, open with Gallery.load."""

    def __init__(self, folder, manifest, index=None):
        self.folder = os.fspath(folder)
        self.manifest = manifest
        self._index = index
        self._encoders = {}
        self._open()

    # ---- opening ---------------------------------------------------------------------------
    def _open(self):
        m, f = self.manifest, self.folder
        self.embeddings = open_rows(f, m, "embeddings")        # (n, D) float32 unit rows, a RowFile
        self.patches = open_rows(f, m, "patches")              # (n, N, C) float16, a RowFile
        self.labels = open_rows(f, m, "labels")                # (n,) int32
        self.paths = PathColumn(f, open_rows(f, m, "path_ends"))
        with open(os.path.join(f, m["identities_file"]), encoding="utf-8") as fh:
            self.identity_names = json.load(fh)
        self.removed = np.zeros(m["count"], dtype=bool)
        if m["removed_file"]:
            self.removed = np.fromfile(os.path.join(f, m["removed_file"]), dtype=np.uint8).astype(bool)
        self.pca = load_pca(f) if m["pca"] else None           # (C0, C) or None
        if self._index is None:
            path = m["index"]["file"] and os.path.join(f, m["index"]["file"])
            self._index = Stage1Index.load(m["index"]["params"], self.embeddings, path)
        else:
            self._index.rebind(self.embeddings)

    @classmethod
    def load(cls, folder, *, backbone=None, verify="full"):
        """Open the gallery in folder (nothing big is read: rows are read on demand). verify: "full" (every file's checksums),
        "quick" (sizes, and the checksums of the small files) or "none". backbone: refuse the
        gallery unless it was built with this backbone spec and the same weights file."""
        if verify not in ("full", "quick", "none"):
            raise ValueError(f"verify must be 'full', 'quick' or 'none', got {verify!r}")
        folder = os.fspath(folder) if isinstance(folder, os.PathLike) else folder
        m = mf.read_manifest(folder)
        if verify != "none":
            big = {ROW_FILES["embeddings"][0], ROW_FILES["patches"][0]}
            for name, record in m["files"].items():
                mf.verify_file(folder, name, record, full=verify == "full" or name not in big)
        g = cls(folder, m)
        if backbone is not None:
            g.check_backbone(backbone)
        return g

    def check_backbone(self, backbone):
        """Raise GalleryError unless the gallery was made by backbone (spec and weights' SHA-256)."""
        from .fingerprint import weights_sha256
        made = self.manifest["backbone"]
        if made is None:
            raise mf.GalleryError(f"gallery {self.folder!r} was made from tensors without a backbone; it cannot "
                                  f"check backbone {backbone!r} (search it with Faces)")
        if backbone != made:
            raise mf.GalleryError(f"gallery {self.folder!r} was built with backbone {made!r}, not {backbone!r}")
        digest = weights_sha256(backbone)
        if digest != self.manifest["weights_sha256"]:
            raise mf.GalleryError(f"backbone {backbone!r}: its weights file has SHA-256 {digest[:16]}..., but gallery "
                                  f"{self.folder!r} was built with weights {self.manifest['weights_sha256'][:16]}...")

    # ---- creating --------------------------------------------------------------------------
    @classmethod
    def create(cls, folder, *, embedding_dim, grid, channels, backbone=None, weights_sha256=None,
               index="flat", nlist=None, nprobe=32, pq=None, hnsw_m=32, ef_search=128, pq_bits=8, pca=None,
               build=None):
        """Create an empty gallery directory (folder must not exist or be empty). channels: of the
        patches given to add (C0); pca: None, or (C0, C) components (store.fit_pca) to store C < C0."""
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"out must be a path, got {type(folder).__name__}")
        folder = os.fspath(folder)
        if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
            raise ValueError(f"out {folder!r} exists and is not an empty directory (add to a gallery with "
                             "Gallery.load(...).add / `fastface gallery add`)")
        params = check_index_spec(index, nlist, nprobe, pq, hnsw_m, ef_search, pq_bits)
        embedding_dim = check_int("embedding_dim", embedding_dim)
        channels = check_int("channels", channels)
        grid = [check_int("grid", g) for g in ((grid, grid) if isinstance(grid, int) else grid)]
        stored = channels
        if pca is not None:
            if not isinstance(pca, torch.Tensor) or pca.dim() != 2 or pca.shape[0] != channels \
                    or not 1 <= pca.shape[1] <= channels:
                raise ValueError(f"pca must be ({channels}, C) components with C <= {channels}, got "
                                 f"{tuple(pca.shape) if isinstance(pca, torch.Tensor) else type(pca).__name__}")
            stored = pca.shape[1]
        os.makedirs(folder, exist_ok=True)
        ident = "identities.0.json"
        mf.write_json_atomic(os.path.join(folder, ident), [])
        files = {ident: mf.file_record(os.path.join(folder, ident))}
        if pca is not None:
            name = save_pca(folder, pca)
            files[name] = mf.file_record(os.path.join(folder, name))
        m = {"format": mf.FORMAT, "version": mf.VERSION, "fastface_version": __version__,
             "backbone": backbone, "weights_sha256": weights_sha256, "grid": grid,
             "embedding_dim": embedding_dim, "source_channels": channels, "channels": stored,
             "embedding_dtype": "float32", "patch_dtype": "float16",
             "pca": None if pca is None else {"file": "pca.npy", "channels": stored},
             "count": 0, "n_removed": 0, "n_identities": 0, "generation": 0,
             "identities_file": ident, "removed_file": None,
             "index": {"params": params, "file": None, "indexed": 0}, "build": build, "files": files}
        mf.write_json_atomic(os.path.join(folder, mf.MANIFEST), m)
        return cls(folder, m)

    @classmethod
    def from_tensors(cls, folder, embeddings, patches, identities, paths=None, *, backbone=None,
                     index="flat", pca=None, **index_options):
        """A new gallery of n faces: embeddings (n, D), patches (n, C, H, W) or (n, H*W, C), identities
        (n names), paths (n source paths or None). backbone: the spec that made the features (checked
        when the gallery searches images). pca: store C = pca channels (fitted on these patches)."""
        from ..ops.rerank import Faces
        faces = _faces("embeddings", embeddings, patches)
        grid = faces.grid or _square_grid(faces.patches.shape[1])
        components = None
        if pca is not None:
            c0 = faces.patches.shape[2]
            check_int("pca", pca, hi=c0)
            components = fit_pca(faces.patches, pca)
        digest = None
        if backbone is not None:
            from .fingerprint import weights_sha256
            digest = weights_sha256(backbone)
        g = cls.create(folder, embedding_dim=faces.embeddings.shape[1], grid=grid,
                       channels=faces.patches.shape[2], backbone=backbone, weights_sha256=digest, index=index,
                       pca=components, **index_options)
        g.add(Faces(faces.embeddings, faces.patches, grid=grid), identities=identities, paths=paths)
        return g

    @classmethod
    def build(cls, out, images, backbone, **options):
        """A new gallery from photos: images DIR/<identity>/<image> (or a flat folder with csv=FILE of
        path,identity rows), encoded by backbone. See fastface.gallery.builder.build_gallery."""
        from .builder import build_gallery
        return build_gallery(out, images, backbone, **options)

    # ---- sizes and names ---------------------------------------------------------------------
    def __len__(self):
        """The number of faces searched (added, less removed)."""
        return self.manifest["count"] - self.manifest["n_removed"]

    @property
    def count(self):
        """Rows in the store (item ids are 0..count-1, removed ones included)."""
        return self.manifest["count"]

    @property
    def grid(self):
        return tuple(self.manifest["grid"])

    def info(self):
        """A JSON-able summary: counts, backbone, grid, channels, index, PCA, disk bytes, build state."""
        m = self.manifest
        return {"path": self.folder, "format_version": m["version"], "faces": len(self), "rows": m["count"],
                "removed": m["n_removed"], "identities": m["n_identities"], "backbone": m["backbone"],
                "weights_sha256": m["weights_sha256"], "grid": m["grid"], "embedding_dim": m["embedding_dim"],
                "channels": m["channels"], "source_channels": m["source_channels"], "pca": m["pca"] is not None,
                "patch_dtype": m["patch_dtype"], "index": m["index"]["params"], "build": m["build"],
                "disk_bytes": sum(r["bytes"] for r in m["files"].values()) + os.path.getsize(
                    os.path.join(self.folder, mf.MANIFEST))}

    def identity_of(self, items):
        """Identity names of item ids."""
        return [self.identity_names[int(self.labels[int(i)])] for i in items]

    # ---- writing ---------------------------------------------------------------------------
    @contextmanager
    def writing(self):
        """Hold the gallery's writer lock (flock on .lock: released if the process dies) and bring this
        object up to the latest committed generation first. add / remove / set_index take it."""
        import fcntl
        fd = os.open(os.path.join(self.folder, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise mf.GalleryError(f"gallery {self.folder!r} is being written by another process") from None
        try:
            latest = mf.read_manifest(self.folder)
            if latest["generation"] != self.manifest["generation"]:
                self.manifest, self._index = latest, None
                self._open()
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _prepare_rows(self, faces, identities, paths):
        """Validate one batch to add; return (unit embeddings, fp16 patches, label numbers, paths, new names)."""
        m = self.manifest
        n = len(faces)
        if faces.embeddings.shape[1] != m["embedding_dim"]:
            raise ValueError(f"embeddings must have {m['embedding_dim']} dimensions (the gallery's), got "
                             f"{tuple(faces.embeddings.shape)}")
        want = (m["grid"][0] * m["grid"][1], m["source_channels"])
        if tuple(faces.patches.shape[1:]) != want:
            raise ValueError(f"patches must be (n, {want[1]}, {m['grid'][0]}, {m['grid'][1]}) or (n, {want[0]}, "
                             f"{want[1]}) (the gallery's grid and channels), got (n, N, C) = "
                             f"{tuple(faces.patches.shape)}")
        if isinstance(identities, (str, bytes)) or not hasattr(identities, "__len__"):
            raise TypeError(f"identities must be a sequence of n names, got {type(identities).__name__}")
        if len(identities) != n:
            raise ValueError(f"identities must name each of the {n} faces, got {len(identities)} names")
        names = [str(int(x)) if isinstance(x, (int, np.integer)) else x for x in identities]
        bad = [x for x in names if not isinstance(x, str) or not x]
        if bad:
            raise TypeError(f"identities must be non-empty strings (or ints), got {bad[0]!r}")
        if paths is None:
            paths = [None] * n
        elif isinstance(paths, (str, bytes)) or len(paths) != n:
            raise ValueError(f"paths must be None or a sequence of {n} source paths, got "
                             f"{type(paths).__name__}{'' if isinstance(paths, (str, bytes)) else f' of {len(paths)}'}")
        number = {name: i for i, name in enumerate(self.identity_names)}
        new = []
        labels = np.empty(n, dtype=np.int32)
        for j, name in enumerate(names):
            if name not in number:
                number[name] = len(number)
                new.append(name)
            labels[j] = number[name]
        emb = torch.nn.functional.normalize(faces.embeddings.detach().float().cpu(), dim=1).numpy()
        patches = project(faces.patches.detach().cpu(), self.pca).to(torch.float16).numpy()
        return emb, patches, labels, list(paths), new

    def add(self, faces, identities, paths=None, *, build=False):
        """Add faces (a Faces, or an (embeddings (n, D), patches) tuple) named identities (n names) with
        optional source paths; one atomic commit. Returns the new item ids (n,) int64."""
        faces = _faces("faces", faces) if not isinstance(faces, tuple) else _faces("faces", *faces[:2])
        if len(faces) == 0:
            raise ValueError("faces is empty: nothing to add")
        with self.writing():
            emb, patches, labels, paths, new = self._prepare_rows(faces, identities, paths)
            start = self.count
            appender = Appender(self.folder, self.manifest)
            try:
                appender.append(emb, patches, labels, paths)
            except BaseException:
                appender.close()
                raise
            self._commit(appender, new_names=new, build=build)
        return torch.arange(start, start + len(faces))

    def remove(self, items=None, identity=None):
        """Mark gallery items (ids) and/or every item of an identity (name) removed; one atomic commit.
        Returns the number of items newly removed."""
        if items is None and identity is None:
            raise ValueError("remove needs items (ids) or identity (a name)")
        with self.writing():
            rows = np.zeros(self.count, dtype=bool)
            if items is not None:
                ids = np.asarray(torch.as_tensor(items).reshape(-1).cpu())
                if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= self.count):
                    raise ValueError(f"items must be item ids in [0, {self.count}), got {ids[:5].tolist()}")
                rows[ids] = True
            if identity is not None:
                if identity not in self.identity_names:
                    raise ValueError(f"identity {identity!r} is not in gallery {self.folder!r}")
                rows |= self.labels == self.identity_names.index(identity)
            fresh = rows & ~self.removed
            if fresh.any():
                self._commit(None, removed=self.removed | rows)
        return int(fresh.sum())

    def add_images(self, images, **options):
        """Add photos (DIR/<identity>/<image>, or a flat folder with csv=FILE) encoded with the gallery's
        backbone, in one atomic commit; see fastface.gallery.builder.add_photos."""
        from .builder import add_photos
        return add_photos(self, images, **options)

    def set_index(self, index="flat", **options):
        """Replace the stage-1 index (kind and options as in Gallery.create): trained on the stored
        embeddings and committed atomically (the old index serves until then)."""
        params = check_index_spec(index, **options)
        old = self._index
        self._index = None if params["kind"] != "flat" else Stage1Index(params, self.embeddings)
        try:
            with self.writing():
                self._commit(None, index_params=params)
        except BaseException:
            self._index = old
            raise

    def _commit(self, appender=None, new_names=(), removed=None, build=False, extra=None, index_params=None):
        """Make one new generation visible: row files' new sizes, identities, removed mask, index, build
        state (False: unchanged). Every file is on disk before manifest.json is replaced."""
        f = self.folder
        m = copy.deepcopy(self.manifest)
        gen = m["generation"] = m["generation"] + 1
        try:
            if appender is not None:
                sizes = appender.sizes()
                appender.close()
                for fname, size in sizes.items():
                    m["files"][fname] = mf.file_record(os.path.join(f, fname), size, m["files"].get(fname))
                from .store import row_bytes
                m["count"] = sizes[ROW_FILES["embeddings"][0]] // row_bytes(m, "embeddings")
            if new_names:
                names = self.identity_names + list(new_names)
                ident = f"identities.{gen}.json"
                mf.write_json_atomic(os.path.join(f, ident), names)
                del m["files"][m["identities_file"]]
                m["identities_file"], m["n_identities"] = ident, len(names)
                m["files"][ident] = mf.file_record(os.path.join(f, ident))
            if removed is not None or (appender is not None and m["removed_file"]):
                mask = np.zeros(m["count"], dtype=np.uint8)
                src = self.removed if removed is None else removed
                mask[:len(src)] = src
                name = f"removed.{gen}.u8"
                mask.tofile(os.path.join(f, name))
                if m["removed_file"]:
                    del m["files"][m["removed_file"]]
                m["removed_file"], m["n_removed"] = name, int(mask.sum())
                m["files"][name] = mf.file_record(os.path.join(f, name))
            if build is not False:
                m["build"] = build
            m.update(extra or {})
            if index_params is not None:
                if m["index"]["file"]:
                    del m["files"][m["index"]["file"]]
                m["index"] = {"params": index_params, "file": None, "indexed": 0}
            self._update_index(m, gen)
            mf.write_json_atomic(os.path.join(f, mf.MANIFEST), m)
        except BaseException:
            self._index = None            # in-memory index may hold uncommitted rows: reload it
            self._open()
            raise
        self.manifest = m
        self._open()
        self._drop_stale()

    def _update_index(self, m, gen):
        """Index the rows appended since the last commit (approximate indexes: a new index file)."""
        idx = m["index"]
        if idx["params"]["kind"] == "flat" or m["build"] is not None:   # trained when a build finishes
            idx["indexed"] = m["count"] if idx["params"]["kind"] == "flat" else idx["indexed"]
            return
        emb = open_rows(self.folder, m, "embeddings")
        if idx["file"] is None:
            self._index = Stage1Index.train(idx["params"], emb)
        else:
            self._index.rebind(emb)
            self._index.add(idx["indexed"], m["count"])
        if idx["file"] is None or idx["indexed"] != m["count"]:
            name = f"index.{gen}.faiss"
            self._index.save(os.path.join(self.folder, name))
            if idx["file"]:
                del m["files"][idx["file"]]
            idx["file"], idx["indexed"] = name, m["count"]
            m["files"][name] = mf.file_record(os.path.join(self.folder, name))

    def _drop_stale(self):
        """Delete generation files no longer named by the manifest (older ones, or a killed writer's)."""
        for name in os.listdir(self.folder):
            if (GENERATION_FILE.match(name) or name.startswith(".tmp-")) and name not in self.manifest["files"]:
                try:
                    os.remove(os.path.join(self.folder, name))
                except OSError:
                    pass

    # ---- searching -------------------------------------------------------------------------
    def encoder(self, device="cpu", align="none"):
        """The backbone that made this gallery (checked against its weights' SHA-256), for query photos."""
        key = (str(device), align)
        if key not in self._encoders:
            spec = self.manifest["backbone"]
            if spec is None:
                raise mf.GalleryError(f"gallery {self.folder!r} was made from tensors without a backbone: search "
                                      "it with Faces (embeddings, patches), not photos")
            self.check_backbone(spec)
            from ..backbones import load_encoder
            self._encoders[key] = load_encoder(spec, device, align)
        return self._encoders[key]

    def encode_images(self, images, *, device="cpu", align="none", batch_size=64, progress=False):
        """Faces of photos (a folder, searched recursively, or a list of paths) with the gallery's backbone
        and grid; returns (Faces, paths of the faces found, unreadable paths, photos without a face)."""
        from ..data.folder import list_images
        from .builder import encode_paths
        paths = list_images(images, "images")
        enc = self.encoder(device, align)
        out = encode_paths(enc, paths, self.manifest["grid"][0], batch_size=batch_size, progress=progress)
        from ..ops.rerank import Faces
        faces = Faces(out["embeddings"], out["patches"])
        return faces, [paths[i] for i in out["source"].tolist()], out["unreadable"], out["n_no_face"]

    def search(self, query, *, k=100, alpha=0.7, weighting="apc", eps=0.05, max_iter=100, tol=1e-6,
               threshold=None, nprobe=None, ef_search=None, batch_size=64, impl="auto", device="cpu",
               align="none", progress=False, exact=False):
        """Return SearchResults: per query, the gallery's k nearest faces by stage 1 (the index),
        re-ranked by alpha*EMD + (1-alpha)*(1-cos) (fastface.emd_rerank on the candidates read from the
        patch store), with identities, paths and the open-set decision distance <= threshold.

        query: a Faces, an (embeddings, patches) tuple (patches of the gallery's source channels), a
        photo path, a folder of photos or a list of photo paths (encoded with the gallery's backbone).
        exact=True: exact stage 1 whatever the index (for recall checks).
        """
        from .. import _backend as be
        from .._checks import check_solver_args
        from ..ops.rerank import Faces, emd_rerank
        check_number("alpha", alpha, lo=0, hi=1)
        check_solver_args(eps, max_iter, tol, "auto")       # all of stage 2's arguments before stage 1 runs
        be.resolve_impl(impl, torch.device(device))
        if weighting not in SEARCH_WEIGHTINGS and weighting != "lmk":
            raise ValueError(f"weighting must be one of {SEARCH_WEIGHTINGS}, got {weighting!r}")
        if threshold is not None:
            check_number("threshold", threshold)
        check_bool("progress", progress)
        check_bool("exact", exact)
        batch_size = check_int("batch_size", batch_size)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (the faces in the gallery), got {k}")
        if weighting == "lmk":
            raise ValueError("weighting 'lmk' needs landmarks, which a gallery does not store; use apc, uniform, sc or cc")
        sources = None
        if isinstance(query, (str, os.PathLike, list)):
            query, sources, _, _ = self.encode_images(query, device=device, align=align, batch_size=batch_size)
            if len(query) == 0:
                raise ValueError("query: no face found in the query photos")
        q = _faces("query", *query[:2]) if isinstance(query, tuple) else _faces("query", query)
        if len(q) == 0:
            raise ValueError("query is empty")
        want = (self.manifest["grid"][0] * self.manifest["grid"][1], self.manifest["source_channels"])
        if tuple(q.patches.shape[1:]) != want or q.embeddings.shape[1] != self.manifest["embedding_dim"]:
            raise ValueError(f"query must have embeddings (B, {self.manifest['embedding_dim']}) and patches (B, "
                             f"{want[0]}, {want[1]}) like the gallery's, got {tuple(q.embeddings.shape)} and "
                             f"{tuple(q.patches.shape)}")
        dev = torch.device(device)
        parts = []
        from tqdm import tqdm
        for s in tqdm(range(0, len(q), batch_size), disable=not progress, desc="search"):
            emb = q.embeddings[s:s + batch_size].detach().float().cpu()
            qn = torch.nn.functional.normalize(emb, dim=1).numpy()
            cos1, ids1 = self._stage1(qn, k, nprobe, ef_search, device, exact)               # (b, k)
            uniq = np.unique(ids1)                                                           # sorted
            cand = torch.from_numpy(read_rows(self.patches, uniq)).to(dev)                   # (U, N, C) fp16
            if dev.type == "cpu":
                cand = cand.float()           # the CPU kernels compute in fp32: convert the U rows once
            # rows were checked finite when added (and are checksummed on disk): no rescan per search
            g = Faces(torch.from_numpy(read_rows(self.embeddings, uniq)).to(dev), cand, _defer_patch_check=True)
            g.patches_checked = True
            pos = torch.from_numpy(np.searchsorted(uniq, ids1)).to(dev)                      # (b, k)
            qp = project(q.patches[s:s + batch_size].to(dev), self.pca)
            res = emd_rerank(Faces(emb.to(dev), qp), g, alpha=alpha, weighting=weighting, eps=eps,
                             max_iter=max_iter, tol=tol, impl=impl, candidates=pos)
            items = torch.from_numpy(uniq)[res.indices.cpu()]
            parts.append((items, res.distance.cpu(), res.emd.cpu(), res.cosine.cpu(), torch.from_numpy(ids1),
                          torch.from_numpy(cos1)))
        items, dist, emd_v, cos, st1, cos1 = (torch.cat(t) for t in zip(*parts))
        known = torch.ones(len(q), dtype=torch.bool) if threshold is None else dist[:, 0] <= threshold
        flat = items.reshape(-1).tolist()
        names = self.identity_of(flat)
        paths = self.paths.many(flat)
        kk = items.shape[1]
        return SearchResults(items=items, distance=dist, emd=emd_v, cosine=cos, stage1_items=st1, stage1_cosine=cos1,
                             known=known, identities=[names[i:i + kk] for i in range(0, len(names), kk)],
                             paths=[paths[i:i + kk] for i in range(0, len(paths), kk)], threshold=threshold,
                             queries=sources)

    def _stage1(self, qn, k, nprobe=None, ef_search=None, device="cpu", exact=False):
        """(cosine (b, k) float32, item ids (b, k) int64) of the k best non-removed items per query."""
        n_removed = self.manifest["n_removed"]
        k1 = min(self.count, k + n_removed)
        s, i = self._index.search(qn, k1, nprobe=nprobe, ef_search=ef_search, device=device, exact=exact)
        ok = i >= 0
        ok[ok] = ~self.removed[i[ok]]
        short = ok.sum(1) < k
        if short.any():   # an approximate index found too few: exact search for those queries
            es, ei = self._index.search(np.ascontiguousarray(qn[short]), k1, exact=True)
            eok = ~self.removed[ei]
            s[short], i[short], ok[short] = es[:, :k1], ei[:, :k1], eok[:, :k1]
        order = np.argsort(~ok, axis=1, kind="stable")[:, :k]          # valid ones first, in rank order
        return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1).astype(np.int64)


def _square_grid(n_patches):
    side = int(round(n_patches ** 0.5))
    return (side, side) if side * side == n_patches else (1, n_patches)


def _faces(name, embeddings, patches=None):
    """A Faces from a Faces or (embeddings, patches), errors prefixed with the argument's name."""
    from ..ops.rerank import Faces, as_faces
    if patches is None:
        return as_faces(name, embeddings)
    try:
        return Faces(embeddings, patches)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None

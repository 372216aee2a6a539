"""The out-of-core stores: append-only row files, memory-mapped for reading.

Row files are raw little-endian arrays whose row count the manifest records (no header, so a file
only grows): embeddings.f32 (n, D) unit rows, patches.f16 (n, N, C) the patch store, labels.i32 (n,)
identity numbers, paths.bin (UTF-8 source paths back to back) with path_ends.i64 (n,) their ends.
The k candidates of a query batch are read (sorted, de-duplicated, runs coalesced) with pread:
RAM is bounded by the batch, not the gallery.
The optional PCA (components (C0, C) float32, an uncentred projection, so patch inner products and
cosines are kept within the leading subspace) is fitted once, at creation, on the first faces.
"""
import os

import numpy as np
import torch

ROW_FILES = {"embeddings": ("embeddings.f32", np.float32), "patches": ("patches.f16", np.float16),
             "labels": ("labels.i32", np.int32), "path_ends": ("path_ends.i64", np.int64)}
PATHS_FILE = "paths.bin"
PCA_FILE = "pca.npy"


def row_shapes(manifest):
    """Row shape of each row file of a gallery with this manifest."""
    n_patches = manifest["grid"][0] * manifest["grid"][1]
    return {"embeddings": (manifest["embedding_dim"],), "patches": (n_patches, manifest["channels"]),
            "labels": (), "path_ends": ()}


def row_bytes(manifest, name):
    return int(np.prod(row_shapes(manifest)[name], dtype=np.int64)) * np.dtype(ROW_FILES[name][1]).itemsize


class RowFile:
    """Rows [0, count) of a row file, read with pread (no mapping): rows[a:b] a range, rows[ids] sorted
    int ids (candidates; consecutive ids coalesced into one read), np.asarray(rows) all of it.

    Why not np.memmap for the candidates: a page fault on a mapped file maps the whole page-cache
    folio around it (up to MBs on current kernels), so a few thousand scattered 16 KiB rows made the
    process map ~1.4 GB of a 1.6 GB store (bench/RESULTS.md); explicit reads keep RSS to the batch.
    memmap() gives the mapping for bulk scans."""

    def __init__(self, path, dtype, row_shape, count):
        self.path, self.dtype, self.row_shape, self.count = path, np.dtype(dtype), tuple(row_shape), int(count)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = None

    @property
    def shape(self):
        return (self.count, *self.row_shape)

    def __len__(self):
        return self.count

    def _fileno(self):
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _read_into(self, out, start):
        """Fill out (a C-contiguous array of whole rows) from row start on."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        done, fd, offset = 0, self._fileno(), start * self.row_bytes
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n <= 0:
                raise OSError(f"{self.path!r}: unexpected end of file at byte {offset + done}")
            done += n

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(self.count)
            if step != 1:
                raise IndexError("RowFile slices must be contiguous")
            out = np.empty((max(0, b - a), *self.row_shape), dtype=self.dtype)
            if b > a:
                self._read_into(out, a)
            return out
        if isinstance(key, (int, np.integer)):
            return self[int(key):int(key) + 1][0]
        ids = np.asarray(key, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), *self.row_shape), dtype=self.dtype)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError(f"row ids must be in [0, {self.count})")
        if len(ids) > 1 and np.any(np.diff(ids) <= 0):
            raise ValueError("row ids must be sorted and unique")
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1               # runs of consecutive ids
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(ids)]):
            self._read_into(out[a:b], int(ids[a]))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[0:self.count]
        return out if dtype is None else out.astype(dtype)

    def memmap(self):
        """A read-only np.memmap of the rows (an empty array when there are none)."""
        if self.count == 0:
            return np.zeros(self.shape, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)


def open_rows(folder, manifest, name):
    """Row file `name` (count, *row shape): a RowFile (embeddings, patches), or in RAM (labels, path_ends:
    a few bytes per face)."""
    fname, dtype = ROW_FILES[name]
    rows = RowFile(os.path.join(folder, fname), dtype, row_shapes(manifest)[name], manifest["count"])
    if name in ("labels", "path_ends"):
        return np.asarray(rows) if rows.count else np.zeros(rows.shape, dtype=dtype)
    return rows


def read_rows(rows, ids):
    """rows[ids] for sorted unique int64 ids (the B*k candidates of a batch), read in file order."""
    return rows[ids]


class PathColumn:
    """Source path of item i = paths.bin[ends[i-1]:ends[i]] (UTF-8)."""

    def __init__(self, folder, ends):
        self.file = os.path.join(folder, PATHS_FILE)
        self.ends = ends

    def __getitem__(self, i):
        i = int(i)
        start = int(self.ends[i - 1]) if i > 0 else 0
        end = int(self.ends[i])
        if end == start:
            return None
        with open(self.file, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start).decode("utf-8")

    def many(self, ids):
        """Paths of several items, reading the file once."""
        with open(self.file, "rb") as fh:
            out = []
            for i in ids:
                i = int(i)
                start = int(self.ends[i - 1]) if i > 0 else 0
                end = int(self.ends[i])
                fh.seek(start)
                out.append(fh.read(end - start).decode("utf-8") if end > start else None)
        return out


class Appender:
    """Appends rows to a gallery's row files past the committed sizes (truncating what a killed
    writer left there first). Nothing is visible to readers until the manifest commits new sizes."""

    def __init__(self, folder, manifest):
        self.folder = folder
        files = manifest["files"]
        self.handles = {}
        for name, (fname, _) in list(ROW_FILES.items()) + [("paths", (PATHS_FILE, None))]:
            path = os.path.join(folder, fname)
            committed = files.get(fname, {"bytes": 0})["bytes"]
            with open(path, "ab") as fh:   # create if missing
                fh.truncate(committed)
            self.handles[name] = open(path, "r+b")
            self.handles[name].seek(committed)
        self.path_bytes = files.get(PATHS_FILE, {"bytes": 0})["bytes"]

    def append(self, embeddings, patches, labels, paths):
        """embeddings (n, D) float32 unit rows, patches (n, N, C) float16, labels (n,) int32, paths: n str|None."""
        ends = []
        encoded = []
        for p in paths:
            b = b"" if p is None else os.fspath(p).encode("utf-8")
            self.path_bytes += len(b)
            ends.append(self.path_bytes)
            encoded.append(b)
        self.handles["embeddings"].write(np.ascontiguousarray(embeddings, dtype="<f4").tobytes())
        self.handles["patches"].write(np.ascontiguousarray(patches, dtype="<f2").tobytes())
        self.handles["labels"].write(np.ascontiguousarray(labels, dtype="<i4").tobytes())
        self.handles["path_ends"].write(np.asarray(ends, dtype="<i8").tobytes())
        self.handles["paths"].write(b"".join(encoded))

    def sizes(self):
        """Bytes written so far per file name (after flush + fsync)."""
        out = {}
        for name, fh in self.handles.items():
            fh.flush()
            os.fsync(fh.fileno())
            fname = PATHS_FILE if name == "paths" else ROW_FILES[name][0]
            out[fname] = fh.tell()
        return out

    def close(self):
        for fh in self.handles.values():
            fh.close()
        self.handles = {}


def fit_pca(patches, channels, max_rows=200_000, seed=0):
    """Uncentred PCA of patch vectors: (C0, channels) float32 components (orthonormal columns).

    patches (n, N, C0); at most max_rows patch vectors (a seeded sample) are used.
    """
    x = patches.reshape(-1, patches.shape[-1]).float()                      # (n*N, C0)
    if x.shape[0] > max_rows:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]
        x = x[pick]
    if x.shape[0] < channels:
        raise ValueError(f"pca={channels} needs at least {channels} patch vectors to fit, got {x.shape[0]}")
    second = (x.double().T @ x.double()) / x.shape[0]                        # (C0, C0)
    vals, vecs = torch.linalg.eigh(second)
    return vecs[:, vals.argsort(descending=True)[:channels]].float().contiguous()


def project(patches, components):
    """patches (n, N, C0) -> (n, N, C) with the PCA components (C0, C); None leaves them as they are."""
    if components is None:
        return patches
    return patches.float() @ components.to(patches.device)


def save_pca(folder, components):
    path = os.path.join(folder, PCA_FILE)
    np.save(path, components.numpy().astype(np.float32), allow_pickle=False)
    return PCA_FILE


def load_pca(folder):
    return torch.from_numpy(np.load(os.path.join(folder, PCA_FILE), allow_pickle=False))

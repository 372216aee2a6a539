"""The out-of-core stores: append-only row files, memory-mapped for reading.

Row files are raw little-endian arrays whose row count the manifest records (no header, so a file
only grows): embeddings.f32 (n, D) unit rows, patches.f16 (n, N, C) the patch store, labels.i32 (n,)
identity numbers, paths.bin (UTF-8 source paths back to back) with path_ends.i64 (n,) their ends.
Reading the k candidates of a query batch touches only their rows: RAM is bounded by the batch.
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


def open_rows(folder, manifest, name):
    """Read-only memory map of row file `name` (count, *row shape) (an empty array if count is 0)."""
    fname, dtype = ROW_FILES[name]
    shape = (manifest["count"], *row_shapes(manifest)[name])
    if manifest["count"] == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(os.path.join(folder, fname), dtype=dtype, mode="r", shape=shape)


def read_rows(rows, ids):
    """rows[ids] for sorted unique int64 ids (B*k candidates), read in file order -> a numpy copy."""
    return np.asarray(rows[ids])


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

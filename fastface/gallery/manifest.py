"""The gallery's manifest: format version, what produced the gallery, counts and per-file checksums.

manifest.json is the gallery's single commit point: it is replaced atomically (temp file, fsync,
os.replace) after every file it names is on disk, so a reader always sees one whole generation.
Append-only files (embeddings, patches, labels, paths) may hold bytes past the size the manifest
records (a killed add or build): readers ignore them, writers truncate them. Checksums are BLAKE2b
per 16 MiB block, so a commit re-hashes only the blocks an append touched.
"""
import hashlib
import json
import os
import tempfile

FORMAT = "fastface-gallery"
VERSION = 1
MANIFEST = "manifest.json"
BLOCK = 16 << 20


class GalleryError(ValueError):
    """A gallery directory that cannot be used as asked: corrupted, incomplete, of another format,
    version or backbone. The message names the file and what was expected."""


def block_digests(path, size, start_block=0, block=BLOCK):
    """BLAKE2b-128 hex digests of the blocks of path's first `size` bytes, from start_block on."""
    out = []
    with open(path, "rb") as fh:
        fh.seek(start_block * block)
        pos = start_block * block
        while pos < size:
            n = min(block, size - pos)
            h = hashlib.blake2b(digest_size=16)
            left = n
            while left:   # 1 MiB reads: bounded memory
                buf = fh.read(min(left, 1 << 20))
                if not buf:
                    raise GalleryError(f"gallery file {path!r} is shorter than the {size} bytes the manifest records")
                h.update(buf)
                left -= len(buf)
            out.append(h.hexdigest())
            pos += n
    return out


def file_record(path, size=None, previous=None):
    """{"bytes", "blake2b": [per-block digests]} of path's first size bytes (default: all of it);
    blocks wholly inside previous's size are reused from previous (append-only files)."""
    size = os.path.getsize(path) if size is None else size
    keep = []
    if previous is not None and previous["bytes"] <= size:
        keep = previous["blake2b"][:previous["bytes"] // BLOCK]
    return {"bytes": size, "blake2b": keep + block_digests(path, size, len(keep))}


def verify_file(folder, name, record, full=True):
    """Raise GalleryError unless folder/name has the recorded size (at least, for append-only files)
    and, if full, the recorded block checksums."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise GalleryError(f"gallery {folder!r} is missing {name!r} (named in its manifest)")
    actual = os.path.getsize(path)
    if actual < record["bytes"]:
        raise GalleryError(f"gallery file {path!r} has {actual} bytes, the manifest records {record['bytes']}: "
                           "truncated")
    if full:
        got = block_digests(path, record["bytes"])
        for i, (a, b) in enumerate(zip(got, record["blake2b"])):
            if a != b:
                raise GalleryError(f"gallery file {path!r} is corrupted: checksum of bytes "
                                   f"[{i * BLOCK}, {min((i + 1) * BLOCK, record['bytes'])}) differs from the manifest's")
        if len(got) != len(record["blake2b"]):
            raise GalleryError(f"gallery file {path!r}: the manifest's checksums do not match its size")


def read_manifest(folder):
    """The manifest dict of gallery folder (format and version checked)."""
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"gallery must be a path to a gallery directory, got {type(folder).__name__}")
    folder = os.fspath(folder)
    path = os.path.join(folder, MANIFEST)
    if not os.path.isdir(folder):
        raise GalleryError(f"gallery {folder!r} does not exist or is not a directory")
    if not os.path.isfile(path):
        raise GalleryError(f"{folder!r} is not a fastface gallery: no {MANIFEST}")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as e:
        raise GalleryError(f"gallery manifest {path!r} is unreadable or corrupted: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path!r} is not a fastface gallery manifest (format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise GalleryError(f"gallery {folder!r} has format version {manifest.get('version')!r}; this fastface "
                           f"reads version {VERSION}")
    return manifest


def write_json_atomic(path, obj):
    """Write obj as JSON to path: temp file in the same folder, fsync, os.replace, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

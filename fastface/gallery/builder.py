"""Streaming gallery builds from photos: detect/align/encode in chunks, each chunk committed as it
finishes (a killed build leaves a usable gallery of the chunks done, and the same command resumes),
corrupt photos and photos without a face skipped and reported, detection in worker processes.
"""
import csv
import hashlib
import json
import os

import torch

from ..data.folder import scan_image_folder
from . import manifest as mf


def gallery_photos(images, csv=None):
    """(folder, photo paths, identity names) of a build: DIR/<identity>/<image>, or a flat folder with csv."""
    if not isinstance(images, (str, os.PathLike)) or not os.path.isdir(images):
        raise ValueError(f"images must be a folder of photos, got {images!r}")
    images = os.fspath(images)
    if csv is not None:
        return (images, *read_identity_csv(csv, images))
    paths, labels, folders = scan_image_folder(images)
    return images, paths, [folders[i] for i in labels]


def check_grid(enc, grid):
    """The patch grid of a build: the backbone's (None), or a divisor of it (pooled)."""
    from .._checks import check_int
    grid = enc.grid if grid is None else check_int("grid", grid)
    if enc.grid % grid:
        raise ValueError(f"grid {grid} does not divide backbone {enc.name}'s {enc.grid}x{enc.grid} patch map")
    return grid


def read_identity_csv(csv_path, images):
    """(paths, identity names) from a CSV with columns path (or image / file, relative to images) and identity."""
    if not os.path.isfile(csv_path):
        raise ValueError(f"csv {csv_path!r} does not exist")
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"csv {csv_path!r} has no rows")
    key = next((c for c in ("path", "image", "file") if c in rows[0]), None)
    if key is None or "identity" not in rows[0]:
        raise ValueError(f"csv {csv_path!r} needs the columns path (or image / file) and identity, got "
                         f"{list(rows[0])}")
    paths = [os.path.join(images, r[key]) for r in rows]
    names = [r["identity"].strip() for r in rows]
    if any(not n for n in names):
        raise ValueError(f"csv {csv_path!r}: every row needs an identity")
    return paths, names


def encode_paths(enc, paths, grid, batch_size=64, progress=False, loaded=None, all_faces=False):
    """Faces of photos: dict(embeddings (M, D), patches (M, C, grid, grid), source (M,) path index,
    unreadable (paths), n_no_face). loaded: enc.load_images' output when a worker already read them."""
    from ..eval.identification import extract_features, pool_patches
    data = loaded if loaded is not None else enc.load_images(paths, progress=False, all_faces=all_faces,
                                                             landmarks=False)
    if len(data["source"]) == 0:
        emb = torch.zeros(0, enc.embedding_dim)
        maps = torch.zeros(0, enc.map_channels, grid, grid)
    else:
        emb, fmap = extract_features(enc, data["images"], batch_size, progress)
        maps = pool_patches(fmap, grid)
    return {"embeddings": emb.cpu(), "patches": maps.cpu(), "source": data["source"],
            "unreadable": data["unreadable"], "n_no_face": data["n_no_face"]}


_WORKER_ENCODER = None


def _worker_init(backbone, align):
    global _WORKER_ENCODER
    torch.set_num_threads(1)
    from ..backbones import load_encoder
    _WORKER_ENCODER = load_encoder(backbone, "cpu", align)


def _worker_load(paths, all_faces):
    return _WORKER_ENCODER.load_images(paths, progress=False, all_faces=all_faces, landmarks=False)


def _chunks(n, start, size):
    return [(s, min(n, s + size)) for s in range(start, n, size)]


def _loaded_chunks(enc, paths, spans, workers, backbone, align, all_faces):
    """Yield (start, stop, load_images output) per span; workers > 0 decodes and aligns in that many
    processes, a few chunks ahead of the encoder."""
    if workers == 0:
        for a, b in spans:
            yield a, b, enc.load_images(paths[a:b], progress=False, all_faces=all_faces, landmarks=False)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(backbone, align)) as pool:
        pending = []
        queue = list(spans)
        while queue or pending:
            while queue and len(pending) < 2 * workers:
                a, b = queue.pop(0)
                pending.append((a, b, pool.submit(_worker_load, paths[a:b], all_faces)))
            a, b, fut = pending.pop(0)
            yield a, b, fut.result()


def _source_digest(rel_paths, names, **settings):
    h = hashlib.sha256(json.dumps([rel_paths, names, settings], sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def build_gallery(out, images, backbone, *, csv=None, grid=None, index="flat", pca=None, chunk=256,
                  batch_size=64, workers=0, device="cpu", align="none", all_faces=False, progress=True,
                  **index_options):
    """Build (or resume building) the gallery out from photos: images DIR/<identity>/<image>, or a
    flat folder with csv (columns path, identity). Returns the Gallery.

    Chunks of `chunk` photos are read (workers > 0: in that many processes), encoded in batches of
    batch_size, and committed one by one; the manifest's "build" entry records progress. Rerunning the
    same call after a crash resumes at the first chunk not committed; a different call on that folder is
    refused. grid: patch grid (default the backbone's; a divisor pools). pca: store that many channels.
    index / index_options: the stage-1 index (Gallery.create), trained when the last chunk is in.
    """
    from ..backbones import load_encoder
    from ..backbones.encoders import check_backbone_spec
    from .._checks import check_int
    from .fingerprint import weights_sha256
    from .gallery import Gallery
    from .index import check_index_spec
    from .store import fit_pca
    check_backbone_spec(backbone)
    chunk = check_int("chunk", chunk)
    batch_size = check_int("batch_size", batch_size)
    workers = check_int("workers", workers, lo=0)
    check_index_spec(index, **index_options)
    if pca is not None:
        check_int("pca", pca)
    images, paths, names = gallery_photos(images, csv)
    enc = load_encoder(backbone, device, align)
    grid = check_grid(enc, grid)
    if pca is not None and pca > enc.map_channels:
        raise ValueError(f"pca must be <= the backbone's {enc.map_channels} channels, got {pca}")
    digest = weights_sha256(backbone)
    rel = [os.path.relpath(p, images) for p in paths]
    source = _source_digest(rel, names, backbone=backbone, weights=digest, grid=grid, index=index, pca=pca,
                            all_faces=all_faces, align=align, options=index_options)
    state = {"source": source, "images": os.path.abspath(images), "photos": len(paths), "done": 0,
             "faces": 0, "unreadable": [], "no_face": 0}
    g = None
    if os.path.isfile(os.path.join(os.fspath(out), mf.MANIFEST)):
        m = mf.read_manifest(out)
        if m["build"] is None:
            raise ValueError(f"out {os.fspath(out)!r} is a finished gallery; add photos with `fastface gallery add`")
        if m["build"].get("source") != source:
            raise ValueError(f"out {os.fspath(out)!r} holds an unfinished build of other photos or settings; "
                             "remove it or build elsewhere")
        g = Gallery.load(out, verify="quick")
        state = dict(m["build"])
    from tqdm import tqdm
    bar = tqdm(total=len(paths), initial=state["done"], disable=not progress, desc="build gallery", unit="photo")
    for a, b, loaded in _loaded_chunks(enc, paths, _chunks(len(paths), state["done"], chunk), workers, backbone,
                                       align, all_faces):
        got = encode_paths(enc, paths[a:b], grid, batch_size, loaded=loaded)
        state = dict(state, done=b, faces=state["faces"] + len(got["source"]), no_face=state["no_face"] + got["n_no_face"],
                     unreadable=state["unreadable"] + got["unreadable"])
        if g is None:
            comps = fit_pca(got["patches"].flatten(2).transpose(1, 2), pca) if pca is not None else None
            g = Gallery.create(out, embedding_dim=enc.embedding_dim, grid=grid, channels=enc.map_channels,
                               backbone=backbone, weights_sha256=digest, index=index, pca=comps, build=state,
                               **index_options)
        src = [a + int(i) for i in got["source"]]
        if src:
            g.add((got["embeddings"], got["patches"]), [names[i] for i in src], [paths[i] for i in src], build=state)
        else:
            g._commit(None, build=state)
        bar.update(b - a)
    bar.close()
    if g is None or g.count == 0:
        raise ValueError(f"images {images!r}: no usable faces ({len(state['unreadable'])} unreadable photos, "
                         f"{state['no_face']} without a detected face)")
    report = {k: state[k] for k in ("photos", "faces", "unreadable", "no_face")}
    g._commit(None, build=None, extra={"build_report": report})
    return g


def add_photos(g, images, *, csv=None, batch_size=64, workers=0, device="cpu", align="none", all_faces=False,
               progress=True, chunk=256):
    """Add photos (DIR/<identity>/<image>, or a flat folder with csv) to gallery g in ONE commit: a
    killed add leaves g as it was. Returns dict(added, unreadable, no_face)."""
    _, paths, names = gallery_photos(images, csv)
    backbone = g.manifest["backbone"]
    enc = g.encoder(device, align)
    grid = g.manifest["grid"][0]
    with g.writing():
        return _add_photos_locked(g, enc, paths, names, grid, backbone, batch_size, workers, align, all_faces,
                                  progress, chunk)


def _add_photos_locked(g, enc, paths, names, grid, backbone, batch_size, workers, align, all_faces, progress, chunk):
    from tqdm import tqdm

    from ..ops.rerank import Faces
    from .store import Appender
    appender = Appender(g.folder, g.manifest)
    new_names, added, unreadable, no_face = [], 0, [], 0
    known = list(g.identity_names)
    try:
        bar = tqdm(total=len(paths), disable=not progress, desc="add photos", unit="photo")
        for a, b, loaded in _loaded_chunks(enc, paths, _chunks(len(paths), 0, chunk), workers, backbone, align,
                                           all_faces):
            got = encode_paths(enc, paths[a:b], grid, batch_size, loaded=loaded)
            unreadable += got["unreadable"]
            no_face += got["n_no_face"]
            src = [a + int(i) for i in got["source"]]
            if src:
                g.identity_names = known + new_names      # so labels number new names consistently
                emb, patches, labels_, p, new = g._prepare_rows(Faces(got["embeddings"], got["patches"]),
                                                                [names[i] for i in src], [paths[i] for i in src])
                appender.append(emb, patches, labels_, p)
                new_names += new
                added += len(src)
            bar.update(b - a)
        bar.close()
    except BaseException:
        appender.close()
        g.identity_names = known
        raise
    g.identity_names = known
    if added:
        g._commit(appender, new_names=new_names)
    else:
        appender.close()
    return {"added": added, "unreadable": unreadable, "no_face": no_face}

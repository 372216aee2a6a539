"""Persistent face galleries: FAISS stage 1, a memory-mapped fp16 patch store, EMD re-ranking.

    g = fastface.Gallery.build("G", "photos/", backbone="dlib")      # DIR/<identity>/<image>
    g = fastface.Gallery.load("G")
    res = g.search("query_photos/", k=100, threshold=0.35)           # or a Faces
    res.identity(0), res.ranked_identities(0)

Files: manifest.py (format, checksums, atomic manifest), store.py (row files, patch store, PCA),
index.py (stage 1), gallery.py (Gallery), builder.py (streaming builds from photos), results.py,
fingerprint.py (backbone weights hash), ray_jobs.py (Ray Data build and batch search).
"""
from .gallery import Gallery
from .index import KINDS as INDEX_KINDS
from .manifest import GalleryError
from .results import UNKNOWN, SearchResults

__all__ = ["Gallery", "GalleryError", "SearchResults", "UNKNOWN", "INDEX_KINDS"]

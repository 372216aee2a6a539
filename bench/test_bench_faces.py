"""pytest-benchmark: the path users take — a Faces gallery of 10,000 faces built from (n, C, H, W)
feature maps — against contiguous (n, N, C) patch sets. 8 queries, k = 100, 8x8x512, APC.

Run: pytest bench/test_bench_faces.py --benchmark-group-by=group
"""
import pytest

import fastface as ff
from cases import face_like, queries_from

G, H, W = 10_000, 8, 8


@pytest.fixture(scope="module")
def galleries():
    emb, patches = face_like(G, n=H * W)                                   # (G, N, C)
    maps = patches.transpose(1, 2).reshape(G, -1, H, W).contiguous()       # (G, C, H, W)
    qe, qp = queries_from(emb, patches, 8)
    return dict(maps=ff.Faces(emb, maps), contiguous=ff.Faces(emb, patches)), ff.Faces(qe, qp)


@pytest.mark.benchmark(group="rerank-8x100-gallery-10000-cpu")
@pytest.mark.parametrize("layout", ["maps", "contiguous"])
def test_emd_rerank_gallery_layout(benchmark, galleries, layout):
    gallery, queries = galleries[0][layout], galleries[1]
    benchmark(ff.emd_rerank, queries, gallery, k=100, impl="cpu")


@pytest.mark.benchmark(group="faces-construction-10000")
def test_faces_from_maps(benchmark):
    emb, patches = face_like(2000, n=H * W)
    maps = patches.transpose(1, 2).reshape(2000, -1, H, W).contiguous()
    benchmark(ff.Faces, emb, maps)

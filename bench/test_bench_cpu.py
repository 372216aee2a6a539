"""pytest-benchmark: one query, k = 100, 8x8 patches, C = 512, eps = 0.05, <= 100 iterations.

Run: pytest bench/test_bench_cpu.py --benchmark-group-by=group
"""
import pytest
import torch

import fastface as ff
from cases import face_like, pot_rerank_one, queries_from


@pytest.fixture(scope="module")
def data():
    emb, patches = face_like(2000)
    gallery = ff.Faces(emb, patches)
    q = queries_from(emb, patches, 1)
    return gallery, ff.Faces(q[0][0], q[1][0])


@pytest.mark.benchmark(group="rerank-1x100-cpu")
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_emd_rerank(benchmark, data, impl):
    gallery, q = data
    benchmark(ff.emd_rerank, q, gallery, k=100, impl=impl)


@pytest.mark.benchmark(group="rerank-1x100-cpu")
def test_pot_per_pair(benchmark, data):
    gallery, q = data
    idx = ff.emd_rerank(q, gallery, k=100, impl="cpu").stage1_indices
    benchmark(pot_rerank_one, q.patches[0], gallery.patches[idx])


@pytest.mark.benchmark(group="sinkhorn-100x64x64-cpu")
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_sinkhorn(benchmark, impl):
    cost = torch.rand(100, 64, 64, generator=torch.Generator().manual_seed(0))
    benchmark(ff.sinkhorn, cost, impl=impl)


@pytest.mark.benchmark(group="cost-100x64x64x512-cpu")
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_patch_cost(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 1, 64, 512, generator=g), torch.randn(1, 100, 64, 512, generator=g)
    benchmark(ff.patch_cost, x, y, impl=impl)


@pytest.mark.benchmark(group="rerank-1x100-cpu")
def test_fastest_pure_pytorch(benchmark, data):
    # bench/torch_rerank.py: one GEMM for the cosines, batched kernel-domain Sinkhorn (eager)
    from torch_rerank import torch_search
    gallery, q = data
    with torch.no_grad():
        benchmark(torch_search, q.embeddings, q.patches, gallery.embeddings, gallery.patches)


@pytest.mark.benchmark(group="cost-100x64x64x512-cpu")
def test_matmul_floor(benchmark):
    # torch's matmul of the same product, the floor patch_cost is measured against
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 512, generator=g), torch.randn(6400, 512, generator=g)
    benchmark(torch.matmul, x, y.T)

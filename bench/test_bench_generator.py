"""pytest-benchmark: FusedGenerator vs eager (R³AN's G and DCGAN's G), CPU, and GPU when present.

Run: pytest bench/test_bench_generator.py --benchmark-group-by=group
"""
import pytest
import torch

import fastface as ff
from report import generator_models

DEVICES = ["cpu"] + (["cuda"] if ff.backend_info()["cuda_available"] else [])


@pytest.fixture(scope="module", params=DEVICES)
def models(request):
    return request.param, [(name.split(":")[0], m, zshape, ff.FusedGenerator.from_module(m))
                           for name, m, zshape in generator_models(request.param)]


@pytest.mark.parametrize("batch", [1, 8, 64])
@pytest.mark.parametrize("which", [0, 1], ids=["r3an", "dcgan"])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_generator(benchmark, models, which, batch, impl):
    device, entries = models
    name, module, zshape, fg = entries[which]
    benchmark.group = f"{name} B={batch} {device}"
    z = torch.randn(batch, *zshape, device=device)
    fn = fg if impl == "fused" else module
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode():
            out = fn(z)
        sync()
        return out

    out = benchmark(call)
    with torch.inference_mode():
        want = module(z)
    assert ((out - want).abs().max() / want.abs().max()).item() < 1e-3

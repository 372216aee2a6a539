import os
import sys

# Test the installed package (with its compiled _C), not the source tree that `python -m pytest`
# puts first on sys.path.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _ROOT]

# Triton kernels run in interpreter mode on machines without a GPU (set before triton is imported).
try:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass

import pytest  # noqa: E402
import torch  # noqa: E402

import fastface as ff  # noqa: E402
from fastface import _backend as be  # noqa: E402


def pytest_report_header(config):
    info = ff.backend_info()
    return [f"fastface {info['version']} from {os.path.dirname(ff.__file__)}: cpu={info['cpu']} "
            f"cuda_built={info['cuda_built']} cuda_available={info['cuda_available']} triton={info['triton']}"]


def pytest_sessionstart(session):
    # A test run without the compiled kernels would silently test only the PyTorch fallback.
    if be._C is None and os.environ.get("FASTFACE_ALLOW_NO_EXTENSION") != "1":
        raise pytest.UsageError(f"fastface._C did not load ({be._C_ERROR}); run `pip install .` first "
                                "(or set FASTFACE_ALLOW_NO_EXTENSION=1)")


def _impl_params():
    params = [pytest.param(("torch", "cpu"), id="torch"), pytest.param(("cpu", "cpu"), id="cpu")]
    params.append(pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.skipif(
        not be.cuda_usable(), reason="CUDA kernels not built or no GPU on this machine")))
    tdev = "cuda" if torch.cuda.is_available() else "cpu"
    params.append(pytest.param(("triton", tdev), id="triton", marks=pytest.mark.skipif(
        not be.triton_usable(torch.device(tdev)), reason="triton not installed")))
    return params


@pytest.fixture(params=_impl_params())
def impl_device(request):
    """(impl, device) for every backend usable here; the others skip with a reason."""
    return request.param


@pytest.fixture
def gen():
    """A fresh generator per test, seeded from the test's name (fresh inputs, reproducible)."""
    import zlib
    g = torch.Generator().manual_seed(zlib.crc32(os.environ.get("PYTEST_CURRENT_TEST", "").encode()))
    return g


def random_problem(gen, P, n, m, dtype=torch.float64, zero_weight=False, scale=2.0):
    cost = torch.rand(P, n, m, generator=gen, dtype=torch.float64) * scale
    a = torch.rand(P, n, generator=gen, dtype=torch.float64) + 0.05
    b = torch.rand(P, m, generator=gen, dtype=torch.float64) + 0.05
    if zero_weight and n > 1:
        a[:, 0] = 0
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return cost.to(dtype), a.to(dtype), b.to(dtype)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on several fighting over a busy machine's cores
    (a module uses it with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _oracles_in_full_fp32(request):
    """Test oracles (eager modules, matmuls written in the tests) in IEEE float32: cuDNN allows TF32
    by default, so on an H100/H200 an eager ConvTranspose2d oracle would differ by ~1e-3. Tests
    marked own_precision_flags set the flags themselves (torch cannot read its legacy TF32 flags
    while the new API says "ieee")."""
    if request.node.get_closest_marker("own_precision_flags"):
        yield
        return
    from fastface.reference.precision import full_fp32
    with full_fp32():
        yield

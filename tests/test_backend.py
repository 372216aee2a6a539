"""Backend choice when the CUDA kernels were built but cannot run here: a driver older than the
statically linked runtime, or a GPU older than the compiled architectures. No GPU needed: the
tests replace what fastface._C reports."""
import argparse
import warnings

import pytest
import torch

import fastface as ff
from fastface import _backend as be
from fastface.cli import cmd_info

pytestmark = pytest.mark.skipif(be._C is None, reason="compiled kernels not built")

ARCHS = "80-real,90"  # the default FASTFACE_CUDA_ARCHS


@pytest.mark.parametrize("driver, runtime, cc, archs, expected", [
    (13000, 13000, (9, 0), ARCHS, be.CUDA_OK),              # sm_90 SASS
    (13000, 13000, (8, 0), ARCHS, be.CUDA_OK),              # sm_80 SASS
    (13000, 13000, (8, 9), ARCHS, be.CUDA_OK),              # sm_80 SASS runs on 8.x, x >= 0
    (13000, 13000, (7, 5), ARCHS, be.CUDA_NO_IMAGE),        # Turing: older than every arch
    (13000, 13000, (7, 0), "80-real;90", be.CUDA_NO_IMAGE),  # CMake's own ';' separator
    (13000, 13000, (12, 0), ARCHS, be.CUDA_OK),             # newer GPU: JIT from compute_90 PTX
    (13000, 13020, (12, 0), ARCHS, be.CUDA_PTX_NEEDS_DRIVER),  # ... but not with an older driver
    (13000, 13020, (9, 0), ARCHS, be.CUDA_OK),              # minor version compatibility (SASS)
    (13000, 13000, (12, 0), "80-real,90-real", be.CUDA_NO_IMAGE),  # no PTX at all
    (13000, 13000, (9, 0), "90a", be.CUDA_OK),              # arch-specific: that GPU only
    (13000, 13000, (10, 0), "90a", be.CUDA_NO_IMAGE),
    (13000, 13000, (7, 5), "75-virtual", be.CUDA_OK),
    (13000, 13000, (7, 5), "native", be.CUDA_OK),           # cannot judge: assume it fits
    (12080, 13000, (9, 0), ARCHS, be.CUDA_DRIVER_TOO_OLD),  # CUDA 12.8 driver, 13.0 runtime
    (0, 13000, (9, 0), ARCHS, be.CUDA_NO_DRIVER),
])
def test_cuda_compatibility_rule(driver, runtime, cc, archs, expected):
    assert be._C.cuda_compatibility(driver, runtime, cc[0], cc[1], archs) == expected


class FakeExtension:
    """The real extension, except that it was built with CUDA and reports `status`."""

    def __init__(self, status):
        self._status = status
        self.cuda_built = True

    def cuda_status(self):
        return dict(self._status)

    def __getattr__(self, name):
        return getattr(_REAL_C, name)


_REAL_C = be._C


def report(driver, runtime, capabilities, archs=ARCHS):
    """What _C.cuda_status() returns for these GPUs, with codes from the C++ rule itself."""
    devices = [(major, minor, _REAL_C.cuda_compatibility(driver, runtime, major, minor, archs))
               for major, minor in capabilities]
    status = be.CUDA_OK
    if devices[0][2] in (be.CUDA_NO_DRIVER, be.CUDA_DRIVER_TOO_OLD):  # found before any GPU
        status, devices = devices[0][2], []
    return dict(status=status, driver_version=driver, runtime_version=runtime, archs=archs,
                error="", devices=devices)


@pytest.fixture
def fake_gpus(monkeypatch):
    """Install a fake CUDA report; the GPUs look usable to torch (names 'Fake GPU i')."""

    def install(status, triton=False):
        monkeypatch.setattr(be, "_C", FakeExtension(status))
        monkeypatch.setattr(be, "_warned_cuda", set())
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: max(1, len(status["devices"])))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")
        monkeypatch.setattr(be, "triton_usable", lambda device: triton)
        be.cuda_status.cache_clear()

    yield install
    be.cuda_status.cache_clear()


def test_driver_older_than_runtime_falls_back_with_one_warning(fake_gpus):
    fake_gpus(report(12080, 13000, [(9, 0)]))
    dev = torch.device("cuda:0")
    with pytest.warns(RuntimeWarning, match=r"driver supports CUDA 12\.8.*built with CUDA 13\.0"):
        assert be.resolve_impl("auto", dev) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the second choice is silent
        assert be.resolve_impl("auto", dev) == "torch"
    with pytest.raises(ValueError, match=r"impl='cuda' is not available on cuda:0: the NVIDIA driver "
                                         r"supports CUDA 12\.8"):
        be.resolve_impl("cuda", dev)
    assert not be.cuda_usable()
    info = ff.backend_info()
    assert info["cuda_available"] is False
    assert "CUDA 13.0" in info["cuda_unusable_reason"]
    assert info["cuda_driver_version"] == "12.8"


def test_gpu_older_than_compiled_archs_falls_back_per_device(fake_gpus):
    fake_gpus(report(13000, 13000, [(9, 0), (7, 5)]), triton=True)
    assert be.resolve_impl("auto", torch.device("cuda:0")) == "cuda"
    assert be.cuda_usable("cuda:0") and not be.cuda_usable("cuda:1")
    with pytest.warns(RuntimeWarning, match=r"cuda:1 \(compute capability 7\.5\) is not among the "
                                            r"architectures.*80-real,90.*impl='triton'"):
        assert be.resolve_impl("auto", torch.device("cuda:1")) == "triton"
    with pytest.raises(ValueError, match=r"FASTFACE_CUDA_ARCHS including 75"):
        be.resolve_impl("cuda", torch.device("cuda:1"))
    assert be.cuda_usable()  # some GPU can run the kernels
    assert ff.backend_info()["cuda_unusable_reason"] is None


def test_ptx_only_gpu_with_an_older_driver(fake_gpus):
    fake_gpus(report(13000, 13020, [(12, 0)]))
    with pytest.warns(RuntimeWarning, match=r"only run the PTX"):
        assert be.resolve_impl("auto", torch.device("cuda")) == "torch"


def test_fastface_info_says_why(fake_gpus, capsys):
    fake_gpus(report(13000, 13000, [(7, 0)]))
    assert cmd_info(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "usable now: no" in out
    assert "why not: cuda:0 (compute capability 7.0) is not among the architectures" in out
    assert "driver for CUDA 13.0" in out


def test_reason_on_this_machine_is_consistent():
    be.cuda_status.cache_clear()
    info = ff.backend_info()
    assert (info["cuda_unusable_reason"] is None) == info["cuda_available"]
    if not info["cuda_built"]:
        assert be._C.cuda_status()["status"] == be.CUDA_NOT_BUILT
        assert info["cuda_unusable_reason"] == "fastface was built without CUDA"

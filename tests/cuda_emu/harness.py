"""Shared by the CUDA-emulator tests: build a tests/cuda_emu source with g++ once, load fresh copies."""
import contextlib
import ctypes
import os
import shutil
import subprocess
from pathlib import Path

EMU = Path(__file__).resolve().parent


def build_emulator(tmp_path_factory, source, name):
    """Compile EMU/source into lib<name>.so once per run (a compile error fails the tests)."""
    out = tmp_path_factory.mktemp(name) / f"lib{name}.so"
    # -fno-gnu-unique: each loaded copy keeps its own statics (opt-in flags, caches, counters).
    cmd = ["g++", "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-fno-gnu-unique", "-Wall",
           "-Wno-unknown-pragmas", "-DFASTFACE_CUDA_EMULATION", f"-I{EMU / 'include'}", str(EMU / source),
           "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return out


class EmulatorCopy:
    """A fresh copy of an emulator library (fresh static state) with device properties in env."""

    count = 0

    def __init__(self, so, **env):
        EmulatorCopy.count += 1
        path = so.with_name(f"{so.stem}_{EmulatorCopy.count}.so")
        shutil.copy(so, path)
        self.lib = ctypes.CDLL(str(path))
        self.lib.ff_emu_error.restype = ctypes.c_char_p
        self.env = {k: str(v) for k, v in env.items()}

    @contextlib.contextmanager
    def device_properties(self):
        """The block runs with this copy's FF_EMU_* device properties in the environment; the
        caller's FF_EMU_* values are restored after."""
        saved = {k: v for k, v in os.environ.items() if k.startswith("FF_EMU_")}
        for k in saved:
            del os.environ[k]
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k in [k for k in os.environ if k.startswith("FF_EMU_")]:
                del os.environ[k]
            os.environ.update(saved)

"""Atomic full-state checkpoints, loadable with torch.load(weights_only=True), and the RNG state they hold."""
import random

import numpy as np
import torch

from .._io import atomic_torch_save


def rng_state():
    """The Python, NumPy, torch CPU and torch CUDA (every device) RNG states, as weights_only-safe values
    (CPU tensors, ints, lists)."""
    np_state = np.random.get_state()
    py = random.getstate()
    state = {"python": list(py[1]), "python_pos": py[2],
             "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state):
    """Restore rng_state(). The tensors go back as CPU ByteTensors (what set_rng_state requires, wherever
    the checkpoint was mapped); CUDA states are restored when this process sees as many devices."""
    random.setstate((3, tuple(int(v) for v in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise ValueError(f"the checkpoint holds the CUDA RNG state of {len(cuda)} device(s) but this process "
                             f"sees {torch.cuda.device_count()}; resume with the same CUDA_VISIBLE_DEVICES")
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_checkpoint(path, state: dict):
    """Write state to path atomically (temp file in the same folder, then os.replace)."""
    atomic_torch_save(path, state)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by save_checkpoint (weights_only=True: no code runs)."""
    return torch.load(path, map_location=map_location, weights_only=True)


# config keys that may change between a run and its resume: they do not change what is computed
RESUME_INDEPENDENT = ("checkpoint_every", "eval_every", "sample_every", "log_every")


def check_same_config(saved, current, path, absent=None):
    """Raise ValueError when a checkpoint's config (a dict) differs from the current run's: resuming
    it would silently mix two runs. Tuples and lists compare equal; keys in RESUME_INDEPENDENT are free.
    absent maps a key to the value a checkpoint written before the key existed was trained with; other
    keys one side lacks are free."""
    def norm(v):
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v
    saved = {**{k: v for k, v in (absent or {}).items() if k in current}, **dict(saved or {})}
    saved = {k: norm(v) for k, v in saved.items() if k not in RESUME_INDEPENDENT}
    current = {k: norm(v) for k, v in dict(current).items() if k not in RESUME_INDEPENDENT}
    diff = sorted(k for k in saved.keys() & current.keys() if saved[k] != current[k])
    if diff:
        detail = ", ".join(f"{k}: {saved[k]!r} there, {current[k]!r} now" for k in diff)
        raise ValueError(f"{path} was written with another config ({detail}); use a new output folder or "
                         f"resume=False")

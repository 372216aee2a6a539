"""What the CUDA kernels need for a problem size: the one place Python asks about kernel layouts.

The CUDA launchers own their shared-memory layouts; the compiled library answers from the same
code they launch with (csrc/cuda/smem_limits.h), on the device the tensors live on.
"""
import torch

from .. import _backend as be


def cuda_sinkhorn_needs_plan(n, m, dtype, mode, device):
    """Whether the CUDA Sinkhorn of an (n, m) problem needs a (P, n, m) scratch buffer.

    Only when K does not fit in the device's opt-in shared memory (official mode never does).
    """
    with torch.cuda.device(device):
        return bool(be._C.sinkhorn_cuda_needs_plan(int(n), int(m), be.DTYPE_CODES[dtype], int(mode)))


def cuda_emd_pairs_fits(n, m, device):
    """Whether the fused CUDA emd_pairs kernel handles (n, m) patch sets on `device`."""
    with torch.cuda.device(device):
        return bool(be._C.emd_pairs_cuda_fits(int(n), int(m)))

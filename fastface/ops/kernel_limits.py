"""What the CUDA kernels need for a problem size: the one place Python asks about kernel layouts.

The CUDA kernels own their shared-memory layouts; Python only asks these questions (today from
formulas that mirror the kernels, to be answered by the compiled library).
"""
import torch


def cuda_sinkhorn_needs_plan(n, m, dtype, mode, device):
    """Whether the CUDA Sinkhorn of an (n, m) problem needs a (P, n, m) scratch buffer."""
    from ..reference.sinkhorn import OFFICIAL
    size = torch.empty((), dtype=dtype).element_size()
    return mode == OFFICIAL or (n * (m + 1) + 3 * (n + m) + 32) * size > 48 * 1024


def cuda_emd_pairs_fits(n, m, device):
    """Whether the fused CUDA emd_pairs kernel handles (n, m) patch sets on `device`."""
    need = (2 * n * (m + 1) + 19 * (n + m) + 2 + 3 * (n + m) + 32) * 4
    return need <= 48 * 1024 or need <= torch.cuda.get_device_properties(device).shared_memory_per_block_optin

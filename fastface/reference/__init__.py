"""Pure-PyTorch twins of every kernel: the test oracle and the fallback implementation."""
from .cost import accumulation_dtype, patch_cost_ref, unit_rows
from .generator import ACTIVATIONS, FusedLayer, generator_ref
from .precision import full_fp32, in_full_fp32
from .sinkhorn import sinkhorn_ref, LOG_DOMAIN_THRESHOLD
from .weights import patch_weights_ref, WEIGHTINGS

__all__ = ["patch_cost_ref", "unit_rows", "accumulation_dtype", "sinkhorn_ref", "patch_weights_ref",
           "WEIGHTINGS", "LOG_DOMAIN_THRESHOLD", "FusedLayer", "generator_ref", "ACTIVATIONS",
           "full_fp32", "in_full_fp32"]

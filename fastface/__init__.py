"""fastface: fast out-of-distribution face identification (DeepFace-EMD re-ranking and more)."""
__version__ = "0.1.0"

from ._backend import backend_info
from .models.serialization import load
from .ops.cost import patch_cost
from .ops.emd import emd
from .ops.generator import FusedGenerator
from .ops.rerank import Faces, RerankResult, emd_rerank, stage1_topk
from .ops.sinkhorn import SinkhornResult, sinkhorn
from .ops.vit_rerank import vit_rerank
from .ops.weights import patch_weights
from .gallery import Gallery, GalleryError, SearchResults

__all__ = ["__version__", "backend_info", "sinkhorn", "SinkhornResult", "patch_cost",
           "patch_weights", "emd", "Faces", "emd_rerank", "RerankResult", "stage1_topk",
           "FusedGenerator", "load", "vit_rerank",
           "Gallery", "GalleryError", "SearchResults"]

"""Visualisation: DeepFace-EMD flow reconstructions, patch-weight heat maps, re-ranking figures (PNG)."""
from .flows import flow_reconstruction, pair_figure, rerank_figure, save_png, weight_heatmap

__all__ = ["flow_reconstruction", "weight_heatmap", "rerank_figure", "pair_figure", "save_png"]

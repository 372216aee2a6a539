"""Training loops: one base config per model, small overrides per experiment."""
from .backbone import BackboneConfig, train_backbone
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["BackboneConfig", "train_backbone", "save_checkpoint", "load_checkpoint"]

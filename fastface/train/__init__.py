"""Training loops: one base config per model, small overrides per experiment."""
from .backbone import BackboneConfig, train_backbone
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["BackboneConfig", "train_backbone", "save_checkpoint", "load_checkpoint"]
from .r3an import R3ANConfig, load_transform, train_r3an, transform_features, transform_file  # noqa: E402

__all__ += ["R3ANConfig", "train_r3an", "load_transform", "transform_features", "transform_file"]

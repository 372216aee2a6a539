"""Face backbones: ArcFace IR ResNet (DeepFace-EMD's), with an ArcFace margin head."""
from .arcface import ArcFaceResNet, ArcMarginHead, arcface_resnet18

__all__ = ["ArcFaceResNet", "ArcMarginHead", "arcface_resnet18"]

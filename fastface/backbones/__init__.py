"""Face backbones: ArcFace IR ResNet (DeepFace-EMD's) with its margin head, and the pretrained dlib ResNet."""
from .arcface import ArcFaceResNet, ArcMarginHead, arcface_resnet18
from .dlib_resnet import DlibResNet, read_dlib_layers
from .encoders import ArcFaceEncoder, canonical_landmarks68, load_encoder

__all__ = ["ArcFaceResNet", "ArcMarginHead", "arcface_resnet18", "DlibResNet", "read_dlib_layers", "ArcFaceEncoder",
           "load_encoder", "canonical_landmarks68"]

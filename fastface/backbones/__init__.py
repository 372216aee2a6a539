"""Face backbones: ArcFace IR ResNet (DeepFace-EMD's) with its margin head, and the pretrained dlib ResNet."""
from .arcface import ArcFaceResNet, ArcMarginHead, arcface_resnet18
from .build import BackboneArch, build_backbone
from .dlib_resnet import DlibResNet, read_dlib_layers
from .encoders import ArcFaceEncoder, OfficialArcFaceEncoder, canonical_landmarks68, load_encoder
from .official import arcface_from_official_state, load_official_arcface

__all__ = ["BackboneArch", "build_backbone", "ArcFaceResNet", "ArcMarginHead", "arcface_resnet18", "DlibResNet", "read_dlib_layers", "ArcFaceEncoder",
           "OfficialArcFaceEncoder", "load_encoder", "canonical_landmarks68", "load_official_arcface",
           "arcface_from_official_state"]
from .mobilenetv2 import InvertedResidual, MobileNetV2Face, mobilenetv2_face  # noqa: E402
from .resnet import BottleneckResNet, resnet50_face, resnet101_face  # noqa: E402

__all__ += ["InvertedResidual", "MobileNetV2Face", "mobilenetv2_face", "BottleneckResNet", "resnet50_face",
            "resnet101_face"]

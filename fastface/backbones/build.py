"""Backbone architectures by config: what `fastface train backbone` trains and fastface.load rebuilds."""
from dataclasses import dataclass

from .._arch import ArchConfig

ARCHS = ("arcface_resnet18", "mobilenetv2", "resnet50")


@dataclass
class BackboneArch(ArchConfig):
    """The architecture of a face backbone (no training hyper-parameters)."""
    arch: str = "arcface_resnet18"    # or "mobilenetv2", "resnet50" (R³AN's prior models)
    image_size: int = 64
    channels: int = 1
    width: int = 16                   # arcface: 64 = the paper's 512x8x8 network; resnet50: base width
    stem_pool: bool = True            # False: no stem down-sampling (64x64 input -> 8x8 map for arcface)
    embedding_dim: int = 128
    expansion: float = 6              # mobilenetv2: bottleneck expansion T (Mb-6, Mb-10, Mb-16)
    width_mult: float = 1.0           # mobilenetv2: channel multiplier
    activation: str = "relu6"         # mobilenetv2: relu6 (the paper's), relu or prelu

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")



def build_backbone(arch):
    """The backbone a BackboneArch (or its dict) describes; forward(x) -> (embedding, patch map)."""
    from .arcface import arcface_resnet18
    from .mobilenetv2 import mobilenetv2_face
    from .resnet import resnet50_face
    a = arch if isinstance(arch, BackboneArch) else BackboneArch.from_dict(arch)
    if a.arch == "arcface_resnet18":
        return arcface_resnet18(in_channels=a.channels, width=a.width, embedding_dim=a.embedding_dim,
                                input_size=a.image_size, stem_pool=a.stem_pool)
    stem_stride = 2 if a.stem_pool else 1
    if a.arch == "mobilenetv2":
        return mobilenetv2_face(expansion=a.expansion, in_channels=a.channels, width_mult=a.width_mult,
                                activation=a.activation, embedding_dim=a.embedding_dim, input_size=a.image_size,
                                stem_stride=stem_stride)
    return resnet50_face(in_channels=a.channels, width=a.width, embedding_dim=a.embedding_dim,
                         input_size=a.image_size, stem_stride=stem_stride)

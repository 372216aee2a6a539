"""Data without downloads: the SynthFaces procedural data set, occlusions, image-folder export."""
from .occlusions import KINDS as OCCLUSIONS, occlude
from .synthfaces import SynthFaces, export_image_folder, write_png

__all__ = ["SynthFaces", "occlude", "OCCLUSIONS", "export_image_folder", "write_png"]

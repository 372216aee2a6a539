"""Data without downloads: the SynthFaces procedural data set, occlusions, image folders."""
from .folder import ImageFolder, UnreadableImage, open_image, read_image, scan_image_folder
from .occlusions import KINDS as OCCLUSIONS, occlude
from .synthfaces import SynthFaces, export_image_folder

__all__ = ["ImageFolder", "UnreadableImage", "open_image", "read_image", "scan_image_folder", "SynthFaces", "occlude", "OCCLUSIONS", "export_image_folder"]

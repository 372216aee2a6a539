"""Training: one shared loop (loop.py) and a trainer per model; `fastface train <model>` runs them."""
from .backbone import BackboneConfig, BackboneTrainer, train_backbone
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .d2ae import D2AETrainConfig, D2AETrainer, train_d2ae
from .facevit import FaceViTTrainConfig, FaceViTTrainer, train_facevit
from .gan import GANTrainConfig, GANTrainer, train_gan
from .inversion import InversionTrainConfig, InversionTrainer, train_inversion
from .loop import Run, Trainer, fit
from .r3an import R3ANConfig, R3ANTrainer, train_r3an

# `fastface train NAME`: the implemented trainers
TRAINERS = {t.name: t for t in (BackboneTrainer, R3ANTrainer, FaceViTTrainer, GANTrainer, InversionTrainer,
                                D2AETrainer)}

__all__ = ["TRAINERS", "Trainer", "Run", "fit", "TrainConfig", "BackboneConfig", "BackboneTrainer", "train_backbone",
           "R3ANConfig", "R3ANTrainer", "train_r3an", "FaceViTTrainConfig", "FaceViTTrainer", "train_facevit",
           "GANTrainConfig", "GANTrainer", "train_gan", "InversionTrainConfig", "InversionTrainer", "train_inversion",
           "D2AETrainConfig", "D2AETrainer", "train_d2ae", "save_checkpoint", "load_checkpoint"]

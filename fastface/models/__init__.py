"""Models of the papers: R³AN (cross-model feature transformation)."""
from .r3an import (Discriminator, Extractor, FCTransform, Generator, R3AN, adversarial_loss, build_transform,
                   discriminator_loss, reconstruction_loss, regression_loss, representation_loss)

__all__ = ["Generator", "Extractor", "Discriminator", "R3AN", "FCTransform", "build_transform",
           "reconstruction_loss", "discriminator_loss", "adversarial_loss", "representation_loss",
           "regression_loss"]

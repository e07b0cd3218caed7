"""The crop classifier of the augment filter. Inference names only; training is in
earthsynth.augment.classifier.train (registered as the "classifier" family)."""

from earthsynth.augment.classifier.model import (
    BACKGROUND,
    CropClassifier,
    extract_crops,
    load_classifier,
    object_vs_background_accuracy,
)

__all__ = ["BACKGROUND", "CropClassifier", "extract_crops", "load_classifier", "object_vs_background_accuracy"]

"""The compact detector of the augment filter and the downstream proof. Inference names only;
training is in earthsynth.augment.detector.train (registered as the "detector" family)."""

from earthsynth.augment.detector.model import (
    CompactDetector,
    decode,
    evaluate_detector,
    load_detector,
)

__all__ = ["CompactDetector", "decode", "evaluate_detector", "load_detector"]

"""earthsynth: synthesise remote-sensing data with conditional diffusion models.

The public API is imported lazily, so `earthsynth --help` does not pay for torch:

    from earthsynth import AeroGenPipeline
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module; diffusers' from_pretrained also finds our saved components here
_PUBLIC = {
    "AeroGenPipeline": "earthsynth.generation.aerogen.pipeline",
    "AeroGenUNet": "earthsynth.generation.aerogen.model",
    "LayoutEncoder": "earthsynth.conditioning.layout",
    "ScalarEmbedding": "earthsynth.conditioning.scalars",
    "ControlAdapter": "earthsynth.conditioning.control",
    "CompactDetector": "earthsynth.augment.detector",
    "CropClassifier": "earthsynth.augment.classifier",
    "EDiffSRPipeline": "earthsynth.generation.ediffsr.pipeline",
    "EANet": "earthsynth.generation.ediffsr.model",
    "MeanRevertingScheduler": "earthsynth.generation.ediffsr.scheduler",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'earthsynth' has no attribute {name!r}")

"""hsi: hyperspectral denoising with a 3D latent diffusion model (after HSI-Diffusion for the
FINCH spacecraft), any band count.

model.py holds the modules, pipeline.py the inference pipeline, train.py the three training
stages (the registry's "hsi_autoencoder" and "hsi" families). Importing this package loads
no training code.
"""

from earthsynth.generation.hsi.model import (
    HSIAutoencoder,
    HSIConditionEncoder,
    HSIRefiner,
    LatentDenoiser3D,
)
from earthsynth.generation.hsi.pipeline import HSIDenoisePipeline, HSIDenoisePipelineOutput

__all__ = ["HSIAutoencoder", "HSIConditionEncoder", "LatentDenoiser3D", "HSIRefiner", "HSIDenoisePipeline",
           "HSIDenoisePipelineOutput"]

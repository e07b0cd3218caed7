"""text2earth's denoiser: the MetadataUNet it shares with crsdiff, with one scalar field,
the GSD (resolution guidance: an embedding added to the timestep embedding, with a learned
null for "unknown")."""

from earthsynth.generation.metadata_unet import MetadataUNet

__all__ = ["MetadataUNet"]

"""autoencoder: the RGB families' VAE (diffusers' AutoencoderKL), trained on the bundled RGB
scenes; the latent diffusion families (text2earth, crsdiff, aerogen) work in its latent space.

model.py holds the pieces, train.py the training family ("autoencoder" in the registry).
Importing this package loads no training code."""

from earthsynth.generation.autoencoder.model import (
    PatchDiscriminator,
    build_autoencoder,
    load_autoencoder,
)

__all__ = ["PatchDiscriminator", "build_autoencoder", "load_autoencoder"]

"""The latent space of the RGB families (text2earth, crsdiff, aerogen with a `vae`): scaling,
encoding, tiled decoding and the cache of the training tiles' latents.

Latents are the VAE's posterior scaled as Stable Diffusion scales them,
z = (posterior - shift_factor) * scaling_factor, so the diffusion model sees unit variance
(our autoencoder stores both from its training tiles; an SD VAE has no shift). Pixel mode
(no VAE) goes through the same functions as the identity, so a pipeline reads the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from earthsynth.data.common import atomic_path
from earthsynth.generation.common import process_in_tiles


def downsampling(vae) -> int:
    """Image pixels per latent pixel along each axis (1 without a VAE)."""
    return 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)


def latent_channels(vae) -> int:
    """Channels of the grid the UNet works on (3 RGB channels without a VAE)."""
    return 3 if vae is None else vae.config.latent_channels


def shift_and_scale(vae) -> tuple[float, float]:
    shift = vae.config.get("shift_factor") or 0.0
    return float(shift), float(vae.config.scaling_factor)


@torch.no_grad()
def scaled_posterior(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) images in [-1, 1] -> the VAE posterior's mean and standard deviation, both
    in the scaled latent space, (B, C, H / f, W / f) each."""
    shift, scale = shift_and_scale(vae)
    posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    return (posterior.mean - shift) * scale, posterior.std * scale


def encode(vae, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> scaled posterior means (B, C, H / f, W / f)."""
    return images if vae is None else scaled_posterior(vae, images)[0]


@torch.no_grad()
def decode(vae, latents: torch.Tensor, tile: int | None = None, overlap: int = 8) -> torch.Tensor:
    """Scaled latents -> (B, 3, H, W) images in [-1, 1]. With `tile` (latent pixels), a
    larger latent is decoded in overlapping tiles blended with linear ramps: memory bounded
    by the tile, no seams (the ramps cross-fade decoders that agree up to boundary effects)."""
    if vae is None:
        return latents
    shift, scale = shift_and_scale(vae)

    def run(piece):
        return vae.decode(piece.to(vae.device, vae.dtype) / scale + shift).sample

    height, width = latents.shape[-2:]
    if tile is None or (height <= tile and width <= tile):
        return run(latents)
    return process_in_tiles(latents, min(tile, height), min(tile, width), min(overlap, tile // 2), run,
                            scale=downsampling(vae))


def image_key(image: torch.Tensor) -> str:
    """A training tile's identity: the hash of its pixels (so a changed source is re-encoded)."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    return hashlib.sha256(pixels.numpy().tobytes() + str(tuple(pixels.shape)).encode()).hexdigest()[:32]


def vae_fingerprint(vae) -> str:
    """Hash of the VAE's weights and latent scale: a cache made with another VAE never matches."""
    digest = hashlib.sha256(repr(shift_and_scale(vae)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """The scaled posterior mean and standard deviation of every training tile, encoded once
    per run (one tile at a time, so a value does not depend on its batch) and kept in
    `folder/<vae fingerprint>.safetensors`: a resumed run reads them back, another VAE makes
    another file, a tile whose pixels changed is encoded anew. Latent training then costs no
    more per step than pixel training."""

    def __init__(self, vae, folder: str | Path | None = None):
        self.vae = vae
        self.path = None if folder is None else Path(folder) / f"{vae_fingerprint(vae)}.safetensors"
        self.entries: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.exists():
            self.entries = load_file(self.path)

    def fill(self, images, keys: list[str] | None = None) -> int:
        """Encode the (3, H, W) [0, 1] images not cached yet (`keys`: their image_key, when the
        caller has them); returns how many were new, and saves the cache when there were any."""
        added = 0
        for index, image in enumerate(images):
            key = image_key(image) if keys is None else keys[index]
            if key in self.entries:
                continue
            mean, std = scaled_posterior(self.vae, image[None] * 2 - 1)
            self.entries[key] = torch.stack([mean[0], std[0]]).float().cpu()
            added += 1
        if added and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                save_file(self.entries, str(tmp))
        return added

    def sample(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of a batch of training images (B, 3, H, W) in [0, 1], drawn from their
        posteriors with torch's global RNG (restored on resume, so a resumed run draws the
        same). An image not cached yet is encoded first."""
        keys = [image_key(image) for image in images]  # hashed once per image and step
        self.fill(images, keys)
        stats = torch.stack([self.entries[key] for key in keys])
        mean, std = stats[:, 0], stats[:, 1]
        return mean + std * torch.randn(mean.shape)


def load_family_vae(model_config):
    """The frozen VAE a latent family's model config names (`vae`: a folder, or `bundled` for
    the autoencoder shipped with earthsynth; else the Stable Diffusion folder of `pretrained`),
    or None for pixel mode."""
    from earthsynth.generation.autoencoder.model import load_autoencoder
    from earthsynth.jobs.load import bundled_checkpoint

    folder = model_config.vae or getattr(model_config, "pretrained", "")
    if not folder:
        return None
    if folder == "bundled":
        folder = bundled_checkpoint("autoencoder")
    vae = load_autoencoder(folder)
    vae.requires_grad_(False)
    return vae.eval()


def training_images(dataset):
    """The (3, H, W) [0, 1] images of a training dataset's distinct tiles (through the
    wrappers that repeat or extend RealTiles samples, without computing what they add)."""
    inner = getattr(dataset, "tiles", None)
    if isinstance(inner, torch.utils.data.Dataset):
        yield from training_images(inner)
        return
    for index in range(len(dataset)):
        yield dataset[index]["image"]


def latent_cache(vae, config, dataset) -> LatentCache | None:
    """The run's LatentCache, every training tile encoded (None in pixel mode)."""
    if vae is None:
        return None
    cache = LatentCache(vae, Path(config.output_dir) / "latent_cache")
    added = cache.fill(training_images(dataset))
    print(f"{config.family}: {len(cache.entries)} training tiles in latent space ({added} encoded now)")
    return cache


def upsample_nearest(latents: torch.Tensor, factor: int) -> torch.Tensor:
    """Each latent pixel repeated factor x factor times: stacked with image-resolution maps,
    a flip of the stack followed by [..., ::factor, ::factor] is exactly the flipped latent."""
    return latents.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


class LatentPipelineMixin:
    """What a pipeline with an optional `vae` component shares: the grid factor and the decode
    at the end (in tiles of the UNet's trained size, so memory stays bounded by the tile)."""

    _optional_components = ["vae"]

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (1 in pixel mode)."""
        return downsampling(getattr(self, "vae", None))

    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """The loop's samples -> images in [-1, 1] (pixel mode: the samples themselves)."""
        return decode(getattr(self, "vae", None), samples, tile=self.unet.config.sample_size)

    def inpainting_grid(self, known: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An inpainting image (B, 3, H, W) in [-1, 1] and its keep mask (B or 1, 1, H, W) on the
        grid the UNet works on: the image encoded, a latent pixel kept where all its pixels are."""
        f = self.vae_scale_factor
        known = encode(getattr(self, "vae", None), known)
        return known, -torch.nn.functional.max_pool2d(-keep, f) if f > 1 else keep

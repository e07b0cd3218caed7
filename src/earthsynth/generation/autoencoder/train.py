"""Training of the autoencoder family: the VAE the latent RGB families work in.

Loss: L1 + SSIM + a colour term (each image's per-channel mean, so no cast creeps in) + a
small KL weight, and optionally a patch discriminator (hinge loss) for sharper texture, best
switched on when fine-tuning a trained VAE (`model.init_from`). The latent scaling factor
(and shift) is computed from the training tiles at export and stored in the VAE's config, as
Stable Diffusion's 0.18215 was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.func import functional_call

from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, collate_samples
from earthsynth.generation.autoencoder.model import (
    PatchDiscriminator,
    build_autoencoder,
    load_autoencoder,
)
from earthsynth.generation.common import to_pil
from earthsynth.image_metrics import ssim_index
from earthsynth.registry import Family


@dataclass
class AutoencoderModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # 3 blocks: f = 4
    layers_per_block: int = 2
    latent_channels: int = 4
    mid_attention: bool = False
    init_from: str = ""  # an exported autoencoder or a Stable Diffusion folder (its vae/) to fine-tune
    l1_weight: float = 1.0
    ssim_weight: float = 0.5  # on 1 - SSIM
    colour_weight: float = 1.0  # on |per-channel mean of the reconstruction - the image's|
    kl_weight: float = 1.0e-6  # on the KL per latent value
    discriminator_weight: float = 0.0  # 0: no discriminator; e.g. 0.05 when fine-tuning
    discriminator_width: int = 64
    scaling_tiles: int = 64  # training tiles encoded at export to set the latent scale and shift


def build(config) -> dict:
    mc = config.model
    if mc.init_from:
        vae = load_autoencoder(mc.init_from)
    else:
        vae = build_autoencoder(mc.block_out_channels, mc.layers_per_block, mc.latent_channels,
                                mc.mid_attention, sample_size=config.data.tile_size)
    components = {"vae": vae, "config": config}
    if mc.discriminator_weight > 0:
        components["discriminator"] = PatchDiscriminator(width=mc.discriminator_width)
    return components


def dataset(config):
    dc = config.data
    return RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                     overlap=dc.overlap, min_visible=dc.min_visible, exclude_test_area=dc.exclude_test_area)


def reconstruction_losses(reconstruction: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The terms that compare a reconstruction with its image (both in [-1, 1])."""
    return {
        "l1": (reconstruction - images).abs().mean(),
        "ssim": 1 - ssim_index((reconstruction + 1) / 2, (images + 1) / 2).mean(),
        "colour": (reconstruction.mean((2, 3)) - images.mean((2, 3))).abs().mean(),
    }


def loss(components: dict, batch: dict) -> torch.Tensor:
    vae, mc = components["vae"], components["config"].model
    images = batch["image"]
    if components["config"].data.hflip:
        images = random_flips(images, transpose=True)
    images = images.to(vae.device, vae.dtype) * 2 - 1  # [0, 1] -> [-1, 1]
    posterior = vae.encode(images).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    terms = reconstruction_losses(reconstruction.float(), images.float())
    total = (mc.l1_weight * terms["l1"] + mc.ssim_weight * terms["ssim"] + mc.colour_weight * terms["colour"]
             + mc.kl_weight * posterior.kl().mean() / posterior.mean[0].numel())
    if "discriminator" in components:
        total = total + mc.discriminator_weight * adversarial_loss(components["discriminator"], reconstruction, images)
    return total


def adversarial_loss(discriminator: PatchDiscriminator, reconstruction: torch.Tensor,
                     images: torch.Tensor) -> torch.Tensor:
    """Hinge GAN terms summed so that one backward pass and one optimizer serve both players:
    the VAE's term sees the discriminator through detached weights (it cannot move them), the
    discriminator's sees detached reconstructions (it cannot move the VAE)."""
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    vae_term = -functional_call(discriminator, frozen, (reconstruction,)).mean()
    real = discriminator(images)
    fake = discriminator(reconstruction.detach())
    discriminator_term = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    return vae_term + discriminator_term


@torch.no_grad()
def latent_statistics(vae, tiles) -> tuple[float, float]:
    """(shift, scale) that map the posterior means of `tiles` (sample dicts) to zero mean and
    unit variance."""
    latents = []
    for sample in tiles:
        image = sample["image"][None].to(vae.device, vae.dtype) * 2 - 1
        latents.append(vae.encode(image).latent_dist.mean.float().flatten())
    values = torch.cat(latents)
    return float(values.mean()), float(1 / values.std())


def scaling_tiles(config) -> list:
    """Up to `model.scaling_tiles` training tiles, evenly spaced (deterministic)."""
    tiles = dataset(config)
    count = min(config.model.scaling_tiles, len(tiles))
    return [tiles[int(i * len(tiles) / count)] for i in range(count)]


def preview(components: dict, config, generator: torch.Generator):
    """Validation tiles (top row) and their reconstructions (bottom row)."""
    vae = components["vae"]
    was_training = vae.training
    vae.eval()
    tiles = RealTiles("val", tile_size=config.data.tile_size, sources=["deepforest"], gsd_factors=[1, 2])
    samples = [tiles[int(i * len(tiles) / 4)] for i in range(4)]
    images = torch.stack([s["image"] for s in samples]).to(vae.device, vae.dtype) * 2 - 1
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(images).latent_dist.mode()).sample
    vae.train(was_training)
    return to_pil(images) + to_pil(reconstruction)


def export(components: dict, config, directory: Path) -> None:
    vae = components["vae"]
    was_training = vae.training
    vae.eval()
    shift, scale = latent_statistics(vae, scaling_tiles(config))
    vae.train(was_training)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    vae.save_pretrained(Path(directory))


FAMILY = Family(
    name="autoencoder",
    model_config=AutoencoderModelConfig,
    build=build,
    trainable=("vae", "discriminator"),  # the discriminator only where discriminator_weight > 0
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    description="the VAE of the latent RGB families (diffusers AutoencoderKL): L1 + SSIM + colour + KL",
)

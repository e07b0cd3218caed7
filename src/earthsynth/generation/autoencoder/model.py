"""The VAE of the latent RGB families and its optional patch discriminator.

The VAE is diffusers' AutoencoderKL, so a Stable Diffusion folder's `vae/` and ours are
interchangeable: `downsampling` 4 or 8 is the number of halvings (len(block_out_channels) - 1
of them), `scaling_factor` in its config maps latents to unit variance as SD's 0.18215 does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from earthsynth.errors import InputError


def build_autoencoder(block_out_channels: list[int], layers_per_block: int = 1, latent_channels: int = 4,
                      mid_attention: bool = False, sample_size: int = 256) -> AutoencoderKL:
    """An AutoencoderKL that downsamples by 2 ** (len(block_out_channels) - 1). Attention in
    the middle block is off by default: at 256 px it attends over 4096 positions, the largest
    cost on a CPU, for little gain on aerial texture."""
    blocks = len(block_out_channels)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=list(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=min(32, block_out_channels[0]),
        sample_size=sample_size,
        mid_block_add_attention=mid_attention,
    )


def load_autoencoder(folder: str | Path) -> AutoencoderKL:
    """An exported VAE (ours: config.json at the top) or a Stable Diffusion folder's `vae/`,
    read from safetensors only."""
    folder = Path(folder)
    for candidate in (folder, folder / "vae"):
        if (candidate / "config.json").exists():
            if not any(candidate.glob("*.safetensors")):
                raise InputError(candidate, "no VAE weights in .safetensors here (pickled weights are not read)")
            config = AutoencoderKL.load_config(candidate)
            if config.get("_class_name") != "AutoencoderKL":
                raise InputError(candidate, f"not an AutoencoderKL folder (its config names {config.get('_class_name')})")
            return AutoencoderKL.from_pretrained(candidate, use_safetensors=True)
    raise InputError(folder, "no VAE here: expected config.json (an exported autoencoder) or vae/config.json "
                             "(a diffusers Stable Diffusion folder)")


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """A small PatchGAN: one real/fake logit per receptive field of about 34 px, so it judges
    texture, not layout (after pix2pix / taming-transformers' discriminator, written here)."""

    @register_to_config
    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, num_layers):
            out = width * min(2**i, 8)
            blocks += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.GroupNorm(min(32, out), out),
                       nn.LeakyReLU(0.2)]
            channels = out
        blocks += [nn.Conv2d(channels, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

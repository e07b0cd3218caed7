"""The networks of the hsi family: a 3D autoencoder over (band, height, width) and a 3D
denoising network in its latent space.

Bands are the depth axis of 3D convolutions, so the same weights slide along the spectrum
and serve cubes of any band count and any size. A cube (N, B, H, W) is padded (replicate)
to multiples of 4 on every axis, encoded to a latent (N, c, B'/2, H'/2, W'/2) and decoded
back, then cropped. The denoiser sees the diffusion sample, the timestep and a learned
encoding of the noisy cube at the latent's resolution, and predicts the clean latent.

A small autoencoder cannot reconstruct fine spatial texture (the stage-1 model reaches about
24 dB on clean validation cubes), which would cap the denoiser below the noisy input itself
for light noise. So a full-resolution refiner produces the output: it starts from a robust
low-rank estimate of the noisy cube (spectra of a scene are mixtures of a few materials, so
they lie near a low-dimensional subspace while noise spreads over every band; see
earthsynth.generation.hsi.lowrank) and learns a correction from the noisy cube, the decoded
one, the estimates at a few ranks and where outliers were found.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from earthsynth.generation.common import timestep_embedding
from earthsynth.generation.hsi.lowrank import robust_projections

MULTIPLE = 4  # every axis is padded to a multiple of this (latent /2, denoiser /2 again)


def pad_cube(cube: torch.Tensor) -> torch.Tensor:
    """(N, B, H, W) -> padded with edge values to multiples of MULTIPLE on B, H and W."""
    b, h, w = cube.shape[-3:]
    pads = [(-size) % MULTIPLE for size in (b, h, w)]
    if not any(pads):
        return cube
    # replicate padding of a 5-D tensor pads the last three axes: (W, H, B)
    return F.pad(cube[:, None], (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")[:, 0]


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock3d(nn.Module):
    """GroupNorm-SiLU-Conv3d twice with a skip; the timestep (if any) scales and shifts."""

    def __init__(self, channels: int, time_dim: int = 0):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.time = nn.Linear(time_dim, 2 * channels) if time_dim else None

    def forward(self, x: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.time is not None:
            scale, shift = self.time(time)[:, :, None, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class CubeEncoder(nn.Module):
    """(N, B, H, W) padded cube -> (N, out_channels, B/2, H/2, W/2)."""

    def __init__(self, out_channels: int, base_channels: int = 16, hidden_channels: int = 32, blocks: int = 2):
        super().__init__()
        self.conv_in = nn.Conv3d(1, base_channels, 3, padding=1)
        self.down = nn.Conv3d(base_channels, hidden_channels, 2, stride=2)  # patchify: cheap at full size
        self.blocks = nn.ModuleList(ResBlock3d(hidden_channels) for _ in range(blocks))
        self.norm_out = group_norm(hidden_channels)
        self.conv_out = nn.Conv3d(hidden_channels, out_channels, 1)

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        h = self.down(F.silu(self.conv_in(cube[:, None] * 2 - 1)))
        for block in self.blocks:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class HSIAutoencoder(ModelMixin, ConfigMixin):
    """3D autoencoder of hyperspectral cubes; reflectance-like values (about [0, 1]) in and out.

    `scaling_factor` brings the latents to about unit variance for the diffusion model (set
    after stage 1 from the training cubes' latents).
    """

    @register_to_config
    def __init__(self, latent_channels: int = 4, base_channels: int = 16, hidden_channels: int = 32,
                 blocks: int = 2, decoder_channels: int = 8, scaling_factor: float = 1.0):
        super().__init__()
        self.encoder = CubeEncoder(latent_channels, base_channels, hidden_channels, blocks)
        self.conv_in = nn.Conv3d(latent_channels, hidden_channels, 3, padding=1)
        self.decoder_blocks = nn.ModuleList(ResBlock3d(hidden_channels) for _ in range(blocks))
        self.norm_up = group_norm(hidden_channels)
        self.up = nn.ConvTranspose3d(hidden_channels, decoder_channels, 2, stride=2)
        self.refine = nn.Conv3d(decoder_channels, decoder_channels, 3, padding=1)
        self.conv_out = nn.Conv3d(decoder_channels, 1, 3, padding=1)

    def encode(self, cube: torch.Tensor) -> torch.Tensor:
        """(N, B, H, W) -> scaled latent (N, c, B'/2, H'/2, W'/2) of the padded cube."""
        return self.encoder(pad_cube(cube)) * self.config.scaling_factor

    def decode(self, latent: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Scaled latent -> (N, B, H, W) cropped to `shape` = (B, H, W) of the original cube."""
        h = self.conv_in(latent / self.config.scaling_factor)
        for block in self.decoder_blocks:
            h = block(h)
        h = F.silu(self.up(F.silu(self.norm_up(h))))
        h = self.conv_out(F.silu(self.refine(h)))[:, 0]
        b, height, width = shape
        return (h[:, :b, :height, :width] + 1) / 2

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(cube), tuple(cube.shape[-3:]))


class HSIConditionEncoder(ModelMixin, ConfigMixin):
    """A learned encoding of the noisy cube at the latent's resolution (trained with the
    denoiser, initialised from the autoencoder's encoder)."""

    @register_to_config
    def __init__(self, out_channels: int = 8, base_channels: int = 16, hidden_channels: int = 32, blocks: int = 2):
        super().__init__()
        self.encoder = CubeEncoder(out_channels, base_channels, hidden_channels, blocks)

    def forward(self, noisy_cube: torch.Tensor) -> torch.Tensor:
        return self.encoder(pad_cube(noisy_cube))


class LatentDenoiser3D(ModelMixin, ConfigMixin):
    """A two-level 3D U-Net over latents: (sample, timestep, condition) -> clean latent."""

    @register_to_config
    def __init__(self, latent_channels: int = 4, condition_channels: int = 8, width: int = 32,
                 blocks_per_level: int = 2):
        super().__init__()
        time_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv3d(latent_channels + condition_channels, width, 3, padding=1)
        self.encoder = nn.ModuleList(ResBlock3d(width, time_dim) for _ in range(blocks_per_level))
        self.down = nn.Conv3d(width, 2 * width, 2, stride=2)
        self.middle = nn.ModuleList(ResBlock3d(2 * width, time_dim) for _ in range(blocks_per_level))
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.merge = nn.Conv3d(2 * width, width, 1)
        self.decoder = nn.ModuleList(ResBlock3d(width, time_dim) for _ in range(blocks_per_level))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv3d(width, latent_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(sample.shape[0])
        time = self.time_mlp(timestep_embedding(timesteps, self.config.width).to(sample.dtype))
        h = self.conv_in(torch.cat([sample, condition], dim=1))
        for block in self.encoder:
            h = block(h, time)
        skip = h
        h = self.down(h)
        for block in self.middle:
            h = block(h, time)
        h = self.merge(torch.cat([self.up(h), skip], dim=1))
        for block in self.decoder:
            h = block(h, time)
        return self.conv_out(F.silu(self.norm_out(h)))


class HSIRefiner(ModelMixin, ConfigMixin):
    """(noisy cube, decoded cube) -> a robust low-rank estimate of the noisy cube + a learned
    correction, at full resolution.

    The network reads the noisy cube, the latent model's decoded cube, the noisy cube's
    robust low-rank estimates (earthsynth.generation.hsi.lowrank.robust_projection: noise
    whitened, outliers rejected) at each of `subspace_ranks` (how many components hold the
    signal depends on the scene: the network weighs the candidates) and the outlier mask of
    the `base_rank` estimate, which is where impulses, dead pixels and stripes were found.
    It adds its correction to the `base_rank` estimate and starts as the identity on it (the
    last convolution is zero), so training begins from the classical answer and can only
    learn what it leaves.
    """

    @register_to_config
    def __init__(self, channels: int = 16, blocks: int = 2, subspace_ranks: tuple[int, ...] = (3, 4, 6),
                 base_rank: int = 4, outlier_threshold: float = 3.0):
        super().__init__()
        if base_rank not in subspace_ranks:
            raise ValueError(f"base_rank {base_rank} must be one of subspace_ranks {tuple(subspace_ranks)}")
        self.conv_in = nn.Conv3d(3 + len(subspace_ranks), channels, 3, padding=1)
        self.res_blocks = nn.ModuleList(ResBlock3d(channels) for _ in range(blocks))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv3d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, noisy_cube: torch.Tensor, decoded_cube: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fits = robust_projections(noisy_cube, list(self.config.subspace_ranks),
                                      threshold=self.config.outlier_threshold)
        base, outliers = fits[list(self.config.subspace_ranks).index(self.config.base_rank)]
        features = torch.stack([noisy_cube * 2 - 1, decoded_cube * 2 - 1, *(e * 2 - 1 for e, _ in fits),
                                outliers.to(noisy_cube.dtype)], dim=1)
        h = self.conv_in(features)
        for block in self.res_blocks:
            h = block(h)
        return base + self.conv_out(F.silu(self.norm_out(h)))[:, 0]

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
earthsynth.generation.hsi.lowrank), optionally with that estimate's eigen-images denoised by
a 2D network (the noise left inside the subspace is most of the estimate's error), and
learns a correction from the noisy cube, the decoded one, the estimates at a few ranks and
where outliers were found.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from earthsynth.generation.common import timestep_embedding
from earthsynth.generation.hsi.lowrank import MAD_TO_STD, RobustFit, fit_start, robust_fits

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


class ResBlock2d(nn.Module):
    """GroupNorm-SiLU-Conv2d twice with a skip."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class EigenimageDenoiser(nn.Module):
    """A two-level 2D U-Net that denoises the eigen-images of a robust low-rank fit.

    In the noise-whitened space of earthsynth.generation.hsi.lowrank every eigen-image (the
    cube's coordinate along one basis vector) carries noise of std about 1, while its signal
    is a real scene's spatial pattern; most of what a low-rank fit leaves is that noise. Each
    eigen-image is denoised on its own with the same weights, so any rank works, from five
    inputs: itself divided by its std (the pattern), its 3x3 detail in noise units (where the
    noise shows, whatever the component's strength), the leading eigen-image divided by its
    std (the sharpest view of the scene's edges), the noise level relative to it (1 / std)
    and the fraction of bands flagged as outliers at each pixel. The correction it adds is in
    noise units too, and its last convolution starts at zero, so an untrained denoiser
    returns the eigen-images unchanged.
    """

    INPUTS = 5

    def __init__(self, channels: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(self.INPUTS, channels, 3, padding=1)
        self.encoder = nn.Sequential(ResBlock2d(channels), ResBlock2d(channels))
        self.down = nn.Conv2d(channels, 2 * channels, 2, stride=2)
        self.middle = nn.Sequential(*(ResBlock2d(2 * channels) for _ in range(3)))
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.merge = nn.Conv2d(2 * channels, channels, 1)
        self.decoder = nn.Sequential(ResBlock2d(channels), ResBlock2d(channels))
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, eigenimages: torch.Tensor, outlier_fraction: torch.Tensor) -> torch.Tensor:
        """(N, rank, H, W) eigen-images (leading last, as RobustFit holds them) and (N, H, W)
        outlier fraction -> denoised eigen-images (N, rank, H, W)."""
        n, rank, height, width = eigenimages.shape
        std = eigenimages.flatten(2).std(-1).clamp_min(1e-6)[..., None, None]
        normalised = eigenimages / std
        local_mean = F.avg_pool2d(F.pad(eigenimages, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        detail = (eigenimages - local_mean).clamp(-10, 10) / 3
        inputs = torch.stack([normalised, detail, normalised[:, -1:].expand(-1, rank, -1, -1),
                              (1 / std).expand(-1, -1, height, width),
                              outlier_fraction[:, None].expand(-1, rank, -1, -1)], dim=2)
        # odd sizes: pad to even for the one downsampling, crop after
        inputs = F.pad(inputs.reshape(n * rank, self.INPUTS, height, width), (0, width % 2, 0, height % 2),
                       mode="replicate")
        h = self.encoder(self.conv_in(inputs))
        skip = h
        h = self.middle(self.down(h))
        h = self.decoder(self.merge(torch.cat([self.up(h), skip], dim=1)))
        correction = self.conv_out(F.silu(h))[:, 0, :height, :width].reshape(n, rank, height, width)
        return eigenimages + correction


class OutlierDetector(nn.Module):
    """A small 2D network that flags the values hit by sparse noise (impulses, dead pixels and
    lines, stripes) before the robust low-rank fit, which alone finds them only by a threshold
    on their residual: an impulse strong enough to pull the subspace towards itself leaves a
    small residual and escapes, and a weak stripe never crosses the threshold pixel by pixel.

    Each band is read on its own with the same weights (any band count), from four inputs:
    the band over its 99th percentile (dead values sit at 0, saturated ones at the top), its
    residual to a first robust fit in robust-spread units, and that residual's median down
    each column and along each row (a stripe or a dead line shows there even where single
    pixels do not). Output: one logit per value, > 0 flags it.
    """

    INPUTS = 4

    def __init__(self, channels: int = 16, blocks: int = 2):
        super().__init__()
        self.conv_in = nn.Conv2d(self.INPUTS, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock2d(channels) for _ in range(blocks)))
        self.conv_out = nn.Conv2d(channels, 1, 1)

    def forward(self, cube: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
        """(N, B, H, W) normalised cube and its robust low-rank fit -> (N, B, H, W) logits."""
        n, bands, height, width = cube.shape
        residual = cube - fit
        spread = residual.flatten(2).abs().median(-1).values[..., None, None] / MAD_TO_STD
        residual = (residual / spread.clamp_min(1e-9)).clamp(-30, 30) / 5
        top = cube.flatten(2).quantile(0.99, dim=-1)[..., None, None].clamp_min(1e-6)
        inputs = torch.stack([cube / top, residual, residual.median(-2, keepdim=True).values.expand_as(residual),
                              residual.median(-1, keepdim=True).values.expand_as(residual)], dim=2)
        h = self.blocks(self.conv_in(inputs.reshape(n * bands, self.INPUTS, height, width)))
        return self.conv_out(h).reshape(n, bands, height, width)


@dataclass
class RefinerOutput:
    cube: torch.Tensor  # (N, B, H, W) the refined cube
    fit: RobustFit | None  # the fit whose eigen-images were denoised (None: no eigen-image denoiser)
    eigenimages: torch.Tensor | None  # (N, rank, H, W) the denoised eigen-images
    outlier_logits: torch.Tensor | None = None  # (N, B, H, W) the detector's (None: no detector)


class HSIRefiner(ModelMixin, ConfigMixin):
    """(noisy cube, decoded cube) -> a low-rank estimate of the noisy cube + a learned
    correction, at full resolution.

    The estimate it starts from: the robust low-rank fit of the noisy cube at `base_rank`
    (earthsynth.generation.hsi.lowrank: noise whitened, outliers rejected), or, with
    `eigenimage_rank` > 0, the fit at that rank rebuilt from eigen-images denoised by an
    EigenimageDenoiser (a low-rank fit removes the noise outside the subspace; the denoiser
    removes what is left inside it, which is most of its error).
    The correction network reads the noisy cube, the latent model's decoded cube, the robust
    estimates at each of `subspace_ranks` (how many components hold the signal depends on the
    scene), the starting estimate and the outlier mask of the `base_rank` fit (where impulses,
    dead pixels and stripes were found). Its last convolution starts at zero, so training
    begins from the starting estimate and can only learn what it leaves.
    With `detector_channels` > 0, an OutlierDetector reads the noisy cube and a first robust
    fit at `base_rank`, and the values it flags count as outliers in every fit after it.
    """

    @register_to_config
    def __init__(self, channels: int = 16, blocks: int = 2, subspace_ranks: tuple[int, ...] = (3, 4, 6),
                 base_rank: int = 4, outlier_threshold: float = 3.0, eigenimage_rank: int = 0,
                 eigenimage_channels: int = 32, detector_channels: int = 0):
        super().__init__()
        if base_rank not in subspace_ranks:
            raise ValueError(f"base_rank {base_rank} must be one of subspace_ranks {tuple(subspace_ranks)}")
        self.eigenimages = EigenimageDenoiser(eigenimage_channels) if eigenimage_rank > 0 else None
        self.detector = OutlierDetector(detector_channels) if detector_channels > 0 else None
        inputs = 3 + len(subspace_ranks) + (1 if self.eigenimages is not None else 0)
        self.conv_in = nn.Conv3d(inputs, channels, 3, padding=1)
        self.res_blocks = nn.ModuleList(ResBlock3d(channels) for _ in range(blocks))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv3d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def refine(self, noisy_cube: torch.Tensor, decoded_cube: torch.Tensor) -> RefinerOutput:
        ranks = list(self.config.subspace_ranks)
        eigen_rank = self.config.eigenimage_rank
        fit_ranks = ranks + ([eigen_rank] if eigen_rank > 0 and eigen_rank not in ranks else [])
        logits, flagged, start = None, None, None
        if self.detector is not None:
            with torch.no_grad():
                # the detector's first fit and the fits after it share the whitening and median start
                start = fit_start(noisy_cube) if min(fit_ranks) < noisy_cube.shape[1] else None
                first = robust_fits(noisy_cube, [self.config.base_rank], threshold=self.config.outlier_threshold,
                                    start=start)[0]
            if first is not None:  # (None: too few bands for the rank, nothing to detect against)
                logits = self.detector(noisy_cube, first.estimate().to(noisy_cube.dtype))
                flagged = logits.detach() > 0
        with torch.no_grad():
            fits = robust_fits(noisy_cube, fit_ranks, threshold=self.config.outlier_threshold, known_outliers=flagged,
                               start=start)
        estimates = [noisy_cube if fit is None else fit.estimate().to(noisy_cube.dtype) for fit in fits[:len(ranks)]]
        base_fit = fits[ranks.index(self.config.base_rank)]
        outliers = (torch.zeros_like(noisy_cube) if base_fit is None else base_fit.outliers.to(noisy_cube.dtype))
        start = estimates[ranks.index(self.config.base_rank)]
        features = [noisy_cube, decoded_cube, *estimates]
        eigen_fit = fits[fit_ranks.index(eigen_rank)] if eigen_rank > 0 else None
        eigenimages = None
        if eigen_fit is not None:
            outlier_fraction = eigen_fit.outliers.to(noisy_cube.dtype).mean(1)
            eigenimages = self.eigenimages(eigen_fit.coefficients.to(noisy_cube.dtype), outlier_fraction)
            start = eigen_fit.estimate(eigenimages).to(noisy_cube.dtype)
        if self.eigenimages is not None:
            features.append(start)  # (the base_rank estimate when there are too few bands for the rank)
        h = self.conv_in(torch.stack([x * 2 - 1 for x in features] + [outliers], dim=1))
        for block in self.res_blocks:
            h = block(h)
        cube = start + self.conv_out(F.silu(self.norm_out(h)))[:, 0]
        return RefinerOutput(cube=cube, fit=eigen_fit, eigenimages=eigenimages, outlier_logits=logits)

    def forward(self, noisy_cube: torch.Tensor, decoded_cube: torch.Tensor) -> torch.Tensor:
        return self.refine(noisy_cube, decoded_cube).cube

"""HSIDenoisePipeline: a noisy hyperspectral cube (any band count, any size) -> denoised cube.

    pipe = HSIDenoisePipeline.from_pretrained("src/earthsynth/assets/hsi")
    clean = pipe(noisy_cube, num_inference_steps=4).cube      # (bands, H, W), input dtype kept

Steps: (1) check the cube, (2) normalise it to about [0, 1] (robust percentiles: the model
is trained on the same normalisation), (3) cut it into spatial tiles of `tile` pixels with all
bands, overlapping by `overlap`, (4) per tile: encode the noisy cube to the latent and to the
condition, noise the noisy latent to the timestep that `strength` names (the sample starts
from the noisy cube, not from pure noise), run the few DDIM steps of the latent denoiser
(which predicts the clean latent), decode, and let the full-resolution refiner put back the
texture the autoencoder cannot hold (from the noisy tile; `refine=False` skips it), (5) blend the tiles with linear ramps, undo the
normalisation and return the input's dtype (integers rounded and clipped to their range).
Memory is bounded by the tile size, not the scene size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.generation.common import process_in_tiles
from earthsynth.generation.hsi.model import (
    HSIAutoencoder,
    HSIConditionEncoder,
    HSIRefiner,
    LatentDenoiser3D,
)


@dataclass
class HSIDenoisePipelineOutput(BaseOutput):
    cube: np.ndarray | torch.Tensor  # (bands, H, W), the input's dtype (numpy) or float32 (torch)


def normalisation(cube: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale) per cube of (N, B, H, W) so (cube - offset) / scale is about [0, 1]:
    the 0.1 and 99.9 percentiles (over at most 1M sampled values: torch.quantile has a size
    limit), with the offset kept at 0 for non-negative data."""
    flat = cube.reshape(cube.shape[0], -1).float()
    step = max(1, flat.shape[1] // 1_000_000)
    low, high = torch.quantile(flat[:, ::step], torch.tensor([0.001, 0.999], device=cube.device), dim=1)
    offset = low.clamp(max=0)
    scale = (high - offset).clamp_min(1e-6)
    return offset[:, None, None, None], scale[:, None, None, None]


class HSIDenoisePipeline(DiffusionPipeline):
    model_cpu_offload_seq = "condition_encoder->autoencoder->denoiser->refiner"

    def __init__(self, autoencoder: HSIAutoencoder, condition_encoder: HSIConditionEncoder,
                 denoiser: LatentDenoiser3D, refiner: HSIRefiner, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, condition_encoder=condition_encoder, denoiser=denoiser,
                              refiner=refiner, scheduler=scheduler)

    def check_inputs(self, cube: torch.Tensor, num_inference_steps: int, strength: float, tile: int,
                     overlap: int) -> None:
        if cube.ndim != 3:
            raise ValueError(f"expected a cube (bands, H, W), got shape {tuple(cube.shape)}")
        bands, height, width = cube.shape
        if bands < 2:
            raise ValueError(f"a hyperspectral cube needs at least 2 bands, got {bands}")
        if height < 4 or width < 4:
            raise ValueError(f"cube is {height}x{width} pixels, at least 4x4 expected")
        if not torch.isfinite(cube).all():
            count = int((~torch.isfinite(cube)).sum())
            raise ValueError(f"cube holds {count} NaN/inf values; fill or mask them first")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if tile < 8 or not 0 <= overlap < tile // 2:
            raise ValueError(f"tile must be >= 8 and overlap in [0, tile/2), got tile {tile}, overlap {overlap}")

    def denoise_tile(self, noisy: torch.Tensor, timesteps: torch.Tensor, generator, refine: bool = True) -> torch.Tensor:
        """(1, B, h, w) normalised noisy cube -> (1, B, h, w) denoised."""
        start = self.autoencoder.encode(noisy)
        condition = self.condition_encoder(noisy)
        noise = torch.randn(start.shape, generator=generator, dtype=start.dtype).to(start.device)
        sample = self.scheduler.add_noise(start, noise, timesteps[:1])
        for t in timesteps:
            clean_latent = self.denoiser(sample, t, condition)
            sample = self.scheduler.step(clean_latent, t, sample).prev_sample
        decoded = self.autoencoder.decode(clean_latent, tuple(noisy.shape[-3:]))
        return self.refiner(noisy, decoded) if refine else decoded

    @torch.no_grad()
    def __call__(self, cube, num_inference_steps: int = 4, strength: float = 0.5, tile: int = 64,
                 overlap: int = 8, generator: torch.Generator | None = None,
                 output_type: str = "np", refine: bool = True) -> HSIDenoisePipelineOutput:
        # 1. check
        source_dtype = cube.dtype if isinstance(cube, np.ndarray) else None
        data = torch.as_tensor(np.asarray(cube, dtype=np.float32) if isinstance(cube, np.ndarray) else cube).float()
        self.check_inputs(data, num_inference_steps, strength, tile, overlap)
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be np or pt, got {output_type!r}")
        data = data.to(self.denoiser.device)[None]
        # 2. normalise
        offset, scale = normalisation(data)
        normalised = (data - offset) / scale
        # the few timesteps below `strength` of the way to pure noise (as image-to-image does)
        self.scheduler.set_timesteps(max(num_inference_steps, round(num_inference_steps / strength)))
        timesteps = self.scheduler.timesteps[-num_inference_steps:]
        # 3-5. tiles over the spatial axes, all bands at once, blended with ramps
        tile_h, tile_w = min(tile, normalised.shape[-2]), min(tile, normalised.shape[-1])
        out = process_in_tiles(normalised, tile_h, tile_w, overlap,
                               lambda piece: self.denoise_tile(piece, timesteps, generator, refine))
        denoised = (out * scale + offset)[0]
        if output_type == "pt":
            return HSIDenoisePipelineOutput(cube=denoised)
        return HSIDenoisePipelineOutput(cube=to_dtype(denoised.cpu().numpy(), source_dtype or np.dtype(np.float32)))


def to_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float array -> `dtype`; integers are rounded and clipped to the type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)

"""HSIDenoisePipeline: a noisy hyperspectral cube (any band count, any size) -> denoised cube.

    pipe = HSIDenoisePipeline.from_pretrained("src/earthsynth/assets/hsi")
    clean = pipe(noisy_cube, num_inference_steps=4).cube      # (bands, H, W), input dtype kept

Steps: (1) check the cube, (2) normalise it to about [0, 1] (robust percentiles: the model
is trained on the same normalisation), (3) cut it into spatial tiles of `tile` pixels with all
bands, overlapping by `overlap`, (4) per tile: encode the noisy cube to the latent and to the
condition, noise the noisy latent to the timestep that `strength` names (the sample starts
from the noisy cube, not from pure noise), run the few DDIM steps of the latent denoiser
(which predicts the clean latent), decode, and let the full-resolution refiner put back the
texture the autoencoder cannot hold (from the noisy tile; `refine=False` skips it), (5) blend
the tiles with linear ramps, undo the normalisation and return the input's dtype (integers
rounded and clipped to their range). Memory is bounded by the tile size, not the scene size.

A batch of cubes of one shape, (N, bands, H, W), is denoised together; with a list of N
generators each cube gets what it gets alone. As in diffusers' image-to-image pipelines the
sample starts from the input, so there is no `latents=` argument; `callback_on_step_end`
runs after every step of every tile (the progress bar counts tiles x steps) and may change
the tile's `latents`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.generation.common import (
    callback_tensor_names,
    initial_noise,
    process_in_tiles,
    step_callback,
    tile_starts,
)
from earthsynth.generation.hsi.model import (
    HSIAutoencoder,
    HSIConditionEncoder,
    HSIRefiner,
    LatentDenoiser3D,
)

OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass
class HSIDenoisePipelineOutput(BaseOutput):
    # (bands, H, W), or (N, bands, H, W) for a batch: the input's dtype (numpy) or float32
    # (torch); for output_type "latent" the (N, C, b, h, w) denoised latent of the one tile
    cube: np.ndarray | torch.Tensor


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
    _callback_tensor_inputs = ["latents", "condition"]

    def __init__(self, autoencoder: HSIAutoencoder, condition_encoder: HSIConditionEncoder,
                 denoiser: LatentDenoiser3D, refiner: HSIRefiner, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, condition_encoder=condition_encoder, denoiser=denoiser,
                              refiner=refiner, scheduler=scheduler)

    def check_inputs(self, cube: torch.Tensor, num_inference_steps: int, strength: float, tile: int,
                     overlap: int, generator=None, output_type: str = "np") -> None:
        """`cube` is (N, bands, H, W) here: one cube is a batch of one."""
        if cube.ndim != 4:
            raise ValueError(f"expected a cube (bands, H, W) or a batch (N, bands, H, W), got {cube.ndim} axes")
        count, bands, height, width = cube.shape
        if bands < 2:
            raise ValueError(f"a hyperspectral cube needs at least 2 bands, got {bands}")
        if height < 4 or width < 4:
            raise ValueError(f"cube is {height}x{width} pixels, at least 4x4 expected")
        if not torch.isfinite(cube).all():
            nonfinite = int((~torch.isfinite(cube)).sum())
            raise ValueError(f"cube holds {nonfinite} NaN/inf values; fill or mask them first")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if tile < 8 or not 0 <= overlap < tile // 2:
            raise ValueError(f"tile must be >= 8 and overlap in [0, tile/2), got tile {tile}, overlap {overlap}")
        if isinstance(generator, list) and len(generator) != count:
            raise ValueError(f"{len(generator)} generators for {count} cubes; pass one per cube")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if output_type == "latent" and (height > tile or width > tile):
            raise ValueError(f"output_type 'latent' needs the cube in one tile; it is {height}x{width} px, "
                             f"the tile {tile}")

    def denoise_tile(self, noisy: torch.Tensor, timesteps: torch.Tensor, generator, refine: bool = True,
                     callback=None, callback_names: list[str] | None = None, progress=None,
                     output_latent: bool = False) -> torch.Tensor:
        """(N, B, h, w) normalised noisy cubes -> (N, B, h, w) denoised (or their latents)."""
        start = self.autoencoder.encode(noisy)
        condition = self.condition_encoder(noisy)
        noise = initial_noise(start.shape, generator, start.device, start.dtype)
        latents = self.scheduler.add_noise(start, noise, timesteps[:1])
        for i, t in enumerate(timesteps):
            clean_latent = self.denoiser(latents, t, condition)
            latents = self.scheduler.step(clean_latent, t, latents, generator=generator).prev_sample
            values = step_callback(self, callback, callback_names or [], i, t,
                                   {"latents": latents, "condition": condition})
            latents, condition = values["latents"], values["condition"]
            if progress is not None:
                progress.update()
        # DDIM's last step lands on its predicted clean latent (alpha = 1 past t = 0)
        if output_latent:
            return latents
        decoded = self.autoencoder.decode(latents, tuple(noisy.shape[-3:]))
        return self.refiner(noisy, decoded) if refine else decoded

    @torch.no_grad()
    def __call__(self, cube, num_inference_steps: int = 4, strength: float = 0.5, tile: int = 64,
                 overlap: int = 8, generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "np", refine: bool = True, return_dict: bool = True,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs: list[str] | None = None):
        # 1. check (one cube is a batch of one, and comes back as one cube)
        source_dtype = cube.dtype if isinstance(cube, np.ndarray) else None
        data = torch.as_tensor(np.asarray(cube, dtype=np.float32) if isinstance(cube, np.ndarray) else cube).float()
        single = data.ndim == 3
        data = data[None] if single else data
        self.check_inputs(data, num_inference_steps, strength, tile, overlap, generator, output_type)
        callback_names = callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                               self._callback_tensor_inputs)
        data = data.to(self.denoiser.device)
        # 2. normalise
        offset, scale = normalisation(data)
        normalised = (data - offset) / scale
        # the few timesteps below `strength` of the way to pure noise (as image-to-image does)
        self.scheduler.set_timesteps(max(num_inference_steps, round(num_inference_steps / strength)))
        timesteps = self.scheduler.timesteps[-num_inference_steps:]
        # 3-5. tiles over the spatial axes, all bands at once, blended with ramps
        height, width = normalised.shape[-2:]
        tile_h, tile_w = min(tile, height), min(tile, width)
        tiles = len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap))

        def denoise(piece, progress, output_latent=False):
            return self.denoise_tile(piece, timesteps, generator, refine, callback_on_step_end, callback_names,
                                     progress, output_latent)

        with self.progress_bar(total=tiles * len(timesteps)) as progress:
            if output_type == "latent":
                latents = denoise(normalised, progress, output_latent=True)
            else:
                out = process_in_tiles(normalised, tile_h, tile_w, overlap, lambda piece: denoise(piece, progress))
        self.maybe_free_model_hooks()
        if output_type == "latent":
            result = latents
        else:
            denoised = out * scale + offset
            denoised = denoised[0] if single else denoised
            if output_type == "pt":
                result = denoised
            else:
                result = to_dtype(denoised.cpu().numpy(), source_dtype or np.dtype(np.float32))
        if not return_dict:
            return (result,)
        return HSIDenoisePipelineOutput(cube=result)


def to_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float array -> `dtype`; integers are rounded and clipped to the type's range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)

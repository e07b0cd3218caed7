"""EDiffSRPipeline: low-resolution image (any band count) -> x2 or x4 image.

    pipe = EDiffSRPipeline.from_pretrained("src/earthsynth/assets/ediffsr")
    high = pipe(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images

`low` is (C, H, W) or (B, C, H, W) float in [0, 1] (a tensor or an array); the output is
(B, C, sH, sW) in [0, 1] ("pt") or (B, sH, sW, C) ("np"). Large images are cut into tiles of
`tile` low-resolution pixels with `overlap` pixels shared between neighbours; each tile is
upscaled on its own and the overlaps are blended with linear ramps, so memory is bounded by
the tile size, not the image size.

The scheduler is the mean-reverting SDE (`MeanRevertingScheduler`, sampling from the bicubic
upsampling plus a little noise) or, for a checkpoint trained with model.schedule "ddpm", a
plain diffusers scheduler (DDIM by default) over the residual x - bicubic, from pure noise.

A checkpoint trained as a plain regressor (model.regressor in the training config: the same
EANet predicting the residual to the bicubic upsampling in one pass, with an L1 loss) runs
in one step whatever num_inference_steps says; it is the baseline of the benchmark.

diffusers' conventions: `generator` may be a list, one per image, and each image then gets
what it gets alone; `latents` is the standard normal noise the sampling starts from, one
(B, C, sH, sW) tensor for the whole image (each tile takes its part); `callback_on_step_end`
runs after every step of every tile (the progress bar counts tiles x steps) and may change
the tile's `latents`, the current sample in image units ([-1, 1]); `return_dict=False`
returns `(images,)`. The regressor takes no steps, so it calls no callback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.generation.common import (
    callback_tensor_names,
    initial_noise,
    process_in_tiles,
    step_callback,
    tile_starts,
)
from earthsynth.generation.ediffsr.scheduler import MeanRevertingScheduler

# the step count of the CLI, the app and __call__: the best validation PSNR of the bundled
# model (benchmarks/ediffsr_quality.py; more steps add texture the model cannot place)
DEFAULT_STEPS = 2
OUTPUT_TYPES = ("pt", "np")


@dataclass
class EDiffSRPipelineOutput(BaseOutput):
    images: torch.Tensor | np.ndarray


class EDiffSRPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "eanet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, eanet, scheduler, regressor: bool = False):
        super().__init__()
        self.register_modules(eanet=eanet, scheduler=scheduler)
        self.register_to_config(regressor=regressor)

    def check_inputs(self, low: torch.Tensor, scale: int, tile: int, overlap: int, num_inference_steps: int = 1,
                     generator=None, latents: torch.Tensor | None = None, output_type: str = "pt") -> None:
        config = self.eanet.config
        if scale != config.scale:
            raise ValueError(f"this model upscales x{config.scale}, not x{scale}")
        if low.shape[1] != config.bands:
            raise ValueError(f"this model takes {config.bands} bands, the image has {low.shape[1]}")
        minimum = self.eanet.multiple
        if low.shape[-2] < minimum or low.shape[-1] < minimum:
            raise ValueError(f"the image is {low.shape[-1]}x{low.shape[-2]} px, smaller than the {minimum}x{minimum} minimum")
        if not torch.isfinite(low).all():
            raise ValueError("the image has NaN or infinite values")
        if tile < minimum or tile % minimum:
            raise ValueError(f"tile must be a positive multiple of {minimum}, got {tile}")
        tiled = low.shape[-2] > tile or low.shape[-1] > tile
        if overlap < 0 or (tiled and overlap >= tile // 2):
            raise ValueError(f"overlap must be in [0, tile / 2), got {overlap}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if isinstance(generator, list) and len(generator) != low.shape[0]:
            raise ValueError(f"{len(generator)} generators for {low.shape[0]} images; pass one per image")
        expected = (low.shape[0], config.bands, low.shape[-2] * scale, low.shape[-1] * scale)
        if latents is not None and tuple(latents.shape) != expected:
            raise ValueError(f"latents must have shape {expected} (the output's), got {tuple(latents.shape)}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be pt or np, got {output_type!r}")

    def upscale_tile(self, low: torch.Tensor, steps: int, generator, noise: torch.Tensor | None = None,
                     callback=None, callback_names: list[str] | None = None, progress=None) -> torch.Tensor:
        """(B, C, h, w) in [-1, 1], h and w multiples of the model's -> (B, C, sh, sw) in [-1, 1].
        `noise`: the (B, C, sh, sw) start noise of this tile (default: drawn from `generator`)."""
        condition = self.eanet.condition(low)
        mean = condition[:, : low.shape[1]]  # the bicubic upsampling
        if self.config.regressor:
            zero = torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
            if progress is not None:
                progress.update()
            return (mean + self.eanet(mean, zero, condition=condition)).clamp(-1, 1)
        self.scheduler.set_timesteps(steps, device=low.device)
        mean_reverting = isinstance(self.scheduler, MeanRevertingScheduler)
        if mean_reverting:
            latents = self.scheduler.start(mean, generator, noise)
        else:  # a plain diffusers scheduler (DDPM, DDIM, ...): diffusion of the residual x - mean from pure noise
            if noise is None:
                noise = initial_noise(mean.shape, generator, mean.device, mean.dtype)
            residual = noise * self.scheduler.init_noise_sigma
            latents = mean + residual
        for i, t in enumerate(self.scheduler.timesteps):
            timesteps = torch.full((low.shape[0],), int(t), dtype=torch.long, device=low.device)
            prediction = self.eanet(latents, timesteps, condition=condition)
            if mean_reverting:
                latents = self.scheduler.step(prediction, t, latents, mean, generator=generator).prev_sample
            else:
                residual = self.scheduler.step(prediction, t, residual, generator=generator).prev_sample
                latents = mean + residual
            if callback is not None:
                returned = step_callback(self, callback, callback_names, i, t, {"latents": latents})["latents"]
                if returned is not latents:  # the callback changed the sample
                    latents, residual = returned, returned - mean
            if progress is not None:
                progress.update()
        return latents.clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, image, scale: int | None = None, num_inference_steps: int = DEFAULT_STEPS,
                 generator: torch.Generator | list[torch.Generator] | None = None, tile: int = 128,
                 overlap: int = 16, output_type: str = "pt", latents: torch.Tensor | None = None,
                 return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | None = None):
        # 1. check
        low = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
        if low.ndim == 3:
            low = low[None]
        if low.ndim != 4:
            raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(low.shape)}")
        scale = scale or self.eanet.config.scale
        self.check_inputs(low, scale, tile, overlap, num_inference_steps, generator, latents, output_type)
        callback_names = callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                               self._callback_tensor_inputs)
        low = low.to(self.device, self.eanet.dtype) * 2 - 1
        height, width = low.shape[-2:]
        multiple = self.eanet.multiple

        # 2. pad (replicate) to a multiple of the model's stride and at least one tile per side
        tile_h, tile_w = min(tile, height), min(tile, width)
        tile_h, tile_w = -(-tile_h // multiple) * multiple, -(-tile_w // multiple) * multiple
        pad_h, pad_w = max(tile_h - height, 0), max(tile_w - width, 0)
        source = low
        if latents is not None:
            # the start noise rides along with the image, folded to its resolution, so that
            # each tile finds its own part of it
            folded = F.pixel_unshuffle(latents.to(low.device, low.dtype), scale)
            source = torch.cat([low, folded], dim=1)
        padded = F.pad(source, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else source
        bands = low.shape[1]

        def upscale(piece, progress):
            noise = F.pixel_shuffle(piece[:, bands:], scale) if latents is not None else None
            return self.upscale_tile(piece[:, :bands], num_inference_steps, generator, noise, callback_on_step_end,
                                     callback_names, progress)

        # 3. upscale tile by tile, the overlaps blended
        if self.config.regressor:
            steps = 1
        else:
            self.scheduler.set_timesteps(num_inference_steps)
            steps = len(self.scheduler.timesteps)
        tiles = len(tile_starts(padded.shape[-2], tile_h, overlap)) * len(tile_starts(padded.shape[-1], tile_w, overlap))
        with self.progress_bar(total=tiles * steps) as progress:
            out = process_in_tiles(padded, tile_h, tile_w, overlap, lambda piece: upscale(piece, progress), scale)
        self.maybe_free_model_hooks()
        images = ((out[..., : height * scale, : width * scale] + 1) / 2).clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        if not return_dict:
            return (images,)
        return EDiffSRPipelineOutput(images=images)

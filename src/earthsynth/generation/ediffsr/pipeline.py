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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.generation.common import process_in_tiles
from earthsynth.generation.ediffsr.scheduler import MeanRevertingScheduler

# the step count of the CLI, the app and __call__: the best validation PSNR of the bundled
# model (benchmarks/ediffsr_quality.py; more steps add texture the model cannot place)
DEFAULT_STEPS = 2


@dataclass
class EDiffSRPipelineOutput(BaseOutput):
    images: torch.Tensor | np.ndarray


class EDiffSRPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "eanet"

    def __init__(self, eanet, scheduler, regressor: bool = False):
        super().__init__()
        self.register_modules(eanet=eanet, scheduler=scheduler)
        self.register_to_config(regressor=regressor)

    def check_inputs(self, low: torch.Tensor, scale: int, tile: int, overlap: int) -> None:
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

    def upscale_tile(self, low: torch.Tensor, steps: int, generator) -> torch.Tensor:
        """(B, C, h, w) in [-1, 1], h and w multiples of the model's -> (B, C, sh, sw) in [-1, 1]."""
        condition = self.eanet.condition(low)
        mean = condition[:, : low.shape[1]]  # the bicubic upsampling
        if self.config.regressor:
            zero = torch.zeros(low.shape[0], dtype=torch.long, device=low.device)
            return (mean + self.eanet(mean, zero, condition=condition)).clamp(-1, 1)
        self.scheduler.set_timesteps(steps, device=low.device)
        if isinstance(self.scheduler, MeanRevertingScheduler):
            sample = self.scheduler.start(mean, generator)
            for t in self.scheduler.timesteps:
                timesteps = torch.full((low.shape[0],), int(t), dtype=torch.long, device=low.device)
                prediction = self.eanet(sample, timesteps, condition=condition)
                sample = self.scheduler.step(prediction, t, sample, mean, generator=generator).prev_sample
            return sample.clamp(-1, 1)
        # a plain diffusers scheduler (DDPM, DDIM, ...): diffusion of the residual x - mean from pure noise
        residual = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
        residual = residual * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            timesteps = torch.full((low.shape[0],), int(t), dtype=torch.long, device=low.device)
            prediction = self.eanet(mean + residual, timesteps, condition=condition)
            residual = self.scheduler.step(prediction, t, residual, generator=generator).prev_sample
        return (mean + residual).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, image, scale: int | None = None, num_inference_steps: int = DEFAULT_STEPS,
                 generator: torch.Generator | None = None, tile: int = 128, overlap: int = 16,
                 output_type: str = "pt") -> EDiffSRPipelineOutput:
        low = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image).float()
        if low.ndim == 3:
            low = low[None]
        if low.ndim != 4:
            raise ValueError(f"expected (C, H, W) or (B, C, H, W), got shape {tuple(low.shape)}")
        scale = scale or self.eanet.config.scale
        self.check_inputs(low, scale, tile, overlap)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        low = low.to(self.device, self.eanet.dtype) * 2 - 1
        height, width = low.shape[-2:]
        multiple = self.eanet.multiple

        # pad (reflect) to a multiple of the model's stride and at least one tile per side
        tile_h, tile_w = min(tile, height), min(tile, width)
        tile_h, tile_w = -(-tile_h // multiple) * multiple, -(-tile_w // multiple) * multiple
        pad_h, pad_w = max(tile_h - height, 0), max(tile_w - width, 0)
        padded = F.pad(low, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else low
        out = process_in_tiles(padded, tile_h, tile_w, overlap,
                               lambda piece: self.upscale_tile(piece, num_inference_steps, generator), scale)
        images = (out[..., : height * scale, : width * scale] + 1) / 2
        images = images.clamp(0, 1)
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).cpu().numpy()
        elif output_type != "pt":
            raise ValueError(f"output_type must be pt or np, got {output_type!r}")
        return EDiffSRPipelineOutput(images=images)

"""Text2EarthPipeline: text + ground sample distance -> image of any size, tiled scenes and
inpainting.

    pipe = Text2EarthPipeline.from_pretrained("src/earthsynth/assets/text2earth")
    image = pipe("NEON airborne RGB orthophoto, dense vegetation", gsd=0.2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    scene = pipe.generate_scene("...", gsd=0.4, width=512, height=256).images[0]
    edited = pipe.inpaint("...", image=photo, mask_image=mask, gsd=0.1).images[0]

The GSD (metres per pixel) is a condition of its own (resolution guidance): None means
unknown. Guidance pushes away from "no text, no GSD"; with `gsd_guidance_scale` set, text
and resolution are guided separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.conditioning.text import TextConditioner
from earthsynth.generation.common import (
    combine_guidance,
    guidance_passes,
    images_for_output,
    initial_noise,
    process_in_tiles,
)


@dataclass
class Text2EarthPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) in [0, 1], or (B, 3, H, W) in [0, 1]


def as_list(value, batch: int, name: str) -> list:
    """One value for every image, or a list of exactly one per image."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{len(value)} {name} values for {batch} prompts")
        return list(value)
    return [value] * batch


def image_tensor(image, name: str) -> torch.Tensor:
    """PIL image, (H, W, 3) uint8 or float [0, 1] array, or (3, H, W) / (B, 3, H, W) tensor
    in [0, 1] -> (B, 3, H, W) float in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        tensor = image.float()
        tensor = tensor[None] if tensor.ndim == 3 else tensor
    else:
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"{name} must be an RGB image (H, W, 3), got shape {array.shape}")
        array = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"{name} must have 3 channels, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError(f"{name} values must be finite and in [0, 1]")
    return tensor * 2 - 1


def mask_tensor(mask, name: str = "mask_image") -> torch.Tensor:
    """PIL / (H, W) array / tensor, nonzero = regenerate -> (1, 1, H, W) float in {0, 1}."""
    if isinstance(mask, torch.Tensor):
        tensor = mask.float()
    else:
        array = np.asarray(mask.convert("L") if hasattr(mask, "convert") else mask)
        tensor = torch.from_numpy(array.astype(np.float32))
    while tensor.ndim < 4:
        tensor = tensor[None]
    if tensor.shape[:2] != (1, 1):
        raise ValueError(f"{name} must be one (H, W) mask, got shape {tuple(tensor.shape)}")
    return (tensor > 0.5 * tensor.max().clamp(min=1e-6)).float()


class MetadataPipelineBase(DiffusionPipeline):
    """What text2earth and crsdiff share: the text encoder (named by folder, not saved with
    the checkpoint), the checks on size and guidance, and the denoising loop with optional
    tiling and inpainting. Subclasses give `model_output(latents, t, conditions)`."""

    def __init__(self):
        super().__init__()
        self._text_conditioner = None

    @property
    def text_conditioner(self) -> TextConditioner:
        if self._text_conditioner is None:
            self._text_conditioner = TextConditioner.from_pretrained(self.config.text_model or None)
        return self._text_conditioner

    def set_text_conditioner(self, conditioner: TextConditioner) -> None:
        self._text_conditioner = conditioner

    def check_size(self, height: int, width: int, tile: int | None, overlap: int) -> None:
        stride = self.unet.stride
        if height % stride or width % stride or height < stride or width < stride:
            raise ValueError(f"height and width must be positive multiples of {stride}, got {height}x{width}")
        if tile is not None:
            if tile % stride or tile < stride:
                raise ValueError(f"tile must be a positive multiple of {stride}, got {tile}")
            if not 0 <= overlap < tile or overlap % stride:
                raise ValueError(f"overlap must be a multiple of {stride} in [0, tile), got {overlap}")

    @staticmethod
    def check_guidance(num_inference_steps: int, guidance_scale: float, condition_scale: float | None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0 or (condition_scale is not None and condition_scale < 0):
            raise ValueError("guidance scales must be >= 0")

    def encode_prompts(self, prompts: list[str], negatives: list[str], max_length: int = 32):
        """Token embeddings and masks of the prompts and of the negative prompts, one call so
        both have the same length."""
        text = self.text_conditioner.encode(prompts + negatives, max_length=max_length)
        tokens, mask = text.tokens.to(self.device, self.unet.dtype), text.mask.to(self.device)
        batch = len(prompts)
        return (tokens[:batch], mask[:batch]), (tokens[batch:], mask[batch:])

    def denoise(self, conditions, batch: int, height: int, width: int, num_inference_steps: int,
                guidance_scale: float, condition_scale: float | None, generator, tile: int | None, overlap: int,
                known: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The sampling loop -> (B, 3, H, W) in [-1, 1].

        conditions: what `model_output` needs for the stacked guidance passes.
        tile: run the model on overlapping tiles and blend their outputs at every step
            (memory bounded by the tile, no seams). known / keep: inpainting; where keep is 1
            the result follows `known` (re-noised to the current step), elsewhere it is generated.
        """
        passes = len(guidance_passes(guidance_scale, condition_scale))

        def guided(latents, t):
            out = self.model_output(self.scheduler.scale_model_input(latents, t).repeat(passes, 1, 1, 1), t,
                                    conditions)
            return combine_guidance(out.chunk(passes), guidance_scale, condition_scale)

        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.unet.config.out_channels, height, width)
        latents = initial_noise(shape, generator, self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        if known is not None:
            known_noise = initial_noise(shape, generator, self.device, self.unet.dtype)
            known = known.to(self.device, self.unet.dtype)
            keep = keep.to(self.device, self.unet.dtype)
            latents = keep * self.scheduler.add_noise(known, known_noise, timesteps[:1]) + (1 - keep) * latents
        for i, t in enumerate(self.progress_bar(timesteps)):
            if tile is not None and (height > tile or width > tile):
                output = process_in_tiles(latents, min(tile, height), min(tile, width), overlap,
                                          lambda piece, t=t: guided(piece, t)).to(latents.dtype)
            else:
                output = guided(latents, t)
            latents = self.scheduler.step(output, t, latents).prev_sample
            if known is not None:
                if i + 1 < len(timesteps):
                    target = self.scheduler.add_noise(known, known_noise, timesteps[i + 1:i + 2])
                else:
                    target = known
                latents = keep * target + (1 - keep) * latents
        return latents


class Text2EarthPipeline(MetadataPipelineBase):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # "" = the bundled MiniLM; the text encoder is not part of the checkpoint
        self.register_to_config(text_model=text_model)

    # 1. inputs
    def check_inputs(self, prompts, gsds, height, width, num_inference_steps, guidance_scale, gsd_guidance_scale,
                     tile, overlap):
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        for g in gsds:
            if g is not None and not (isinstance(g, (int, float)) and math.isfinite(g) and g > 0):
                raise ValueError(f"gsd must be a positive number of metres per pixel or None, got {g!r}")
        self.check_size(height, width, tile, overlap)
        self.check_guidance(num_inference_steps, guidance_scale, gsd_guidance_scale)

    # 2. conditions, stacked in the order of the guidance passes
    def encode_conditions(self, prompts, negatives, gsds, guidance_scale, gsd_guidance_scale):
        (text, mask), (null_text, null_mask) = self.encode_prompts(prompts, negatives)
        values = torch.tensor([[math.nan if g is None else float(g)] for g in gsds], dtype=torch.float32)
        keep, drop = torch.zeros_like(values, dtype=torch.bool), torch.ones_like(values, dtype=torch.bool)
        choices = {"all": (text, mask, keep), "text": (text, mask, drop), "none": (null_text, null_mask, drop)}
        stacked = [choices[name] for name in guidance_passes(guidance_scale, gsd_guidance_scale)]
        tokens, masks, drops = (torch.cat(parts) for parts in zip(*stacked))
        return {"tokens": tokens, "mask": masks, "scalars": values.repeat(len(stacked), 1), "drop": drops}

    def model_output(self, latents, t, conditions):
        return self.unet(latents, t, conditions["tokens"], conditions["mask"], conditions["scalars"],
                         conditions["drop"])

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        gsd: float | None | list[float | None] = None,
        height: int = 64,
        width: int = 64,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        gsd_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        tile: int | None = None,
        overlap: int = 16,
        image=None,
        mask_image=None,
    ) -> Text2EarthPipelineOutput:
        # 1. check the request
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = len(prompts)
        gsds = as_list(gsd, batch, "gsd")
        negatives = as_list(negative_prompt or "", batch, "negative_prompt")
        known = keep = None
        if image is not None or mask_image is not None:
            if image is None or mask_image is None:
                raise ValueError("inpainting needs both image and mask_image")
            known = image_tensor(image, "image")
            height, width = known.shape[-2:]
            keep = 1 - mask_tensor(mask_image)
            if keep.shape[-2:] != known.shape[-2:]:
                raise ValueError(f"mask_image is {tuple(keep.shape[-2:])}, image is {tuple(known.shape[-2:])}")
            known = known.expand(batch, -1, -1, -1) if known.shape[0] == 1 else known
            if known.shape[0] != batch:
                raise ValueError(f"{known.shape[0]} images for {batch} prompts")
        self.check_inputs(prompts, gsds, height, width, num_inference_steps, guidance_scale, gsd_guidance_scale,
                          tile, overlap)

        # 2. text and resolution, with the dropped versions guidance needs
        conditions = self.encode_conditions(prompts, negatives, gsds, guidance_scale, gsd_guidance_scale)

        # 3-4. noise and the denoising loop (tiled and/or inpainting when asked)
        images = self.denoise(conditions, batch, height, width, num_inference_steps, guidance_scale,
                              gsd_guidance_scale, generator, tile, overlap, known, keep)

        # 5. output
        self.maybe_free_model_hooks()
        return Text2EarthPipelineOutput(images=images_for_output(images, output_type))

    def generate_scene(self, prompt: str | list[str], gsd=None, width: int = 256, height: int = 256, tile: int = 64,
                       overlap: int = 16, **kwargs) -> Text2EarthPipelineOutput:
        """An image larger than the model was trained on: overlapping `tile` x `tile` windows
        denoised together, their outputs blended at every step."""
        return self(prompt, gsd=gsd, height=height, width=width, tile=tile, overlap=overlap, **kwargs)

    def inpaint(self, prompt: str | list[str], image, mask_image, gsd=None, **kwargs) -> Text2EarthPipelineOutput:
        """Regenerate the masked region (mask nonzero) of a real image; the rest is kept."""
        return self(prompt, gsd=gsd, image=image, mask_image=mask_image, **kwargs)

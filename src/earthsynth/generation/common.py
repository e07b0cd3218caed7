"""Small helpers the generation families share."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def gsd_values(gsds: list[float | None]) -> torch.Tensor:
    """(B, 1) float tensor, NaN where the ground sample distance is unknown."""
    return torch.tensor([[np.nan if g is None else float(g)] for g in gsds], dtype=torch.float32)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` pixels covering `length`, neighbours sharing >= `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def blend_ramp(size: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """(size,) weights: 1 inside, rising / falling linearly over `overlap` where a neighbour is."""
    weights = torch.ones(size)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    if overlap and not at_start:
        weights[:overlap] = ramp
    if overlap and not at_end:
        weights[size - overlap:] = ramp.flip(0)
    return weights


def process_in_tiles(source: torch.Tensor, tile_h: int, tile_w: int, overlap: int,
                     process: Callable[[torch.Tensor], torch.Tensor], scale: int = 1) -> torch.Tensor:
    """`process` on overlapping tiles of the last two axes of `source`, its outputs (`scale`
    times the tile's size) blended with linear ramps where tiles overlap -> float32 output of
    `scale` times the source's height and width. Memory is bounded by the tile, not the scene.
    Tiles go row by row, so a seeded `process` draws its noise in a fixed order."""
    height, width = source.shape[-2:]
    out = None
    weight = torch.zeros(height * scale, width * scale, device=source.device)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    for y in ys:
        for x in xs:
            piece = process(source[..., y:y + tile_h, x:x + tile_w]).float()
            if out is None:
                out = torch.zeros(*piece.shape[:-2], height * scale, width * scale, device=piece.device)
            ramp_y = blend_ramp(tile_h * scale, overlap * scale, y == ys[0], y == ys[-1]).to(piece.device)
            ramp_x = blend_ramp(tile_w * scale, overlap * scale, x == xs[0], x == xs[-1]).to(piece.device)
            w = ramp_y[:, None] * ramp_x[None, :]
            region = (..., slice(y * scale, (y + tile_h) * scale), slice(x * scale, (x + tile_w) * scale))
            out[region] += piece * w
            weight[y * scale:(y + tile_h) * scale, x * scale:(x + tile_w) * scale] += w
    return out / weight.to(out.device)


def initial_noise(shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
    """Standard normal noise of `shape`; with a list of generators, one per image, so an image
    does not depend on the batch it is drawn in."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} images")
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generator])
    else:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device, dtype)


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
    if not torch.isfinite(tensor).all() or tensor.min() < 0:
        raise ValueError(f"{name} values must be finite and >= 0 (nonzero = draw again)")
    return (tensor > 0.5 * tensor.max().clamp(min=1e-6)).float()


class KnownRegion:
    """RePaint-style inpainting on the grid the UNet works on (pixels, or scaled latents with a
    VAE): where keep is 1 the sample is replaced by `known` noised to the level of the step
    it is at, so the model draws the rest in agreement with it; after the last step it is
    `known` itself. noise: drawn once, as the starting noise is."""

    def __init__(self, scheduler, known: torch.Tensor, keep: torch.Tensor, noise: torch.Tensor, timesteps):
        self.scheduler, self.known, self.keep, self.noise, self.timesteps = scheduler, known, keep, noise, timesteps

    def start(self, latents: torch.Tensor) -> torch.Tensor:
        return self.keep * self.scheduler.add_noise(self.known, self.noise, self.timesteps[:1]) + (1 - self.keep) * latents

    def after_step(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        if step + 1 < len(self.timesteps):
            target = self.scheduler.add_noise(self.known, self.noise, self.timesteps[step + 1:step + 2])
        else:
            target = self.known
        return self.keep * target + (1 - self.keep) * latents


def feathered_composite(known: torch.Tensor, generated: torch.Tensor, keep: torch.Tensor, band: int) -> torch.Tensor:
    """known where keep is 1, generated inside the mask, and a linear cross-fade over `band`
    pixels on the generated side of the border (keep (.., 1, H, W) in {0, 1})."""
    if band <= 1:
        return keep * known + (1 - keep) * generated
    weight = keep.float()
    for _ in range(band):  # grows the kept side by one pixel per pass, fading as it goes
        grown = torch.nn.functional.max_pool2d(weight, 3, stride=1, padding=1)
        weight = torch.maximum(weight, grown - 1.0 / band)
    return weight * known + (1 - weight) * generated


def images_for_output(images: torch.Tensor, output_type: str):
    """(B, 3, H, W) in [-1, 1] -> PIL images ("pil"), (B, H, W, 3) numpy in [0, 1] ("np") or
    (B, 3, H, W) tensors in [0, 1] ("pt")."""
    images = images.float().clamp(-1, 1)
    if output_type == "pil":
        return to_pil(images)
    if output_type == "np":
        return ((images + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "pt":
        return (images + 1) / 2
    raise ValueError(f"output_type must be pil, np or pt, got {output_type!r}")


def combine_guidance(outputs: tuple[torch.Tensor, ...], guidance_scale: float,
                     condition_scale: float | None) -> torch.Tensor:
    """Classifier-free guidance over the passes a pipeline ran, in this order:
    (all conditions), then (text only) when `condition_scale` is set, then (nothing) when
    any guidance is on. With a condition scale, text and the other condition are guided
    separately: e = e(-) + s_text (e(text) - e(-)) + s_cond (e(text, cond) - e(text))."""
    if len(outputs) == 1:
        return outputs[0]
    if condition_scale is None:
        cond, uncond = outputs
        return uncond + guidance_scale * (cond - uncond)
    cond, text_only, uncond = outputs
    return uncond + guidance_scale * (text_only - uncond) + condition_scale * (cond - text_only)


def guidance_passes(guidance_scale: float, condition_scale: float | None) -> list[str]:
    """Which passes combine_guidance needs: "all", "text" and "none", in its order."""
    passes = ["all"]
    if condition_scale is not None:
        passes.append("text")
    if guidance_scale != 1.0 or condition_scale is not None:
        passes.append("none")
    return passes


# --- diffusers' pipeline conventions, shared by the five pipelines -------------------------
# (StableDiffusionPipeline's behaviour: num_images_per_prompt, latents=, callback_on_step_end,
# return_dict), written once here instead of once per pipeline.


def per_image(values: list, num_images_per_prompt: int) -> list:
    """Each prompt's value repeated num_images_per_prompt times, prompt by prompt (diffusers'
    order: [p0, p0, p1, p1] for two images per prompt)."""
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    return [value for value in values for _ in range(num_images_per_prompt)]


def repeat_per_image(tensor: torch.Tensor | None, num_images_per_prompt: int):
    """(B, ...) -> (B * n, ...), each prompt's rows together as diffusers orders them."""
    return None if tensor is None else tensor.repeat_interleave(num_images_per_prompt, dim=0)


def prepare_latents(shape: tuple[int, ...], generator, device, dtype, init_noise_sigma: float,
                    latents: torch.Tensor | None = None) -> torch.Tensor:
    """The starting latents: the caller's `latents` (checked against `shape`) or fresh noise,
    scaled by the scheduler's initial sigma as diffusers does for both."""
    if latents is None:
        latents = initial_noise(shape, generator, device, dtype)
    else:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        latents = latents.to(device, dtype)
    return latents * init_noise_sigma


def callback_tensor_names(callback, tensor_inputs: list[str] | None, allowed: list[str]) -> list[str]:
    """The tensors `callback_on_step_end` is given, checked against what the pipeline offers.
    A diffusers PipelineCallback brings its own list."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = callback.tensor_inputs
    names = list(tensor_inputs or [])
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not offered; choose from {allowed}")
    if callback is not None and not callable(callback):
        raise ValueError("callback_on_step_end must be callable")
    return names


def step_callback(pipe, callback, names: list[str], step: int, timestep, values: dict) -> dict:
    """diffusers' `callback_on_step_end(pipe, step, timestep, {name: tensor})`: the tensors the
    callback returns replace the pipeline's own (so a callback can change the latents)."""
    if callback is None:
        return values
    returned = callback(pipe, step, timestep, {name: values[name] for name in names}) or {}
    return {**values, **{name: value for name, value in returned.items() if name in values}}


def check_scale(name: str, value, allow_none: bool = False) -> None:
    """A guidance scale: a finite number >= 0 (or None where that means "off")."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


class TextModelMixin:
    """The text encoder of a pipeline: named by its folder in the pipeline's config
    (`text_model`, "" = the bundled MiniLM) and loaded on first use, because it is not saved
    with the checkpoint (the bundled one is 90 MB). Training hands its own in with
    set_text_conditioner."""

    _text_conditioner = None

    @property
    def text_conditioner(self):
        if self._text_conditioner is None:
            from earthsynth.conditioning.text import TextConditioner

            self._text_conditioner = TextConditioner.from_pretrained(self.config.text_model or None)
        return self._text_conditioner

    def set_text_conditioner(self, conditioner) -> None:
        self._text_conditioner = conditioner

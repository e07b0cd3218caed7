"""CRSDiffPipeline: text + metadata + any subset of control maps -> image.

    pipe = CRSDiffPipeline.from_pretrained("src/earthsynth/assets/crsdiff")
    maps = control_maps_from_rgb(np.asarray(photo))          # canny, sketch, content, landcover
    image = pipe("NEON airborne RGB orthophoto, dense vegetation",
                 metadata={"gsd": 0.1, "lat": 29.7, "lon": -82.0},
                 controls={"canny": maps["canny"]}, control_scales={"canny": 1.0},
                 generator=torch.Generator().manual_seed(0)).images[0]

metadata: any subset of year, month, day (or date), gsd (m/px), cloud_cover (percent),
lat, lon; missing fields take their learned null. controls: name -> map of (C, H, W) or
(H, W) values in [0, 1] (uint8 is divided by 255); names and channels in
`earthsynth.data.control_tiles.CONTROL_CHANNELS`. The maps set the image size.
diffusers' conventions (num_images_per_prompt, latents=, prompt_embeds with their masks from
encode_prompt, callback_on_step_end, output_type="latent", return_dict) are described in
earthsynth.generation.metadata_pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

from earthsynth.conditioning.control import landcover_onehot
from earthsynth.conditioning.scalars import SCALAR_FIELDS, scalar_values
from earthsynth.generation.common import check_scale, guidance_passes, repeat_per_image
from earthsynth.generation.metadata_pipeline import (
    MetadataPipelineBase,
    as_list,
    metadata_conditions,
)

METADATA_KEYS = (*SCALAR_FIELDS, "date")


@dataclass
class CRSDiffPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) in [0, 1], or (B, 3, H, W) in [0, 1]


def map_tensor(name: str, value, channels: int, batch: int) -> torch.Tensor:
    """A user's control map -> (B, C, H, W) float in [0, 1], NaN where the map has no data (a
    DEM smaller than the scene): the map conditions only where it has data. A land-cover map
    may also be an (H, W) integer array of class codes (earthsynth.conditioning.control.LANDCOVER_CLASSES)."""
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    given = tuple(tensor.shape)
    if name == "landcover" and tensor.ndim == 2 and not tensor.is_floating_point():
        try:
            tensor = torch.from_numpy(landcover_onehot(tensor.numpy(), channels))
        except ValueError as err:
            raise ValueError(f"control map 'landcover': {err}") from None
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    tensor = tensor.float()
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim == 3 and tensor.shape[0] != channels and tensor.shape[-1] == channels:
        tensor = tensor.permute(2, 0, 1)  # (H, W, C) images
    if tensor.ndim == 3:
        tensor = tensor[None].expand(batch, -1, -1, -1)
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        raise ValueError(f"control map {name!r} must have {channels} channel(s) as (C, H, W) or (H, W), "
                         f"got shape {given}")
    if tensor.shape[0] != batch:
        raise ValueError(f"control map {name!r} has {tensor.shape[0]} maps for {batch} prompts")
    known = ~torch.isnan(tensor)
    if not known.any():
        raise ValueError(f"control map {name!r} has no data (all NaN)")
    values = tensor[known]
    if not torch.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f"control map {name!r}: values must be in [0, 1] (NaN where the map has no data)")
    return tensor


def crsdiff_conditions(control_adapter, text, null_text, values: torch.Tensor, maps: Mapping,
                       map_scales: Mapping, drop_text: torch.Tensor, drop_fields: torch.Tensor,
                       drop_maps: Mapping) -> dict:
    """The UNet's conditions for a batch and its drop pattern, in training (ConditionDropout's
    draw) and at sampling (the guidance passes).

    text, null_text: (tokens, mask) of the prompts and of what replaces a dropped text;
    values: (B, F) metadata in the UNet's scalar_fields order, NaN = unknown;
    maps: name -> (B, C, H, W) in [0, 1], NaN where a map has no data (its residual fades to
    zero there, as where the map is dropped); map_scales: name -> (B,) weight (0 where a sample
    has no such map); drop_text (B,), drop_fields (B, F), drop_maps name -> (B,) bool.
    The control residuals ("down", "mid") are None when no sample keeps a map.
    """
    conditions = metadata_conditions(text, null_text, values, drop_text, drop_fields)
    device = conditions["tokens"].device
    scales = {name: torch.as_tensor(map_scales[name], dtype=torch.float32) * ~drop_maps[name] for name in maps}
    kept = {name: scale for name, scale in scales.items() if scale.any()}
    conditions["down"] = conditions["mid"] = None
    if kept:
        dtype = next(control_adapter.parameters()).dtype
        inputs, weights = {}, {}
        for name, scale in kept.items():
            weights[name], inputs[name] = scale.to(device, dtype), maps[name].to(device, dtype)
            data = ~torch.isnan(inputs[name]).any(1, keepdim=True)  # (B, 1, H, W): where the map has data
            if not data.all():  # a partial map: a weight per pixel, zero (and a zero input) where it has none
                weights[name] = weights[name].view(-1, 1, 1, 1) * data.to(dtype)
                inputs[name] = inputs[name].nan_to_num(0.0)
        conditions["down"], conditions["mid"] = control_adapter(inputs, weights)
    return conditions


class CRSDiffPipeline(MetadataPipelineBase):
    """Guidance pushes away from "no text, no metadata, no maps"; with
    `condition_guidance_scale`, text and (metadata + maps) are guided separately."""

    model_cpu_offload_seq = "control_adapter->unet->vae"

    def __init__(self, unet, control_adapter, scheduler, vae=None, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, control_adapter=control_adapter, scheduler=scheduler, vae=vae)
        self.register_to_config(text_model=text_model)

    @property
    def control_names(self) -> list[str]:
        return list(self.control_adapter.config.map_channels)

    # 1. inputs
    def check_metadata(self, metadata: list[Mapping]) -> torch.Tensor:
        for item in metadata:
            if not isinstance(item, Mapping):
                raise ValueError(f"metadata must be a dict of fields, got {type(item).__name__}")
            unknown = [k for k in item if k not in METADATA_KEYS]
            if unknown:
                raise ValueError(f"unknown metadata field(s) {unknown}; known: {', '.join(METADATA_KEYS)}")
        try:
            values = scalar_values(metadata, self.unet.config.scalar_fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bad metadata value ({err})") from None
        self.unet.scalar_embedding.check_values(values)  # ranges: month 1-12, lat -90..90, gsd > 0...
        return values

    def prepare_controls(self, controls, control_scales, batch: int):
        """-> (maps name -> (B, C, H, W), scales name -> float) after checking names, channels, sizes."""
        controls, control_scales = dict(controls or {}), dict(control_scales or {})
        known = self.control_names
        unknown = [n for n in list(controls) + list(control_scales) if n not in known]
        if unknown:
            raise ValueError(f"unknown control map(s) {unknown}; known: {', '.join(known)}")
        channels = self.control_adapter.config.map_channels
        maps = {name: map_tensor(name, value, channels[name], batch) for name, value in controls.items()}
        sizes = {name: tuple(m.shape[-2:]) for name, m in maps.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"control maps differ in size: {sizes}")
        for name, scale in control_scales.items():
            if name not in maps:
                raise ValueError(f"a control scale for {name!r}, but no {name!r} map")
            check_scale(f"control scale for {name!r}", scale)
        return maps, {name: float(control_scales.get(name, 1.0)) for name in maps}

    def model_output(self, latents, t, conditions, cross_attention_kwargs=None):
        return self.unet(latents, t, conditions["tokens"], conditions["mask"], conditions["scalars"],
                         conditions["drop"], down_residuals=conditions["down"], mid_residual=conditions["mid"],
                         cross_attention_kwargs=cross_attention_kwargs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        metadata: Mapping | list[Mapping] | None = None,
        controls: Mapping | None = None,
        control_scales: Mapping | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        condition_guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ) -> CRSDiffPipelineOutput | tuple:
        # 1. check the request
        callback_names = self.check_common_inputs(
            prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask, num_inference_steps,
            {"guidance_scale": guidance_scale, "condition_scale": condition_guidance_scale},
            output_type, callback_on_step_end, callback_on_step_end_tensor_inputs, num_images_per_prompt)
        batch = self.batch_size(prompt, prompt_embeds)
        values = self.check_metadata(as_list(metadata or {}, batch, "metadata"))
        maps, scales = self.prepare_controls(controls, control_scales, batch)
        if maps:
            map_height, map_width = next(iter(maps.values())).shape[-2:]
            if (height or map_height, width or map_width) != (map_height, map_width):
                raise ValueError(f"control maps are {map_height}x{map_width}, the image is asked {height}x{width}")
            height, width = map_height, map_width
        height, width = height or self.trained_size, width or self.trained_size
        self.check_size(height, width)
        self._guidance_scale = guidance_scale

        # 2. text, metadata and control residuals, stacked with the dropped versions guidance needs
        # (the maps do not change between steps: their residuals are computed once per call)
        passes = guidance_passes(guidance_scale, condition_guidance_scale)
        embeds = self.encode_prompt(prompt, self._execution_device, num_images_per_prompt, "none" in passes,
                                    negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                                    negative_prompt_attention_mask)
        text, null_text, drop_text, drop_rest = self.stacked_text(passes, *embeds)
        values = repeat_per_image(values, num_images_per_prompt).repeat(len(passes), 1)
        maps = {name: repeat_per_image(m, num_images_per_prompt).repeat(len(passes), 1, 1, 1)
                for name, m in maps.items()}
        conditions = crsdiff_conditions(
            self.control_adapter, text, null_text, values, maps,
            {name: torch.full((len(drop_rest),), scales[name]) for name in maps}, drop_text,
            drop_rest[:, None].expand_as(values), {name: drop_rest for name in maps})

        # 3-4. noise and the denoising loop, on the latent grid (the adapter brings the maps to it)
        total = batch * num_images_per_prompt
        f = self.vae_scale_factor
        samples = self.denoise(conditions, (total, self.unet.config.out_channels, height // f, width // f),
                               num_inference_steps, condition_guidance_scale, generator, latents,
                               cross_attention_kwargs=cross_attention_kwargs, callback=callback_on_step_end,
                               callback_names=callback_names)

        # 5. output
        return self.finish(samples, output_type, return_dict, CRSDiffPipelineOutput)

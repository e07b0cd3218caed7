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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

from earthsynth.conditioning.control import landcover_onehot
from earthsynth.conditioning.scalars import SCALAR_FIELDS, scalar_values
from earthsynth.generation.common import guidance_passes, images_for_output
from earthsynth.generation.text2earth.pipeline import MetadataPipelineBase, as_list

METADATA_KEYS = (*SCALAR_FIELDS, "date")


@dataclass
class CRSDiffPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) in [0, 1], or (B, 3, H, W) in [0, 1]


def map_tensor(name: str, value, channels: int, batch: int) -> torch.Tensor:
    """A user's control map -> (B, C, H, W) float in [0, 1]. A land-cover map may also be
    an (H, W) integer array of class codes (earthsynth.conditioning.control.LANDCOVER_CLASSES)."""
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
    if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
        raise ValueError(f"control map {name!r}: values must be finite and in [0, 1]")
    return tensor


class CRSDiffPipeline(MetadataPipelineBase):
    """Guidance pushes away from "no text, no metadata, no maps"; with
    `condition_guidance_scale`, text and (metadata + maps) are guided separately."""

    model_cpu_offload_seq = "control_adapter->unet"

    def __init__(self, unet, control_adapter, scheduler, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, control_adapter=control_adapter, scheduler=scheduler)
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
            if not isinstance(scale, (int, float)) or scale < 0:
                raise ValueError(f"control scale for {name!r} must be a number >= 0, got {scale!r}")
        return maps, {name: float(control_scales.get(name, 1.0)) for name in maps}

    # 2. conditions, stacked in the order of the guidance passes
    def encode_conditions(self, prompts, negatives, values, maps, scales, guidance_scale, condition_scale):
        (text, mask), (null_text, null_mask) = self.encode_prompts(prompts, negatives)
        keep, drop = torch.zeros_like(values, dtype=torch.bool), torch.ones_like(values, dtype=torch.bool)
        stacked = [{"all": (text, mask, keep), "text": (text, mask, drop), "none": (null_text, null_mask, drop)}[name]
                   for name in guidance_passes(guidance_scale, condition_scale)]
        conditions = {"tokens": torch.cat([s[0] for s in stacked]), "mask": torch.cat([s[1] for s in stacked]),
                      "scalars": values.repeat(len(stacked), 1), "drop": torch.cat([s[2] for s in stacked]),
                      "down": None, "mid": None}
        if maps:
            # the maps do not change between steps: their residuals are computed once per call,
            # and only the first pass (all conditions) gets them
            down, mid = self.control_adapter({n: m.to(self.device, self.unet.dtype) for n, m in maps.items()},
                                             scales)
            padding = len(stacked) - 1

            def first_pass_only(residual):
                return torch.cat([residual] + [torch.zeros_like(residual)] * padding)

            conditions["down"] = [first_pass_only(r) for r in down]
            conditions["mid"] = first_pass_only(mid)
        return conditions

    def model_output(self, latents, t, conditions):
        return self.unet(latents, t, conditions["tokens"], conditions["mask"], conditions["scalars"],
                         conditions["drop"], down_residuals=conditions["down"], mid_residual=conditions["mid"])

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
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
    ) -> CRSDiffPipelineOutput:
        # 1. check the request
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        batch = len(prompts)
        negatives = as_list(negative_prompt or "", batch, "negative_prompt")
        values = self.check_metadata(as_list(metadata or {}, batch, "metadata"))
        maps, scales = self.prepare_controls(controls, control_scales, batch)
        if maps:
            map_height, map_width = next(iter(maps.values())).shape[-2:]
            if (height or map_height, width or map_width) != (map_height, map_width):
                raise ValueError(f"control maps are {map_height}x{map_width}, the image is asked {height}x{width}")
            height, width = map_height, map_width
        height, width = height or self.unet.config.sample_size, width or self.unet.config.sample_size
        self.check_size(height, width, None, 0)
        self.check_guidance(num_inference_steps, guidance_scale, condition_guidance_scale)

        # 2. text, metadata and control residuals, with the dropped versions guidance needs
        conditions = self.encode_conditions(prompts, negatives, values, maps, scales, guidance_scale,
                                            condition_guidance_scale)

        # 3-4. noise and the denoising loop
        images = self.denoise(conditions, batch, height, width, num_inference_steps, guidance_scale,
                              condition_guidance_scale, generator, None, 0)

        # 5. output
        self.maybe_free_model_hooks()
        return CRSDiffPipelineOutput(images=images_for_output(images, output_type))

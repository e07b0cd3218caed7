"""Text2EarthPipeline: text + ground sample distance -> image of any size, tiled scenes and
inpainting.

    pipe = Text2EarthPipeline.from_pretrained("src/earthsynth/assets/text2earth")
    image = pipe("NEON airborne RGB orthophoto, dense vegetation", gsd=0.2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    images = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_images_per_prompt=4).images
    scene = pipe.generate_scene("...", gsd=0.4, width=512, height=256).images[0]
    edited = pipe.inpaint("...", image=photo, mask_image=mask, gsd=0.1).images[0]

The GSD (metres per pixel) is a condition of its own (resolution guidance): None means
unknown. Guidance pushes away from "no text, no GSD"; with `gsd_guidance_scale` set, text
and resolution are guided separately. diffusers' conventions (num_images_per_prompt,
latents=, prompt_embeds with their masks from encode_prompt, callback_on_step_end,
output_type="latent", return_dict) are described in earthsynth.generation.metadata_pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils import BaseOutput

from earthsynth.generation.common import (
    gsd_values,
    guidance_passes,
    image_tensor,
    mask_tensor,
    per_image,
    repeat_per_image,
)
from earthsynth.generation.metadata_pipeline import (
    MetadataPipelineBase,
    as_list,
    metadata_conditions,
)


@dataclass
class Text2EarthPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) in [0, 1], or (B, 3, H, W) in [0, 1]


def text2earth_conditions(text, null_text, gsds: list, drop_text: torch.Tensor, drop_gsd: torch.Tensor) -> dict:
    """The UNet's conditions for a batch and its drop pattern, in training (ConditionDropout's
    draw) and at sampling (the guidance passes).

    text, null_text: (tokens, mask) of the prompts and of what replaces a dropped text;
    gsds: metres per pixel or None (unknown) per image; drop_text, drop_gsd: (B,) bool.
    """
    return metadata_conditions(text, null_text, gsd_values(gsds), drop_text, drop_gsd[:, None])


class Text2EarthPipeline(MetadataPipelineBase):
    def __init__(self, unet, scheduler, vae=None, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        # "" = the bundled MiniLM; the text encoder is not part of the checkpoint
        self.register_to_config(text_model=text_model)

    # 1. inputs
    def check_inputs(self, prompt, gsd, height, width, num_inference_steps, guidance_scale, gsd_guidance_scale,
                     tile, overlap, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                     prompt_attention_mask=None, negative_prompt_attention_mask=None, output_type="pil",
                     callback_on_step_end=None, callback_on_step_end_tensor_inputs=None) -> list[str]:
        names = self.check_common_inputs(
            prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask, num_inference_steps,
            {"guidance_scale": guidance_scale, "condition_scale": gsd_guidance_scale,
             "condition_scale_name": "gsd_guidance_scale"},
            output_type, callback_on_step_end, callback_on_step_end_tensor_inputs)
        for g in as_list(gsd, self.batch_size(prompt, prompt_embeds), "gsd"):
            if g is not None and not (isinstance(g, (int, float)) and math.isfinite(g) and g > 0):
                raise ValueError(f"gsd must be a positive number of metres per pixel or None, got {g!r}")
        self.check_size(height, width, tile, overlap)
        return names

    def model_output(self, latents, t, conditions, cross_attention_kwargs=None):
        return self.unet(latents, t, conditions["tokens"], conditions["mask"], conditions["scalars"],
                         conditions["drop"], cross_attention_kwargs=cross_attention_kwargs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
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
    ) -> Text2EarthPipelineOutput | tuple:
        """gsd: metres per pixel (None = unknown), one for all prompts or one per prompt.
        tile / overlap: see generate_scene; image / mask_image: see inpaint."""
        # 1. check the request
        callback_names = self.check_inputs(
            prompt, gsd, height, width, num_inference_steps, guidance_scale, gsd_guidance_scale, tile, overlap,
            negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask, output_type, callback_on_step_end, callback_on_step_end_tensor_inputs)
        batch = self.batch_size(prompt, prompt_embeds)
        gsds = per_image(as_list(gsd, batch, "gsd"), num_images_per_prompt)
        known = keep = None
        if image is not None or mask_image is not None:
            if image is None or mask_image is None:
                raise ValueError("inpainting needs both image and mask_image")
            known = image_tensor(image, "image")
            height, width = known.shape[-2:]
            self.check_size(height, width, tile, overlap)
            keep = 1 - mask_tensor(mask_image)
            if keep.shape[-2:] != known.shape[-2:]:
                raise ValueError(f"mask_image is {tuple(keep.shape[-2:])}, image is {tuple(known.shape[-2:])}")
            if known.shape[0] not in (1, batch):
                raise ValueError(f"{known.shape[0]} images for {batch} prompts")
            known = known.expand(batch, -1, -1, -1) if known.shape[0] == 1 else known
            known = repeat_per_image(known, num_images_per_prompt)
        self._guidance_scale = guidance_scale

        # 2. text and resolution, stacked with the dropped versions guidance needs
        passes = guidance_passes(guidance_scale, gsd_guidance_scale)
        embeds = self.encode_prompt(prompt, self._execution_device, num_images_per_prompt, "none" in passes,
                                    negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                                    negative_prompt_attention_mask)
        text, null_text, drop_text, drop_gsd = self.stacked_text(passes, *embeds)
        conditions = text2earth_conditions(text, null_text, gsds * len(passes), drop_text, drop_gsd)

        # 3-4. noise and the denoising loop on the latent grid (tiled and/or inpainting when asked)
        grid_h, grid_w, grid_tile, grid_overlap, grid_known, grid_keep = self.latent_inputs(
            height, width, tile, overlap, known, keep)
        samples = self.denoise(conditions, (len(gsds), self.unet.config.out_channels, grid_h, grid_w),
                               num_inference_steps, gsd_guidance_scale, generator, latents, grid_tile, grid_overlap,
                               grid_known, grid_keep, cross_attention_kwargs, callback_on_step_end, callback_names)

        # 5. output
        return self.finish(samples, output_type, return_dict, Text2EarthPipelineOutput, known, keep)

    def generate_scene(self, prompt: str | list[str], gsd=None, width: int = 256, height: int = 256, tile: int = 64,
                       overlap: int = 16, **kwargs) -> Text2EarthPipelineOutput:
        """An image larger than the model was trained on: overlapping `tile` x `tile` windows
        denoised together, their outputs blended at every step."""
        return self(prompt, gsd=gsd, height=height, width=width, tile=tile, overlap=overlap, **kwargs)

    def inpaint(self, prompt: str | list[str], image, mask_image, gsd=None, **kwargs) -> Text2EarthPipelineOutput:
        """Regenerate the masked region (mask nonzero) of a real image; the rest is kept."""
        return self(prompt, gsd=gsd, image=image, mask_image=mask_image, **kwargs)

"""What Text2EarthPipeline and CRSDiffPipeline share, beside the UNet they share
(metadata_unet.py): the text encoding, the condition tensors of a batch and its drop
pattern, the checks and the denoising loop with diffusers' conventions (num_images_per_prompt,
latents=, prompt embeddings with their token masks as PixArt takes them, callbacks,
return_dict, output_type="latent"), optional tiling and inpainting.

Training uses the same functions: a family's loss turns its batch and the drop pattern
ConditionDropout drew into the UNet's inputs with the function its pipeline uses for the
guidance passes (a pass is a drop pattern: "all" drops nothing, "text" drops the metadata,
"none" drops everything).
"""

from __future__ import annotations

import inspect

import torch
from diffusers import DiffusionPipeline

from earthsynth.generation.common import (
    KnownRegion,
    TextModelMixin,
    callback_tensor_names,
    check_scale,
    combine_guidance,
    feathered_composite,
    guidance_passes,
    images_for_output,
    per_image,
    prepare_latents,
    process_in_tiles,
    repeat_per_image,
    step_callback,
)
from earthsynth.generation.latents import LatentPipelineMixin

MAX_TEXT_TOKENS = 32  # what the bundled models were trained with (model.max_text_tokens)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# guidance pass -> (text dropped, everything else dropped)
PASS_DROPS = {"all": (False, False), "text": (False, True), "none": (True, True)}


def as_list(value, batch: int, name: str) -> list:
    """One value for every image, or a list of exactly one per image."""
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{len(value)} {name} values for {batch} prompts")
        return list(value)
    return [value] * batch


def encode_text(conditioner, prompts: list[str], negatives: list[str], max_length: int = MAX_TEXT_TOKENS):
    """(tokens, mask) of the prompts and of the negative prompts (or the dropped text, ""),
    in one call so that both have the same length."""
    text = conditioner.encode(list(prompts) + list(negatives), max_length=max_length)
    batch = len(prompts)
    return (text.tokens[:batch], text.mask[:batch]), (text.tokens[batch:], text.mask[batch:])


def pad_tokens(tokens: torch.Tensor, mask: torch.Tensor, length: int):
    """Token embeddings padded with masked zeros to `length` positions."""
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    return (torch.nn.functional.pad(tokens, (0, 0, 0, extra)),
            torch.nn.functional.pad(mask, (0, extra), value=False))


def metadata_conditions(text, null_text, scalars: torch.Tensor, drop_text: torch.Tensor,
                        drop_scalars: torch.Tensor) -> dict:
    """The MetadataUNet's text and scalar inputs for a batch and its drop pattern.

    text, null_text: (tokens (B, L, D), mask (B, L)), the latter used where the text is
        dropped (the encoding of "" in training, of the negative prompt at sampling).
    scalars: (B, F) natural units, NaN = unknown; drop_text (B,) and drop_scalars (B, F) bool.
    """
    (tokens, mask), (null_tokens, null_mask) = text, null_text
    length = max(tokens.shape[1], null_tokens.shape[1])
    (tokens, mask), (null_tokens, null_mask) = pad_tokens(tokens, mask, length), pad_tokens(null_tokens, null_mask,
                                                                                             length)
    drop_text = drop_text.to(tokens.device)
    return {"tokens": torch.where(drop_text[:, None, None], null_tokens.to(tokens.dtype), tokens),
            "mask": torch.where(drop_text[:, None], null_mask, mask),
            "scalars": scalars.to(tokens.device),
            "drop": drop_scalars.to(tokens.device)}


def guidance_drops(passes: list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The guidance passes stacked as a drop pattern: (text dropped, the rest dropped), (P * B,) bool."""
    text = torch.tensor([PASS_DROPS[name][0] for name in passes for _ in range(batch)])
    rest = torch.tensor([PASS_DROPS[name][1] for name in passes for _ in range(batch)])
    return text, rest


class MetadataPipelineBase(LatentPipelineMixin, TextModelMixin, DiffusionPipeline):
    """The text encoder (named by folder, not saved with the checkpoint), the checks and the
    denoising loop with optional tiling and inpainting. Subclasses give
    `model_output(latents, t, conditions, cross_attention_kwargs)`.

    With a `vae` the UNet works on its scaled latents (earthsynth.generation.latents): sizes
    are in image pixels, the loop runs on the latent grid (f times smaller), the result is
    decoded (in tiles for an image larger than the trained tile). Without one (pixel mode)
    the "latents" are the image itself in [-1, 1]."""

    model_cpu_offload_seq = "unet->vae"
    _callback_tensor_inputs = ["latents"]

    @property
    def trained_size(self) -> int:
        """The image size the UNet was trained on, in pixels."""
        return self.unet.config.sample_size * self.vae_scale_factor

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # 1. inputs
    def check_size(self, height: int, width: int, tile: int | None = None, overlap: int = 0) -> None:
        stride = self.unet.stride * self.vae_scale_factor
        if height % stride or width % stride or height < stride or width < stride:
            raise ValueError(f"height and width must be positive multiples of {stride}, got {height}x{width}")
        if tile is not None:
            if tile % stride or tile < stride:
                raise ValueError(f"tile must be a positive multiple of {stride}, got {tile}")
            if not 0 <= overlap < tile or overlap % stride:
                raise ValueError(f"overlap must be a multiple of {stride} in [0, tile), got {overlap}")

    @staticmethod
    def check_guidance(num_inference_steps: int, guidance_scale: float, condition_scale: float | None = None,
                       condition_scale_name: str = "condition_guidance_scale") -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        check_scale("guidance_scale", guidance_scale)
        check_scale(condition_scale_name, condition_scale, allow_none=True)

    def check_common_inputs(self, prompt, prompt_embeds, negative_prompt, negative_prompt_embeds,
                            prompt_attention_mask, negative_prompt_attention_mask, num_inference_steps: int,
                            scales: dict, output_type: str, callback_on_step_end,
                            callback_on_step_end_tensor_inputs, num_images_per_prompt: int = 1) -> list[str]:
        """Checks every pipeline makes; returns the tensor names the step callback is given.
        scales: check_guidance's keyword arguments."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of prompt and prompt_embeds")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a non-empty list of strings")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
        for name, embeds, mask in (("prompt", prompt_embeds, prompt_attention_mask),
                                   ("negative_prompt", negative_prompt_embeds, negative_prompt_attention_mask)):
            if embeds is None:
                continue
            if mask is None:
                raise ValueError(f"{name}_embeds need {name}_attention_mask (encode_prompt returns both)")
            if embeds.ndim != 3 or tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"{name}_embeds must be (B, L, D) with a (B, L) {name}_attention_mask, got "
                                 f"{tuple(embeds.shape)} and {tuple(mask.shape)}")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if negative_prompt_embeds.shape[0] != prompt_embeds.shape[0]:
                raise ValueError(f"{negative_prompt_embeds.shape[0]} negative_prompt_embeds for "
                                 f"{prompt_embeds.shape[0]} prompt_embeds")
        self.check_guidance(num_inference_steps, **scales)
        per_image([], num_images_per_prompt)  # checks the count
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        return callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs,
                                     self._callback_tensor_inputs)

    @staticmethod
    def prompt_list(prompt, prompt_embeds) -> list[str] | None:
        if prompt_embeds is not None:
            return None
        return [prompt] if isinstance(prompt, str) else list(prompt)

    def batch_size(self, prompt, prompt_embeds) -> int:
        """Prompts in the request (before num_images_per_prompt)."""
        return prompt_embeds.shape[0] if prompt_embeds is not None else len(self.prompt_list(prompt, None))

    # 2. text
    def encode_prompt(
        self,
        prompt,
        device=None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = MAX_TEXT_TOKENS,
    ):
        """-> prompt_embeds (B * n, L, D), prompt_attention_mask (B * n, L) and the negative
        prompt's (None without classifier-free guidance). The masks mark real tokens: the UNet
        attends to those only, so pass them on with the embeddings (PixArt's convention)."""
        device = device or self._execution_device
        dtype = self.unet.dtype if getattr(self, "unet", None) is not None else torch.float32
        prompts = self.prompt_list(prompt, prompt_embeds)
        batch = len(prompts) if prompts is not None else prompt_embeds.shape[0]
        need_negative = do_classifier_free_guidance and negative_prompt_embeds is None
        negatives = as_list(negative_prompt or "", batch, "negative_prompt") if need_negative else []
        texts = (prompts or []) + negatives
        if texts:
            text, null_text = encode_text(self.text_conditioner, prompts or [], negatives, max_sequence_length)
            if prompts is not None:
                prompt_embeds, prompt_attention_mask = text
            if need_negative:
                negative_prompt_embeds, negative_prompt_attention_mask = null_text
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None

        def placed(embeds, mask):
            if embeds is None:
                return None, None
            return (repeat_per_image(embeds.to(device, dtype), num_images_per_prompt),
                    repeat_per_image(mask.to(device).bool(), num_images_per_prompt))

        prompt_embeds, prompt_attention_mask = placed(prompt_embeds, prompt_attention_mask)
        negative_prompt_embeds, negative_prompt_attention_mask = placed(negative_prompt_embeds,
                                                                        negative_prompt_attention_mask)
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    def stacked_text(self, passes: list[str], prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
                     negative_prompt_attention_mask):
        """The text of every guidance pass and its null, (P * B, ...), and the passes' drop pattern."""
        count = len(passes)
        text = (prompt_embeds.repeat(count, 1, 1), prompt_attention_mask.repeat(count, 1))
        if negative_prompt_embeds is None:  # no pass drops the text
            null_text = text
        else:
            null_text = (negative_prompt_embeds.repeat(count, 1, 1), negative_prompt_attention_mask.repeat(count, 1))
        drop_text, drop_rest = guidance_drops(passes, prompt_embeds.shape[0])
        return text, null_text, drop_text, drop_rest

    # 3-4. noise and the denoising loop
    def denoise(self, conditions: dict, shape: tuple[int, ...], num_inference_steps: int, condition_scale,
                generator, latents=None, tile: int | None = None, overlap: int = 0, known=None, keep=None,
                cross_attention_kwargs=None, callback=None, callback_names=()) -> torch.Tensor:
        """The sampling loop -> (B, C, H, W) samples in [-1, 1] (before clamping).

        conditions: what `model_output` needs for the stacked guidance passes.
        tile: run the model on overlapping tiles and blend their outputs at every step
            (memory bounded by the tile, no seams). known / keep: inpainting; where keep is 1
            the result follows `known` (re-noised to the current step), elsewhere it is generated.
        The guidance scale is read from self._guidance_scale at every step, so a step
        callback may change it (as in diffusers).
        """
        device, dtype = self._execution_device, self.unet.dtype
        passes = len(guidance_passes(self._guidance_scale, condition_scale))

        def guided(sample, t):
            out = self.model_output(self.scheduler.scale_model_input(sample, t).repeat(passes, 1, 1, 1), t,
                                    conditions, cross_attention_kwargs)
            return combine_guidance(out.chunk(passes), self._guidance_scale, condition_scale)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        latents = prepare_latents(shape, generator, device, dtype, self.scheduler.init_noise_sigma, latents)
        region = None
        if known is not None:
            region = KnownRegion(self.scheduler, known.to(device, dtype), keep.to(device, dtype),
                                 prepare_latents(shape, generator, device, dtype, 1.0), timesteps)
            latents = region.start(latents)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        height, width = shape[-2:]
        for i, t in enumerate(self.progress_bar(timesteps)):
            if tile is not None and (height > tile or width > tile):
                output = process_in_tiles(latents, min(tile, height), min(tile, width), overlap,
                                          lambda piece, t=t: guided(piece, t)).to(latents.dtype)
            else:
                output = guided(latents, t)
            latents = self.scheduler.step(output, t, latents, **step_kwargs).prev_sample
            if region is not None:
                latents = region.after_step(latents, i)
            latents = step_callback(self, callback, list(callback_names), i, t, {"latents": latents})["latents"]
        return latents

    def latent_inputs(self, height: int, width: int, tile: int | None, overlap: int, known, keep):
        """Sizes in image pixels -> on the latent grid; an inpainting image encoded and its keep
        mask brought to the latent grid (a latent pixel is kept where all its pixels are). An
        image larger than the trained size is denoised in tiles of that size unless `tile` is
        given."""
        f = self.vae_scale_factor
        if tile is None and max(height, width) > self.trained_size:
            tile = self.trained_size  # larger than trained: a tiled scene, not objects drawn too large
        tile = None if tile is None else tile // f
        if known is not None:
            known, keep = self.inpainting_grid(known, keep)
        return height // f, width // f, tile, overlap // f, known, keep

    # 5. output
    def finish(self, samples: torch.Tensor, output_type: str, return_dict: bool, output_class,
               known=None, keep=None):
        """The samples as asked ("latent": the raw (B, C, h, w) tensor: scaled latents with a
        VAE, the unclamped image in [-1, 1] without), decoded in tiles of the trained size when
        larger, hooks freed, wrapped in `output_class` or a 1-tuple. Inpainting (known, keep in
        image pixels): the decoded image is cross-faded into the known one over a band of a
        few pixels inside the masked region, so the kept pixels are exact and no edge shows."""
        if output_type == "latent":
            images = samples
        else:
            decoded = self.decode_samples(samples).float()
            if known is not None and getattr(self, "vae", None) is not None:
                decoded = feathered_composite(known.to(decoded.device), decoded, keep.to(decoded.device),
                                              self.vae_scale_factor)
            images = images_for_output(decoded, output_type)
        self.maybe_free_model_hooks()
        return output_class(images=images) if return_dict else (images,)

"""AeroGenPipeline: text + horizontal and rotated boxes with classes -> image.

    pipe = AeroGenPipeline.from_pretrained("src/earthsynth/assets/aerogen")
    image = pipe("aerial orthophoto, 0.2 m/px, 3 trees",
                 boxes=[[4, 4, 20, 22], [40, 30, 12, 8, 30.0]], labels=["Tree", "Tree"],
                 height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    edited = pipe.inpaint("aerial orthophoto, 0.2 m/px, 3 trees", boxes=[[4, 4, 20, 22], [40, 30, 56, 50]],
                          labels=["Tree", "Tree"], image=photo, mask_image=mask).images[0]

A box is xyxy (4 numbers), cx, cy, w, h, angle in degrees clockwise (5 numbers) or 4 corners
((4, 2) numbers), in pixels of the requested size; an `earthsynth.boxes.Boxes` is accepted
too (its labels are used). For a batch, give lists of prompts, box lists and label lists.

The call follows StableDiffusionPipeline's conventions (num_images_per_prompt, negative_prompt,
prompt_embeds with PixArt's attention masks, latents, callback_on_step_end, return_dict,
output_type="latent"), and its inpainting ones (`inpaint`: image and mask_image, white = draw
again). The condition encoding below is the one training uses too (train.loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.boxes import Boxes
from earthsynth.conditioning.layout import layout_from_boxes
from earthsynth.generation.aerogen.model import encode_layout
from earthsynth.generation.common import (
    KnownRegion,
    TextModelMixin,
    callback_tensor_names,
    check_scale,
    combine_guidance,
    feathered_composite,
    guidance_passes,
    image_tensor,
    images_for_output,
    mask_tensor,
    per_image,
    prepare_latents,
    repeat_per_image,
    step_callback,
)
from earthsynth.generation.latents import LatentPipelineMixin

MAX_TEXT_TOKENS = 32  # prompt length of the pipeline (the model config's max_text_tokens default)
DEFAULT_SIZE = 64  # height and width of an image when neither they nor an image to inpaint are given
# pixels inside an inpainting mask over which the generated image fades into the kept one (at
# least a latent pixel): on the bundled model (10 steps, 6 real tiles, a 16 px band masked) the
# seam score at the mask's border was 1.66 with a hard edge, 1.07 with 2 px, 0.97 with 3 px,
# 0.96 with 4 px, and 0.98 for the untouched tiles
INPAINT_FADE = 3


@dataclass
class AeroGenPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) floats in [0, 1], or (B, 3, H, W) tensors
    layouts: list[Boxes]  # the boxes each image was conditioned on


def per_prompt(value, convert, name: str) -> torch.Tensor:
    """One image (or mask) for every prompt, a list of one per prompt, or a (B, C, H, W)
    tensor of them -> (n, C, H, W) through `convert` (common.image_tensor or mask_tensor)."""
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        value = list(value)
    if not isinstance(value, (list, tuple)):
        return convert(value, name)
    if not value:
        raise ValueError(f"{name} is an empty list")
    items = [convert(item, f"{name} {i}") for i, item in enumerate(value)]
    sizes = {tuple(item.shape[-2:]) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"{name}: the images differ in size ({', '.join(f'{h}x{w}' for h, w in sorted(sizes))})")
    return torch.cat(items)


def class_phrase(label: str) -> str:
    """A class name as the text the class embedding is computed from ('small_vehicle' -> 'small vehicle')."""
    return label.replace("_", " ").replace("-", " ").strip().lower()


def boxes_from_user(boxes, labels, where: str) -> Boxes:
    """One image's boxes in any accepted form -> Boxes. Raises ValueError naming `where`."""
    if isinstance(boxes, Boxes):
        return boxes
    if labels is None:
        raise ValueError(f"{where}: labels are missing (one class name per box)")
    boxes = list(boxes)
    labels = list(labels)
    if len(labels) != len(boxes):
        raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    if not boxes:
        return Boxes()
    rboxes, rotated = [], False
    for i, box in enumerate(boxes):
        values = np.asarray(box, dtype=np.float64)
        if values.shape == (4,):
            x0, y0, x1, y1 = values
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"{where}: box {i} {values.tolist()} is not x0 < x1, y0 < y1")
            rboxes.append(Boxes.from_xyxy(values[None], [labels[i]]).rboxes[0])
        elif values.shape == (5,):
            rboxes.append(values)
            rotated = True
        elif values.shape in ((4, 2), (8,)):
            rotated = True
            rboxes.append(Boxes.from_corners(values.reshape(1, 4, 2), [labels[i]]).rboxes[0])
        else:
            raise ValueError(f"{where}: box {i} must be xyxy (4 numbers), cx cy w h angle (5) or 4 corners, "
                             f"got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where}: box {i} has a non-finite coordinate")
    return Boxes(np.stack(rboxes), [str(label) for label in labels], rotated=rotated)


# --- condition encoding, written once: the pipeline and train.loss both use these -------------


def class_embeddings(text_conditioner, labels: list[list[str]], cache: dict | None = None) -> torch.Tensor:
    """(B, N, D) pooled text embeddings of each slot's class name (zeros for empty slots).
    `cache` (class name -> embedding) spares training the names it has already seen."""
    table = cache if cache is not None else {}
    missing = sorted({label for row in labels for label in row if label and label not in table})
    if missing:
        pooled = text_conditioner.encode([class_phrase(name) for name in missing]).pooled.float()
        table.update(zip(missing, pooled))
    zero = torch.zeros(text_conditioner.dim)
    return torch.stack([torch.stack([table.get(label, zero).cpu() for label in row]) for row in labels])


def encode_text(text_conditioner, prompts: list[str], drop: torch.Tensor | None = None,
                max_length: int = MAX_TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt tokens (B, T, D) and their mask (B, T); a dropped prompt is the empty one."""
    if drop is not None:
        prompts = ["" if dropped else prompt for prompt, dropped in zip(prompts, drop.tolist())]
    text = text_conditioner.encode(list(prompts), max_length=max_length)
    return text.tokens, text.mask


def encode_layouts(text_conditioner, layout_encoder, layouts: list[Boxes], height: int, width: int,
                   drop: torch.Tensor, cache: dict | None = None):
    """Boxes of each image -> (layout tokens (B, 1 + N, D), corners (B, N, 4, 2), visible (B, N)),
    as AeroGenUNet takes them; a dropped layout is all null tokens with no visible object."""
    device = layout_encoder.null_token.device
    corners, valid, labels = layout_from_boxes(layouts, width, height, layout_encoder.config.max_objects)
    corners = corners.to(device)
    embeddings = class_embeddings(text_conditioner, labels, cache).to(device)
    tokens, visible = encode_layout(layout_encoder, corners, embeddings, valid.to(device), drop.to(device))
    return tokens, corners, visible


class AeroGenPipeline(LatentPipelineMixin, TextModelMixin, DiffusionPipeline):
    """Layout-to-image generation with classifier-free guidance over text and layout.

    guidance_scale pushes away from the unconditional output (negative prompt, no layout);
    with layout_guidance_scale set, text and layout are guided separately (three passes):
    eps = e(neg, -) + s_text * (e(text, -) - e(neg, -)) + s_layout * (e(text, layout) - e(text, -)).
    """

    model_cpu_offload_seq = "unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet, layout_encoder, scheduler, vae=None, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, layout_encoder=layout_encoder, scheduler=scheduler, vae=vae)
        # the text encoder is not part of the checkpoint (the bundled one is 90 MB): it is
        # named by its folder, "" being the bundled MiniLM (TextModelMixin loads it)
        self.register_to_config(text_model=text_model)

    # 1. inputs
    def check_inputs(self, prompts, layouts, height, width, num_inference_steps, guidance_scale,
                     layout_guidance_scale=None, negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                     prompt_attention_mask=None, negative_prompt_attention_mask=None):
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1) * self.vae_scale_factor
        if not (isinstance(height, Integral) and isinstance(width, Integral)) or height % multiple \
                or width % multiple or height < multiple or width < multiple:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}")
        if not isinstance(num_inference_steps, Integral) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        check_scale("guidance_scale", guidance_scale)
        check_scale("layout_guidance_scale", layout_guidance_scale, allow_none=True)
        if len(prompts) != len(layouts):
            raise ValueError(f"{len(prompts)} prompts but {len(layouts)} layouts")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give negative_prompt or negative_prompt_embeds, not both")
        if isinstance(negative_prompt, list) and len(negative_prompt) != len(prompts):
            raise ValueError(f"{len(negative_prompt)} negative prompts for {len(prompts)} prompts")
        width_of_tokens = self.unet.config.cross_attention_dim
        for name, embeds, mask in (("prompt_embeds", prompt_embeds, prompt_attention_mask),
                                   ("negative_prompt_embeds", negative_prompt_embeds, negative_prompt_attention_mask)):
            if embeds is None:
                continue
            if embeds.ndim != 3 or embeds.shape[-1] != width_of_tokens:
                raise ValueError(f"{name} must have shape (batch, tokens, {width_of_tokens}), got {tuple(embeds.shape)}")
            # our UNet reads a token mask: without it padded positions would be attended to
            if mask is None or tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(f"{name} needs its attention mask of shape {tuple(embeds.shape[:2])} "
                                 f"({name.replace('embeds', 'attention_mask')}, as encode_prompt returns it)")
        if prompt_embeds is not None and negative_prompt_embeds is not None \
                and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                             f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        max_objects = self.layout_encoder.config.max_objects
        for i, boxes in enumerate(layouts):
            if len(boxes) > max_objects:
                raise ValueError(f"layout {i}: {len(boxes)} boxes, more than this model's {max_objects}")
            if len(boxes):
                if np.any(boxes.rboxes[:, 2:4] <= 0):
                    raise ValueError(f"layout {i}: a box has zero or negative width or height")
                corners = boxes.corners()
                slack = 1.0  # a pixel of rounding
                if (corners[..., 0].min() < -slack or corners[..., 1].min() < -slack
                        or corners[..., 0].max() > width + slack or corners[..., 1].max() > height + slack):
                    raise ValueError(f"layout {i}: a box lies outside the {width}x{height} image")
                if any(not label.strip() for label in boxes.labels):
                    raise ValueError(f"layout {i}: an empty class name")

    def normalise_inputs(self, prompt, boxes, labels, prompt_embeds=None) -> tuple[list, list[Boxes]]:
        """A single image or a batch -> (prompts, one Boxes per image). With prompt_embeds
        instead of prompts, the prompts are placeholders (None), one per row, and the boxes of
        a single row may be given as for one image (a Boxes, or boxes with a list of labels)."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give either a prompt or prompt_embeds")
        one_image = isinstance(prompt, str) or (
            prompt is None and len(prompt_embeds) == 1
            and (boxes is None or isinstance(boxes, Boxes)
                 or (labels is not None and all(isinstance(label, str) for label in labels))))
        if one_image:
            return [prompt], [boxes_from_user(boxes if boxes is not None else [], labels, "layout 0")]
        prompts = list(prompt) if prompt is not None else [None] * len(prompt_embeds)
        if isinstance(boxes, Boxes) or boxes is None or len(boxes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts: give one box list (or Boxes) per prompt")
        labels = labels if labels is not None else [None] * len(prompts)
        return prompts, [boxes_from_user(b, lab, f"layout {i}") for i, (b, lab) in enumerate(zip(boxes, labels))]

    # 2. conditions
    def encode_prompt(self, prompt, device=None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = True, negative_prompt=None, prompt_embeds=None,
                      negative_prompt_embeds=None, prompt_attention_mask=None, negative_prompt_attention_mask=None,
                      max_sequence_length: int = MAX_TEXT_TOKENS):
        """diffusers' encode_prompt in PixArt's order, as text2earth and crsdiff return it:
        (prompt_embeds, prompt_attention_mask, negative_prompt_embeds,
        negative_prompt_attention_mask), each repeated num_images_per_prompt times, on `device`.
        The negative ones (the unconditional pass) are None without guidance; a missing
        negative prompt is the empty one, as in training."""
        device = device or self._execution_device
        dtype = self.unet.dtype if self.unet is not None else torch.float32
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = encode_text(self.text_conditioner, prompts,
                                                               max_length=max_sequence_length)
        batch = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * batch if isinstance(negatives, str) else list(negatives)
            if len(negatives) != batch:
                raise ValueError(f"{len(negatives)} negative prompts for {batch} prompts")
            negative_prompt_embeds, negative_prompt_attention_mask = encode_text(
                self.text_conditioner, negatives, max_length=prompt_embeds.shape[1])

        def for_images(tensor):
            if tensor is None:
                return None
            return repeat_per_image(tensor.to(device), num_images_per_prompt)

        prompt_embeds, negative_prompt_embeds = (None if t is None else for_images(t).to(dtype)
                                                 for t in (prompt_embeds, negative_prompt_embeds))
        prompt_attention_mask, negative_prompt_attention_mask = (
            for_images(m) for m in (prompt_attention_mask, negative_prompt_attention_mask))
        if not do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_attention_mask = None
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask

    def encode_layouts(self, layouts: list[Boxes], height: int, width: int, drop: bool = False):
        """(layout tokens, corners, visible) of each image's boxes, or of none (drop=True)."""
        drop = torch.full((len(layouts),), drop, dtype=torch.bool)
        return encode_layouts(self.text_conditioner, self.layout_encoder, layouts, height, width, drop)

    def guidance_inputs(self, passes, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                        negative_prompt_attention_mask, layouts, height, width):
        """The UNet's text and layout inputs for each guidance pass ("all", "text", "none"),
        stacked in the order of `passes` (common.guidance_passes): text, text mask, layout
        tokens, corners, visible."""
        device = self._execution_device
        with_layout = [t.to(device) for t in self.encode_layouts(layouts, height, width)]
        without_layout = [t.to(device) for t in self.encode_layouts(layouts, height, width, drop=True)]
        parts = {
            "all": (prompt_embeds, prompt_attention_mask, *with_layout),
            "text": (prompt_embeds, prompt_attention_mask, *without_layout),
            "none": (negative_prompt_embeds, negative_prompt_attention_mask, *without_layout),
        }
        return [torch.cat(tensors) for tensors in zip(*(parts[name] for name in passes))]

    # 3. noise
    def prepare_latents(self, batch: int, height: int, width: int, generator, latents=None) -> torch.Tensor:
        """Noise on the latent grid of a height x width image."""
        f = self.vae_scale_factor
        shape = (batch, self.unet.config.out_channels, height // f, width // f)
        return prepare_latents(shape, generator, self._execution_device, self.unet.dtype,
                               self.scheduler.init_noise_sigma, latents)

    def denoise(self, latents, t, text, text_mask, layout, cross_attention_kwargs=None):
        return self.unet(self.scheduler.scale_model_input(latents, t), t, text, text_mask, layout=layout,
                         cross_attention_kwargs=cross_attention_kwargs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        boxes=None,
        labels=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        layout_guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict | None = None,
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        image=None,
        mask_image=None,
    ) -> AeroGenPipelineOutput | tuple:
        """Returns AeroGenPipelineOutput(images, layouts), or the tuple (images, layouts) with
        return_dict=False. height, width: 64 unless given (or set by an image to inpaint).
        output_type: "pil", "np", "pt" or "latent" (the last denoised
        sample: scaled latents with a VAE, else pixels in [-1, 1]). cross_attention_kwargs reach every attention
        processor; `layout_scale` multiplies the layout attention (1 = as trained).
        image, mask_image: inpainting (see `inpaint`)."""
        # 1. check and normalise the request
        callback_names = callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs or ["latents"],
                                               self._callback_tensor_inputs)
        prompts, layouts = self.normalise_inputs(prompt, boxes, labels, prompt_embeds)
        known = keep = None
        if image is not None or mask_image is not None:
            known, keep = self.inpainting_inputs(image, mask_image, len(prompts), height, width)
            height, width = known.shape[-2:]
        height = DEFAULT_SIZE if height is None else height
        width = DEFAULT_SIZE if width is None else width
        self.check_inputs(prompts, layouts, height, width, num_inference_steps, guidance_scale, layout_guidance_scale,
                          negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
                          negative_prompt_attention_mask)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        layouts = per_image(layouts, num_images_per_prompt)
        batch = len(layouts)
        device = self._execution_device
        if known is not None:  # one image and mask per generated image, as diffusers repeats them
            known, keep = (repeat_per_image(t, num_images_per_prompt).to(device) for t in (known, keep))

        # 2. text and layout conditions for each guidance pass
        passes = guidance_passes(guidance_scale, layout_guidance_scale)
        text, text_mask, negative_text, negative_mask = self.encode_prompt(
            prompts if prompt_embeds is None else None, device, num_images_per_prompt, "none" in passes,
            negative_prompt, prompt_embeds, negative_prompt_embeds, prompt_attention_mask,
            negative_prompt_attention_mask)
        stacked = self.guidance_inputs(passes, text, negative_text, text_mask, negative_mask, layouts, height, width)
        # the layout is the same in every step: rasterise (on the latent grid) and pool it once
        f = self.vae_scale_factor
        layout_inputs = self.unet.prepare_layout(stacked[2], stacked[3], stacked[4], height // f, width // f)

        # 3. noise and timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch, height, width, generator, latents)
        region = None
        if known is not None:  # the kept part follows the image, noised to each step's level
            grid_known, grid_keep = self.inpainting_grid(known, keep)
            noise = prepare_latents(tuple(latents.shape), generator, device, latents.dtype, 1.0)
            region = KnownRegion(self.scheduler, grid_known.to(latents.dtype), grid_keep.to(latents.dtype), noise,
                                 self.scheduler.timesteps)
            latents = region.start(latents)

        # 4. denoising loop
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_in = latents.repeat(len(passes), 1, 1, 1)
            out = self.denoise(model_in, t, stacked[0], stacked[1], layout_inputs, cross_attention_kwargs)
            guided = combine_guidance(out.chunk(len(passes)), guidance_scale, layout_guidance_scale)
            latents = self.scheduler.step(guided, t, latents, generator=generator).prev_sample
            if region is not None:
                latents = region.after_step(latents, i)
            latents = step_callback(self, callback_on_step_end, callback_names, i, t, {"latents": latents})["latents"]

        # 5. output
        if output_type == "latent":
            images = latents
        elif known is None:
            images = images_for_output(self.decode_samples(latents), output_type)
        else:  # the kept pixels exactly, the generated ones faded in over a few pixels
            decoded = self.decode_samples(latents).float()
            images = images_for_output(feathered_composite(known.to(decoded.device), decoded,
                                                           keep.to(decoded.device), self.inpaint_band), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, layouts
        return AeroGenPipelineOutput(images=images, layouts=layouts)

    def inpaint(self, prompt=None, boxes=None, labels=None, image=None, mask_image=None,
                **kwargs) -> AeroGenPipelineOutput | tuple:
        """Draw the masked part of a real image under the layout; the rest is kept.

        image: PIL image, (H, W, 3) uint8 or [0, 1] float array, (3, H, W) tensor in [0, 1], or
            a list of those / a (B, 3, H, W) tensor with one per prompt; its size is the output's.
        mask_image: PIL / (H, W) array / tensor (or a list, or (B, 1, H, W)), nonzero = draw
            again (above half its largest value, diffusers' white), 0 = keep.
        The boxes are the whole layout, objects in the kept part included: the model draws the
        masked part knowing them. Every step, the kept part of the sample is replaced by the
        image noised to that step (RePaint), on the latent grid with a VAE (a latent pixel is
        kept where all its pixels are); at the end the kept pixels are the image's exactly and
        the generated ones are faded in over `inpaint_band` pixels inside the mask. Other
        arguments as for __call__."""
        return self(prompt, boxes, labels, image=image, mask_image=mask_image, **kwargs)

    @property
    def inpaint_band(self) -> int:
        """Pixels inside the mask over which the generated image fades into the kept one: a
        mask grown by this much around an object leaves the object itself unfaded."""
        return max(INPAINT_FADE, self.vae_scale_factor)

    def inpainting_inputs(self, image, mask_image, prompts: int, height, width) -> tuple[torch.Tensor, torch.Tensor]:
        """The image to keep (B, 3, H, W) in [-1, 1] and its keep mask (B, 1, H, W) in {0, 1},
        one per prompt (a single image or mask serves every prompt); checked."""
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both image and mask_image")
        known = per_prompt(image, image_tensor, "image")
        mask = per_prompt(mask_image, mask_tensor, "mask_image")
        for name, tensor in (("image", known), ("mask_image", mask)):
            if tensor.shape[0] not in (1, prompts):
                raise ValueError(f"{tensor.shape[0]} {name}s for {prompts} prompts")
        if mask.shape[-2:] != known.shape[-2:]:
            raise ValueError(f"mask_image is {mask.shape[-2]}x{mask.shape[-1]}, image is {known.shape[-2]}x{known.shape[-1]}")
        for name, given, size in (("height", height, known.shape[-2]), ("width", width, known.shape[-1])):
            if given is not None and given != size:
                raise ValueError(f"{name} {given} differs from the image's {size} (leave it out when inpainting)")
        return known.expand(prompts, -1, -1, -1), 1 - mask.expand(prompts, -1, -1, -1)

"""AeroGenPipeline: text + horizontal and rotated boxes with classes -> image.

    pipe = AeroGenPipeline.from_pretrained("src/earthsynth/assets/aerogen")
    image = pipe("aerial orthophoto, 0.2 m/px, 3 trees",
                 boxes=[[4, 4, 20, 22], [40, 30, 12, 8, 30.0]], labels=["Tree", "Tree"],
                 height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]

A box is xyxy (4 numbers), cx, cy, w, h, angle in degrees clockwise (5 numbers) or 4 corners
((4, 2) numbers), in pixels of the requested size; an `earthsynth.boxes.Boxes` is accepted
too (its labels are used). For a batch, give lists of prompts, box lists and label lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthsynth.boxes import Boxes
from earthsynth.conditioning.layout import layout_from_boxes
from earthsynth.conditioning.text import TextConditioner
from earthsynth.generation.aerogen.model import encode_layout
from earthsynth.generation.common import combine_guidance, images_for_output, initial_noise


@dataclass
class AeroGenPipelineOutput(BaseOutput):
    images: list | np.ndarray | torch.Tensor  # PIL images, (B, H, W, 3) floats in [0, 1], or (B, 3, H, W) tensors
    layouts: list[Boxes]  # the boxes each image was conditioned on


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


class AeroGenPipeline(DiffusionPipeline):
    """Layout-to-image generation with classifier-free guidance over text and layout.

    guidance_scale pushes away from the unconditional output (no text, no layout); with
    layout_guidance_scale set, text and layout are guided separately (three passes):
    eps = e(-, -) + s_text * (e(text, -) - e(-, -)) + s_layout * (e(text, layout) - e(text, -)).
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet, layout_encoder, scheduler, text_model: str = ""):
        super().__init__()
        self.register_modules(unet=unet, layout_encoder=layout_encoder, scheduler=scheduler)
        # the text encoder is not part of the checkpoint (the bundled one is 90 MB): it is
        # named by its folder, "" being the bundled MiniLM
        self.register_to_config(text_model=text_model)
        self._text_conditioner = None

    @property
    def text_conditioner(self) -> TextConditioner:
        if self._text_conditioner is None:
            self._text_conditioner = TextConditioner.from_pretrained(self.config.text_model or None)
        return self._text_conditioner

    def set_text_conditioner(self, conditioner: TextConditioner) -> None:
        self._text_conditioner = conditioner

    # 1. inputs
    def check_inputs(self, prompts, layouts, height, width, num_inference_steps, guidance_scale):
        multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple or height < multiple or width < multiple:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}x{width}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if len(prompts) != len(layouts):
            raise ValueError(f"{len(prompts)} prompts but {len(layouts)} layouts")
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

    def normalise_inputs(self, prompt, boxes, labels) -> tuple[list[str], list[Boxes]]:
        """A single image or a batch -> (prompts, one Boxes per image)."""
        if isinstance(prompt, str):
            return [prompt], [boxes_from_user(boxes, labels, "layout 0")]
        prompts = list(prompt)
        if isinstance(boxes, Boxes) or boxes is None or len(boxes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts: give one box list (or Boxes) per prompt")
        labels = labels if labels is not None else [None] * len(prompts)
        return prompts, [boxes_from_user(b, lab, f"layout {i}") for i, (b, lab) in enumerate(zip(boxes, labels))]

    # 2. conditions
    def encode_prompt(self, prompts: list[str], max_length: int = 32):
        text = self.text_conditioner.encode(prompts, max_length=max_length)
        return text.tokens.to(self.device, self.unet.dtype), text.mask.to(self.device)

    def class_embeddings(self, labels: list[list[str]]) -> torch.Tensor:
        names = sorted({label for row in labels for label in row if label})
        dim = self.layout_encoder.config.class_embed_dim
        table = {}
        if names:
            pooled = self.text_conditioner.encode([class_phrase(n) for n in names]).pooled
            table = dict(zip(names, pooled.float()))
        zero = torch.zeros(dim)
        return torch.stack([torch.stack([table.get(label, zero) for label in row]) for row in labels])

    def encode_layouts(self, layouts: list[Boxes], height: int, width: int):
        corners, valid, labels = layout_from_boxes(layouts, width, height, self.layout_encoder.config.max_objects)
        return corners.to(self.device), valid.to(self.device), self.class_embeddings(labels).to(self.device)

    # 3. noise
    def prepare_latents(self, batch: int, height: int, width: int, generator) -> torch.Tensor:
        shape = (batch, self.unet.config.out_channels, height, width)
        return initial_noise(shape, generator, self.device, self.unet.dtype) * self.scheduler.init_noise_sigma

    def denoise(self, latents, t, text, text_mask, layout):
        return self.unet(self.scheduler.scale_model_input(latents, t), t, text, text_mask, layout=layout)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        boxes=None,
        labels=None,
        height: int = 64,
        width: int = 64,
        num_inference_steps: int = 20,
        guidance_scale: float = 4.0,
        layout_guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> AeroGenPipelineOutput:
        # 1. check and normalise the request
        prompts, layouts = self.normalise_inputs(prompt, boxes if boxes is not None else [], labels)
        self.check_inputs(prompts, layouts, height, width, num_inference_steps, guidance_scale)
        batch = len(prompts)

        # 2. text and layout conditions: conditional, and the dropped versions guidance needs
        text, text_mask = self.encode_prompt(prompts)
        null_text, null_mask = self.encode_prompt([""] * batch)
        corners, valid, class_emb = self.encode_layouts(layouts, height, width)
        keep = torch.zeros(batch, dtype=torch.bool, device=self.device)
        layout, visible = encode_layout(self.layout_encoder, corners, class_emb, valid, keep)
        null_layout, hidden = encode_layout(self.layout_encoder, corners, class_emb, valid, ~keep)
        passes = [(text, text_mask, layout, visible)]
        if layout_guidance_scale is not None:
            passes.append((text, text_mask, null_layout, hidden))
        if guidance_scale != 1.0 or layout_guidance_scale is not None:
            passes.append((null_text, null_mask, null_layout, hidden))
        stacked = [torch.cat(parts) for parts in zip(*passes)]
        # the layout is the same in every step: rasterise and pool it once
        layout_inputs = self.unet.prepare_layout(stacked[2], corners.repeat(len(passes), 1, 1, 1), stacked[3],
                                                 height, width)

        # 3. noise and timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        latents = self.prepare_latents(batch, height, width, generator)

        # 4. denoising loop
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = latents.repeat(len(passes), 1, 1, 1)
            out = self.denoise(model_in, t, stacked[0], stacked[1], layout_inputs)
            guided = combine_guidance(out.chunk(len(passes)), guidance_scale, layout_guidance_scale)
            latents = self.scheduler.step(guided, t, latents, generator=generator).prev_sample

        # 5. output
        images = images_for_output(latents, output_type)
        self.maybe_free_model_hooks()
        return AeroGenPipelineOutput(images=images, layouts=layouts)

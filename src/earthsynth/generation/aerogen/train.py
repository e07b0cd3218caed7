"""aerogen: text + horizontal and rotated boxes with classes -> image (after AeroGen).

Trained with `earthsynth train configs/aerogen.yaml` on the real labelled tiles; text and
layout are dropped independently (and together) in training, so the pipeline can guide on
the layout itself. Pixel space at the working size (64 px at 0.2 m/px): at that size a VAE
would leave a 16x16 latent for objects of 8-35 px, so small crowns would live in one or two
latent cells; a pixel UNet of this size costs about 35 GFLOP per training batch of 16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from earthsynth.boxes import Boxes
from earthsynth.conditioning import ConditionDropout, LayoutEncoder, TextConditioner
from earthsynth.conditioning.layout import layout_from_boxes
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, collate_samples
from earthsynth.errors import InputError
from earthsynth.generation.aerogen.model import AeroGenUNet, encode_layout
from earthsynth.generation.aerogen.pipeline import (
    AeroGenPipeline,
    AeroGenPipelineOutput,
    class_phrase,
)
from earthsynth.generation.common import to_pil
from earthsynth.registry import Family
from earthsynth.training.objective import DiffusionObjective, make_noise_scheduler

__all__ = ["AeroGenPipeline", "AeroGenPipelineOutput", "AeroGenUNet", "AeroGenModelConfig", "FAMILY"]


@dataclass
class AeroGenModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    layers_per_block: int = 1
    attention_levels: int = 2  # the lowest-resolution levels get (text + layout) cross-attention
    attention_head_dim: int = 16
    use_canvas: bool = True  # also give the rasterised layout as input channels
    max_objects: int = 32  # layout slots; tiles with more boxes keep their largest
    layout_frequencies: int = 8
    text_encoder: str = ""  # "" = bundled MiniLM; or a local transformers / Stable Diffusion directory
    max_text_tokens: int = 32
    text_dropout: float = 0.1
    layout_dropout: float = 0.1
    drop_all: float = 0.1
    preview_steps: int = 20


def build(config) -> dict:
    mc = config.model
    text = TextConditioner.from_pretrained(mc.text_encoder or None)
    channels = list(mc.block_out_channels)
    plain = len(channels) - mc.attention_levels
    if not 0 < mc.attention_levels < len(channels):
        raise InputError("model.attention_levels", f"must be between 1 and {len(channels) - 1}")
    down = ["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * mc.attention_levels
    up = ["CrossAttnUpBlock2D"] * mc.attention_levels + ["UpBlock2D"] * plain
    unet = AeroGenUNet(
        sample_size=config.data.tile_size, block_out_channels=channels, down_block_types=down, up_block_types=up,
        layers_per_block=mc.layers_per_block, attention_head_dim=mc.attention_head_dim,
        cross_attention_dim=text.dim, layout_dim=text.dim, use_canvas=mc.use_canvas,
    )
    layout_encoder = LayoutEncoder(max_objects=mc.max_objects, class_embed_dim=text.dim, out_dim=text.dim,
                                   num_frequencies=mc.layout_frequencies)
    tc = config.train
    noise_scheduler = make_noise_scheduler(tc.num_train_timesteps, tc.beta_schedule, tc.prediction_type)
    return {
        "unet": unet,
        "layout_encoder": layout_encoder,
        "text": text,
        "noise_scheduler": noise_scheduler,
        "objective": DiffusionObjective(noise_scheduler, tc.snr_gamma),
        "dropout": ConditionDropout({"text": mc.text_dropout, "layout": mc.layout_dropout}, drop_all=mc.drop_all),
        "class_embeddings": {},  # class name -> pooled text embedding, filled on first use
        "config": config,
    }


def dataset(config):
    dc = config.data
    return RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                     overlap=dc.overlap, min_visible=dc.min_visible)


def keep_largest(boxes: Boxes, limit: int) -> Boxes:
    if len(boxes) <= limit:
        return boxes
    return boxes.select(np.sort(np.argsort(-boxes.areas(), kind="stable")[:limit]))


def class_embeddings(components: dict, labels: list[list[str]]) -> torch.Tensor:
    """(B, N, D) pooled text embeddings of each slot's class name (zeros for empty slots)."""
    table = components["class_embeddings"]
    missing = sorted({label for row in labels for label in row if label and label not in table})
    if missing:
        pooled = components["text"].encode([class_phrase(name) for name in missing]).pooled.float()
        table.update(zip(missing, pooled))
    zero = torch.zeros(components["text"].dim)
    return torch.stack([torch.stack([table.get(label, zero) for label in row]) for row in labels])


def loss(components: dict, batch: dict) -> torch.Tensor:
    unet, config = components["unet"], components["config"]
    mc = config.model
    device = unet.device
    images = batch["image"]
    boxes = [keep_largest(b, mc.max_objects) for b in batch["boxes"]]
    if config.data.hflip:
        images, boxes = random_flips(images, boxes)
    images = images.to(device) * 2 - 1  # [0, 1] -> [-1, 1]
    height, width = images.shape[-2:]
    drops = components["dropout"].sample(images.shape[0])
    prompts = ["" if dropped else p for p, dropped in zip(batch["caption"], drops["text"].tolist())]
    text = components["text"].encode(prompts, max_length=mc.max_text_tokens)
    corners, valid, labels = layout_from_boxes(boxes, width, height, mc.max_objects)
    layout, visible = encode_layout(components["layout_encoder"], corners.to(device),
                                    class_embeddings(components, labels).to(device), valid.to(device),
                                    drops["layout"].to(device))
    tokens, mask, corners = text.tokens.to(device), text.mask.to(device), corners.to(device)

    def predict(noisy, timesteps):
        return unet(noisy, timesteps, tokens, mask, layout, corners, visible)

    return components["objective"](images, predict)


def make_pipeline(components: dict) -> AeroGenPipeline:
    scheduler = DPMSolverMultistepScheduler.from_config(components["noise_scheduler"].config)
    pipe = AeroGenPipeline(unet=components["unet"], layout_encoder=components["layout_encoder"], scheduler=scheduler,
                           text_model=components["config"].model.text_encoder)
    pipe.set_text_conditioner(components["text"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview(components: dict, config, generator: torch.Generator):
    """Four validation tiles regenerated from their own layouts and captions."""
    unet = components["unet"]
    was_training = unet.training
    unet.eval()
    tiles = RealTiles("val", tile_size=config.data.tile_size, gsd_factors=config.data.gsd_factors)
    samples = [tiles[i] for i in range(min(4, len(tiles)))]
    layouts = [keep_largest(s["boxes"], config.model.max_objects) for s in samples]
    out = make_pipeline(components)([s["caption"] for s in samples], layouts, None, config.data.tile_size,
                                    config.data.tile_size, config.model.preview_steps, generator=generator,
                                    output_type="pt")
    unet.train(was_training)
    real = to_pil(torch.stack([s["image"] for s in samples]) * 2 - 1)
    return real + to_pil(out.images * 2 - 1)


def export(components: dict, config, directory: Path) -> None:
    make_pipeline(components).save_pretrained(Path(directory))


FAMILY = Family(
    name="aerogen",
    model_config=AeroGenModelConfig,
    build=build,
    trainable=("unet", "layout_encoder"),
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    description="text + horizontal/rotated boxes with classes -> image (layout tokens, mask attention)",
)

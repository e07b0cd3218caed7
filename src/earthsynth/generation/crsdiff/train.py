"""crsdiff's training family: text + metadata + control maps -> image (after CRS-Diff).

Metadata (date, GSD, cloud cover, position) is embedded field by field and added to the
timestep embedding (earthsynth.generation.metadata_unet); every control map has its own
small conv pyramid in the shared ControlAdapter, whose zero-initialised outputs are added
at every scale to the UNet's skip connections and middle block. In training, text,
metadata (whole and field by field) and every map are dropped independently, so any subset
of conditions is a request the model has seen and guidance can push away from "nothing".
The loss builds the UNet's conditions with the pipeline's own crsdiff_conditions.
Trained with `earthsynth train configs/crsdiff.yaml` on the real tiles of
earthsynth.data.control_tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler

from earthsynth.conditioning import ConditionDropout, ControlAdapter, TextConditioner
from earthsynth.conditioning.scalars import SCALAR_FIELDS, scalar_values
from earthsynth.data.control_tiles import CONTROL_CHANNELS, ControlTiles
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import collate_samples
from earthsynth.generation.common import to_pil
from earthsynth.generation.crsdiff.pipeline import CRSDiffPipeline, crsdiff_conditions
from earthsynth.generation.latents import (
    downsampling,
    latent_cache,
    latent_channels,
    load_family_vae,
    upsample_nearest,
)
from earthsynth.generation.metadata_pipeline import encode_text
from earthsynth.generation.metadata_unet import build_metadata_unet
from earthsynth.registry import Family
from earthsynth.training.objective import DiffusionObjective, make_noise_scheduler

__all__ = ["CRSDiffModelConfig", "build", "dataset", "batch_controls", "loss", "make_pipeline", "preview",
           "export", "FAMILY"]


@dataclass
class CRSDiffModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    layers_per_block: int = 1
    attention_levels: int = 2
    attention_head_dim: int = 16
    adapter_hidden: int = 16  # width of each map's conv pyramid
    text_encoder: str = ""
    init_unet: str = ""  # a local Stable Diffusion / diffusers UNet folder: copy the tensors that fit
    vae: str = ""  # latent mode: an exported autoencoder (or SD folder); "" = pixel mode unless pretrained
    pretrained: str = ""  # a local diffusers Stable Diffusion 1.x / 2.x folder: its VAE, UNet and CLIP as they are
    train_parts: str = "all"  # with pretrained: all, added (metadata embedding) or attention (added + attention)
    max_text_tokens: int = 32
    text_dropout: float = 0.15
    metadata_dropout: float = 0.15  # all fields at once
    field_dropout: float = 0.2  # each field on its own, so any subset of fields is a known request
    map_dropout: float = 0.4  # each map on its own
    drop_all: float = 0.1
    balance_gsd: bool = True
    preview_steps: int = 20


def build(config) -> dict:
    mc = config.model
    text = TextConditioner.from_pretrained(mc.text_encoder or mc.pretrained or None)
    vae = load_family_vae(mc)
    f, channels = downsampling(vae), latent_channels(vae)
    unet = build_metadata_unet(mc, config.data.tile_size // f, text.dim, SCALAR_FIELDS, config.family, channels)
    # the maps stay at image resolution: the adapter's pyramid brings them down to the latent grid
    adapter = ControlAdapter.from_unet_config(unet.unet.config, dict(CONTROL_CHANNELS), image_stride=f,
                                              hidden=mc.adapter_hidden)
    noise_scheduler = make_noise_scheduler(config.objective)
    probabilities = {"text": mc.text_dropout, "metadata": mc.metadata_dropout}
    probabilities.update({name: mc.map_dropout for name in CONTROL_CHANNELS})
    return {
        "unet": unet,
        "control_adapter": adapter,
        "vae": vae,
        "latents": latent_cache(vae, config, dataset(config)),
        "text": text,
        "noise_scheduler": noise_scheduler,
        "objective": DiffusionObjective(noise_scheduler, config.objective.snr_gamma),
        "dropout": ConditionDropout(probabilities, drop_all=mc.drop_all),
        "config": config,
    }


def dataset(config):
    dc = config.data
    return ControlTiles(dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                        overlap=dc.overlap, balance_gsd=config.model.balance_gsd,
                        exclude_test_area=dc.exclude_test_area)


def batch_controls(batch: dict, height: int, width: int):
    """The batch's maps stacked per name (zeros where a tile has none) and per-sample scales
    (1 where the tile has the map); names no tile in the batch has are left out."""
    maps, scales = {}, {}
    for name, channels in CONTROL_CHANNELS.items():
        present = torch.tensor([name in c for c in batch["controls"]])
        if not present.any():
            continue
        zero = torch.zeros(channels, height, width)
        maps[name] = torch.stack([c.get(name, zero) for c in batch["controls"]])
        scales[name] = present.float()
    return maps, scales


def loss(components: dict, batch: dict) -> torch.Tensor:
    unet, config = components["unet"], components["config"]
    mc = config.model
    device = unet.device
    images = batch["image"]
    batch_size, _, height, width = images.shape
    drops = components["dropout"].sample(batch_size)
    maps, scales = batch_controls(batch, height, width)
    images = images * 2 - 1  # [0, 1] -> [-1, 1]
    if components["latents"] is not None:  # latent mode: stacked at image resolution to flip with the maps
        latents = components["latents"].sample(batch["image"])
        factor = height // latents.shape[-2]
        images = upsample_nearest(latents, factor)
    if config.data.hflip:  # flip the image and its maps together
        stacked = random_flips(torch.cat([images] + list(maps.values()), dim=1))
        channels = images.shape[1]
        images, rest = stacked[:, :channels], stacked[:, channels:].split([m.shape[1] for m in maps.values()], dim=1)
        maps = dict(zip(maps, rest))
    if components["latents"] is not None:
        images = images[..., ::factor, ::factor]
    images = images.to(device)
    captions = list(batch["caption"])
    text, null_text = encode_text(components["text"], captions, [""] * len(captions), mc.max_text_tokens)
    text, null_text = [tuple(t.to(device) for t in pair) for pair in (text, null_text)]
    values = scalar_values(batch["metadata"], unet.config.scalar_fields)
    drop_fields = (torch.rand(values.shape) < mc.field_dropout) | drops["metadata"][:, None]
    conditions = crsdiff_conditions(components["control_adapter"], text, null_text, values, maps, scales,
                                    drops["text"], drop_fields, drops)

    def predict(noisy, timesteps):
        return unet(noisy, timesteps, conditions["tokens"], conditions["mask"], conditions["scalars"],
                    conditions["drop"], down_residuals=conditions["down"], mid_residual=conditions["mid"])

    return components["objective"](images, predict)


def make_pipeline(components: dict) -> CRSDiffPipeline:
    scheduler = DPMSolverMultistepScheduler.from_config(components["noise_scheduler"].config)
    mc = components["config"].model
    pipe = CRSDiffPipeline(unet=components["unet"], control_adapter=components["control_adapter"],
                           scheduler=scheduler, vae=components["vae"], text_model=mc.text_encoder or mc.pretrained)
    pipe.set_text_conditioner(components["text"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview(components: dict, config, generator: torch.Generator):
    """Validation tiles (top), their canny maps (middle) and images generated from caption,
    metadata and canny map (bottom)."""
    unet = components["unet"]
    was_training = unet.training
    unet.eval()
    tiles = ControlTiles("val", tile_size=config.data.tile_size, gsd_factors=[1, 2], balance_gsd=False)
    samples = [tiles[i] for i in np.linspace(0, len(tiles) - 1, 4).astype(int)]
    canny = torch.stack([s["controls"]["canny"] for s in samples])
    metadata = [{k: v for k, v in s["metadata"].items() if k in SCALAR_FIELDS} for s in samples]
    out = make_pipeline(components)([s["caption"] for s in samples], metadata=metadata, controls={"canny": canny},
                                    num_inference_steps=config.model.preview_steps, generator=generator,
                                    output_type="pt")
    unet.train(was_training)
    real = torch.stack([s["image"] for s in samples])
    return to_pil(real * 2 - 1) + to_pil(canny.expand(-1, 3, -1, -1) * 2 - 1) + to_pil(out.images * 2 - 1)


def export(components: dict, config, directory: Path) -> None:
    make_pipeline(components).save_pretrained(Path(directory))


FAMILY = Family(
    name="crsdiff",
    model_config=CRSDiffModelConfig,
    build=build,
    trainable=("unet", "control_adapter"),
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    objective=True,
    description="text + metadata + control maps (canny, sketch, content, dem, landcover, road) -> image",
)

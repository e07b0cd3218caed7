"""Training of the smoke family: a small text + GSD conditioned pixel-space diffusion model
on real tiles.

It exists to exercise the shared pieces end to end (real tiles with captions, the text
encoder, the scalar GSD embedding, condition dropout, the one training loop) in under a
minute on a CPU. The five families plug into the registry the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

from earthsynth.conditioning import ConditionDropout, ScalarEmbedding, TextConditioner
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, collate_samples
from earthsynth.generation.common import gsd_values, to_pil
from earthsynth.registry import Family
from earthsynth.training.objective import DiffusionObjective, make_noise_scheduler


@dataclass
class SmokeModelConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_encoder: str = ""  # "" = bundled MiniLM; or a local transformers / Stable Diffusion directory
    max_text_tokens: int = 32
    text_dropout: float = 0.1
    gsd_dropout: float = 0.1
    drop_all: float = 0.05
    preview_prompt: str = "NEON airborne RGB orthophoto, Yellowstone National Park, 0.4 m/px, 12 trees, dense vegetation"
    preview_gsd: float = 0.4
    preview_steps: int = 20


def build(config) -> dict:
    mc = config.model
    text = TextConditioner.from_pretrained(mc.text_encoder or None)
    channels = list(mc.block_out_channels)
    time_embed_dim = channels[0] * 4
    unet = UNet2DConditionModel(
        sample_size=config.data.tile_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=mc.layers_per_block,
        down_block_types=["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (len(channels) - 1),
        up_block_types=["CrossAttnUpBlock2D"] * (len(channels) - 1) + ["UpBlock2D"],
        cross_attention_dim=text.dim,
        attention_head_dim=mc.attention_head_dim,
        norm_num_groups=min(32, channels[0]),
        class_embed_type="identity",  # the GSD embedding is added to the timestep embedding
    )
    scalar_embedding = ScalarEmbedding(fields=("gsd",), embed_dim=time_embed_dim)
    noise_scheduler = make_noise_scheduler(config.objective)
    return {
        "unet": unet,
        "scalar_embedding": scalar_embedding,
        "text": text,
        "noise_scheduler": noise_scheduler,
        "objective": DiffusionObjective(noise_scheduler, config.objective.snr_gamma),
        "dropout": ConditionDropout({"text": mc.text_dropout, "gsd": mc.gsd_dropout}, drop_all=mc.drop_all),
        "config": config,
    }


def dataset(config):
    dc = config.data
    return RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                     overlap=dc.overlap, min_visible=dc.min_visible, exclude_test_area=dc.exclude_test_area)


def encode_conditions(components: dict, prompts: list[str], gsds: list[float | None],
                      drop_text: torch.Tensor, drop_gsd: torch.Tensor):
    """Token embeddings + mask of the prompts ('' where dropped) and the GSD embedding."""
    mc = components["config"].model
    prompts = ["" if dropped else p for p, dropped in zip(prompts, drop_text.tolist())]
    text = components["text"].encode(prompts, max_length=mc.max_text_tokens)
    scalar = components["scalar_embedding"]
    gsd = scalar(gsd_values(gsds).to(scalar.device), drop=drop_gsd[:, None].to(scalar.device))
    return text.tokens.to(scalar.device), text.mask.to(scalar.device), gsd


def loss(components: dict, batch: dict) -> torch.Tensor:
    unet = components["unet"]
    images = batch["image"].to(unet.device) * 2 - 1  # [0, 1] -> [-1, 1]
    if components["config"].data.hflip:
        images = random_flips(images)
    drops = components["dropout"].sample(images.shape[0])
    tokens, mask, gsd = encode_conditions(components, batch["caption"], batch["gsd"], drops["text"], drops["gsd"])

    def predict(noisy, timesteps):
        return unet(noisy, timesteps, encoder_hidden_states=tokens, class_labels=gsd,
                    encoder_attention_mask=mask).sample

    return components["objective"](images, predict)


@torch.no_grad()
def sample(components: dict, prompts: list[str], gsds: list[float | None], steps: int = 20,
           guidance_scale: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guided DPM-Solver++ sampling -> (B, 3, H, W) in [-1, 1]."""
    unet = components["unet"]
    scheduler = DPMSolverMultistepScheduler.from_config(components["noise_scheduler"].config)
    scheduler.set_timesteps(steps)
    batch = len(prompts)
    size = unet.config.sample_size
    latents = torch.randn((batch, 3, size, size), generator=generator).to(unet.device)
    keep = torch.zeros(batch, dtype=torch.bool)
    drop = torch.ones(batch, dtype=torch.bool)
    cond = encode_conditions(components, prompts, gsds, keep, keep)
    uncond = encode_conditions(components, prompts, gsds, drop, drop)
    tokens, mask, gsd = (torch.cat([u, c]) for u, c in zip(uncond, cond))
    for t in scheduler.timesteps:
        model_in = torch.cat([latents, latents])
        out = unet(model_in, t, encoder_hidden_states=tokens, class_labels=gsd, encoder_attention_mask=mask).sample
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + guidance_scale * (out_cond - out_uncond)
        latents = scheduler.step(guided, t, latents, generator=generator).prev_sample
    return latents.clamp(-1, 1)


def preview(components: dict, config, generator: torch.Generator):
    mc = config.model
    was_training = components["unet"].training
    components["unet"].eval()
    images = sample(components, [mc.preview_prompt] * 4, [mc.preview_gsd] * 4, mc.preview_steps, generator=generator)
    components["unet"].train(was_training)
    return to_pil(images)


def export(components: dict, config, directory: Path) -> None:
    directory = Path(directory)
    components["unet"].save_pretrained(directory / "unet")
    components["scalar_embedding"].save_pretrained(directory / "scalar_embedding")
    components["noise_scheduler"].save_pretrained(directory / "scheduler")


FAMILY = Family(
    name="smoke",
    model_config=SmokeModelConfig,
    build=build,
    trainable=("unet", "scalar_embedding"),
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    objective=True,
    description="tiny text + GSD pixel diffusion on real tiles (exercises the shared pieces)",
)

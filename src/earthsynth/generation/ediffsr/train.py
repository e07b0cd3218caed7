"""Training of the ediffsr family (efficient diffusion super-resolution, after EDiffSR): the
EANet noise predictor with the CPEM conditional prior, sampled with a mean-reverting SDE
from the bicubic upsampling, trained by the shared loop on real imagery
(`configs/ediffsr.yaml`).

Training pairs: a real high-resolution tile and its low-resolution version made by the
chosen degradation: "bicubic" (anti-aliased bicubic downsampling), "blur_noise_jpeg"
(Gaussian blur of random width, downsampling, Gaussian noise, JPEG at random quality; RGB
only for the JPEG part) or "mixed" (each image one or the other, even odds: a model for
both clean and real-world inputs).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from PIL import Image

from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, collate_samples
from earthsynth.errors import InputError
from earthsynth.generation.common import to_pil
from earthsynth.generation.ediffsr.model import EANet
from earthsynth.generation.ediffsr.pipeline import EDiffSRPipeline
from earthsynth.generation.ediffsr.scheduler import MeanRevertingScheduler
from earthsynth.registry import Family
from earthsynth.weights import use_safetensors

DEGRADATIONS = ("bicubic", "blur_noise_jpeg", "mixed")


@dataclass
class EDiffSRModelConfig:
    bands: int = 3
    scale: int = 4
    width: int = 32
    encoder_blocks: list[int] = field(default_factory=lambda: [1, 1, 2])
    middle_blocks: int = 2
    decoder_blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    prior_width: int = 16
    prior_blocks: int = 2
    stationary_std: float = 0.2  # lambda of the mean-reverting SDE, in [-1, 1] image units
    diffusion_steps: int = 100
    prediction_type: str = "sample"  # the model predicts x_0 - mu ("sample") or the noise ("epsilon")
    schedule: str = "mean_reverting"  # or "ddpm": plain diffusion of the residual x - bicubic (DDIM sampling)
    degradation: str = "bicubic"  # or blur_noise_jpeg, or mixed (each image one of the two)
    regressor: bool = False  # train the same EANet as a one-pass L1 regressor (the benchmark baseline)
    init_from: str = ""  # an exported ediffsr pipeline folder to fine-tune (its EANet; the sizes above follow it)
    preview_steps: int = 10


def build(config) -> dict:
    mc = config.model
    if mc.scale not in (2, 4):
        raise InputError("model.scale", f"must be 2 or 4, got {mc.scale}")
    if mc.degradation not in DEGRADATIONS:
        raise InputError("model.degradation", f"must be one of {', '.join(DEGRADATIONS)}, got {mc.degradation!r}")
    if mc.init_from:
        folder = Path(mc.init_from)
        if not (folder / "eanet" / "config.json").exists():
            raise InputError(folder, "not an exported ediffsr pipeline (no eanet/config.json)")
        eanet = EANet.from_pretrained(folder / "eanet", use_safetensors=use_safetensors(folder / "eanet"))
        if (eanet.config.bands, eanet.config.scale) != (mc.bands, mc.scale):
            raise InputError(folder, f"its EANet takes {eanet.config.bands} bands at x{eanet.config.scale}, "
                                     f"the config asks for {mc.bands} bands at x{mc.scale}")
        # the saved config describes the loaded EANet, not the sizes the config file named
        ec = eanet.config
        mc.width, mc.encoder_blocks, mc.middle_blocks = ec.width, list(ec.encoder_blocks), ec.middle_blocks
        mc.decoder_blocks, mc.prior_width, mc.prior_blocks = list(ec.decoder_blocks), ec.prior_width, ec.prior_blocks
    else:
        eanet = EANet(bands=mc.bands, scale=mc.scale, width=mc.width, encoder_blocks=tuple(mc.encoder_blocks),
                      middle_blocks=mc.middle_blocks, decoder_blocks=tuple(mc.decoder_blocks),
                      prior_width=mc.prior_width, prior_blocks=mc.prior_blocks)
    if config.data.tile_size % (mc.scale * 2 ** len(mc.encoder_blocks)):
        raise InputError("data.tile_size", f"must be a multiple of scale x 2^levels = "
                                           f"{mc.scale * 2 ** len(mc.encoder_blocks)}")
    if mc.schedule == "mean_reverting":
        scheduler = MeanRevertingScheduler(num_train_timesteps=mc.diffusion_steps, stationary_std=mc.stationary_std,
                                           prediction_type=mc.prediction_type)
    elif mc.schedule == "ddpm":
        scheduler = DDPMScheduler(num_train_timesteps=mc.diffusion_steps, beta_schedule="squaredcos_cap_v2",
                                  prediction_type=mc.prediction_type, clip_sample=False)
    else:
        raise InputError("model.schedule", f"must be mean_reverting or ddpm, got {mc.schedule!r}")
    return {"eanet": eanet, "scheduler": scheduler, "config": config}


def dataset(config):
    dc = config.data
    return RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                     overlap=dc.overlap, min_visible=dc.min_visible, exclude_test_area=dc.exclude_test_area)


def degrade(high: torch.Tensor, scale: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, H/scale, W/scale) in [0, 1]; kind one of DEGRADATIONS."""
    if kind == "mixed":
        harder = torch.rand(high.shape[0], generator=generator) < 0.5
        low = degrade(high, scale, "bicubic")
        if harder.any():
            low[harder] = degrade(high[harder], scale, "blur_noise_jpeg", generator)
        return low
    if kind == "bicubic":
        return F.interpolate(high, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
    out = []
    for image in high:
        sigma = float(torch.empty(1).uniform_(0.2, 1.6, generator=generator))
        radius = max(1, int(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-x**2 / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        c = image.shape[0]
        blurred = F.conv2d(F.pad(image[None], (radius,) * 4, mode="reflect"), kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                           groups=c)
        blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        low = F.interpolate(blurred, scale_factor=1 / scale, mode="bicubic", antialias=True)[0]
        low = low + torch.randn(low.shape, generator=generator) * float(torch.empty(1).uniform_(0, 0.03, generator=generator))
        low = low.clamp(0, 1)
        if c == 3:
            quality = int(torch.randint(40, 95, (1,), generator=generator))
            buffer = io.BytesIO()
            Image.fromarray((low.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, "JPEG",
                                                                                                 quality=quality)
            low = torch.from_numpy(np.asarray(Image.open(buffer)).copy()).permute(2, 0, 1).float() / 255
        out.append(low)
    return torch.stack(out)


def loss(components: dict, batch: dict) -> torch.Tensor:
    mc = components["config"].model
    eanet, scheduler = components["eanet"], components["scheduler"]
    high = random_flips(batch["image"][:, : mc.bands].float(), transpose=True)
    low = degrade(high.cpu(), mc.scale, mc.degradation).to(high.device)
    high, low = high * 2 - 1, low * 2 - 1
    condition = eanet.condition(low)
    mean = condition[:, : mc.bands]
    if mc.regressor:
        zero = torch.zeros(high.shape[0], dtype=torch.long, device=high.device)
        return F.l1_loss(mean + eanet(mean, zero, condition=condition), high)
    noise = torch.randn_like(high)
    timesteps = torch.randint(0, mc.diffusion_steps, (high.shape[0],), device=high.device)
    if isinstance(scheduler, MeanRevertingScheduler):
        noisy = scheduler.add_noise(high, noise, timesteps, mean)
    else:  # plain diffusion of the residual
        noisy = mean + scheduler.add_noise(high - mean, noise, timesteps)
    target = high - mean if scheduler.config.prediction_type == "sample" else noise
    return F.mse_loss(eanet(noisy, timesteps, condition=condition), target)


def make_pipeline(components: dict) -> EDiffSRPipeline:
    scheduler = components["scheduler"]
    if not isinstance(scheduler, MeanRevertingScheduler):  # few-step sampling of the trained DDPM
        scheduler = DDIMScheduler.from_config(scheduler.config)
    pipe = EDiffSRPipeline(eanet=components["eanet"], scheduler=scheduler,
                           regressor=components["config"].model.regressor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview(components: dict, config, generator: torch.Generator):
    """Four validation tiles: low resolution (bicubic), upscaled, truth."""
    eanet = components["eanet"]
    was_training = eanet.training
    eanet.eval()
    tiles = RealTiles("val", tile_size=config.data.tile_size, gsd_factors=config.data.gsd_factors)
    high = torch.stack([tiles[i]["image"] for i in range(min(4, len(tiles)))])[:, : config.model.bands]
    low = degrade(high, config.model.scale, "bicubic")
    out = make_pipeline(components)(low, num_inference_steps=config.model.preview_steps, generator=generator).images
    eanet.train(was_training)
    bicubic = F.interpolate(low, scale_factor=config.model.scale, mode="bicubic").clamp(0, 1)
    rows = [bicubic, out, high]
    return [image for row in rows for image in to_pil(row[:, :3] * 2 - 1)]


def export(components: dict, config, directory: Path) -> None:
    make_pipeline(components).save_pretrained(Path(directory))


FAMILY = Family(
    name="ediffsr",
    model_config=EDiffSRModelConfig,
    build=build,
    trainable=("eanet",),
    dataset=dataset,
    collate=collate_samples,
    loss=loss,
    preview=preview,
    export=export,
    description="x2 / x4 super-resolution: EANet + CPEM prior, mean-reverting SDE",
)

"""Training of the hsi family (3D latent diffusion denoising of hyperspectral cubes).

Three training stages, each a config for `earthsynth train`:
  1. family "hsi_autoencoder" (configs/hsi_autoencoder.yaml): the 3D autoencoder on clean cubes;
  2. family "hsi" (configs/hsi.yaml): the latent denoiser, the condition encoder and the
     full-resolution refiner on noisy/clean pairs with one simple noise kind per batch, the
     autoencoder frozen;
  3. family "hsi" again (configs/hsi_finetune.yaml): fine-tuning from stage 2 on the
     harder mixture of every noise kind at higher strength (with the robust low-rank
     refiner, it scored lower on validation than stage 2); or, as the bundled model does,
     configs/hsi_detector.yaml: the stage-2 refiner gets a learned outlier detector and is
     trained alone (refiner_only) on every kind, the mixture twice as often.
Clean cubes: earthsynth.data.hsi_scenes (earthlib spectra under abundance maps from real
scenes); noise: earthsynth.data.hsi_noise. Every batch is resampled to a band count drawn
from `train_bands`, so the 3D convolutions learn more than one spectral sampling.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from earthsynth.data.hsi_noise import NOISE_KINDS, add_noise
from earthsynth.data.hsi_scenes import SyntheticCubes, collate_cubes, resample_bands
from earthsynth.errors import InputError
from earthsynth.generation.common import to_pil
from earthsynth.generation.hsi.lowrank import spectral_noise_sigmas
from earthsynth.generation.hsi.model import (
    HSIAutoencoder,
    HSIConditionEncoder,
    HSIRefiner,
    LatentDenoiser3D,
)
from earthsynth.generation.hsi.pipeline import HSIDenoisePipeline, normalisation
from earthsynth.registry import Family
from earthsynth.weights import use_safetensors


@dataclass
class HSIModelConfig:
    latent_channels: int = 4
    base_channels: int = 16
    hidden_channels: int = 32
    blocks: int = 2
    decoder_channels: int = 8
    condition_channels: int = 8
    denoiser_width: int = 32
    denoiser_blocks: int = 2
    refiner_channels: int = 16
    refiner_blocks: int = 2
    subspace_ranks: list[int] = field(default_factory=lambda: [3, 4, 6])  # the refiner's low-rank estimates
    base_rank: int = 4  # the estimate the refiner corrects (one of subspace_ranks)
    outlier_threshold: float = 3.0  # robust deviations beyond which a value is an outlier
    eigenimage_rank: int = 0  # > 0: the refiner starts from this rank's fit with denoised eigen-images
    eigenimage_channels: int = 32  # width of the refiner's eigen-image denoiser
    eigenimage_loss_weight: float = 1.0  # log band error of the cube rebuilt from the denoised eigen-images
    detector_channels: int = 0  # > 0: the refiner flags sparse noise with a learned OutlierDetector first
    detector_loss_weight: float = 1.0  # its binary cross-entropy against the values the noise hit
    refiner_only: bool = False  # train the refiner alone (the latent model runs, frozen, to feed it)
    train_bands: list[int] = field(default_factory=lambda: [31, 64])  # one drawn per batch
    # stage 2/3
    autoencoder: str = ""  # folder of the stage-1 export (its autoencoder/ subfolder or itself)
    init_from: str = ""  # stage 3: folder of the stage-2 export to fine-tune
    noise_kinds: list[str] = field(default_factory=lambda: ["gaussian", "stripes", "deadlines", "impulse"])
    noise_strength: list[float] = field(default_factory=lambda: [0.5, 1.0])  # drawn uniformly per batch
    diffusion_steps: int = 100
    start_from_noisy: float = 0.5  # fraction of samples noised from the noisy cube's latent (as in sampling)
    pixel_loss_weight: float = 1.0
    preview_steps: int = 4
    preview_strength: float = 0.5


def dataset(config):
    dc = config.data
    return SyntheticCubes(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, overlap=dc.overlap)


def training_cubes(batch: dict, config) -> torch.Tensor:
    """Clean cubes of the batch at one band count drawn from train_bands, randomly flipped."""
    bands = config.model.train_bands[int(torch.randint(len(config.model.train_bands), (1,)))]
    cube = resample_bands(batch["cube"].float(), bands)
    if torch.rand(()) < 0.5:
        cube = cube.flip(-1)
    if torch.rand(()) < 0.5:
        cube = cube.transpose(-1, -2)
    return cube


# ----------------------------------------------------------------------------- stage 1
def build_autoencoder(config) -> dict:
    mc = config.model
    autoencoder = HSIAutoencoder(latent_channels=mc.latent_channels, base_channels=mc.base_channels,
                                 hidden_channels=mc.hidden_channels, blocks=mc.blocks,
                                 decoder_channels=mc.decoder_channels)
    return {"autoencoder": autoencoder, "config": config}


def autoencoder_loss(components: dict, batch: dict) -> torch.Tensor:
    cube = training_cubes(batch, components["config"])
    reconstruction = components["autoencoder"](cube)
    return F.l1_loss(reconstruction, cube) + F.mse_loss(reconstruction, cube)


def export_autoencoder(components: dict, config, directory: Path) -> None:
    """Save the autoencoder with the scaling factor that gives its latents unit variance."""
    autoencoder = components["autoencoder"]
    cubes = SyntheticCubes(config.data.split, config.data.tile_size, config.data.sources)
    sample = torch.stack([cubes[i]["cube"] for i in range(0, len(cubes), max(1, len(cubes) // 32))][:32])
    with torch.no_grad():
        latent = autoencoder.encode(resample_bands(sample, config.model.train_bands[0]).to(autoencoder.device))
    original = autoencoder.config.scaling_factor
    autoencoder.register_to_config(scaling_factor=original / float(latent.std()))
    autoencoder.save_pretrained(Path(directory) / "autoencoder")
    autoencoder.register_to_config(scaling_factor=original)  # the live model is unchanged


def preview_cubes(config) -> torch.Tensor:
    """The first four validation cubes at the first training band count, for the previews."""
    cubes = SyntheticCubes("val", config.data.tile_size)
    return resample_bands(torch.stack([cubes[i]["cube"] for i in range(4)]), config.model.train_bands[0])


def preview_autoencoder(components: dict, config, generator: torch.Generator):
    clean = preview_cubes(config)
    autoencoder = components["autoencoder"]
    with torch.no_grad():
        reconstruction = autoencoder(clean.to(autoencoder.device)).cpu()
    return false_colour([clean, reconstruction])


def false_colour(rows: list[torch.Tensor]):
    """Rows of (N, B, H, W) cubes -> PIL images of three bands spread over the spectrum."""
    images = []
    for cube in rows:
        bands = cube.shape[1]
        picks = [round(bands * f) for f in (0.55, 0.25, 0.12)]  # short-wave IR, red-ish, green-ish
        rgb = cube[:, picks].clamp(0, 1)
        images += to_pil(rgb / rgb.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * 2 - 1)
    return images


# ----------------------------------------------------------------------------- stages 2 and 3
def load_autoencoder(path: str) -> HSIAutoencoder:
    if not path:
        raise InputError("model.autoencoder", "stage 2 needs the folder of the stage-1 export "
                                              "(earthsynth train configs/hsi_autoencoder.yaml)")
    folder = Path(path)
    folder = folder / "autoencoder" if (folder / "autoencoder").is_dir() else folder
    if not (folder / "config.json").exists():
        raise InputError(folder, "not an exported hsi autoencoder (no config.json)")
    return HSIAutoencoder.from_pretrained(folder, use_safetensors=use_safetensors(folder))


def build(config) -> dict:
    mc = config.model
    unknown = [k for k in mc.noise_kinds if k not in NOISE_KINDS]
    if unknown or not mc.noise_kinds:
        raise InputError("model.noise_kinds", f"{unknown or 'empty'}: choose from {', '.join(NOISE_KINDS)}")
    if mc.init_from:  # stage 3: everything from the stage-2 export
        folder = Path(mc.init_from)
        if not (folder / "model_index.json").exists():
            raise InputError(folder, "not an exported hsi pipeline (no model_index.json)")
        safetensors = use_safetensors(folder)  # pickled weights refused unless allowed
        autoencoder = HSIAutoencoder.from_pretrained(folder / "autoencoder", use_safetensors=safetensors)
        condition_encoder = HSIConditionEncoder.from_pretrained(folder / "condition_encoder", use_safetensors=safetensors)
        denoiser = LatentDenoiser3D.from_pretrained(folder / "denoiser", use_safetensors=safetensors)
        refiner = HSIRefiner.from_pretrained(folder / "refiner", use_safetensors=safetensors)
        if mc.detector_channels and not refiner.config.detector_channels:  # add a fresh detector
            settings = {k: v for k, v in refiner.config.items() if not k.startswith("_")}
            grown = HSIRefiner(**{**settings, "detector_channels": mc.detector_channels})
            grown.load_state_dict(refiner.state_dict(), strict=False)
            refiner = grown
    else:
        autoencoder = load_autoencoder(mc.autoencoder)
        condition_encoder = HSIConditionEncoder(out_channels=mc.condition_channels,
                                                base_channels=autoencoder.config.base_channels,
                                                hidden_channels=autoencoder.config.hidden_channels,
                                                blocks=autoencoder.config.blocks)
        # start from the autoencoder's encoder: it already reads cubes; only the output differs
        weights = {k: v for k, v in autoencoder.encoder.state_dict().items() if not k.startswith("conv_out")}
        condition_encoder.encoder.load_state_dict(weights, strict=False)
        denoiser = LatentDenoiser3D(latent_channels=autoencoder.config.latent_channels,
                                    condition_channels=mc.condition_channels, width=mc.denoiser_width,
                                    blocks_per_level=mc.denoiser_blocks)
        refiner = HSIRefiner(channels=mc.refiner_channels, blocks=mc.refiner_blocks,
                             subspace_ranks=tuple(mc.subspace_ranks), base_rank=mc.base_rank,
                             outlier_threshold=mc.outlier_threshold, eigenimage_rank=mc.eigenimage_rank,
                             eigenimage_channels=mc.eigenimage_channels, detector_channels=mc.detector_channels)
    record_loaded_sizes(mc, autoencoder, condition_encoder, denoiser, refiner)
    autoencoder.requires_grad_(False).eval()
    scheduler = DDPMScheduler(num_train_timesteps=mc.diffusion_steps, beta_schedule="squaredcos_cap_v2",
                              prediction_type="sample", clip_sample=False)
    return {"autoencoder": autoencoder, "condition_encoder": condition_encoder, "denoiser": denoiser,
            "refiner": refiner, "scheduler": scheduler, "config": config}


def record_loaded_sizes(mc: HSIModelConfig, autoencoder, condition_encoder, denoiser, refiner) -> None:
    """Copy the sizes of the modules as built (loaded ones keep their own) into the model
    config, so the run's saved config describes the model it trained, not the defaults."""
    ae = autoencoder.config
    mc.latent_channels, mc.base_channels, mc.hidden_channels = ae.latent_channels, ae.base_channels, ae.hidden_channels
    mc.blocks, mc.decoder_channels = ae.blocks, ae.decoder_channels
    mc.condition_channels = condition_encoder.config.out_channels
    mc.denoiser_width, mc.denoiser_blocks = denoiser.config.width, denoiser.config.blocks_per_level
    rc = refiner.config
    mc.refiner_channels, mc.refiner_blocks = rc.channels, rc.blocks
    mc.subspace_ranks, mc.base_rank, mc.outlier_threshold = list(rc.subspace_ranks), rc.base_rank, rc.outlier_threshold
    mc.eigenimage_rank, mc.eigenimage_channels = rc.eigenimage_rank, rc.eigenimage_channels
    mc.detector_channels = rc.detector_channels


def noisy_pairs(batch: dict, config) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean, noisy) normalised as the pipeline normalises, one noise kind and strength per batch."""
    mc = config.model
    clean = training_cubes(batch, config)
    kind = mc.noise_kinds[int(torch.randint(len(mc.noise_kinds), (1,)))]
    strength = float(torch.empty(()).uniform_(*mc.noise_strength))
    noisy, _params = add_noise(clean, kind, strength=strength)
    offset, scale = normalisation(noisy)
    return (clean - offset) / scale, (noisy - offset) / scale


def loss(components: dict, batch: dict) -> torch.Tensor:
    mc = components["config"].model
    autoencoder, denoiser, scheduler = components["autoencoder"], components["denoiser"], components["scheduler"]
    clean, noisy = noisy_pairs(batch, components["config"])
    autoencoder.to(clean.device)
    with torch.no_grad():
        clean_latent = autoencoder.encode(clean)
        noisy_latent = autoencoder.encode(noisy)
    with torch.no_grad() if mc.refiner_only else contextlib.nullcontext():
        condition = components["condition_encoder"](noisy)
        # the sampler starts from the noisy cube's latent: train on that start too
        from_noisy = (torch.rand(clean.shape[0], device=clean.device) < mc.start_from_noisy)[:, None, None, None, None]
        start = torch.where(from_noisy, noisy_latent, clean_latent)
        timesteps = torch.randint(0, mc.diffusion_steps, (clean.shape[0],), device=clean.device)
        sample = scheduler.add_noise(start, torch.randn_like(start), timesteps)
        predicted = denoiser(sample, timesteps, condition)
        total = 0.0 if mc.refiner_only else F.mse_loss(predicted, clean_latent)
        # the pixel loss reaches the denoiser through the frozen decoder and trains the refiner
        decoded = autoencoder.decode(predicted, tuple(clean.shape[-3:]))
    refined = components["refiner"].refine(noisy, decoded)
    total = total + mc.pixel_loss_weight * F.l1_loss(refined.cube, clean)
    if refined.fit is not None and mc.eigenimage_loss_weight > 0:
        total = total + mc.eigenimage_loss_weight * eigenimage_loss(refined.fit, refined.eigenimages, clean)
    if refined.outlier_logits is not None and mc.detector_loss_weight > 0:
        total = total + mc.detector_loss_weight * F.binary_cross_entropy_with_logits(
            refined.outlier_logits, sparse_noise_mask(noisy, clean).to(refined.outlier_logits.dtype))
    return total


def sparse_noise_mask(noisy: torch.Tensor, clean: torch.Tensor, threshold: float = 2.5) -> torch.Tensor:
    """The detector's target: values farther from the clean cube than `threshold` times their
    band's noise std (estimated robustly, as the refiner's fit does): what the Gaussian part
    of the noise rarely reaches and impulses, dead values and most stripes do."""
    sigmas = spectral_noise_sigmas(noisy).to(noisy.dtype)[..., None, None]
    return (noisy - clean).abs() > threshold * sigmas


def eigenimage_loss(fit, eigenimages: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The mean over cubes and bands of the log of each band's squared error in the whitened
    space, where the denoised eigen-images rebuild the cube (the clean cube's own eigen-images
    are the target). Whitening divides a band's error by its noise std, so the log error
    differs from the band's log error on the cube's own scale by a constant: this is band
    PSNR, the benchmark's metric, up to sign and scale. Errors are compared in the cube's
    bands, not per eigen-image, because structured noise (a stripe in one band) spreads over
    every eigen-image and only cancels where they are summed back."""
    error = fit.basis.to(eigenimages.dtype) @ (eigenimages - fit.project(clean).to(eigenimages.dtype)).flatten(2)
    # the floor keeps a band already fitted exactly from pulling the log (and its gradient) to infinity
    return torch.log(error.pow(2).mean(-1) + 1e-4).mean()


def make_pipeline(components: dict) -> HSIDenoisePipeline:
    pipe = HSIDenoisePipeline(autoencoder=components["autoencoder"], condition_encoder=components["condition_encoder"],
                              denoiser=components["denoiser"], refiner=components["refiner"],
                              scheduler=DDIMScheduler.from_config(components["scheduler"].config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preview(components: dict, config, generator: torch.Generator):
    """Four validation cubes in false colour: noisy (mixture), denoised, clean."""
    clean = preview_cubes(config)
    noisy, _params = add_noise(clean, "mixture", generator=generator)
    pipe = make_pipeline(components)
    was_training = pipe.denoiser.training
    for module in (pipe.denoiser, pipe.condition_encoder, pipe.refiner):
        module.eval()
    denoised = torch.stack([pipe(c, config.model.preview_steps, config.model.preview_strength, generator=generator,
                                 output_type="pt").cube.cpu() for c in noisy])
    for module in (pipe.denoiser, pipe.condition_encoder, pipe.refiner):
        module.train(was_training)
    return false_colour([noisy, denoised, clean])


def export(components: dict, config, directory: Path) -> None:
    make_pipeline(components).save_pretrained(Path(directory))


AUTOENCODER_FAMILY = Family(
    name="hsi_autoencoder",
    model_config=HSIModelConfig,
    build=build_autoencoder,
    trainable=("autoencoder",),
    dataset=dataset,
    collate=collate_cubes,
    loss=autoencoder_loss,
    preview=preview_autoencoder,
    export=export_autoencoder,
    description="hsi stage 1: 3D autoencoder of clean hyperspectral cubes",
)

FAMILY = Family(
    name="hsi",
    model_config=HSIModelConfig,
    build=build,
    trainable=("condition_encoder", "denoiser", "refiner"),
    dataset=dataset,
    collate=collate_cubes,
    loss=loss,
    preview=preview,
    export=export,
    description="hsi stages 2-3: 3D latent diffusion denoiser of hyperspectral cubes, any band count",
)

"""What latent diffusion costs: one 256 px latent text2earth image against one 64 px pixel
image of today's bundled model, the VAE decode's share, and the cost per denoising step
against diffusers' own StableDiffusionPipeline running the same UNet and VAE, side by side.

    .venv/bin/python benchmarks/latent_cost.py [--vae DIR] [--steps 20] [--repeats 3]

The latent UNet has the bundled text2earth UNet's widths, levels and attention (so only the
grid it runs on changes: 64 x 64 x 4 latents of a 256 px image instead of 64 x 64 x 3 pixels);
the VAE is an exported autoencoder (--vae) or, by default, one of configs/autoencoder.yaml's
architecture with fresh weights (cost does not depend on training). Text embeddings are
computed once and passed in, so the rows time the UNet, scheduler and VAE only. Goals of the
latent issue: 256 px latent image <= 1.2 x the 64 px pixel image; per step <= 1.05 x diffusers'.
Timings: best of --repeats, float32 and bf16 autocast, this machine's threads.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

from earthsynth.generation.autoencoder import build_autoencoder, load_autoencoder
from earthsynth.generation.autoencoder.train import AutoencoderModelConfig
from earthsynth.generation.latents import decode
from earthsynth.generation.metadata_unet import MetadataUNet
from earthsynth.generation.text2earth import Text2EarthPipeline
from earthsynth.jobs.load import bundled_checkpoint

PROMPT = "NEON airborne RGB orthophoto, Yellowstone National Park, dense vegetation"


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def latent_unet(pixel_unet: MetadataUNet, latent_channels: int) -> MetadataUNet:
    config = dict(pixel_unet.config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(in_channels=latent_channels, out_channels=latent_channels)
    return MetadataUNet(**config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default="", help="an exported autoencoder (default: fresh weights)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    pixel = Text2EarthPipeline.from_pretrained(bundled_checkpoint("text2earth"))
    pixel.set_progress_bar_config(disable=True)
    if args.vae:
        vae = load_autoencoder(args.vae).eval()
    else:
        mc = AutoencoderModelConfig()
        vae = build_autoencoder(mc.block_out_channels, mc.layers_per_block, mc.latent_channels).eval()
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    size = pixel.unet.config.sample_size * f
    unet = latent_unet(pixel.unet, vae.config.latent_channels)
    latent = Text2EarthPipeline(unet=unet, scheduler=pixel.scheduler, vae=vae)
    latent.set_text_conditioner(pixel.text_conditioner)
    latent.set_progress_bar_config(disable=True)
    embeds, mask, negative, negative_mask = pixel.encode_prompt(PROMPT)
    common = {"prompt_embeds": embeds, "prompt_attention_mask": mask, "negative_prompt_embeds": negative,
              "negative_prompt_attention_mask": negative_mask, "gsd": 0.1, "num_inference_steps": args.steps}

    # diffusers' own pipeline with the same UNet weights (without the metadata embedding) and VAE
    sd_unet = UNet2DConditionModel(**{k: v for k, v in unet.unet.config.items()
                                      if not k.startswith("_") and k != "class_embed_type"}).eval()
    sd_unet.load_state_dict(unet.unet.state_dict())
    scheduler = DPMSolverMultistepScheduler.from_config(pixel.scheduler.config)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=sd_unet, scheduler=scheduler,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)

    rows = []
    for precision in ("float32", "bf16 autocast"):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "float32")
        with torch.no_grad(), autocast:
            t_pixel = best_time(lambda: pixel(height=size // f, width=size // f, output_type="np", **common),
                                args.repeats)
            t_loop = best_time(lambda: latent(height=size, width=size, output_type="latent", **common), args.repeats)
            latents = latent(height=size, width=size, output_type="latent", **common).images
            t_decode = best_time(lambda latents=latents: decode(vae, latents), args.repeats)
            t_sd = best_time(lambda: sd(prompt_embeds=embeds, negative_prompt_embeds=negative, height=size,
                                        width=size, num_inference_steps=args.steps, guidance_scale=4.0,
                                        output_type="latent"), args.repeats)
        rows.append((precision, t_pixel, t_loop, t_decode, t_sd))

    print(f"\ntext2earth UNet (bundled widths {list(pixel.unet.config.block_out_channels)}), {args.steps} steps with "
          f"guidance, 1 image, VAE f={f} ({sum(p.numel() for p in vae.parameters()) / 1e6:.1f} M parameters)")
    print(f"| precision | pixel {size // f} px s/image | latent {size} px s/image | ratio (goal <= 1.2) | "
          "VAE decode share | ours s/step | diffusers SD s/step | ratio (goal <= 1.05) |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, t_pixel, t_loop, t_decode, t_sd in rows:
        total = t_loop + t_decode
        print(f"| {precision} | {t_pixel:.2f} | {total:.2f} | {total / t_pixel:.2f} | {t_decode / total:.0%} | "
              f"{t_loop / args.steps:.3f} | {t_sd / args.steps:.3f} | {t_loop / t_sd:.2f} |")


if __name__ == "__main__":
    main()

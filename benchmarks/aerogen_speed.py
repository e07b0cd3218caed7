"""Cost of one AeroGenPipeline denoising step against diffusers' StableDiffusionPipeline, and
images per second in the demo setting, side by side in one process. Prints markdown tables.

    .venv/bin/python benchmarks/aerogen_speed.py [--steps 20] [--batch 16] [--size 64] [--repeats 3] [--threads 2]

About 3 minutes with the defaults on 2 idle cores. On a machine other processes keep busy, use
--threads 1: oversubscribed OpenMP threads make every step several times slower (and noisier);
absolute times are then inflated, the ratios measured side by side still hold.

The aerogen model is the bundled checkpoint when there is one, else configs/aerogen.yaml with
random weights (the cost of a step does not depend on the weights).

1. Per-step cost. What is compared is the denoising step at the same spatial size: the SD
   UNet is a UNet2DConditionModel with the inner aerogen UNet's config (block_out_channels,
   layers_per_block, block types, attention_head_dim, cross_attention_dim, norm groups) but
   4 input/output channels, run on size x size latents (its tiny AutoencoderKL has one level,
   so a vae scale factor of 1, and output_type="latent" skips decoding). So the comparison is
   aerogen's layout cross-attention, mask attention, layout canvas and pipeline code against
   a plain SD step on the same grid, not pixel space against a latent space. Both pipelines
   run classifier-free guidance at scale 4 (two passes per step, batched into one UNet call),
   on the same batch, the same text embeddings (aerogen's own MiniLM tokens, given to SD as
   prompt_embeds / negative_prompt_embeds, so SD needs no tokenizer), one generator per image,
   fp32, the same DPM-Solver++ scheduler config (SD's with steps_offset 1, which SD forces)
   and the same threads. Each pipeline is called with steps // 2 and with `steps` steps;
   per-step cost = (median time of the long call - median time of the short one) /
   (steps - steps // 2), which removes the fixed costs (text and layout encoding, noise,
   output). The calls are interleaved, so background load hits both alike. Extra row: aerogen
   with layout_guidance_scale set (three passes per step), still against SD's two.
2. Images per second: full AeroGenPipeline calls of `steps` steps on `batch` images of
   size x size with realistic layouts (a LayoutSampler fitted on the real training tiles, half
   augmented real layouts, half sampled) and captions in the training format; the defaults
   are the demo / `earthsynth augment` setting. This is the median of the long calls above.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from earthsynth.augment.layouts import LayoutSampler, real_layout_records
from earthsynth.config import load_config
from earthsynth.data.captions import make_caption
from earthsynth.data.tiles import RealTiles
from earthsynth.errors import InputError
from earthsynth.generation.aerogen import AeroGenPipeline
from earthsynth.generation.aerogen.train import FAMILY, make_pipeline
from earthsynth.jobs.load import bundled_checkpoint

GUIDANCE = 4.0  # the pipeline's and `earthsynth augment`'s default
LAYOUT_GUIDANCE = 2.0  # any value turns on the third pass; the value does not change the cost


def load_aerogen(config_path: str) -> tuple[AeroGenPipeline, str]:
    """The bundled aerogen pipeline, or one built from the config with random weights."""
    try:
        pipe = AeroGenPipeline.from_pretrained(bundled_checkpoint("aerogen"))
        source = "bundled checkpoint"
    except InputError:
        pipe = make_pipeline(FAMILY.build(load_config(config_path)))
        source = f"{config_path}, random weights (no bundled checkpoint)"
    pipe.unet.eval()
    pipe.layout_encoder.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, source


def build_sd(unet_config, scheduler_config) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline whose UNet has the given UNet2DConditionModel config with 4
    channels in and out and no class embedding, a one-level VAE (scale factor 1), a tiny CLIP
    text model that is never called (prompt embeddings are given) and the same scheduler config."""
    unet_config = dict(unet_config)
    unet = UNet2DConditionModel.from_config({**unet_config, "in_channels": 4, "out_channels": 4,
                                             "class_embed_type": None}).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=8).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=unet_config["cross_attention_dim"], intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=1, vocab_size=100,
                                                max_position_embeddings=77, pad_token_id=0, bos_token_id=1,
                                                eos_token_id=2)).eval()
    # steps_offset=1: StableDiffusionPipeline rewrites it to 1 anyway, with a warning
    scheduler = DPMSolverMultistepScheduler.from_config(scheduler_config, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def demo_requests(batch: int, size: int, max_objects: int) -> tuple[list[str], list]:
    """Prompts and layouts as `earthsynth augment` makes them from the real training tiles."""
    tiles = RealTiles("train", tile_size=64, gsd_factors=(2,))
    sampler = LayoutSampler.fit(real_layout_records(tiles))
    # 30: `earthsynth augment`'s default max_objects
    layouts = sampler.sample(batch, np.random.default_rng(0), size, size, max_objects=min(30, max_objects))
    rng = np.random.default_rng(1)
    prompts = []
    for layout in layouts:
        tile = tiles.tiles[int(rng.integers(len(tiles.tiles)))]
        prompts.append(make_caption(tile.source.description, tile.gsd, layout.boxes.class_counts(), tile.land_cover))
    return prompts, [layout.boxes for layout in layouts]


def parameters(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def time_variants(variants: dict, short: int, long: int, repeats: int) -> tuple[dict, dict]:
    """variants: name -> (call(steps), ...). Warm every call up, then time each at `short` and
    `long` steps, `repeats` times, interleaved so a drift in the machine's speed hits all of
    them alike -> (seconds per step of each: the median long call minus the median short one
    over the step difference, which cancels the fixed cost of a call; the raw times by
    (name, steps))."""
    for call, *_ in variants.values():  # warm-up: caches, allocator, oneDNN kernels
        call(2)
    times = {(name, steps): [] for name in variants for steps in (short, long)}
    for _ in range(repeats):
        for steps in (short, long):
            for name, (call, *_) in variants.items():
                start = time.perf_counter()
                call(steps)
                times[name, steps].append(time.perf_counter() - start)
    per_step = {name: (statistics.median(times[name, long]) - statistics.median(times[name, short])) / (long - short)
                for name in variants}
    return per_step, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/aerogen.yaml", help="model config when there is no bundled checkpoint")
    parser.add_argument("--steps", type=int, default=20, help="steps of the long call (the short one has steps // 2)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1 or args.batch < 1:
        parser.error("need --steps >= 2, --repeats >= 1 and --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    aerogen, source = load_aerogen(args.config)
    sd = build_sd(aerogen.unet.unet.config, aerogen.scheduler.config)
    prompts, layouts = demo_requests(args.batch, args.size, aerogen.layout_encoder.config.max_objects)
    text, _, null_text, _ = aerogen.encode_prompt(prompts, aerogen.device, 1, True)  # negative prompt: ""

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(args.batch)]

    def run_aerogen(steps, layout_guidance=None):
        aerogen(prompts, layouts, None, args.size, args.size, steps, GUIDANCE, layout_guidance_scale=layout_guidance,
                generator=generators(), output_type="pt")

    def run_sd(steps):
        sd(prompt_embeds=text, negative_prompt_embeds=null_text, height=args.size, width=args.size,
           num_inference_steps=steps, guidance_scale=GUIDANCE, generator=generators(), output_type="latent")

    variants = {  # name -> (call, UNet passes per step)
        "StableDiffusionPipeline (diffusers)": (run_sd, 2),
        "AeroGenPipeline, CFG (default)": (run_aerogen, 2),
        "AeroGenPipeline, + layout guidance": (lambda steps: run_aerogen(steps, LAYOUT_GUIDANCE), 3),
    }
    short, long = args.steps // 2, args.steps
    per_step, times = time_variants(variants, short, long, args.repeats)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch {args.batch}, "
          f"{args.size}x{args.size}, guidance {GUIDANCE}, calls of {short} and {long} steps, median of {args.repeats}")
    print(f"aerogen: {source}; UNet {parameters(aerogen.unet):.2f} M parameters "
          f"(SD UNet of the same config: {parameters(sd.unet):.2f} M)")
    print()
    print("| pipeline | UNet passes | ms / step | ms / step / image | ratio to SD |")
    print("|---|---|---|---|---|")
    reference = per_step["StableDiffusionPipeline (diffusers)"]
    for name, (_, passes) in variants.items():
        ms = per_step[name] * 1000
        print(f"| {name} | {passes} | {ms:.1f} | {ms / args.batch:.2f} | {per_step[name] / reference:.2f} |")
    if min(per_step.values()) <= 0:
        print("\nnoisy: a long call was not slower than the short one; raise --steps or --repeats")
    print()
    demo = statistics.median(times["AeroGenPipeline, CFG (default)", long])
    print("| setting | s / call | images / s |")
    print("|---|---|---|")
    print(f"| AeroGenPipeline, {args.batch} images of {args.size}x{args.size}, {long} steps, CFG | "
          f"{demo:.2f} | {args.batch / demo:.2f} |")


if __name__ == "__main__":
    main()

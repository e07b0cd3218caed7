"""Cost of one text2earth and one crsdiff denoising step against diffusers'
StableDiffusionPipeline with the same UNet size, side by side in one process. Prints a
markdown table.

    .venv/bin/python benchmarks/metadata_speed.py [--steps 20] [--batch 8] [--size 64] [--repeats 3] [--threads 2]

About 3 minutes with the defaults on 2 idle cores (use --threads 1 on a busy machine: the
ratios measured side by side still hold). Models: the bundled checkpoints when there are
some, else configs/<family>.yaml with random weights (a step costs the same).

Method as in benchmarks/aerogen_speed.py: the SD UNet is a UNet2DConditionModel with the
family's inner UNet config (no class embedding, 4 channels) on size x size latents behind a
one-level VAE, output_type="latent"; both run classifier-free guidance at 4 (two passes per
step in one batched UNet call), the same MiniLM prompt embeddings (given to SD as
prompt_embeds), one generator per image, fp32, the same DPM-Solver++ config. Per-step cost
= (median time of a `steps` call - median of a `steps // 2` call) / (steps - steps // 2),
which removes fixed costs (text encoding, crsdiff's control pyramids, which run once per
call because the maps do not change between steps). Calls are interleaved.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from aerogen_speed import build_sd, parameters, time_variants

from earthsynth.config import load_config
from earthsynth.data.control_tiles import ControlTiles
from earthsynth.errors import InputError
from earthsynth.jobs.load import bundled_checkpoint
from earthsynth.registry import get_family

GUIDANCE = 4.0


def load(family: str):
    """The bundled pipeline of a family, or one built from its config with random weights."""
    module = __import__(f"earthsynth.generation.{family}.train", fromlist=["make_pipeline"])
    pipeline_class = module.Text2EarthPipeline if family == "text2earth" else module.CRSDiffPipeline
    try:
        pipe, source = pipeline_class.from_pretrained(bundled_checkpoint(family)), "bundled checkpoint"
    except InputError:
        pipe = module.make_pipeline(get_family(family).build(load_config(f"configs/{family}.yaml")))
        source = f"configs/{family}.yaml, random weights (no bundled checkpoint)"
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1 or args.batch < 1:
        parser.error("need --steps >= 2, --repeats >= 1 and --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    text2earth, t2e_source = load("text2earth")
    crsdiff, crs_source = load("crsdiff")
    if dict(text2earth.unet.unet.config) != dict(crsdiff.unet.unet.config):
        raise SystemExit("the two families' UNet configs differ; compare each with its own SD")
    sd = build_sd(text2earth.unet.unet.config, text2earth.scheduler.config)

    # real prompts and maps: held-out validation tiles (their captions, canny, sketch, DEM-free)
    tiles = ControlTiles("val", tile_size=args.size, gsd_factors=[1], balance_gsd=False)
    samples = [tiles[int(i)] for i in np.linspace(0, len(tiles) - 1, args.batch)]
    prompts = [s["caption"] for s in samples]
    maps = {name: torch.stack([s["controls"][name] for s in samples]) for name in ("canny", "sketch", "content")}
    metadata = [{"gsd": s["metadata"]["gsd"]} for s in samples]
    text, _, null_text, _ = text2earth.encode_prompt(prompts, negative_prompt=[""] * args.batch)

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(args.batch)]

    def run_sd(steps):
        sd(prompt_embeds=text, negative_prompt_embeds=null_text, height=args.size, width=args.size,
           num_inference_steps=steps, guidance_scale=GUIDANCE, generator=generators(), output_type="latent")

    def run_text2earth(steps, gsd_guidance=None):
        text2earth(prompts, gsd=0.2, height=args.size, width=args.size, num_inference_steps=steps,
                   guidance_scale=GUIDANCE, gsd_guidance_scale=gsd_guidance, generator=generators(),
                   output_type="pt")

    def run_crsdiff(steps, names):
        crsdiff(prompts, metadata=metadata, controls={n: maps[n] for n in names}, num_inference_steps=steps,
                guidance_scale=GUIDANCE, generator=generators(), output_type="pt")

    variants = {  # name -> (call, UNet passes per step)
        "StableDiffusionPipeline (diffusers)": (run_sd, 2),
        "Text2EarthPipeline, CFG on text + GSD (default)": (run_text2earth, 2),
        "Text2EarthPipeline, + separate GSD guidance": (lambda s: run_text2earth(s, 2.0), 3),
        "CRSDiffPipeline, 1 map (canny)": (lambda s: run_crsdiff(s, ["canny"]), 2),
        "CRSDiffPipeline, 3 maps (canny, sketch, content)": (lambda s: run_crsdiff(s, ["canny", "sketch", "content"]), 2),
    }
    short, long = args.steps // 2, args.steps
    per_step, _times = time_variants(variants, short, long, args.repeats)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch {args.batch}, "
          f"{args.size}x{args.size}, guidance {GUIDANCE}, calls of {short} and {long} steps, median of {args.repeats}")
    print(f"text2earth: {t2e_source}; crsdiff: {crs_source}")
    print(f"UNet {parameters(text2earth.unet):.2f} M parameters (SD UNet of the same config: {parameters(sd.unet):.2f} M); "
          f"crsdiff control adapter {parameters(crsdiff.control_adapter):.2f} M")
    print()
    print("| pipeline | UNet passes | ms / step | ratio to SD |")
    print("|---|---|---|---|")
    reference = per_step["StableDiffusionPipeline (diffusers)"]
    for name, (_, passes) in variants.items():
        print(f"| {name} | {passes} | {per_step[name] * 1000:.1f} | {per_step[name] / reference:.2f} |")
    if min(per_step.values()) <= 0:
        print("\nnoisy: a long call was not slower than the short one; raise --steps or --repeats")


if __name__ == "__main__":
    main()

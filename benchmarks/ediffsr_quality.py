"""x4 super-resolution on held-out real tiles: bicubic, the same EANet trained as a plain L1
regressor, and EDiffSR at several step counts, side by side; plus EANet's size and cost
against a standard diffusion UNet of the same width.

    .venv/bin/python benchmarks/ediffsr_quality.py [--model DIR] [--regressor DIR] [--steps 5,10,20,50]
        [--degradation bicubic|blur_noise_jpeg]

Held-out tiles: SOAP_061 (validation) and OSBS_029 (the test image), neither trained on,
128 px at 0.1 m/px, and a second test image of another kind, deepforest's drone photo of a
bird colony (finer GSD, never trained on; 16 tiles spread over it), degraded x4 to 32 px by
anti-aliased bicubic (the bundled model's training degradation) or with --degradation
blur_noise_jpeg by blur, noise and JPEG (seeded), scored separately: the step count to use by
default is the one with the best validation PSNR, and the test columns are the figures to
report.
PSNR and SSIM in [0, 1] RGB; sharpness = high-frequency (Laplacian) energy over the ground
truth's (1 = as sharp as the truth; bicubic is far below). FLOPs are counted with
torch.utils.flop_counter for one forward pass on a 128 x 128 output (for EANet including
its CPEM prior on the 32 x 32 input), against diffusers' UNet2DModel with the same base
width, four levels (x1, x2, x4, x4 channels), two blocks per level and attention at the
lowest resolution, the usual DDPM layout. About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from earthsynth.data.schema import image_to_tensor
from earthsynth.data.sources import deepforest_drone_test
from earthsynth.data.tiles import RealTiles, cut_tiles
from earthsynth.errors import InputError
from earthsynth.generation.ediffsr import EDiffSRPipeline
from earthsynth.generation.ediffsr.train import degrade
from earthsynth.image_metrics import psnr, sharpness_ratio, ssim
from earthsynth.jobs.load import bundled_checkpoint


def held_out_tiles(split: str, size: int) -> torch.Tensor:
    if split == "drone":
        tiles = cut_tiles(deepforest_drone_test(), size)
        picks = np.linspace(0, len(tiles) - 1, 16).round().astype(int)
        return torch.stack([image_to_tensor(tiles[i].pixels) for i in picks])
    tiles = RealTiles(split, tile_size=size, gsd_factors=(1,))
    return torch.stack([tiles[i]["image"] for i in range(len(tiles))])


def scores(estimate: torch.Tensor, truth: torch.Tensor) -> dict:
    return {"psnr": psnr(estimate, truth), "ssim": ssim(estimate, truth), "sharpness": sharpness_ratio(estimate, truth)}


def passband_oracle(truth: torch.Tensor, scale: int) -> torch.Tensor:
    """The truth keeping only the frequencies an input `scale` times coarser can represent
    (|f| <= 1 / (2 scale) cycles per pixel on both axes)."""
    frequencies_y = torch.fft.fftfreq(truth.shape[-2]).abs()[:, None]
    frequencies_x = torch.fft.fftfreq(truth.shape[-1]).abs()[None, :]
    passband = (frequencies_y <= 0.5 / scale) & (frequencies_x <= 0.5 / scale)
    return torch.fft.ifft2(torch.fft.fft2(truth) * passband).real.clamp(0, 1)


def flops(module: torch.nn.Module, *inputs) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="EDiffSR pipeline folder (default: bundled)")
    parser.add_argument("--regressor", help="the L1 regressor pipeline folder (default: bundled ediffsr-l1)")
    parser.add_argument("--steps", default="5,10,20,50")
    parser.add_argument("--size", type=int, default=128, help="high-resolution tile size")
    parser.add_argument("--degradation", default="bicubic", choices=["bicubic", "blur_noise_jpeg"],
                        help="how the inputs are made (blur_noise_jpeg: fixed seed per split)")
    args = parser.parse_args()

    pipe = EDiffSRPipeline.from_pretrained(args.model or bundled_checkpoint("ediffsr"))
    pipe.set_progress_bar_config(disable=True)
    scale = pipe.eanet.config.scale
    truths = {split: held_out_tiles(split, args.size) for split in ("val", "test", "drone")}
    lows = {split: degrade(truth, scale, args.degradation, generator=torch.Generator().manual_seed(k))
            for k, (split, truth) in enumerate(truths.items())}
    methods = [("bicubic", lambda low: F.interpolate(low, scale_factor=scale, mode="bicubic").clamp(0, 1))]
    try:
        regressor_dir = Path(args.regressor) if args.regressor else bundled_checkpoint("ediffsr-l1")
    except InputError:
        regressor_dir = None
        print("no L1 regressor checkpoint: that row is left out")
    if regressor_dir is not None and regressor_dir.is_dir():
        regressor = EDiffSRPipeline.from_pretrained(regressor_dir)
        methods.append(("EANet as an L1 regressor (1 pass)", lambda low: regressor(low, tile=args.size // scale).images))
    for steps in [int(s) for s in args.steps.split(",")]:
        methods.append((f"EDiffSR, {steps} steps", lambda low, steps=steps: pipe(
            low, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), tile=args.size // scale).images))

    rows = []
    oracle = {split: scores(passband_oracle(truth, scale), truth) for split, truth in truths.items()}
    for name, method in methods:
        result = {}
        for split in truths:
            started = time.perf_counter()
            out = method(lows[split])
            result[split] = {**scores(out, truths[split]), "seconds": time.perf_counter() - started}
        rows.append((name, result))
    # a reference, not a method: printed after bicubic, with no speed
    rows.insert(1, ("passband oracle (reference: the truth below the input's Nyquist)", oracle))

    megapixels = truths["test"].shape[0] * args.size * args.size / 1e6
    print(f"\nx{scale}, {args.degradation} degradation, {args.size} px tiles: {truths['val'].shape[0]} of SOAP_061 (validation, 0.1 m/px), "
          f"{truths['test'].shape[0]} of OSBS_029 (test, 0.1 m/px), {truths['drone'].shape[0]} of the drone photo "
          f"(test); torch threads {torch.get_num_threads()}\n")
    print("| method | val PSNR dB | test PSNR dB | test SSIM | test sharpness | drone PSNR dB | drone SSIM | s / megapixel |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in rows:
        test = result["test"]
        speed = f"{test['seconds'] / megapixels:.1f}" if name != "bicubic" and "seconds" in test else "-"
        print(f"| {name} | {result['val']['psnr']:.2f} | {test['psnr']:.2f} | {test['ssim']:.4f} | "
              f"{test['sharpness']:.3f} | {result['drone']['psnr']:.2f} | {result['drone']['ssim']:.4f} | {speed} |")
    diffusion = [(name, result) for name, result in rows if name.startswith("EDiffSR")]
    if diffusion:
        name, best = max(diffusion, key=lambda row: row[1]["val"]["psnr"])
        bicubic = rows[0][1]
        for split in ("test", "drone"):
            print(f"\nbest on validation: {name}; its {split} gain over bicubic "
                  f"{best[split]['psnr'] - bicubic[split]['psnr']:+.2f} dB (target +1.5); the passband oracle's "
                  f"{oracle[split]['psnr'] - bicubic[split]['psnr']:+.2f} dB")

    eanet = pipe.eanet.eval()
    width = eanet.config.width
    unet = UNet2DModel(sample_size=args.size, in_channels=2 * eanet.config.bands, out_channels=eanet.config.bands,
                       block_out_channels=(width, 2 * width, 4 * width, 4 * width), layers_per_block=2,
                       down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
                       norm_num_groups=min(32, width)).eval()
    x = torch.randn(1, eanet.config.bands, args.size, args.size)
    lr = torch.rand(1, eanet.config.bands, args.size // scale, args.size // scale)
    t = torch.tensor([10])
    eanet_flops = flops(eanet, x, t, lr)
    unet_flops = flops(unet, torch.cat([x, x], dim=1), t)
    print(f"\n| noise predictor (width {width}) | parameters | GFLOPs per {args.size}x{args.size} pass | ratio |")
    print("|---|---|---|---|")
    eanet_params = sum(p.numel() for p in eanet.parameters()) / 1e6
    unet_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"| EANet + CPEM | {eanet_params:.2f} M | {eanet_flops / 1e9:.2f} | {eanet_flops / unet_flops:.2f} |")
    print(f"| UNet2DModel (diffusers, DDPM layout) | {unet_params:.2f} M | {unet_flops / 1e9:.2f} | 1.00 |")


if __name__ == "__main__":
    main()

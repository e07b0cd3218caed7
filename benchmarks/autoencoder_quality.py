"""Reconstruction of held-out real tiles by the latent families' VAE, against bicubic
down-and-up sampling by the same factor (the classical baseline that keeps as many numbers
per pixel as a latent with 3 channels would), side by side; plus encode and decode time.

    .venv/bin/python benchmarks/autoencoder_quality.py [--model DIR[,DIR...]] [--size 256]

DIR: an exported autoencoder, or a checkpoint of a run still training (its EMA weights).

Held-out tiles: SOAP_061 (validation) and OSBS_029 (the test image), neither trained on,
256 px at 0.1 m/px (the windows overlap where 400 px does not divide). PSNR and SSIM in [0, 1]
RGB; sharpness = high-frequency (Laplacian) energy over the truth's (1 = as sharp); colour =
the largest per-channel mean difference over all tiles, in % of the truth's mean (a cast
shows here first). Target of the latent issue at f = 4: validation PSNR at least bicubic's
+ 2 dB, colour within 1 %, sharpness at least 0.7. Times: seconds per megapixel for one
256 px image at a time, float32, this machine's threads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from earthsynth.data.tiles import RealTiles
from earthsynth.generation.autoencoder import load_autoencoder
from earthsynth.image_metrics import psnr, sharpness_ratio, ssim
from earthsynth.jobs.load import bundled_checkpoint


def held_out_tiles(split: str, size: int) -> torch.Tensor:
    tiles = RealTiles(split, tile_size=size, gsd_factors=(1,))
    return torch.stack([tiles[i]["image"] for i in range(len(tiles))])


def scores(estimate: torch.Tensor, truth: torch.Tensor) -> dict:
    estimate = estimate.clamp(0, 1)
    means_estimate, means_truth = estimate.mean((0, 2, 3)), truth.mean((0, 2, 3))
    colour = float(((means_estimate - means_truth).abs() / means_truth).max() * 100)
    return {"psnr": psnr(estimate, truth), "ssim": ssim(estimate, truth),
            "sharpness": sharpness_ratio(estimate, truth), "colour": colour}


def bicubic_down_up(images: torch.Tensor, factor: int) -> torch.Tensor:
    small = F.interpolate(images, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False)


def downsampling(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Reconstructions (posterior means decoded) and seconds per megapixel to encode, decode."""
    outputs, encode_s, decode_s = [], 0.0, 0.0
    for image in images:
        x = image[None] * 2 - 1
        start = time.perf_counter()
        latents = vae.encode(x).latent_dist.mode()
        middle = time.perf_counter()
        outputs.append((vae.decode(latents).sample + 1) / 2)
        encode_s += middle - start
        decode_s += time.perf_counter() - middle
    megapixels = images.shape[0] * images.shape[-1] * images.shape[-2] / 1e6
    return torch.cat(outputs), encode_s / megapixels, decode_s / megapixels


def load_vae(folder: Path):
    """An exported autoencoder, or a checkpoint of a training run (checkpoints/step-N: its EMA
    weights where the run keeps them, in the architecture of the run's config.yaml), so a run
    can be followed while it trains."""
    if not (folder / "state.json").is_file():
        return load_autoencoder(folder)
    from safetensors.torch import load_file

    from earthsynth.config import load_config
    from earthsynth.generation.autoencoder import build_autoencoder

    config = load_config(folder.parents[1] / "config.yaml")
    mc = config.model
    vae = build_autoencoder(mc.block_out_channels, mc.layers_per_block, mc.latent_channels, mc.mid_attention,
                            sample_size=config.data.tile_size)
    weights = folder / "ema.safetensors" if (folder / "ema.safetensors").is_file() else folder / "model.safetensors"
    vae.load_state_dict({k.removeprefix("vae."): v for k, v in load_file(weights).items() if k.startswith("vae.")})
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="exported autoencoder folder(s) or training checkpoints "
                                                    "(runs/autoencoder/checkpoints/step-N), comma-separated "
                                                    "(default: the bundled one)")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    folders = [Path(f) for f in args.model.split(",") if f] or [bundled_checkpoint("autoencoder")]
    truths = {split: held_out_tiles(split, args.size) for split in ("val", "test")}

    rows = []
    for folder in folders:
        vae = load_vae(folder).eval()
        factor = downsampling(vae)
        result = {"bicubic": {}, "vae": {}}
        for split, truth in truths.items():
            result["bicubic"][split] = scores(bicubic_down_up(truth, factor), truth)
            reconstruction, encode_s, decode_s = reconstruct(vae, truth)
            result["vae"][split] = scores(reconstruction, truth)
            result["vae"]["speed"] = (encode_s, decode_s)
        params = sum(p.numel() for p in vae.parameters()) / 1e6
        name = f"{folder.name if folder.name != 'final' else folder.parent.name} (f={factor}, " \
               f"{vae.config.latent_channels} ch, {params:.1f} M)"
        rows.append((name, factor, result))

    print(f"\n{args.size} px tiles: {truths['val'].shape[0]} of SOAP_061 (validation), {truths['test'].shape[0]} of "
          "OSBS_029 (test), 0.1 m/px")
    print("| method | val PSNR dB | val SSIM | val sharpness | val colour % | test PSNR dB | test SSIM | "
          "test sharpness | test colour % | encode s/MP | decode s/MP |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    shown = set()
    for name, factor, result in rows:
        lines = [(name, result["vae"])]
        if factor not in shown:
            lines.insert(0, (f"bicubic down-and-up x{factor}", result["bicubic"]))
            shown.add(factor)
        for label, r in lines:
            speed = r.get("speed")
            times = f"{speed[0]:.2f} | {speed[1]:.2f}" if speed else "- | -"
            print(f"| {label} | " + " | ".join(
                f"{r[s]['psnr']:.2f} | {r[s]['ssim']:.4f} | {r[s]['sharpness']:.3f} | {r[s]['colour']:.2f}"
                for s in ("val", "test")) + f" | {times} |")
    for name, factor, result in rows:
        gain = result["vae"]["val"]["psnr"] - result["bicubic"]["val"]["psnr"]
        print(f"\n{name}: validation gain over bicubic x{factor} {gain:+.2f} dB (target at f=4: +2), "
              f"colour {result['vae']['val']['colour']:.2f} % (target <= 1), "
              f"sharpness {result['vae']['val']['sharpness']:.2f} (target >= 0.7)")


if __name__ == "__main__":
    main()

"""Hyperspectral denoising on held-out cubes: the hsi pipeline against classical denoisers,
side by side, per noise kind, plus band counts the model never trained on.

    .venv/bin/python benchmarks/hsi_denoise.py [--model DIR] [--cubes 4] [--bm4d] [--bm3d] [--kinds mixture] [--json PATH]

Cubes: earthsynth.data.hsi_scenes synthetic cubes (earthlib spectra under abundance maps of
real NEON scenes; no real hyperspectral cube can be had offline), 64 x 64 pixels, resampled
to 64 bands (the model trained on 31 and 64). Test cubes come from OSBS_029, the held-out
test image, and draw only the spectra held out of training; validation cubes come from
SOAP_061. Every method's parameters (the classical grids of
earthsynth.generation.hsi.classical, the pipeline's steps and strength) are picked on the
validation cubes by band PSNR and then scored once on the test cubes. Noise: the
earthsynth.data.hsi_noise kinds at strength 1, fixed seeds; the mixture is the realistic
case. Metrics on the clean cube's scale: PSNR (mean over bands, peak = the cube's
maximum), SSIM (mean over bands), SAM (mean spectral angle, degrees), ERGAS. BM4D (the
optional `bench` extra, non-commercial licence) is slow: only with --bm4d. robust-pca is the
noise-whitened, outlier-rejecting low-rank fit the hsi refiner starts from
(earthsynth.generation.hsi.lowrank), so the earthsynth row against it measures what the
learned part adds. About 18 minutes on 2 cores without BM4D.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from earthsynth.data.hsi_noise import add_noise
from earthsynth.data.hsi_scenes import SyntheticCubes, resample_bands
from earthsynth.generation.hsi import HSIDenoisePipeline
from earthsynth.generation.hsi.classical import CLASSICAL_METHODS, grid_search, tune
from earthsynth.image_metrics import band_psnr, band_ssim, ergas, sam_degrees
from earthsynth.jobs.load import bundled_checkpoint

KINDS = ("gaussian", "stripes", "deadlines", "impulse", "mixture")
PIPELINE_GRID = {"num_inference_steps": [1, 4], "strength": [0.3, 0.6]}


def clean_cubes(split: str, count: int, size: int, bands: int) -> list[torch.Tensor]:
    """`count` cubes spread evenly over the split's tiles, resampled to `bands`."""
    cubes = SyntheticCubes(split, tile_size=size)
    picks = np.linspace(0, len(cubes) - 1, count).round().astype(int)
    return [resample_bands(cubes[int(i)]["cube"], bands) for i in picks]


def noisy_versions(cubes: list[torch.Tensor], kind: str, seed: int) -> list[torch.Tensor]:
    return [add_noise(cube, kind, generator=torch.Generator().manual_seed(seed + i))[0] for i, cube in enumerate(cubes)]


def scores(estimate, truth) -> dict:
    return {"psnr": band_psnr(estimate, truth), "ssim": band_ssim(estimate, truth),
            "sam": sam_degrees(estimate, truth), "ergas": ergas(estimate, truth)}


def mean_scores(estimates, truths) -> dict:
    each = [scores(e, t) for e, t in zip(estimates, truths)]
    return {key: float(np.mean([s[key] for s in each])) for key in each[0]}


def run_pipeline(pipe: HSIDenoisePipeline, noisy: list[torch.Tensor], **options) -> list[np.ndarray]:
    return [pipe(cube.numpy(), generator=torch.Generator().manual_seed(0), **options).cube for cube in noisy]


def tune_pipeline(pipe: HSIDenoisePipeline, noisy: list[torch.Tensor], clean: list[torch.Tensor]) -> dict:
    def denoise(cube: torch.Tensor, **options) -> np.ndarray:
        return run_pipeline(pipe, [cube], **options)[0]

    return grid_search(denoise, PIPELINE_GRID, noisy, clean)[0]


def timed(method, noisy: list, **params) -> tuple[list, float]:
    started = time.perf_counter()
    out = [method(cube.numpy(), **params) for cube in noisy]
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="hsi pipeline folder (default: bundled)")
    parser.add_argument("--cubes", type=int, default=4, help="test cubes and validation cubes (each)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bands", type=int, default=64)
    parser.add_argument("--kinds", default=",".join(KINDS), help="noise kinds scored at --bands")
    parser.add_argument("--other-bands", default="31,103,224", help="band counts scored on the mixture")
    parser.add_argument("--bm4d", action="store_true", help="add BM4D (pip install bm4d; slow)")
    parser.add_argument("--bm3d", action="store_true", help="add subspace-bm3d, FastHyDe-style (pip install bm3d)")
    parser.add_argument("--json", default="benchmarks/results/hsi_denoise.json")
    args = parser.parse_args()

    pipe = HSIDenoisePipeline.from_pretrained(args.model or bundled_checkpoint("hsi"))
    pipe.set_progress_bar_config(disable=True)
    methods = ["gaussian", "median", "pca", "median+pca", "robust-pca"] + (["bm4d"] if args.bm4d else []) + (
        ["subspace-bm3d"] if args.bm3d else [])
    results = {"cubes": args.cubes, "size": args.size, "bands": args.bands, "kinds": {}, "other_bands": {}}
    voxels = args.cubes * args.size * args.size

    def compare(kind: str, bands: int, seed: int) -> dict:
        """Tune on validation cubes, score on test cubes: {method: scores + parameters + seconds}."""
        val_clean = clean_cubes("val", args.cubes, args.size, bands)
        test_clean = clean_cubes("test", args.cubes, args.size, bands)
        val_noisy, test_noisy = noisy_versions(val_clean, kind, seed), noisy_versions(test_clean, kind, seed + 100)
        megavoxels = voxels * bands / 1e6
        rows = {"noisy input": {**mean_scores(test_noisy, test_clean), "params": {}, "s_per_megavoxel": 0.0}}
        for name in methods:
            params, _ = tune(name, [c.numpy() for c in val_noisy], [c.numpy() for c in val_clean])
            out, seconds = timed(CLASSICAL_METHODS[name][0], test_noisy, **params)
            rows[name] = {**mean_scores(out, test_clean), "params": params, "s_per_megavoxel": seconds / megavoxels}
        options = tune_pipeline(pipe, val_noisy, val_clean)
        started = time.perf_counter()
        out = run_pipeline(pipe, test_noisy, **options)
        seconds = time.perf_counter() - started
        rows["earthsynth hsi"] = {**mean_scores(out, test_clean), "params": options, "s_per_megavoxel": seconds / megavoxels}
        # the ablation: the latent model alone, without the full-resolution refiner
        out = run_pipeline(pipe, test_noisy, refine=False, **options)
        rows["earthsynth hsi, no refiner"] = {**mean_scores(out, test_clean), "params": options}
        return rows

    for k, kind in enumerate(KINDS):
        if kind not in args.kinds.split(","):
            continue
        results["kinds"][kind] = compare(kind, args.bands, seed=1000 * k)
        print_table(f"{kind} noise, {args.bands} bands", results["kinds"][kind])
    for bands in [int(b) for b in args.other_bands.split(",") if b]:
        results["other_bands"][str(bands)] = compare("mixture", bands, seed=7000 + bands)
        print_table(f"mixture noise, {bands} bands", results["other_bands"][str(bands)])

    print(f"\n{args.cubes} test cubes (OSBS_029) of {args.size} x {args.size} px per row, parameters picked on "
          f"{args.cubes} validation cubes (SOAP_061); torch threads {torch.get_num_threads()}")
    print("\n| noise, bands | best classical | its PSNR | earthsynth PSNR | gain dB | SAM classical | SAM earthsynth |")
    print("|---|---|---|---|---|---|---|")
    summary = [(f"{kind}, {args.bands}", rows) for kind, rows in results["kinds"].items()]
    summary += [(f"mixture, {bands}", rows) for bands, rows in results["other_bands"].items()]
    for label, rows in summary:
        classical = max(methods, key=lambda name: rows[name]["psnr"])
        ours = rows["earthsynth hsi"]
        print(f"| {label} | {classical} | {rows[classical]['psnr']:.2f} | {ours['psnr']:.2f} | "
              f"{ours['psnr'] - rows[classical]['psnr']:+.2f} | {rows[classical]['sam']:.2f} | {ours['sam']:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")


def print_table(title: str, rows: dict) -> None:
    print(f"\n{title}\n")
    print("| method | PSNR dB | SSIM | SAM deg | ERGAS | s / megavoxel | parameters (picked on val) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        speed = f"{r['s_per_megavoxel']:.2f}" if "s_per_megavoxel" in r else "-"
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        print(f"| {name} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['sam']:.2f} | {r['ergas']:.2f} | {speed} | {params} |",
              flush=True)


if __name__ == "__main__":
    main()

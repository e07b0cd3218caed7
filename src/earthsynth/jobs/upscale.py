"""`earthsynth upscale`: super-resolve a PNG / JPEG or a GeoTIFF file x2 / x4 with an ediffsr pipeline.

Bands: a model takes a fixed number of bands (`pipe.eanet.config.bands`, 3 for the bundled
RGB model). An image with that many bands goes through the model as it is. Any other band
count is cut into consecutive groups of that size (bands 1-3, 4-6, ... for a 3-band model);
the last group is filled up by repeating its last band, and only the real bands are kept.
So every band is upscaled by the model and the output has the input's band count (a
greyscale PNG stays greyscale, a 6-band Landsat scene stays 6 bands). The alpha channel of
an RGBA image is a mask, not imagery: it is resized with bicubic interpolation instead.

Values: the model works on [0, 1]. uint8 is divided by 255, uint16 by 65535; any other
dtype (int16, float32, ...) is stretched per band from its minimum to its maximum, and the
output is mapped back with the same numbers. The output has the input's dtype (rounded and
clipped for integers). Nodata pixels (every band at the GeoTIFF's nodata value, or NaN where
nodata is NaN, or the file's mask says so: geotiff.nodata_pixels) are left out of the min /
max, take their nearest valid neighbour's values before the model (holes at 0 or 255 would
bleed into the pixels around them), and are nodata again in the output (nearest-neighbour
upscaled mask); no valid output value equals the nodata value (geotiff.mark_nodata). Any other
NaN is an error.

GeoTIFF output keeps the CRS, nodata (or the mask), tags, band names, band tags, units, scales
/ offsets, compression, predictor, tiling and dtype; the transform keeps its origin and its
pixel size is divided by the scale.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from earthsynth.data.geotiff import PLAIN_IMAGE_SUFFIXES, fill_nodata, mark_nodata, read_geotiff
from earthsynth.data.images import PLAIN_OUTPUTS, TIFF_OUTPUTS, write_image
from earthsynth.errors import InputError
from earthsynth.generation.ediffsr.pipeline import DEFAULT_STEPS
from earthsynth.jobs.load import load_pipeline
from earthsynth.jobs.progress import JobProgress

SCALES = (2, 4)


def check_output_path(src: Path, out: Path) -> None:
    """The output format follows the input: plain images -> PNG / JPEG (or TIFF), rasters -> GeoTIFF."""
    if out.is_dir():
        raise InputError(out, "is a folder; name the output file, e.g. upscaled.tif")
    suffix = out.suffix.lower()
    if src.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        if suffix not in (*PLAIN_OUTPUTS, *TIFF_OUTPUTS):
            raise InputError(out, "unsupported output format; name it .png, .jpg or .tif")
    elif suffix not in TIFF_OUTPUTS:
        raise InputError(out, "a GeoTIFF input is written as a GeoTIFF; name the output .tif")
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")


def to_unit(data: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """(C, H, W) any dtype -> float32 in [0, 1] and the per-band (low, high) that map it back;
    `mask` (H, W) True marks nodata pixels, left out of the stretch."""
    if data.dtype == np.uint8:
        ranges = [(0.0, 255.0)] * data.shape[0]
    elif data.dtype == np.uint16:
        ranges = [(0.0, 65535.0)] * data.shape[0]
    else:  # stretch each band over its valid values
        ranges = []
        for band in data:
            valid = band if mask is None else band[~mask]
            low, high = (float(valid.min()), float(valid.max())) if valid.size else (0.0, 1.0)
            ranges.append((low, high if high > low else low + 1.0))
    unit = np.empty(data.shape, dtype=np.float32)
    for i, (low, high) in enumerate(ranges):
        unit[i] = np.clip((data[i].astype(np.float64) - low) / (high - low), 0, 1)
    return unit, ranges


def from_unit(unit: np.ndarray, ranges: list[tuple[float, float]], dtype: np.dtype) -> np.ndarray:
    """Inverse of `to_unit`: [0, 1] float -> the input's dtype (rounded and clipped for integers)."""
    values = np.stack([unit[i].astype(np.float64) * (high - low) + low for i, (low, high) in enumerate(ranges)])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.round(values), info.min, info.max)
    return values.astype(dtype)


def band_groups(count: int, bands: int) -> list[list[int]]:
    """Indices of consecutive groups of `bands` bands covering `count`; the last is padded by repeating its last band."""
    groups = []
    for start in range(0, count, bands):
        group = list(range(start, min(start + bands, count)))
        groups.append(group + [group[-1]] * (bands - len(group)))
    return groups


def upscale_bands(pipe, unit: np.ndarray, scale: int, steps: int, tile: int, seed: int,
                  show_progress: bool = False) -> np.ndarray:
    """(C, H, W) in [0, 1], any C -> (C, sH, sW) in [0, 1], the model run on groups of its band count."""
    groups = band_groups(unit.shape[0], pipe.eanet.config.bands)
    generator = torch.Generator().manual_seed(seed)
    overlap = min(16, tile // 4)  # the pipeline needs overlap < tile / 2
    out = np.empty((unit.shape[0], unit.shape[1] * scale, unit.shape[2] * scale), dtype=np.float32)
    with JobProgress(len(groups) * steps, "upscale", disable=not show_progress) as progress:
        for group in groups:
            low = torch.from_numpy(unit[group])
            with progress.steps(pipe, steps):
                high = pipe(low, scale=scale, num_inference_steps=steps, generator=generator, tile=tile,
                            overlap=overlap, output_type="pt").images[0]
            real = sorted(set(group))  # the padding copies are dropped
            out[real] = high[: len(real)].float().cpu().numpy()
    return out


def resize_bicubic(band: np.ndarray, scale: int) -> np.ndarray:
    """(H, W) uint8 -> (sH, sW) uint8 (for an alpha channel)."""
    image = Image.fromarray(band)
    return np.asarray(image.resize((band.shape[1] * scale, band.shape[0] * scale), Image.BICUBIC))


def scaled_transform(transform, scale: int):
    """The same origin, pixel size divided by `scale`."""
    if transform is None:
        return None
    a, b, c, d, e, f = transform
    return (a / scale, b / scale, c, d / scale, e / scale, f)


def upscale_file(src, out, model_dir=None, steps: int | None = None, scale: int = 4, tile: int = 128, seed: int = 0,
                 device=None, dtype=None, show_progress: bool = False) -> Path:
    """Super-resolve the image or GeoTIFF `src` x`scale` into `out` and return `out`.

    PNG / JPEG in -> PNG / JPEG out (by `out`'s suffix); GeoTIFF in -> GeoTIFF out with the
    same CRS, origin and bands and a pixel size divided by `scale`. Written atomically: on
    any error nothing is left at `out`. Bad input raises `InputError` naming the file.
    steps None = DEFAULT_STEPS; device None = accelerate's, dtype None = float32.
    """
    src, out = Path(src), Path(out)
    steps = DEFAULT_STEPS if steps is None else steps
    if scale not in SCALES:
        raise InputError(src, f"--scale must be 2 or 4, got {scale}")
    if steps < 1:
        raise InputError(src, f"--steps must be at least 1, got {steps}")
    check_output_path(src, out)
    raster = read_geotiff(src)  # missing, truncated and corrupt files raise InputError here
    plain = src.suffix.lower() in PLAIN_IMAGE_SUFFIXES

    pipe = load_pipeline("ediffsr", model_dir, device, dtype)
    model_scale, minimum = pipe.eanet.config.scale, pipe.eanet.multiple
    if scale != model_scale:
        raise InputError(model_dir or "assets/ediffsr", f"this model upscales x{model_scale} only, not x{scale}; "
                         f"use --scale {model_scale} or a x{scale} model")
    if tile < minimum or tile % minimum:
        raise InputError(src, f"--tile must be a positive multiple of {minimum}, got {tile}")
    if raster.height < minimum or raster.width < minimum:
        raise InputError(src, f"the image is {raster.width}x{raster.height} px, smaller than the model's "
                              f"{minimum}x{minimum} minimum")

    data, mask = raster.data, raster.nodata_mask  # mask: (H, W) nodata pixels, or None
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data if mask is None else data[:, ~mask]).all():
        raise InputError(src, "the image has NaN or infinite values (that are not its nodata value)")

    alpha = None
    if plain and data.shape[0] == 4 and data.dtype == np.uint8:  # RGBA: the alpha mask is resized, not super-resolved
        alpha, data = resize_bicubic(data[3], scale), data[:3]
    unit, ranges = to_unit(data if mask is None else fill_nodata(data, mask), mask)
    high = from_unit(upscale_bands(pipe, unit, scale, steps, tile, seed, show_progress), ranges, data.dtype)
    high_mask = None if mask is None else mask.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest neighbour
    high = mark_nodata(high, high_mask, raster.nodata)
    if alpha is not None:
        high = np.concatenate([high, alpha[None]])

    write_image(out, replace(raster, data=high, transform=scaled_transform(raster.transform, scale),
                             gsd=None if raster.gsd is None else raster.gsd / scale, nodata_mask=high_mask, path=None))
    return out

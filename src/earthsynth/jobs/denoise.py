"""`earthsynth denoise`: denoise a hyperspectral cube file with an hsi pipeline.

Input: ENVI (.hdr or its data file), MATLAB .mat, .npy or a multi-band GeoTIFF (see
earthsynth.data.hsi). Output: the format its name says (.hdr / .img for ENVI, .mat, .npy,
.tif), in the input's data type (integers rounded and clipped to their range); ENVI output
is float32 (the one type write_envi writes). A GeoTIFF output keeps the input GeoTIFF's CRS,
transform, nodata (or mask), tags, band names, band tags, units, scales / offsets, compression
and layout; ENVI output keeps the wavelengths (also a GeoTIFF's), FWHM, band names, nodata as
`data ignore value`, and the input's map info and coordinate system string (made from a
GeoTIFF's CRS and transform), reflectance scale factor and other value keys (hsi.KEPT_ENVI_KEYS);
.mat output stores the cube under the input's variable name (or "cube") as (H, W, bands).
Everything is checked before the model loads, and the output is written atomically.

Nodata: a pixel is nodata when every band holds the nodata value (or the GeoTIFF's mask says
so). Those pixels take their nearest valid neighbour's values before denoising (holes at 0 or
255 would bleed into the pixels around them), are nodata again in the output, and no valid
output value equals the nodata value (geotiff.mark_nodata moves it one step).

method "robust-pca" skips the model: the classical robust low-rank fit the model's refiner
builds on (earthsynth.generation.hsi.lowrank.robust_projection), over the same spatial tiles.
On the synthetic benchmark cubes it is about ten times faster and a little below the model on
the mixture (see the README).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from earthsynth.data.common import atomic_write, one_line
from earthsynth.data.geotiff import GRID_FIELDS, Raster, fill_nodata, mark_nodata, write_geotiff
from earthsynth.data.hsi import Cube, read_cube, write_envi
from earthsynth.errors import InputError
from earthsynth.generation.hsi.pipeline import to_dtype
from earthsynth.jobs.load import load_pipeline
from earthsynth.jobs.progress import JobProgress

OUTPUT_SUFFIXES = (".hdr", ".img", ".mat", ".npy", ".tif", ".tiff")
METHODS = ("model", "robust-pca")
TILE_OVERLAP = 8  # as the pipeline's default
DEFAULT_RANK = 4  # robust-pca; at most the band count - 1


def read_input(src: Path, key: str | None = None, layout: str | None = None) -> Cube:
    """Read and check a cube: finite values, at least 2 bands and 4x4 pixels."""
    options = {}
    if key is not None:
        if src.suffix.lower() != ".mat":
            raise InputError(src, "--key applies to .mat files only")
        options["key"] = key
    if layout is not None:
        if src.suffix.lower() not in (".mat", ".npy"):
            raise InputError(src, "--layout applies to .mat and .npy files only")
        options["layout"] = layout
    cube = read_cube(src, **options)
    if cube.bands < 2:
        raise InputError(src, "has 1 band: a hyperspectral cube needs at least 2 (for one band use an image denoiser)")
    if cube.height < 4 or cube.width < 4:
        raise InputError(src, f"is {cube.height}x{cube.width} pixels; at least 4x4 expected")
    return cube


def check_output_path(out: Path) -> None:
    if out.is_dir():
        raise InputError(out, "is a folder; name the output file, e.g. denoised.tif")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(out, f"unsupported output format; name it {', '.join(OUTPUT_SUFFIXES)}")
    if not out.parent.is_dir():
        raise InputError(out, f"output folder {out.parent} does not exist")


def write_output(out: Path, cube: Cube, data: np.ndarray) -> Path:
    """Write `data` (bands, H, W) to `out` in the format its suffix names, atomically."""
    suffix = out.suffix.lower()
    if suffix in (".hdr", ".img"):
        return write_envi(out, replace(cube, data=data), description="denoised by earthsynth")
    if suffix == ".npy":
        with atomic_write(out, "wb") as f:
            np.save(f, data)
    elif suffix == ".mat":
        import scipy.io

        with atomic_write(out, "wb") as f:
            scipy.io.savemat(f, {cube.metadata.get("key", "cube"): np.transpose(data, (1, 2, 0))})
    else:
        grid = {name: cube.metadata[name] for name in GRID_FIELDS if cube.metadata.get(name) is not None}
        write_geotiff(out, Raster(data, band_names=cube.band_names or [], **grid))
    return out


def robust_low_rank(data: np.ndarray, rank: int, tile: int) -> np.ndarray:
    """(bands, H, W) -> the robust low-rank fit of each spatial tile (all bands), blended."""
    from earthsynth.generation.common import process_in_tiles
    from earthsynth.generation.hsi.lowrank import robust_projection

    cube = torch.from_numpy(np.asarray(data, dtype=np.float32))[None]
    tile_h, tile_w = min(tile, cube.shape[-2]), min(tile, cube.shape[-1])
    out = process_in_tiles(cube, tile_h, tile_w, TILE_OVERLAP, lambda piece: robust_projection(piece, rank)[0])
    return out[0].numpy()


def denoise_file(src, out, model_dir=None, steps: int = 4, strength: float = 0.5, tile: int = 64,
                 seed: int = 0, key: str | None = None, layout: str | None = None, method: str = "model",
                 rank: int | None = None, device=None, dtype=None, show_progress: bool = False) -> Path:
    """Denoise the cube in `src` and write it to `out`; returns the written path (the .hdr for ENVI).
    method "model" (the hsi pipeline on `device` in `dtype`: default accelerate's device, float32)
    or "robust-pca" (the classical fit at `rank`, no model; None: DEFAULT_RANK, at most bands - 1)."""
    src, out = Path(src), Path(out)
    if method not in METHODS:
        raise InputError(src, f"unknown method {method!r}; choose {' or '.join(METHODS)}")
    if method == "robust-pca" and model_dir is not None:
        raise InputError(src, "--model applies to --method model only")
    if method == "model" and rank is not None:
        raise InputError(src, "--rank applies to --method robust-pca only")
    if rank is not None and rank < 1:
        raise InputError(src, f"--rank must be at least 1, got {rank}")
    if tile < 8:
        raise InputError(src, f"--tile must be at least 8, got {tile}")
    if method == "model":  # the pipeline checks these too, but only after the model loads
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(src, f"--steps must be an integer of at least 1, got {steps!r}")
        if not (isinstance(strength, (int, float)) and 0 < strength <= 1):  # NaN fails both comparisons
            raise InputError(src, f"--strength must be in (0, 1], got {strength!r}")
    check_output_path(out)
    if out.resolve() == src.resolve():
        raise InputError(out, "is the input file; choose another output name")
    cube = read_input(src, key, layout)
    if cube.bands < 3 and method == "robust-pca":
        raise InputError(src, f"has {cube.bands} bands: the robust fit estimates each band's noise from the others, "
                              "so it needs at least 3")
    if rank is not None and rank >= cube.bands:  # at the band count the fit is the cube itself: nothing removed
        raise InputError(src, f"--rank {rank} is not below the cube's {cube.bands} bands; use at most {cube.bands - 1}")
    mask = cube.metadata.get("nodata_mask")
    data = cube.data if mask is None else fill_nodata(cube.data, mask)
    if method == "robust-pca":
        denoised = robust_low_rank(data, min(DEFAULT_RANK, cube.bands - 1) if rank is None else rank, tile)
    else:
        pipe = load_pipeline("hsi", model_dir, device, dtype)
        try:
            with JobProgress(steps, "denoise", disable=not show_progress) as progress, progress.steps(pipe, steps):
                denoised = pipe(data, num_inference_steps=steps, strength=strength, tile=tile,
                                generator=torch.Generator().manual_seed(seed)).cube
        except ValueError as err:  # the pipeline's checks of steps, strength, tile
            raise InputError(src, one_line(err)) from None
    dtype = np.dtype(cube.metadata.get("dtype", "float32"))
    if out.suffix.lower() in (".hdr", ".img"):
        dtype = np.dtype(np.float32)
    return write_output(out, cube, mark_nodata(to_dtype(denoised, dtype), mask, cube.metadata.get("nodata")))

"""Writing the images the jobs make: PNG / JPEG by the suffix, or a GeoTIFF that keeps its
grid, tags and band names. Every file is written atomically (nothing half-written is left)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from earthsynth.data.common import atomic_write
from earthsynth.data.geotiff import Raster, write_geotiff
from earthsynth.errors import InputError

PLAIN_OUTPUTS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
TIFF_OUTPUTS = (".tif", ".tiff")


def write_plain(out: Path, data: np.ndarray) -> None:
    """(C, H, W) uint8 / uint16 -> PNG or JPEG by the suffix, atomically."""
    fmt = PLAIN_OUTPUTS[out.suffix.lower()]
    if fmt == "JPEG" and data.shape[0] == 4:
        data = data[:3]  # JPEG has no alpha
    if fmt == "JPEG" and data.dtype != np.uint8:
        raise InputError(out, f"JPEG holds 8-bit images, this one is {data.dtype}; name the output .png")
    if data.dtype not in (np.uint8, np.uint16) or (data.dtype == np.uint16 and data.shape[0] != 1):
        raise InputError(out, f"{data.shape[0]}-band {data.dtype} cannot be written as {fmt}; name the output .tif")
    pixels = data[0] if data.shape[0] == 1 else data.transpose(1, 2, 0)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    with atomic_write(out, "wb") as f:
        image.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def write_image(out: Path, raster: Raster) -> None:
    """`raster` as the format `out`'s suffix names: its pixels as PNG / JPEG, or all of it
    (CRS, transform, nodata, tags, band names) as a GeoTIFF."""
    out = Path(out)
    if out.suffix.lower() in PLAIN_OUTPUTS:
        write_plain(out, raster.data)
    else:
        write_geotiff(out, raster)

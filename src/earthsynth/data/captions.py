"""Captions from what is known of a tile, so text-conditioned training has text.

A caption names the sensor and place, the ground sample distance, the objects in the tile
and a coarse land-cover word measured from the pixels. Nothing is invented: every word
comes from the source's metadata, the boxes or a pixel statistic.
"""

from __future__ import annotations

import numpy as np

PLURALS = {"Tree": "trees", "Dead": "dead trees", "Alive": "live trees"}


def format_gsd(gsd: float | None) -> str:
    if gsd is None:
        return "unknown resolution"
    return f"{gsd:.2g} m/px" if gsd < 10 else f"{gsd:.0f} m/px"


def objects_phrase(class_counts: dict[str, int]) -> str:
    parts = []
    for label, count in sorted(class_counts.items(), key=lambda kv: -kv[1]):
        noun = PLURALS.get(label, label.lower() + "s")
        if count == 1:
            noun = noun[:-1] if noun.endswith("s") else noun
        parts.append(f"{count} {noun}")
    return ", ".join(parts) if parts else "no labelled objects"


def land_cover_phrase(pixels: np.ndarray) -> str:
    """A coarse land-cover word from pixel statistics of a (C, H, W) array in [0, 1] whose
    bands are red, green, blue and, if there is a fourth, near-infrared.

    With a near-infrared band the vegetation fraction is NDVI > 0.3 and water NDVI < 0;
    for RGB alone a greenness index (green above red and blue) stands in for it.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.shape[0] >= 4:
        red, nir = pixels[0], pixels[3]
        ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
        vegetation, water = float((ndvi > 0.3).mean()), float((ndvi < 0.0).mean())
    else:
        red, green, blue = pixels[0], pixels[1], pixels[2]
        vegetation = float(((green > red * 1.02) & (green > blue * 1.02)).mean())
        water = 0.0
    if water > 0.4:
        return "mostly water"
    if vegetation > 0.6:
        return "dense vegetation"
    if vegetation > 0.25:
        return "mixed vegetation and open ground"
    brightness = float(pixels[:3].mean())
    return "bright open ground" if brightness > 0.5 else "sparse vegetation and bare ground"


def make_caption(description: str, gsd: float | None, class_counts: dict[str, int] | None,
                 land_cover: str | None = None, with_gsd: bool = True) -> str:
    """E.g. 'NEON airborne RGB orthophoto, Yellowstone National Park, 0.1 m/px, 12 trees, dense vegetation'
    (without the '0.1 m/px' when `with_gsd` is False)."""
    parts = [description] + ([format_gsd(gsd)] if with_gsd else [])
    if class_counts is not None:
        parts.append(objects_phrase(class_counts))
    if land_cover:
        parts.append(land_cover)
    return ", ".join(parts)

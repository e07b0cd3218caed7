"""The one sample dict every reader, dataset and training step in earthsynth uses.

Keys are defined here once (torchgeo's datasets drifted between `bbox` / `bbox_xyxy` and
`label` / `labels`; we do not). Every key but `image` is optional.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
import torch

from earthsynth.boxes import Boxes


class Sample(TypedDict, total=False):
    image: torch.Tensor  # (C, H, W) float32 in [0, 1]; C = 3 for RGB, any for multispectral
    boxes: Boxes  # objects in pixel coordinates of `image`
    gsd: float | None  # ground sample distance, metres per pixel; None if unknown
    crs: str | None  # coordinate reference system as "EPSG:xxxx" or WKT; None if not georeferenced
    transform: tuple[float, float, float, float, float, float] | None  # affine a, b, c, d, e, f (rasterio order)
    metadata: dict[str, Any]  # date, cloud cover, lat/lon, tile origin, band names... (free-form)
    caption: str  # text describing the sample (see earthsynth.data.captions)
    source: str  # name of the source dataset, e.g. "deepforest"
    image_id: str  # unique within the source, e.g. "OSBS_029" or "OSBS_029_t0003"
    path: str  # file the pixels came from
    controls: dict[str, torch.Tensor]  # control maps by name (see earthsynth.conditioning.control), (C, H, W) in [0, 1]


SAMPLE_KEYS = tuple(Sample.__annotations__)


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W), (H, W, C) uint8/uint16/float array -> (C, H, W) float32 tensor in [0, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    else:
        scaled = np.clip(array.astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def tensor_to_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float tensor in [0, 1] -> (H, W, C) uint8 array."""
    array = image.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    return np.round(array * 255.0).astype(np.uint8)

"""Control maps: weight-free extractors (numpy in, numpy out) and the multi-scale adapter.

Extractors return float32 arrays in [0, 1]:
    canny(image)              (H, W)     edges = 1
    sketch(image)             (H, W)     pencil lines = 1 on 0
    content_shuffle(image)    (H, W, 3)  the image's colours, spatially scrambled
    normalise_dem(elevation)  (H, W)     robust 2-98 percentile stretch, nodata -> 0
    landcover_onehot(classes) (K, H, W)  one channel per class
    rasterize_lines(lines)    (H, W)     road / river polylines = 1
`image` is uint8, (H, W) grey or (H, W, 3) RGB; float images in [0, 1] are accepted too.

`ControlAdapter` turns any subset of named maps into residuals added to a diffusers
UNet2DConditionModel's skip connections (`down_block_additional_residuals`) and middle
block (`mid_block_additional_residual`), ControlNet style but with a small conv pyramid
per map instead of a copy of the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


# ----------------------------------------------------------------------------- extractors
def _to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return image


def _to_gray(image: np.ndarray) -> np.ndarray:
    image = _to_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def canny(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges of the grey image -> (H, W) float32 in {0, 1}."""
    return (cv2.Canny(_to_gray(image), low, high) > 0).astype(np.float32)


def sketch(image: np.ndarray, blur_sigma: float = 3.0) -> np.ndarray:
    """Pencil-style line drawing -> (H, W) float32 in [0, 1], lines high.

    "Colour dodge" of the grey image by its blurred negative: flat areas go white and
    only local contrast survives, as in a pencil sketch. Inverted so lines are 1 like the
    other edge maps.
    """
    gray = _to_gray(image).astype(np.float32)
    blurred = cv2.GaussianBlur(255.0 - gray, (0, 0), blur_sigma)
    dodge = np.minimum(gray * 255.0 / np.maximum(255.0 - blurred, 1.0), 255.0)
    return (1.0 - dodge / 255.0).astype(np.float32)


def content_shuffle(image: np.ndarray, seed: int | None = None, cells: int = 8) -> np.ndarray:
    """Scramble the layout but keep the colours and textures -> (H, W, 3) float32 in [0, 1].

    Every pixel is moved by a smooth random displacement (a `cells` x `cells` noise grid,
    upsampled), as large as the image, so only the global content is left.
    """
    image = _to_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    # Source coordinates for every pixel: smooth noise spanning the whole image.
    grid_x = rng.uniform(0, w, (cells, cells)).astype(np.float32)
    grid_y = rng.uniform(0, h, (cells, cells)).astype(np.float32)
    flow_x = cv2.resize(grid_x, (w, h), interpolation=cv2.INTER_CUBIC)
    flow_y = cv2.resize(grid_y, (w, h), interpolation=cv2.INTER_CUBIC)
    shuffled = cv2.remap(image, flow_x, flow_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return shuffled.astype(np.float32) / 255.0


def normalise_dem(elevation: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Elevation (H, W) -> (H, W) float32 in [0, 1].

    Stretched between the 2nd and 98th percentiles of the valid pixels so a few spikes or
    pits do not flatten the rest. NaN and `nodata` pixels become 0 (as low as the lowest
    valid ground); a flat or entirely invalid DEM gives all zeros.
    """
    elevation = np.asarray(elevation, dtype=np.float64)
    if elevation.ndim != 2:
        raise ValueError(f"elevation must be (H, W), got shape {elevation.shape}")
    valid = np.isfinite(elevation)
    if nodata is not None:
        valid &= elevation != nodata
    out = np.zeros(elevation.shape, dtype=np.float32)
    if not valid.any():
        return out
    low, high = np.percentile(elevation[valid], [2, 98])
    if high <= low:
        return out
    out[valid] = np.clip((elevation[valid] - low) / (high - low), 0.0, 1.0)
    return out


def landcover_onehot(
    classes: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Class index map (H, W) ints -> (num_classes, H, W) float32 one-hot.

    Pixels equal to `ignore_index` (e.g. a nodata value) get all-zero channels; any other
    value outside 0..num_classes-1 is an error.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"classes must be an (H, W) integer array, got {classes.dtype} {classes.shape}"
        )
    ignored = classes == ignore_index if ignore_index is not None else np.zeros(classes.shape, bool)
    bad = ~ignored & ((classes < 0) | (classes >= num_classes))
    if bad.any():
        raise ValueError(f"land cover class {classes[bad][0]} outside 0..{num_classes - 1}")
    onehot = classes[None, :, :] == np.arange(num_classes)[:, None, None]
    return (onehot & ~ignored[None]).astype(np.float32)


def rasterize_lines(
    lines: Sequence[np.ndarray], height: int, width: int, thickness: int = 3
) -> np.ndarray:
    """Polylines of (K, 2) pixel coordinates (x, y) -> (H, W) float32 in {0, 1}.

    Lines with fewer than 2 points draw nothing.
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    points = [
        np.round(np.asarray(line, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
        for line in lines
    ]
    points = [p for p in points if len(p) >= 2]
    if points:
        cv2.polylines(canvas, points, isClosed=False, color=1, thickness=thickness)
    return canvas.astype(np.float32)


# The land-cover classes crsdiff's bundled model knows: a per-pixel version of the caption's
# land-cover word (earthsynth.data.captions), since no land-cover raster overlaps the
# bundled scenes. A user's class raster is mapped onto these codes (see `landcover_onehot`).
LANDCOVER_CLASSES = ("water", "vegetation", "bright open ground", "dark bare ground")


def landcover_from_pixels(bands: np.ndarray) -> np.ndarray:
    """(C, H, W) red, green, blue (, near-infrared) in [0, 1] -> (H, W) int64 codes of
    LANDCOVER_CLASSES: NDVI < 0 water and NDVI > 0.3 vegetation with a near-infrared band,
    a greenness test without one, the rest split by brightness."""
    bands = np.asarray(bands, dtype=np.float32)
    red, green, blue = bands[0], bands[1], bands[2]
    if bands.shape[0] >= 4:
        ndvi = (bands[3] - red) / np.maximum(bands[3] + red, 1e-6)
        water, vegetation = ndvi < 0.0, ndvi > 0.3
    else:
        water = np.zeros(red.shape, dtype=bool)
        vegetation = (green > red * 1.02) & (green > blue * 1.02)
    bright = bands[:3].mean(0) > 0.5
    classes = np.where(bright, 2, 3)
    classes = np.where(vegetation, 1, classes)
    return np.where(water, 0, classes).astype(np.int64)


def vector_lines(path, transform, crs: str | None) -> list[np.ndarray]:
    """LineString / MultiLineString features of a GeoJSON file -> polylines of (K, 2) pixel
    coordinates (x, y) of a raster with this affine `transform` and `crs` (the GeoJSON is
    reprojected from its own CRS, WGS84 longitude/latitude by default)."""
    import json

    from rasterio.transform import Affine
    from rasterio.warp import transform_geom

    with open(path, encoding="utf-8") as handle:
        collection = json.load(handle)
    features = collection.get("features", [collection]) if isinstance(collection, dict) else None
    if features is None:
        raise ValueError("not a GeoJSON object")
    # RFC 7946 GeoJSON is WGS84 lon/lat; older files may name their CRS in a "crs" member
    source_crs = (collection.get("crs") or {}).get("properties", {}).get("name") or "OGC:CRS84"
    inverse = ~Affine(*transform)
    lines = []
    for feature in features:
        geometry = feature.get("geometry", feature)
        if geometry is None or geometry.get("type") not in ("LineString", "MultiLineString"):
            continue
        if crs is not None:
            geometry = transform_geom(source_crs, crs, geometry)
        parts = [geometry["coordinates"]] if geometry["type"] == "LineString" else geometry["coordinates"]
        for part in parts:
            points = np.asarray(part, dtype=np.float64)[:, :2]
            cols, rows = inverse * (points[:, 0], points[:, 1])
            lines.append(np.stack([cols, rows], axis=1))
    return lines


def available_annotators() -> list[str]:
    """Names of the control-map extractors that work on this machine.

    The built-in ones always do. controlnet-aux is optional (it pulls torchvision, which
    often fails to import on CPU machines); its weight-free detectors are listed only when
    it imports.
    """
    names = ["canny", "content_shuffle", "landcover_onehot", "normalise_dem"]
    names += ["rasterize_lines", "sketch"]
    try:
        import controlnet_aux
    except Exception:  # ImportError, or torchvision's own errors while importing
        return names
    for cls_name in ("CannyDetector", "ContentShuffleDetector", "LineartStandardDetector"):
        if hasattr(controlnet_aux, cls_name):
            names.append(f"controlnet_aux.{cls_name}")
    return names


# ----------------------------------------------------------------------------- adapter
def unet_residual_spec(unet_config, image_stride: int = 1) -> dict:
    """Channels and strides of the residuals a diffusers UNet2DConditionModel accepts.

    diffusers collects `down_block_res_samples` as: conv_in's output, then for each down
    block `layers_per_block` resnet outputs and, for every block but the last, its
    downsampler's output. Strides are relative to the control maps: `image_stride` is
    the size of one UNet input pixel in map pixels (8 for a latent UNet behind SD's VAE
    when the maps are at image resolution).
    """
    get = unet_config.get if isinstance(unet_config, Mapping) else lambda k: getattr(unet_config, k)
    channels = list(get("block_out_channels"))
    layers = get("layers_per_block")
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    if len(get("down_block_types")) != len(channels):
        raise ValueError("down_block_types and block_out_channels differ in length")

    residual_channels, residual_strides = [channels[0]], [image_stride]
    for i, ch in enumerate(channels):
        residual_channels += [ch] * layers[i]
        residual_strides += [image_stride * 2**i] * layers[i]
        if i < len(channels) - 1:  # the last block has no downsampler
            residual_channels.append(ch)
            residual_strides.append(image_stride * 2 ** (i + 1))
    return dict(
        residual_channels=residual_channels,
        residual_strides=residual_strides,
        mid_channels=channels[-1],
        mid_stride=image_stride * 2 ** (len(channels) - 1),
    )


def _zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ControlPyramid(nn.Module):
    """One map -> features at strides first_stride * 2^level, level = 0..num_levels-1.

    Space-to-depth first (lossless, and no full-resolution convs when the UNet works on
    8x smaller latents), then one stride-2 conv stage per level.
    """

    def __init__(self, in_channels: int, hidden: int, first_stride: int, num_levels: int):
        super().__init__()
        self.channels = [hidden * min(2**level, 4) for level in range(num_levels)]
        self.stem = nn.Sequential(
            nn.PixelUnshuffle(first_stride),
            nn.Conv2d(in_channels * first_stride**2, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
        )
        self.downs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(self.channels[level - 1], self.channels[level], 3, stride=2, padding=1),
                nn.SiLU(),
                nn.Conv2d(self.channels[level], self.channels[level], 3, padding=1),
                nn.SiLU(),
            )
            for level in range(1, num_levels)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class ControlAdapter(ModelMixin, ConfigMixin):
    """Several named control maps -> UNet down-block and mid-block residuals.

    residual_l = sum over given maps m of scale_m * zero_conv_{m,l}(pyramid_m(map)_{level(l)}).
    The output convs start at zero, so a fresh adapter leaves the UNet unchanged.
    To drop a map for some samples (classifier-free guidance), give it a (B,) scale of 0/1.
    """

    @register_to_config
    def __init__(
        self,
        map_channels: dict[str, int] | None = None,
        residual_channels: Sequence[int] = (32, 32, 32, 64),
        residual_strides: Sequence[int] = (1, 1, 2, 2),
        mid_channels: int = 64,
        mid_stride: int = 2,
        hidden: int = 32,
    ):
        super().__init__()
        map_channels = dict(map_channels or {"canny": 1})
        if len(residual_channels) != len(residual_strides):
            raise ValueError("residual_channels and residual_strides differ in length")
        strides = list(residual_strides) + [mid_stride]
        if any(s < 1 or s & (s - 1) for s in strides):
            raise ValueError(f"strides must be powers of two, got {strides}")
        self.first_stride = min(strides)
        self.num_levels = int(math.log2(max(strides) // self.first_stride)) + 1
        self.residual_levels = [int(math.log2(s // self.first_stride)) for s in residual_strides]
        self.mid_level = int(math.log2(mid_stride // self.first_stride))

        self.pyramids = nn.ModuleDict()
        self.down_convs = nn.ModuleDict()
        self.mid_convs = nn.ModuleDict()
        for name, channels in map_channels.items():
            pyramid = ControlPyramid(channels, hidden, self.first_stride, self.num_levels)
            self.pyramids[name] = pyramid
            self.down_convs[name] = nn.ModuleList(
                _zero_conv(pyramid.channels[level], out)
                for level, out in zip(self.residual_levels, residual_channels, strict=True)
            )
            self.mid_convs[name] = _zero_conv(pyramid.channels[self.mid_level], mid_channels)

    @classmethod
    def from_unet_config(
        cls, unet_config, map_channels: dict[str, int], image_stride: int = 1, hidden: int = 32
    ) -> ControlAdapter:
        """An adapter whose residuals fit the given UNet2DConditionModel config."""
        return cls(
            map_channels=map_channels,
            hidden=hidden,
            **unet_residual_spec(unet_config, image_stride),
        )

    def _scale(self, value, batch: int, height: int, width: int, ref: torch.Tensor) -> torch.Tensor:
        """A map's weight as (B, 1, 1, 1), or (B, 1, H, W) for a weight per map pixel."""
        scale = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
        if scale.ndim == 0:
            scale = scale.expand(batch)
        if scale.shape == (batch,):
            return scale.view(batch, 1, 1, 1)
        if scale.shape != (batch, 1, height, width):
            raise ValueError(f"a scale must be a float, a ({batch},) tensor or a ({batch}, 1, {height}, {width}) "
                             f"map, got shape {tuple(scale.shape)}")
        return scale

    @staticmethod
    def _at(scale: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """A per-pixel scale averaged over each cell of a feature map (exact: map sizes are
        multiples of the strides), so a map's residual fades out where it has no data."""
        if scale.shape[-1] == 1:
            return scale
        return F.adaptive_avg_pool2d(scale, features.shape[-2:])

    def forward(
        self,
        maps: Mapping[str, torch.Tensor],
        scales: Mapping[str, float | torch.Tensor] | None = None,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """maps: name -> (B, C, H, W), any non-empty subset; scales: name -> float, (B,) tensor
        or (B, 1, H, W) weight per map pixel (0 where a map has no data), default 1. Returns
        (down_residuals, mid_residual) for the UNet."""
        scales = dict(scales or {})
        known = list(self.pyramids.keys())
        unknown = [n for n in list(maps) + list(scales) if n not in self.pyramids]
        if unknown:
            raise ValueError(f"unknown control map(s) {unknown}; known: {known}")
        if not maps:
            raise ValueError(f"no control map given; known: {known}")

        shapes = {tuple(m.shape[0:1]) + tuple(m.shape[2:]) for m in maps.values()}
        if len(shapes) != 1:
            raise ValueError(f"control maps differ in batch size or spatial size: {sorted(shapes)}")
        batch, height, width = shapes.pop()
        if height % self.first_stride or width % self.first_stride:
            raise ValueError(f"map size {height}x{width} is not divisible by {self.first_stride}")

        down: list[torch.Tensor | None] = [None] * len(self.residual_levels)
        mid = None
        for name, x in maps.items():
            if x.shape[1] != self.config.map_channels[name]:
                raise ValueError(
                    f"control map {name!r} has {x.shape[1]} channels, expected {self.config.map_channels[name]}"
                )
            features = self.pyramids[name](x)
            scale = self._scale(scales.get(name, 1.0), batch, height, width, features[0])
            for i, (level, conv) in enumerate(
                zip(self.residual_levels, self.down_convs[name], strict=True)
            ):
                r = conv(features[level])
                r = self._at(scale, r) * r
                down[i] = r if down[i] is None else down[i] + r
            r = self.mid_convs[name](features[self.mid_level])
            r = self._at(scale, r) * r
            mid = r if mid is None else mid + r
        return tuple(down), mid

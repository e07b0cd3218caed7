"""GeoTIFF (and any raster GDAL reads) with its georeferencing kept next to the pixels."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from earthsynth.data.common import atomic_path, one_line, open_image
from earthsynth.errors import InputError

EARTH_METRES_PER_DEGREE = 111_320.0  # along a meridian; scaled by cos(lat) along a parallel


class BandsMixin:
    """bands / height / width of a (bands, H, W) `data` array (rasters and cubes)."""

    data: np.ndarray

    @property
    def bands(self) -> int:
        return self.data.shape[0]

    @property
    def height(self) -> int:
        return self.data.shape[1]

    @property
    def width(self) -> int:
        return self.data.shape[2]


@dataclass
class Raster(BandsMixin):
    """Pixels (bands, H, W) in their file dtype plus where they lie on Earth."""

    data: np.ndarray
    crs: str | None = None  # "EPSG:xxxx" where an EPSG code exists, else WKT
    transform: tuple[float, float, float, float, float, float] | None = None  # a, b, c, d, e, f
    nodata: float | None = None
    gsd: float | None = None  # metres per pixel (mean of x and y), None if not georeferenced
    tags: dict[str, str] = field(default_factory=dict)
    band_names: list[str] = field(default_factory=list)  # the file's band descriptions, if every band has one
    path: str | None = None
    # (H, W) True where a pixel is nodata (see nodata_pixels, or the file's internal mask); None: no such pixel
    nodata_mask: np.ndarray | None = None
    # per band, each empty when the file has none: tags (GDAL's STATISTICS_* left out: they
    # describe the old pixels), units, scales and offsets (value * scale + offset = quantity)
    band_tags: list[dict[str, str]] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    creation: dict = field(default_factory=dict)  # GTiff layout: compress, predictor, tiling / block size, interleave


# what a tool that writes new pixels on the same grid keeps of a Raster (denoise's cube metadata)
GRID_FIELDS = ("crs", "transform", "nodata", "tags", "nodata_mask", "band_tags", "units", "scales", "offsets",
               "creation")


def _crs_string(crs) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def gsd_metres(transform, crs, width: int, height: int) -> float | None:
    """Ground sample distance in metres per pixel: the mean of the x and y pixel sizes.

    Projected CRSs are converted with their linear unit; geographic CRSs (degrees) at the
    latitude of the raster's centre.
    """
    if transform is None or crs is None:
        return None
    a, b, c, d, e, f = transform[:6]
    size_x, size_y = math.hypot(a, d), math.hypot(b, e)
    if crs.is_geographic:
        centre_lat = f + e * height / 2 + d * width / 2
        size_x *= EARTH_METRES_PER_DEGREE * math.cos(math.radians(centre_lat))
        size_y *= EARTH_METRES_PER_DEGREE
    else:
        unit = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        size_x *= unit
        size_y *= unit
    return (size_x + size_y) / 2


@dataclass
class RasterHeader:
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    gsd: float | None


def read_header(path: str | os.PathLike) -> RasterHeader:
    """Size, bands, CRS and GSD of a raster without reading its pixels."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            has_geo = src.crs is not None and not src.transform.is_identity
            return RasterHeader(src.width, src.height, src.count, src.dtypes[0], _crs_string(src.crs),
                                gsd_metres(src.transform, src.crs, src.width, src.height) if has_geo else None)
    except RasterioError as err:
        raise InputError(path, f"truncated, corrupt or not a raster ({str(err).splitlines()[0]})") from None


PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read_plain_image(path: Path, window) -> Raster:
    """PNG / JPEG through PIL, which (unlike GDAL) refuses a truncated file instead of
    returning the missing rows as zeros. Such files carry no georeferencing."""
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as image:  # a decompression bomb is one line, past PIL's warning limit too
            image.load()
            if image.mode not in ("L", "RGB", "RGBA", "I;16"):
                image = image.convert("RGB")
            data = np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise InputError(path, f"truncated or corrupt image ({one_line(err)})") from None
    data = data[None] if data.ndim == 2 else data.transpose(2, 0, 1)
    if window is not None:
        x0, y0, x1, y1 = window
        data = data[:, y0:y1, x0:x1]
    return Raster(data=np.ascontiguousarray(data), path=str(path))


def read_geotiff(path: str | os.PathLike, window: tuple[int, int, int, int] | None = None) -> Raster:
    """Read a raster; `window` = (x0, y0, x1, y1) in pixels reads only that part.

    The transform of a window read is the window's own, so the cut stays georeferenced.
    Plain PNG / JPEG files are read too (without georeferencing).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return _read_plain_image(path, window)
    try:
        with warnings.catch_warnings():
            # a plain PNG has no georeferencing: that is reported as crs None, not warned
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            win = None if window is None else Window(window[0], window[1], window[2] - window[0], window[3] - window[1])
            data = src.read(window=win)
            transform = src.window_transform(win) if win is not None else src.transform
            has_geo = src.crs is not None and not transform.is_identity
            bands = range(1, src.count + 1)
            band_tags = [{k: v for k, v in src.tags(i).items() if not k.startswith("STATISTICS_")} for i in bands]
            scaled = set(src.scales) != {1.0} or set(src.offsets) != {0.0}
            return Raster(
                data=data,
                crs=_crs_string(src.crs),
                transform=tuple(transform)[:6] if has_geo else None,
                nodata=src.nodata,
                gsd=gsd_metres(transform, src.crs, data.shape[2], data.shape[1]) if has_geo else None,
                tags=dict(src.tags()),
                band_names=list(src.descriptions) if all(src.descriptions) else [],
                path=str(path),
                nodata_mask=_nodata_mask(src, data, win),
                band_tags=band_tags if any(band_tags) else [],
                units=list(src.units) if any(src.units) else [],
                scales=list(src.scales) if scaled else [],
                offsets=list(src.offsets) if scaled else [],
                creation=_creation_options(src),
            )
    except RasterioError as err:
        raise InputError(path, f"truncated, corrupt or not a raster ({str(err).splitlines()[0]})") from None


def _nodata_mask(src, data: np.ndarray, window) -> np.ndarray | None:
    """(H, W) True where the file says a pixel is nodata, None where none is. With a nodata
    value, GDAL's dataset mask rule: only where every band holds it (computed from the
    pixels read); with an internal mask (no alpha band), that mask."""
    flags = src.mask_flag_enums
    if all(band == [MaskFlags.nodata] for band in flags):
        return nodata_pixels(data, src.nodata)
    if any(MaskFlags.per_dataset in band and MaskFlags.alpha not in band for band in flags):
        mask = src.dataset_mask(window=window) == 0
        return mask if mask.any() else None
    return None


def _creation_options(src) -> dict:
    """How a GTiff is compressed and laid out, so that an output written like it is as small
    and reads as fast. Strips keep their rows per strip (their width is the image's)."""
    if src.driver != "GTiff":
        return {}
    profile = src.profile
    options = {key: profile[key] for key in ("compress", "photometric", "interleave") if profile.get(key)}
    predictor = src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR")
    if predictor:
        options["predictor"] = int(predictor)
    if profile.get("tiled"):
        options.update(tiled=True, blockxsize=profile["blockxsize"], blockysize=profile["blockysize"])
    else:
        options["blockysize"] = profile["blockysize"]
    return options


def nodata_value(nodata: float | None, dtype) -> np.generic | None:
    """`nodata` in `dtype`, or None when there is none or it cannot be held (-9999 in uint8)."""
    if nodata is None:
        return None
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if math.isnan(nodata) or nodata != int(nodata) or not info.min <= nodata <= info.max:
            return None
    return np.asarray(nodata).astype(dtype)[()]


def nodata_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray | None:
    """(H, W) True where EVERY band of (C, H, W) `data` holds `nodata` (NaN: is NaN), as GDAL's
    dataset mask says: a valid pixel whose one band merely equals it (saturated sand at 255) stays
    valid. None without a nodata value or without such a pixel."""
    value = nodata_value(nodata, data.dtype)
    if value is None:
        return None
    mask = np.isnan(data).all(axis=0) if np.isnan(value) else (data == value).all(axis=0)
    return mask if mask.any() else None


def fill_nodata(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of (C, H, W) `data` whose nodata pixels (`mask` (H, W) True) hold the values of
    the nearest valid pixel: a model fed holes at 0 or 255 smears them into the valid pixels
    around (dark halos). Unchanged where no pixel is valid."""
    from scipy import ndimage

    if mask.all():
        return data.copy()
    rows, cols = ndimage.distance_transform_edt(mask, return_distances=False, return_indices=True)
    return data[:, rows, cols]


def mark_nodata(data: np.ndarray, mask: np.ndarray | None, nodata: float | None) -> np.ndarray:
    """Output pixels (C, H, W) with the input's holes: every band of a `mask` pixel set to
    `nodata`, and each valid value that equals it moved one step (1, or the next float) towards
    the inside of the dtype's range, so no new hole appears, for a tool that reads nodata per
    band either. Unchanged without a nodata value the dtype can hold."""
    value = nodata_value(nodata, data.dtype)
    if value is None:
        return data
    out = data.copy()
    if np.issubdtype(out.dtype, np.integer):
        step = value - 1 if value == np.iinfo(out.dtype).max else value + 1
    else:
        step = np.nextafter(value, out.dtype.type(1 if value == 0 else 0))
    taken = out == value
    if mask is not None:
        taken[:, mask] = False
        out[:, mask] = value
    out[taken] = step
    return out


def write_geotiff(path: str | os.PathLike, raster: Raster) -> None:
    """Write `raster` as a GeoTIFF, atomically (temp file + rename): CRS, transform, nodata (or
    the internal mask), tags, band descriptions, band tags, units, scales / offsets and the
    compression and layout of `raster.creation` kept."""
    path = Path(path)
    data = raster.data if raster.data.ndim == 3 else raster.data[None]
    count = data.shape[0]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=count,
                   dtype=data.dtype, nodata=raster.nodata, **raster.creation)
    if raster.creation.get("compress"):
        profile["bigtiff"] = "IF_SAFER"  # GDAL's IF_NEEDED cannot tell for compressed data; x4 can pass 4 GB
    if raster.crs is not None:
        profile["crs"] = raster.crs
    if raster.transform is not None:
        profile["transform"] = rasterio.Affine(*raster.transform)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # a cube or image without georeferencing is written as a plain TIFF, not warned about
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            if raster.nodata_mask is not None and raster.nodata is None:  # the holes as an internal mask
                dst.write_mask(np.where(raster.nodata_mask, 0, 255).astype(np.uint8))
            if raster.tags:
                dst.update_tags(**raster.tags)
            for i, name in enumerate(raster.band_names[:count]):
                dst.set_band_description(i + 1, name)
            for i, tags in enumerate(raster.band_tags[:count]):
                dst.update_tags(i + 1, **tags)
            if len(raster.units) == count:
                dst.units = raster.units
            if len(raster.scales) == len(raster.offsets) == count:
                dst.scales, dst.offsets = raster.scales, raster.offsets


def centre_lonlat(raster: Raster) -> tuple[float, float] | None:
    """(lon, lat) in degrees of the raster's centre, or None if not georeferenced."""
    if raster.crs is None or raster.transform is None:
        return None
    from rasterio.warp import transform as warp_points

    a, b, c, d, e, f = raster.transform
    x = c + a * raster.width / 2 + b * raster.height / 2
    y = f + d * raster.width / 2 + e * raster.height / 2
    lons, lats = warp_points(raster.crs, "EPSG:4326", [x], [y])
    return float(lons[0]), float(lats[0])


def to_uint8_rgb(data: np.ndarray, bands: tuple[int, int, int] = (0, 1, 2), nodata: float | None = None,
                 stretch: bool | None = None) -> np.ndarray:
    """(B, H, W) any dtype -> (H, W, 3) uint8 for display and RGB training. A 2-98
    percentile stretch is applied to anything that is not uint8 already (or if `stretch`)."""
    rgb = data[list(bands)].astype(np.float32)
    if stretch is None:
        stretch = data.dtype != np.uint8
    if not stretch:
        return np.ascontiguousarray(rgb.transpose(1, 2, 0).astype(np.uint8))
    valid = np.isfinite(rgb) if nodata is None else np.isfinite(rgb) & (rgb != nodata)
    lo, hi = np.percentile(rgb[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    scaled = np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)
    scaled[~valid] = 0
    return np.round(scaled.transpose(1, 2, 0) * 255).astype(np.uint8)


DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "ACQUISITIONDATE", "DATE", "TIFFTAG_DATETIME")
CLOUD_TAGS = ("CLOUD_COVER", "CLOUDCOVER", "CLOUD_COVERAGE")


def tag_date(tags: dict[str, str]):
    """The acquisition date named by a raster's tags (ISO 'YYYY-MM-DD...' or TIFF
    'YYYY:MM:DD hh:mm:ss'), or None."""
    import datetime as dt

    upper = {k.upper(): v for k, v in tags.items()}
    for key in DATE_TAGS:
        text = upper.get(key, "").strip()
        if len(text) >= 10:
            try:
                return dt.date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
            except ValueError:
                continue
    return None


def raster_metadata(raster: Raster) -> dict:
    """What the scalar conditions of crsdiff can read from a raster: gsd (m/px, from the
    transform), lat / lon of the centre (from the CRS), year / month / day (from date tags)
    and cloud_cover (percent, from a cloud tag). Fields that cannot be read are absent."""
    meta = {}
    if raster.gsd is not None:
        meta["gsd"] = raster.gsd
    lonlat = centre_lonlat(raster)
    if lonlat is not None:
        meta["lon"], meta["lat"] = lonlat
    date = tag_date(raster.tags)
    if date is not None:
        meta.update(year=date.year, month=date.month, day=date.day)
    upper = {k.upper(): v for k, v in raster.tags.items()}
    for key in CLOUD_TAGS:
        try:
            cloud = float(upper[key])
        except (KeyError, ValueError):
            continue
        if 0 <= cloud <= 100:
            meta["cloud_cover"] = cloud
            break
    return meta

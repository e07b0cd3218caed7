"""`earthsynth generate text2earth|crsdiff`: images from a prompt (and, for crsdiff, metadata and
control maps) on the command line, or from a CSV / JSONL file of requests.

A request is a flat set of fields named like the options (prompt, gsd, seed, width, height,
out, ...; crsdiff adds reference, maps, canny, sketch, content, dem, landcover, road, scale
and the metadata fields year, month, day, date, cloud_cover, lat, lon). In a requests file
every row is one request; the command line's options are the defaults of every row and
relative paths are read from the requests file's folder.

Every request is checked (fields, files, sizes, metadata ranges, map names) before the first
image is made, so a bad row or a bad map costs no generation and leaves no file behind. Sizes are
capped (MAX_SIDE) before the model is loaded, and the memory a request would take is estimated
before anything of its size is allocated: beyond the memory of the device it is refused.
Images are written atomically (earthsynth.data.images): PNG / JPEG by the suffix, or a GeoTIFF (.tif) that keeps the
CRS and transform of a georeferenced --reference (crsdiff) or --image (text2earth inpainting)
and carries the prompt, GSD and model family as tags. Image k of a request is drawn from
seed + k, so it does not depend on how many images are asked.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from earthsynth.conditioning.control import (
    LANDCOVER_CLASSES,
    content_shuffle,
    landcover_onehot,
    normalise_dem,
    rasterize_lines,
    vector_lines,
)
from earthsynth.config import COUNT, NON_NEGATIVE, POSITIVE, SEED, Range
from earthsynth.data.common import format_number, one_line
from earthsynth.data.control_tiles import control_maps_from_rgb
from earthsynth.data.geotiff import Raster, raster_metadata, read_geotiff, read_header, to_uint8_rgb
from earthsynth.data.images import PLAIN_OUTPUTS, TIFF_OUTPUTS, write_image
from earthsynth.data.jsonl import read_jsonl
from earthsynth.errors import InputError
from earthsynth.generation.common import guidance_passes
from earthsynth.jobs.load import load_pipeline
from earthsynth.jobs.progress import JobProgress

META_FIELDS = ("gsd", "year", "month", "day", "date", "cloud_cover", "lat", "lon")
REFERENCE_MAPS = ("canny", "sketch", "content", "landcover")  # what control_maps_from_rgb gives
MAP_FILES = ("canny", "sketch", "content", "dem", "landcover", "road")
COMMON_FIELDS = ("prompt", "negative", "out", "gsd", "width", "height", "steps", "guidance", "seed", "num_images")
FIELDS = {
    "text2earth": (*COMMON_FIELDS, "gsd_guidance", "tile", "overlap", "image", "mask"),
    "crsdiff": (*COMMON_FIELDS, "condition_guidance", "reference", "maps", "scale", *MAP_FILES, *META_FIELDS[1:]),
}
INTEGER_FIELDS = ("width", "height", "steps", "seed", "num_images", "tile", "overlap")
NUMBER_FIELDS = ("gsd", "guidance", "gsd_guidance", "condition_guidance", "year", "month", "day", "cloud_cover",
                 "lat", "lon")
PATH_FIELDS = ("image", "mask", "reference", *MAP_FILES)
MAX_SIDE = 65_536  # pixels: past this a width, height or tile is refused before the model loads
MAX_IMAGES = 10_000  # per request: outputs are numbered OUT_0000 to OUT_9999
SIDE = Range(1, MAX_SIDE)
LIMITS = {"width": SIDE, "height": SIDE, "tile": SIDE, "overlap": NON_NEGATIVE, "steps": COUNT,
          "num_images": Range(1, MAX_IMAGES), "seed": SEED, "gsd": POSITIVE, "guidance": NON_NEGATIVE,
          "gsd_guidance": NON_NEGATIVE, "condition_guidance": NON_NEGATIVE}


def input_error(source, line: int | None, err: Exception) -> InputError:
    """`err` as the one-line error the CLI prints; a requests file's errors name the file and line."""
    if line is None and isinstance(err, InputError):
        return err
    return InputError(source, f"line {line}: {one_line(err)}" if line else one_line(err))


# ----------------------------------------------------------------------------- requests
@dataclass
class Request:
    """One request, its fields converted; `source` and `line` are what its errors name."""

    source: str
    line: int | None
    prompt: str
    out: Path
    gsd: float | None = None
    width: int | None = None  # None: the reference's / image's size, else the model's tile size
    height: int | None = None
    steps: int = 20
    guidance: float = 4.0
    gsd_guidance: float | None = None
    condition_guidance: float | None = None
    negative: str = ""
    seed: int = 0
    num_images: int = 1
    tile: int | None = None
    overlap: int = 16
    image: Path | None = None
    mask: Path | None = None
    reference: Path | None = None
    maps: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)  # map name -> file
    scales: dict[str, float] = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)  # crsdiff metadata other than gsd

    @contextlib.contextmanager
    def errors_named(self):
        """Pipeline and file errors become the one-line error naming this request."""
        try:
            yield
        except ValueError as err:  # InputError too
            raise input_error(self.source, self.line, err) from None

    def outputs(self) -> list[Path]:
        """out itself, or stem_0000.png, stem_0001.png ... for several images."""
        if self.num_images == 1:
            return [self.out]
        return [self.out.with_name(f"{self.out.stem}_{k:04d}{self.out.suffix}") for k in range(self.num_images)]


def number(name: str, value, kind=float):
    """A field's value (text from a CSV, a JSON number, an option) as a finite float or an int."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(result) or (kind is int and not result.is_integer()):
        raise ValueError(f"{name} {value!r} is not {'an integer' if kind is int else 'a finite number'}")
    return kind(result)


def name_list(name: str, value) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{name} must be comma-separated names, got {value!r}")
    return [str(item).strip() for item in items if str(item).strip()]


def scale_pairs(value) -> dict[str, float]:
    """{'canny': 0.5}, 'canny=0.5,dem=1' or ['canny=0.5', ...] -> {name: scale}."""
    if isinstance(value, dict):
        return {str(k): number(f"scale {k}", v) for k, v in value.items()}
    scales = {}
    for item in name_list("scale", value):
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"scale {item!r}: expected NAME=VALUE, e.g. canny=0.5")
        scales[name.strip()] = number(f"scale {name.strip()}", text)
    return scales


def meta_pairs(items: list[str]) -> dict[str, str]:
    """--meta KEY=VALUE items -> request fields; an unknown key is an error here."""
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in META_FIELDS:
            raise InputError(f"--meta {item}", f"expected KEY=VALUE with KEY one of {', '.join(META_FIELDS)}")
        fields[key] = value
    return fields


def fields_from_options(family: str, options: dict) -> dict:
    """The request fields the command line's options give (--meta KEY=VALUE folded in)."""
    fields = {key: value for key, value in options.items() if key in FIELDS[family] and key != "out"}
    fields.update(meta_pairs(options.get("meta") or []))
    return {key: value for key, value in fields.items() if value is not None}


def parse_request(family: str, fields: dict, source: str, line: int | None, folder: Path | None = None) -> Request:
    """Fields (strings from a CSV, JSON values, or the parsed options) -> a Request.

    folder: a requests file's output folder (each row's `out` is a file name inside it); None
    when `out` is the output file itself.
    """
    unknown = [key for key in fields if key not in FIELDS[family]]
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS[family])}")
    if not str(fields.get("prompt", "")).strip():
        raise ValueError("prompt is missing")
    values = {}
    for key, value in fields.items():
        if key in INTEGER_FIELDS:
            values[key] = number(key, value, int)
        elif key in NUMBER_FIELDS:
            values[key] = number(key, value)
        elif key in PATH_FIELDS:
            values[key] = Path(value)
        else:
            values[key] = value
        if key in LIMITS and values[key] not in LIMITS[key]:
            raise ValueError(f"{key} must be {LIMITS[key].describe()}, got {format_number(values[key])}")

    name = str(values.pop("out"))
    if folder is not None and (Path(name).name != name or name in (".", "..")):
        raise ValueError(f"out {name!r} must be a file name inside the output folder")
    target = folder / name if folder is not None else Path(name)
    if target.suffix.lower() not in (*PLAIN_OUTPUTS, *TIFF_OUTPUTS):
        raise ValueError(f"out {name!r}: name it .png, .jpg or .tif")

    request = Request(source=source, line=line, prompt=str(values.pop("prompt")), out=target,
                      negative=str(values.pop("negative", "")))
    if "date" in values:  # year / month / day of its own; explicit fields still win
        try:
            date = dt.date.fromisoformat(str(values.pop("date")))
        except ValueError:
            raise ValueError(f"date {fields['date']!r} is not YYYY-MM-DD") from None
        request.meta.update(year=date.year, month=date.month, day=date.day)
    for key in MAP_FILES:
        if key in values:
            request.files[key] = values.pop(key)
    for key in META_FIELDS[1:]:
        if key in values:
            request.meta[key] = values.pop(key)
    if "maps" in values:
        request.maps = name_list("maps", values.pop("maps"))
        wrong = [m for m in request.maps if m not in REFERENCE_MAPS]
        if wrong:
            raise ValueError(f"maps: unknown map(s) {', '.join(wrong)}; a reference gives {', '.join(REFERENCE_MAPS)}")
        if "reference" not in values:
            raise ValueError("maps are computed from a reference image: give a reference")
    if "scale" in values:
        request.scales = scale_pairs(values.pop("scale"))
    if ("image" in values) != ("mask" in values):
        raise ValueError("inpainting needs both an image and a mask (nonzero = regenerate)")
    for key, value in values.items():
        setattr(request, key, value)
    return request


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, fields) of every request in a .csv (header row of field names) or .jsonl file."""
    if path.suffix.lower() == ".jsonl":
        return read_jsonl(path)
    if path.suffix.lower() != ".csv":
        raise InputError(path, "requests must be a .csv or .jsonl file")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            # strict: a quote never closed is an error, not one long last field swallowing the rows after it
            reader = csv.DictReader(handle, strict=True)
            rows, start = [], 1  # start: the first line of the row being read
            try:
                reader.fieldnames  # noqa: B018 - reads the header
                start = reader.line_num + 1
                for row in reader:
                    if None in row:
                        raise InputError(path, f"line {reader.line_num}: more values than the header has columns")
                    rows.append((reader.line_num, row))
                    start = reader.line_num + 1
            except csv.Error as err:
                unclosed = "unexpected end of data" in str(err)
                raise InputError(path, f"line {start}: " + ("a quote opened in this row is never closed" if unclosed
                                                             else f"bad CSV ({err})")) from None
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, f"cannot read ({one_line(err)})") from None
    return rows


def read_requests(family: str, path, defaults: dict, folder: Path) -> list[Request]:
    """Every request of a requests file: each row's fields over the command line's `defaults`,
    its relative paths read from the file's folder, its outputs written in `folder`."""
    path = Path(path)
    requests = []
    for index, (line, row) in enumerate(read_rows(path)):
        row = {key.strip(): value for key, value in row.items() if value not in ("", None)}
        row = {key: path.parent / str(value) if key in PATH_FIELDS else value for key, value in row.items()}
        fields = {"out": f"request_{index:04d}.png", **defaults, **row}
        try:
            requests.append(parse_request(family, fields, str(path), line, folder))
        except ValueError as err:
            raise input_error(path, line, err) from None
    if not requests:
        raise InputError(path, "no requests in the file")
    seen = {}
    for request in requests:
        for target in request.outputs():
            if target in seen:
                raise InputError(path, f"line {request.line}: out {target.name} is also line {seen[target]}'s")
            seen[target] = request.line
    return requests


# ----------------------------------------------------------------------------- inputs
@dataclass
class Job:
    """A request's files read: the pipeline's arguments, and the grid a GeoTIFF output keeps."""

    kwargs: dict
    gsd: float | None = None
    crs: str | None = None
    transform: tuple | None = None


def rgb_of(raster: Raster) -> np.ndarray:
    """(H, W, 3) uint8 of an image or GeoTIFF (a one-band raster as grey)."""
    return to_uint8_rgb(raster.data, bands=(0, 1, 2) if raster.bands >= 3 else (0, 0, 0), nodata=raster.nodata)


def sizes_differ(path: Path, raster: Raster, height: int, width: int, what: str) -> InputError:
    """The error for a file whose size is not the one it must have (nothing is resized silently)."""
    return InputError(path, f"is {raster.width}x{raster.height} px, {what} is {width}x{height}")


def text2earth_job(pipe, request: Request) -> Job:
    """Text to image at the asked size, or inpainting of --image at its size, on its grid."""
    if request.image is None:
        size = pipe.unet.config.sample_size
        kwargs = dict(gsd=request.gsd, height=request.height or size, width=request.width or size, image=None,
                      mask_image=None)
        return Job(kwargs, gsd=request.gsd)
    image, mask = read_geotiff(request.image), read_geotiff(request.mask)
    if (mask.height, mask.width) != (image.height, image.width):
        raise sizes_differ(request.mask, mask, image.height, image.width, f"the image {request.image.name}")
    asked = (request.height or image.height, request.width or image.width)
    if asked != (image.height, image.width):
        raise sizes_differ(request.image, image, *asked, "the asked size")
    stride = pipe.unet.stride
    if image.height % stride or image.width % stride:
        raise InputError(request.image, f"is {image.width}x{image.height} px; inpainting needs a width and height "
                                        f"that are multiples of {stride} (crop or pad it)")
    gsd = request.gsd if request.gsd is not None else image.gsd  # a GeoTIFF knows its own
    kwargs = dict(gsd=gsd, height=image.height, width=image.width, image=rgb_of(image),
                  mask_image=(mask.data[0] != 0).astype(np.uint8))
    return Job(kwargs, gsd=gsd, crs=image.crs, transform=image.transform)


def cropped_reference(pipe, request: Request) -> Raster:
    """The reference cut from its top-left corner to the asked size, or down to multiples of
    the model's stride; the transform's origin is that corner, so it stays valid."""
    raster = read_geotiff(request.reference)
    stride = pipe.unet.stride
    height = request.height or raster.height // stride * stride
    width = request.width or raster.width // stride * stride
    if not (height and width):
        raise InputError(request.reference, f"is {raster.width}x{raster.height} px, smaller than the model's "
                                            f"minimum of {stride}x{stride}")
    if height > raster.height or width > raster.width:
        raise sizes_differ(request.reference, raster, height, width, "the asked size")
    return Raster(data=raster.data[:, :height, :width], crs=raster.crs, transform=raster.transform,
                  nodata=raster.nodata, gsd=raster.gsd, tags=raster.tags, path=raster.path)


def georeferenced(raster: Raster | None) -> bool:
    return raster is not None and raster.crs is not None and raster.transform is not None


def on_output_grid(path: Path, height: int, width: int, reference: Raster | None, nearest: bool) -> np.ndarray:
    """Band 1 of a raster as float32 (NaN = nodata) on the output's pixels: reprojected when it
    and the reference are both georeferenced, else resized to the output size."""
    raster = read_geotiff(path)
    band = raster.data[0].astype(np.float32)
    if raster.nodata is not None:
        band[band == raster.nodata] = np.nan
    if not (georeferenced(raster) and georeferenced(reference)):
        return cv2.resize(band, (width, height), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    from rasterio.enums import Resampling
    from rasterio.transform import Affine
    from rasterio.warp import reproject

    grid = np.full((height, width), np.nan, dtype=np.float32)
    reproject(band, grid, src_transform=Affine(*raster.transform), src_crs=raster.crs, src_nodata=np.nan,
              dst_transform=Affine(*reference.transform), dst_crs=reference.crs, dst_nodata=np.nan,
              resampling=Resampling.nearest if nearest else Resampling.bilinear)
    if np.isnan(grid).all():
        raise InputError(path, f"does not overlap the reference {reference.path}")
    return grid


def file_map(name: str, path: Path, height: int, width: int, reference: Raster | None, seed: int) -> np.ndarray:
    """A map given as a file -> (C, H, W) float32 in [0, 1] at the output's size."""
    if name in ("canny", "sketch"):  # the map itself: its layout is the image's, so no resizing
        raster = read_geotiff(path)
        if (raster.height, raster.width) != (height, width):
            raise sizes_differ(path, raster, height, width, "the output")
        band = raster.data[0]
        values = band.astype(np.float32) / 255.0 if band.dtype == np.uint8 else band.astype(np.float32)
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise InputError(path, f"a {name} map holds 0-255 (8-bit) or 0-1 values")
        return values[None]
    if name == "content":  # only its colours count: the layout is scrambled anyway
        rgb = cv2.resize(rgb_of(read_geotiff(path)), (width, height), interpolation=cv2.INTER_AREA)
        return content_shuffle(rgb, seed=seed).transpose(2, 0, 1)
    # a DEM or land cover that covers only part of the output is NaN (no data) elsewhere: the
    # pipeline conditions on it only where it has data
    if name == "dem":
        elevation = on_output_grid(path, height, width, reference, nearest=False)
        return np.where(np.isfinite(elevation), normalise_dem(elevation), np.nan)[None].astype(np.float32)
    if name == "landcover":
        codes = on_output_grid(path, height, width, reference, nearest=True)
        valid = np.isfinite(codes) & (codes >= 0) & (codes < len(LANDCOVER_CLASSES)) & (codes == np.round(codes))
        if not valid.any():
            raise InputError(path, f"has no class codes 0..{len(LANDCOVER_CLASSES) - 1} "
                                   f"({', '.join(LANDCOVER_CLASSES)}) on the output")
        onehot = landcover_onehot(np.where(valid, codes, -1).astype(np.int64), len(LANDCOVER_CLASSES), ignore_index=-1)
        return np.where(valid[None], onehot, np.nan).astype(np.float32)
    # road: lines placed by the reference's georeferencing
    if not georeferenced(reference):
        raise InputError(path, "road lines need a georeferenced reference (GeoTIFF with a CRS) to be placed")
    try:
        lines = vector_lines(path, reference.transform, reference.crs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(path, f"cannot read the GeoJSON lines ({one_line(err)})") from None
    road = rasterize_lines(lines, height, width)
    if not road.any():
        raise InputError(path, f"none of its lines crosses the reference {reference.path}")
    return road[None]


def crsdiff_job(pipe, request: Request) -> Job:
    reference = cropped_reference(pipe, request) if request.reference else None
    if reference is not None:
        height, width = reference.height, reference.width
    elif not (request.height or request.width) and ("canny" in request.files or "sketch" in request.files):
        header = read_header(request.files.get("canny") or request.files["sketch"])
        height, width = header.height, header.width
    else:
        size = pipe.unet.config.sample_size
        height, width = request.height or size, request.width or size

    metadata = raster_metadata(reference) if reference is not None else {}
    if request.gsd is not None:
        metadata["gsd"] = request.gsd
    metadata.update(request.meta)
    controls = {}
    if request.maps:
        maps = control_maps_from_rgb(rgb_of(reference), seed=request.seed)
        controls = {name: maps[name] for name in request.maps}
    for name, path in request.files.items():  # a file beats the same map made from the reference
        controls[name] = file_map(name, path, height, width, reference, request.seed)
    kwargs = dict(metadata=metadata, controls=controls, control_scales=request.scales, height=height, width=width)
    return Job(kwargs, gsd=metadata.get("gsd"), crs=reference.crs if reference is not None else None,
               transform=reference.transform if reference is not None else None)


def make_job(pipe, family: str, request: Request) -> Job:
    """Read a request's files and check it with the pipeline's own checks and against the
    device's memory, without generating."""
    if family == "text2earth":
        job = text2earth_job(pipe, request)
        pipe.check_inputs([request.prompt], [job.gsd], job.kwargs["height"], job.kwargs["width"], request.steps,
                          request.guidance, request.gsd_guidance, request.tile, request.overlap)
    else:
        job = crsdiff_job(pipe, request)
        pipe.check_metadata([job.kwargs["metadata"]])
        pipe.prepare_controls(job.kwargs["controls"], job.kwargs["control_scales"], 1)
        pipe.check_size(job.kwargs["height"], job.kwargs["width"], None, 0)
        pipe.check_guidance(request.steps, request.guidance, request.condition_guidance)
    check_memory(pipe, family, request, job)
    return job


def feature_bytes(config, pixels: int) -> int:
    """About the bytes of a UNet's (or a VAE decoder's) feature maps on `pixels` pixels of one
    image: each level keeps layers_per_block + 1 skip connections and works on about one more
    map, at a quarter of the pixels of the level above."""
    per_pixel = sum(c * (config.layers_per_block + 2) / 4**level for level, c in enumerate(config.block_out_channels))
    return int(per_pixel * pixels * 4)


def memory_needed(pipe, family: str, request: Request, job: Job) -> dict[str, int]:
    """About how many bytes a request takes at its peak, by part: the samples on the latent grid
    with the guidance passes' copies and the scheduler's and the tiles' temporaries (float32);
    the UNet's feature maps on one window (the tile the pipeline uses, else the whole grid); a
    VAE decoder's on one decoded tile; the output images (float32 copies, then 8-bit)."""
    height, width = job.kwargs["height"], job.kwargs["width"]
    images, config = request.num_images, pipe.unet.config
    condition_scale = request.gsd_guidance if family == "text2earth" else request.condition_guidance
    passes = len(guidance_passes(request.guidance, condition_scale))
    grid_h, grid_w, tile, *_ = pipe.latent_inputs(height, width, request.tile, request.overlap, None, None)
    window = min(tile or grid_h, grid_h) * min(tile or grid_w, grid_w)
    parts = {"samples": images * config.out_channels * grid_h * grid_w * 4 * (2 * passes + 4),
             "model features": images * passes * feature_bytes(config, window)}
    vae = getattr(pipe, "vae", None)
    if vae is not None:  # decoded in tiles of the trained size
        f, trained = pipe.vae_scale_factor, config.sample_size
        parts["decoder features"] = images * feature_bytes(vae.config, min(grid_h, trained) * min(grid_w, trained) * f * f)
    parts["output"] = images * height * width * 3 * (4 * 3 + 2)
    return parts


def device_memory(device: torch.device) -> int:
    """Bytes of memory of `device`: a GPU's own, else the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def size_text(count: int) -> str:
    """Bytes as "12.3 GB" or "45 MB"."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def check_memory(pipe, family: str, request: Request, job: Job) -> None:
    """Refuse a request whose estimated memory is more than its device has, before it allocates."""
    parts = memory_needed(pipe, family, request, job)
    limit = device_memory(pipe.device)
    if sum(parts.values()) <= limit:
        return
    smaller = "a smaller size or fewer images" + (", or a --tile" if family == "text2earth" and not request.tile else "")
    raise ValueError(f"{request.num_images} image(s) of {job.kwargs['width']}x{job.kwargs['height']} px need about "
                     f"{size_text(sum(parts.values()))} ({', '.join(f'{k} {size_text(n)}' for k, n in parts.items())}),"
                     f" more than the {size_text(limit)} of {pipe.device.type} memory; ask for {smaller}")


# ----------------------------------------------------------------------------- generation
def generate_images(pipe, family: str, request: Request, job: Job) -> list[np.ndarray]:
    """num_images (H, W, 3) uint8 images, image k drawn from seed + k."""
    generators = [torch.Generator().manual_seed(request.seed + k) for k in range(request.num_images)]
    common = dict(num_inference_steps=request.steps, guidance_scale=request.guidance, negative_prompt=request.negative,
                  generator=generators, output_type="pil")
    if family == "text2earth":
        extra = dict(gsd_guidance_scale=request.gsd_guidance, tile=request.tile, overlap=request.overlap)
    else:
        extra = dict(condition_guidance_scale=request.condition_guidance)
    output = pipe([request.prompt] * request.num_images, **job.kwargs, **common, **extra)
    return [np.asarray(image) for image in output.images]


def write_generated(path: Path, pixels: np.ndarray, family: str, request: Request, job: Job, seed: int) -> None:
    """(H, W, 3) uint8 as PNG / JPEG, or as a GeoTIFF on the job's grid tagged with the
    prompt, model, seed and GSD."""
    tags = {"EARTHSYNTH_PROMPT": request.prompt, "EARTHSYNTH_MODEL": family, "EARTHSYNTH_SEED": str(seed)}
    if job.gsd is not None:
        tags["EARTHSYNTH_GSD"] = format_number(job.gsd)
    data = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    write_image(path, Raster(data=data, crs=job.crs, transform=job.transform, tags=tags))


def generate_files(family: str, fields: dict, out, requests_file=None, model_dir=None, device=None, dtype=None,
                   show_progress: bool = False) -> Iterator[Path]:
    """Generate the images of one request (`fields`, from the options) or of every request in
    `requests_file` (`fields` are their defaults, `out` their folder), yielding each file
    written. Everything is checked before the first image; bad input raises InputError.
    device None = accelerate's, dtype None = float32; the bar counts denoising steps."""
    out = Path(out)
    if requests_file:
        if out.exists() and not out.is_dir():
            raise InputError(out, "with --requests, --out is a folder")
        requests = read_requests(family, requests_file, fields, out)
    else:
        source = f"generate {family}"
        try:
            requests = [parse_request(family, {**fields, "out": out}, source, None)]
        except ValueError as err:
            raise input_error(source, None, err) from None
        if not out.parent.is_dir():
            raise InputError(out, f"output folder {out.parent} does not exist")
    for request in requests:
        for target in request.outputs():
            if target.is_dir():
                raise InputError(target, "is a folder; name an output file (.png, .jpg or .tif)")

    pipe = load_pipeline(family, model_dir, device, dtype)
    for request in requests:
        with request.errors_named():
            make_job(pipe, family, request)
    if requests_file:
        out.mkdir(parents=True, exist_ok=True)
    with JobProgress(sum(r.steps for r in requests), f"generate {family}", disable=not show_progress) as progress:
        for request in requests:
            with request.errors_named(), progress.steps(pipe, request.steps):
                job = make_job(pipe, family, request)  # read again: a long batch holds one request's maps at a time
                images = generate_images(pipe, family, request, job)
            for k, (path, pixels) in enumerate(zip(request.outputs(), images)):
                write_generated(path, pixels, family, request, job, request.seed + k)
                yield path

"""Tiny valid inputs for every entry point, written as text or bytes so a case can break them.

Everything is a few 64 px images or an 8x8 cube: a case costs milliseconds to build.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

SIZE = 64  # px of every test image
BOXES = {"a": [("Tree", 8, 8, 40, 40)], "b": [("Tree", 20, 16, 50, 44)]}  # xyxy on SIZE x SIZE images
FORMATS = ("voc", "coco", "dota", "yolo", "yolo-obb", "csv")


@dataclass
class Bad:
    """What to run and what its one error line must hold.

    names: the file or option at fault, as the line must name it (a file by its name); a tuple
        means any one of them (an option may be named as typed or as its setting).
    words: key phrases of the problem, case-insensitive; a tuple inside means any one of them.
    """

    argv: list[str]
    names: str | tuple[str, ...]
    words: tuple = ()


def case(id: str, make, xfail: str = ""):
    """A corpus entry; `xfail` ("<owner> fixing: <what>") while src/ is being fixed, strict so
    that the fix shows up as an XPASS failure and the mark gets removed."""
    marks = [pytest.mark.xfail(strict=True, reason=f"issue 24: {xfail}")] if xfail else []
    return pytest.param(make, id=id, marks=marks)


def resolve(options, tmp) -> list[str]:
    """Command-line items as text; an item that is a function of tmp makes its file first."""
    return [str(o(tmp)) if callable(o) else o for o in options]


# ----------------------------------------------------------------------------- files
def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def png(path: Path, width: int = SIZE, height: int = SIZE, bands: int = 3, seed: int = 0) -> Path:
    """A random 8-bit image (grey for bands=1)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, bands), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if bands == 1 else pixels).save(path)
    return path


def png_bomb(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A PNG header claiming width x height RGB pixels (7.5 GB decoded) over a few bytes of data:
    PIL's decompression-bomb check must refuse it before allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                 + chunk(b"IEND", b""))


def a_file(tmp: Path) -> Path:
    """A plain file where a command wants a folder (--out, output_dir)."""
    return write(tmp / "taken.txt", "a file, not a folder\n")


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def replace(path: Path, old: str, new: str, count: int = 1) -> Path:
    """`old` -> `new` (`count` times, -1: everywhere) in a text file; a case that no longer finds
    its target fails loudly."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


def geotiff(path: Path, data: np.ndarray, nodata=None) -> Path:
    """(bands, H, W) as a GeoTIFF in EPSG:32617 at 0.1 m/px."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32617", transform=from_origin(400000, 3280000, 0.1, 0.1),
                       nodata=nodata) as dst:
        dst.write(data)
    return path


# ----------------------------------------------------------------------------- detection datasets
def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _voc(filename: str, boxes, width: int, height: int) -> str:
    objects = "".join(
        f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{_number(x0)}</xmin>"
        f"<ymin>{_number(y0)}</ymin><xmax>{_number(x1)}</xmax><ymax>{_number(y1)}</ymax></bndbox></object>\n"
        for label, x0, y0, x1, y1 in boxes)
    return (f"<annotation>\n<filename>{filename}</filename>\n<size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>\n{objects}</annotation>\n")


def _corners(x0, y0, x1, y1) -> list:
    return [x0, y0, x1, y0, x1, y1, x0, y1]  # clockwise on screen


@dataclass
class Dataset:
    """A detection dataset on disk: `data` is what --data takes."""

    fmt: str
    root: Path
    data: Path
    images: dict[str, Path] = field(default_factory=dict)  # stem -> image file
    labels: dict[str, Path] = field(default_factory=dict)  # stem -> its annotation file (COCO, CSV: the one file)

    def argv(self, out: Path, *extra: str) -> list[str]:
        """The augment command line; resample=1 so one 64 px image is one tile of the 64 px model."""
        return ["augment", "--data", str(self.data), "--format", self.fmt, "--out", str(out), "resample=1", *extra]


def dataset(root: Path, fmt: str, boxes: dict | None = None, width: int = SIZE, height: int = SIZE,
            classes: tuple[str, ...] = ("Tree",)) -> Dataset:
    """The usual folder layout of `fmt` with one image per key of `boxes` ({stem: [(label, x0, y0,
    x1, y1)]}, numbers or tokens such as 'nan' written as they are where the format allows)."""
    boxes = BOXES if boxes is None else boxes
    index = {name: i for i, name in enumerate(classes)}
    ds = Dataset(fmt, root, root)
    if fmt == "voc":
        for stem, items in boxes.items():
            ds.images[stem] = png(root / f"{stem}.png", width, height)
            ds.labels[stem] = write(root / f"{stem}.xml", _voc(f"{stem}.png", items, width, height))
    elif fmt == "coco":
        images, annotations = [], []
        for i, (stem, items) in enumerate(boxes.items(), start=1):
            ds.images[stem] = png(root / "images" / f"{stem}.png", width, height)
            images.append({"id": i, "file_name": f"{stem}.png", "width": width, "height": height})
            for label, x0, y0, x1, y1 in items:
                annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": index.get(label, 99) + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": 1.0, "iscrowd": 0})
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
        ds.data = write(root / "annotations.json", json.dumps({"images": images, "annotations": annotations,
                                                               "categories": categories}, indent=1))
        ds.labels = {stem: ds.data for stem in boxes}
    elif fmt == "dota":
        for stem, items in boxes.items():
            ds.images[stem] = png(root / "images" / f"{stem}.png", width, height)
            lines = [" ".join(_number(v) for v in _corners(*xyxy)) + f" {label} 0" for label, *xyxy in items]
            ds.labels[stem] = write(root / "labelTxt" / f"{stem}.txt", "gsd:0.1\n" + "\n".join(lines) + "\n")
    elif fmt in ("yolo", "yolo-obb"):
        for stem, items in boxes.items():
            ds.images[stem] = png(root / "images" / f"{stem}.png", width, height)
            lines = []
            for label, x0, y0, x1, y1 in items:
                if fmt == "yolo":
                    values = [(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
                else:
                    values = [v / (width if k % 2 == 0 else height) for k, v in enumerate(_corners(x0, y0, x1, y1))]
                lines.append(" ".join([str(index.get(label, 99))] + [f"{v:.6g}" for v in values]))
            ds.labels[stem] = write(root / "labels" / f"{stem}.txt", "\n".join(lines) + "\n")
        write(root / "data.yaml", yaml.safe_dump({"train": "images", "val": "images", "names": list(classes)}))
    elif fmt == "csv":
        lines = ["image_path,xmin,ymin,xmax,ymax,label"]
        for stem, items in boxes.items():
            ds.images[stem] = png(root / f"{stem}.png", width, height)
            lines += [",".join([f"{stem}.png", *(_number(v) for v in xyxy), label]) for label, *xyxy in items]
        ds.data = write(root / "boxes.csv", "\n".join(lines) + "\n")
        ds.labels = {stem: ds.data for stem in boxes}
    else:
        raise ValueError(fmt)
    return ds


# ----------------------------------------------------------------------------- cubes
def cube(bands: int = 4, size: int = 8, dtype=np.float32) -> np.ndarray:
    """(bands, size, size) smooth spectra plus noise."""
    rng = np.random.default_rng(0)
    base = np.linspace(0.2, 0.8, bands, dtype=np.float32)[:, None, None]
    return (base + 0.05 * rng.standard_normal((bands, size, size))).astype(dtype)


def npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def envi(hdr: Path, data: np.ndarray | None = None, **header) -> Path:
    """An ENVI bsq cube: hdr + hdr.with_suffix('.img'); `header` entries replace or add keys."""
    data = cube() if data is None else data
    fields = {"samples": data.shape[2], "lines": data.shape[1], "bands": data.shape[0], "header offset": 0,
              "file type": "ENVI Standard", "data type": 4, "interleave": "bsq", "byte order": 0,
              "wavelength": "{" + ", ".join(str(400 + 10 * i) for i in range(data.shape[0])) + "}"}
    fields.update({key.replace("_", " "): value for key, value in header.items()})
    write(hdr, "ENVI\n" + "".join(f"{key} = {value}\n" for key, value in fields.items()))
    write(hdr.with_suffix(".img"), data.astype("<f4").tobytes())
    return hdr


# ----------------------------------------------------------------------------- run configs, augment folders
def run_config(path: Path, output_dir: Path, **changes) -> Path:
    """A tiny smoke-family run config (tests_support.TINY_RUN) writing to `output_dir`;
    `changes` replace top-level entries."""
    from tests_support import TINY_RUN

    tree = {**json.loads(json.dumps(TINY_RUN)), "output_dir": str(output_dir), **changes}
    return write(path, yaml.safe_dump(tree, sort_keys=False))


def augment_output(root: Path, lines: list | None = None, finished: bool = True) -> Path:
    """What a finished `earthsynth augment` leaves: settings, candidates, the manifest (merged, and
    process 0's shard) and run.json. `lines`: manifest lines, records or raw text (default two
    accepted candidates); `finished` False: no merged manifest and no run.json, as after a kill."""
    write(root / "augment_config.yaml", "num_images: 2\nseed: 0\n")
    if lines is None:
        lines = [{"index": i, "image_id": f"synth_{i:06d}", "file": f"candidates/{i:06d}.png", "accepted": True,
                  "layout": {"rboxes": [[24.0, 24.0, 16.0, 16.0, 0.0]], "labels": ["Tree"], "rotated": False}}
                 for i in range(2)]
    for i in range(2):
        png(root / "candidates" / f"{i:06d}.png", seed=i)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    write(root / "manifest.rank0.jsonl", text)
    if finished:
        write(root / "manifest.jsonl", text)
        records = [line for line in lines if isinstance(line, dict)]
        write(root / "run.json", json.dumps({"candidates": len(records), "wanted": 2, "num_images": 2, "gsd": 0.2,
                                             "accepted": sum(r.get("accepted") is True for r in records)}))
    return root

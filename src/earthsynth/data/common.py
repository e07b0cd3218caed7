"""Helpers the annotation and cube readers share: atomic writes, image sizes, box checks."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from earthsynth.boxes import Boxes
from earthsynth.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator[IO]:
    """Open a temporary file next to `path`; it replaces `path` only if the block succeeds.

    The temporary file sits in the same directory so that `os.replace` is an atomic rename;
    on any error it is removed, so no half-written file is ever left behind.
    """
    path = Path(path)
    if "b" not in mode:
        open_kw.setdefault("encoding", "utf-8")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **open_kw) as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fmt(value: float, decimals: int = 6) -> str:
    """A number as short text: integers without a decimal point, others without trailing zeros."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image, reading only its header (PIL, else rasterio for odd TIFFs)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # PIL refuses some multi-band / float GeoTIFFs that rasterio reads
        pass
    try:
        import rasterio

        with rasterio.open(path) as src:
            return src.width, src.height
    except Exception as err:
        raise InputError(path, f"cannot read the image size: {one_line(err)}") from None


def find_image(folder: Path, name: str | None, stem: str) -> Path | None:
    """The image `name` in `folder`, else any image called `stem` with a usual extension."""
    if name and (folder / name).is_file():
        return folder / name
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + ext), folder / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def one_line(err: BaseException | str) -> str:
    """An exception's message squeezed onto one line (library errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def check_label(label: str, class_names: Sequence[str] | None, source, where: str) -> None:
    if class_names is not None and label not in class_names:
        raise InputError(source, f"{where}: unknown class {label!r} (known: {', '.join(class_names)})")


def check_boxes(boxes: Boxes, source, where: Sequence[str], width: float | None = None,
                height: float | None = None, tolerance: float = 1.0) -> tuple[Boxes, int]:
    """Raise an InputError for a degenerate box or one outside the image; clip small overruns.

    The rules are those of `Boxes.validate`, but the message says where the box sits in the
    file (`where[i]`, e.g. "line 7" or "object 3") so that a user can find it. Without an
    image size only the size and finiteness are checked. A horizontal box that overruns the
    image by at most `tolerance` pixels is clipped to it (annotators often put the far edge
    on pixel W instead of W - 1); a rotated box keeps its shape. Returns the boxes and the
    number that were clipped.
    """
    rboxes = boxes.rboxes.copy()
    xyxy = boxes.xyxy()
    clipped = 0
    for i, (box, (x0, y0, x1, y1)) in enumerate(zip(rboxes, xyxy)):
        label = boxes.labels[i]
        if not np.all(np.isfinite(box)):
            raise InputError(source, f"{where[i]}: box ({label}) has a non-finite coordinate")
        if box[2] <= 0 or box[3] <= 0:
            raise InputError(source, f"{where[i]}: box ({label}) has zero or negative size")
        if width is None or height is None:
            continue
        corners = f"[{fmt(x0, 1)}, {fmt(y0, 1)}, {fmt(x1, 1)}, {fmt(y1, 1)}]"
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise InputError(source, f"{where[i]}: box ({label}) at {corners} lies outside the {width}x{height} image")
        if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
            raise InputError(source, f"{where[i]}: box ({label}) at {corners} extends outside the {width}x{height} image")
        overruns = x0 < 0 or y0 < 0 or x1 > width or y1 > height
        if overruns and box[4] == 0 and not boxes.rotated:
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            rboxes[i] = [(cx0 + cx1) / 2, (cy0 + cy1) / 2, cx1 - cx0, cy1 - cy0, 0.0]
            clipped += 1
    return Boxes(rboxes, list(boxes.labels), boxes.rotated, boxes.difficult.copy()), clipped

"""DOTA v1.0 text annotations: one object per line as 4 corners, class and difficulty.

    imagesource:GoogleEarth          (optional header lines)
    gsd:0.146343590398               ('null' when unknown)
    x1 y1 x2 y2 x3 y3 x4 y4 class difficulty

Corners go clockwise on screen; DOTA's first corner is wherever the annotator started, and
`Boxes.from_corners` keeps the first edge as the box's width axis, so write -> read gives the
same (w, h, angle). Quadrilaterals that are not exact rectangles become their minimum-area
rectangle; one that crosses itself (a bow tie: corners out of order) is refused, as no
rectangle stands for it. Lines without the difficulty (DOTA test-set style) are read as not
difficult.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, check_label, format_number, self_crossing
from earthsynth.errors import InputError


def read_dota(txt_path: str | os.PathLike, width: int | None = None, height: int | None = None,
              class_names: Sequence[str] | None = None, tolerance: float = 1.0) -> tuple[Boxes, dict]:
    """One DOTA label file -> (rotated boxes, meta).

    meta: image_source (str or None), gsd (metres per pixel, None if absent or 'null'),
    clipped (always 0: rotated boxes are not clipped). Boxes are checked against the image
    only when `width` and `height` are given.
    """
    try:
        with open(txt_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(txt_path, f"cannot read: {err}") from None

    meta: dict = {"image_source": None, "gsd": None, "clipped": 0}
    quads, labels, difficult, where = [], [], [], []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.lower().startswith("imagesource:"):
            meta["image_source"] = text.split(":", 1)[1].strip() or None
            continue
        if text.lower().startswith("gsd:"):
            meta["gsd"] = _gsd(text.split(":", 1)[1].strip(), txt_path, number)
            continue
        values = text.split()
        if len(values) not in (9, 10):
            raise InputError(txt_path, f"line {number}: expected 10 values (x1 y1 x2 y2 x3 y3 x4 y4 class difficulty), got {len(values)}")
        try:
            quad = [float(v) for v in values[:8]]
        except ValueError:
            raise InputError(txt_path, f"line {number}: the 8 corner coordinates must be numbers") from None
        if not np.all(np.isfinite(quad)):
            raise InputError(txt_path, f"line {number}: a corner coordinate is not finite")
        if self_crossing(quad)[0]:
            raise InputError(txt_path, f"line {number}: the polygon crosses itself (corners not in order around it)")
        label = values[8]
        check_label(label, class_names, txt_path, f"line {number}")
        flag = values[9] if len(values) == 10 else "0"
        if flag not in ("0", "1"):
            raise InputError(txt_path, f"line {number}: difficulty is {flag!r}, expected 0 or 1")
        quads.append(quad)
        labels.append(label)
        difficult.append(flag == "1")
        where.append(f"line {number}")

    boxes = Boxes.from_corners(np.array(quads).reshape(-1, 4, 2), labels, difficult=np.array(difficult, dtype=bool))
    boxes, meta["clipped"] = boxes.validate(width, height, source=txt_path, where=where, tolerance=tolerance)
    return boxes, meta


def write_dota(path: str | os.PathLike, boxes: Boxes, gsd: float | None = None,
               image_source: str | None = None) -> Path:
    """Write one image's boxes as a DOTA label file (header lines only for the values given)."""
    lines = []
    if image_source is not None:
        lines.append(f"imagesource:{image_source}")
    if gsd is not None:
        lines.append(f"gsd:{float(gsd)!r}")
    for corners, label, difficult in zip(boxes.corners(), boxes.labels, boxes.difficult, strict=True):
        if not label or len(label.split()) != 1:
            raise InputError(path, f"class {label!r} is empty or has white space, which DOTA's format cannot hold")
        coords = " ".join(format_number(v) for v in corners.reshape(-1))
        lines.append(f"{coords} {label} {int(difficult)}")
    with atomic_write(path) as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def _gsd(text: str, source, number: int) -> float | None:
    if text.lower() in ("null", "none", ""):
        return None
    try:
        gsd = float(text)
    except ValueError:
        raise InputError(source, f"line {number}: gsd {text!r} is not a number or 'null'") from None
    if not np.isfinite(gsd) or gsd <= 0:
        raise InputError(source, f"line {number}: gsd {text!r} must be a positive number")
    return gsd

"""Pascal VOC XML annotations, with roLabelImg's `robndbox` for rotated boxes.

`<bndbox>` holds what the VOC devkit writes: integer, 1-based, inclusive pixel indices, so
(1, 1, W, H) is the whole image. Reading turns them into earthsynth's continuous 0-based
corners (xmin - 1, ymin - 1, xmax, ymax), as detectron2's VOC reader does; writing takes the
pixels a box touches (xmin = floor(x0) + 1, xmax = ceil(x1)) inside the image. Files from
tools that write 0-based corners with xmax up to the width (deepforest's) are read with
`one_based=False`.

roLabelImg stores a rotated box as `<type>robndbox</type>` and
`<robndbox><cx/><cy/><w/><h/><angle/></robndbox>`, in continuous pixels, the angle in radians
in [0, pi), its width axis along (cos a, sin a) on screen (its reader rotates the corners by
-angle in its y-down frame): the same sense as earthsynth's degrees (clockwise on screen), so
reading is a unit change plus folding to [-90, 90). Its reader needs `<type>` on every object
and integers in `<bndbox>`; we also write the enclosing `<bndbox>` of a rotated box, for plain
VOC tools (roLabelImg reads the robndbox of a robndbox object).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthsynth.boxes import Boxes, normalize_angle
from earthsynth.data.common import atomic_write, check_label, format_number
from earthsynth.errors import InputError


def read_voc(xml_path: str | os.PathLike, class_names: Sequence[str] | None = None,
             tolerance: float = 1.0, one_based: bool = True) -> tuple[Boxes, dict]:
    """One VOC XML file -> (boxes, info); `one_based=False` for files with 0-based corners.

    info: filename (None if absent), width, height, depth, clipped (boxes overrunning the
    image by <= `tolerance` px, clipped to it). Objects are numbered from 1 in errors.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise InputError(xml_path, f"malformed XML: {err}") from None
    except OSError as err:
        raise InputError(xml_path, f"cannot read: {err.strerror}") from None
    if root.tag != "annotation":
        raise InputError(xml_path, f"root element is <{root.tag}>, expected <annotation>")

    width = _number(root, "size/width", xml_path, "image size", int)
    height = _number(root, "size/height", xml_path, "image size", int)
    depth = 3  # VOC files from some tools omit it
    if root.findtext("size/depth"):
        depth = _number(root, "size/depth", xml_path, "image size", int)
    if width <= 0 or height <= 0:
        raise InputError(xml_path, f"image size {width}x{height} is not positive")

    rows, labels, difficult, where = [], [], [], []
    rotated = False
    for i, obj in enumerate(root.findall("object"), start=1):
        place = f"object {i}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise InputError(xml_path, f"{place} has no <name>")
        check_label(name, class_names, xml_path, place)
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise InputError(xml_path, f"{place} ({name}): <difficult> is {flag!r}, expected 0 or 1")
        if obj.find("robndbox") is not None:
            cx, cy, w, h, angle = (_number(obj, f"robndbox/{k}", xml_path, place, float)
                                   for k in ("cx", "cy", "w", "h", "angle"))
            rows.append([cx, cy, w, h, float(normalize_angle(np.rad2deg(angle)))])
            rotated = True
        elif obj.find("bndbox") is not None:
            x0, y0, x1, y1 = (_number(obj, f"bndbox/{k}", xml_path, place, float)
                              for k in ("xmin", "ymin", "xmax", "ymax"))
            if one_based:
                x0, y0 = x0 - 1, y0 - 1
            rows.append([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, 0.0])
        else:
            raise InputError(xml_path, f"{place} ({name}) has neither <bndbox> nor <robndbox>")
        labels.append(name)
        difficult.append(flag == "1")
        where.append(place)

    boxes = Boxes(np.array(rows).reshape(-1, 5), labels, rotated=rotated, difficult=np.array(difficult, dtype=bool))
    boxes, clipped = boxes.validate(width, height, source=xml_path, where=where, tolerance=tolerance)
    info = {"filename": (root.findtext("filename") or "").strip() or None, "width": width, "height": height,
            "depth": depth, "clipped": clipped}
    return boxes, info


def write_voc(path: str | os.PathLike, filename: str, width: int, height: int, boxes: Boxes,
              depth: int = 3) -> Path:
    """Write one image's boxes as VOC XML (rotated boxes as robndbox + enclosing bndbox)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = Path(filename).parent.name or "images"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(width))
    ET.SubElement(size, "height").text = str(int(height))
    ET.SubElement(size, "depth").text = str(int(depth))
    ET.SubElement(root, "segmented").text = "0"
    for box, xyxy, label, difficult in zip(boxes.rboxes, boxes.xyxy(), boxes.labels, boxes.difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "type").text = "robndbox" if boxes.rotated else "bndbox"
        ET.SubElement(obj, "name").text = label
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), pixel_indices(xyxy, width, height), strict=True):
            ET.SubElement(bndbox, key).text = str(value)
        if boxes.rotated:
            robndbox = ET.SubElement(obj, "robndbox")
            for key, value in zip(("cx", "cy", "w", "h"), box[:4], strict=True):
                ET.SubElement(robndbox, key).text = format_number(value)
            angle = format_number(np.deg2rad(box[4]) % np.pi, 8)
            # turned by pi a rectangle is the same one: keep [0, pi) after rounding too
            ET.SubElement(robndbox, "angle").text = angle if float(angle) < np.pi else "0"
    ET.indent(root)
    with atomic_write(path, "wb") as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=False)
    return Path(path)


def pixel_indices(xyxy, width: int, height: int) -> tuple[int, int, int, int]:
    """Continuous 0-based corners -> the VOC devkit's 1-based inclusive indices of the pixels
    the box touches, inside the image. 1e-6 keeps float noise (x1 = 20.0000001) from adding
    a pixel."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    xmin = min(max(math.floor(x0 + 1e-6) + 1, 1), int(width))
    ymin = min(max(math.floor(y0 + 1e-6) + 1, 1), int(height))
    xmax = min(max(math.ceil(x1 - 1e-6), xmin), int(width))
    ymax = min(max(math.ceil(y1 - 1e-6), ymin), int(height))
    return xmin, ymin, xmax, ymax


def _number(element: ET.Element, tag: str, source, place: str, kind: type):
    """The number in child `tag`, or an InputError saying which element is missing or bad."""
    text = element.findtext(tag)
    if text is None or not text.strip():
        raise InputError(source, f"{place}: missing <{tag.replace('/', '><')}>")
    try:
        value = kind(float(text)) if kind is int else float(text)
    except (ValueError, OverflowError):
        value = float("nan")
    if not np.isfinite(value):
        raise InputError(source, f"{place}: <{tag.split('/')[-1]}> is {text.strip()!r}, not a finite number")
    return value

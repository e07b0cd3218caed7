"""YOLO and YOLO-OBB text labels (ultralytics layout), one object per line, normalised to [0, 1].

    YOLO:      class cx cy w h
    YOLO-OBB:  class x1 y1 x2 y2 x3 y3 x4 y4

`class` is an index into the dataset's class names (data.yaml `names`). Rotated boxes
written without `obb` become their enclosing horizontal boxes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, format_number
from earthsynth.errors import InputError


def read_yolo(txt_path: str | os.PathLike, width: int, height: int, class_names: Sequence[str],
              obb: bool = False, tolerance: float = 1.0) -> Boxes:
    """One YOLO (or YOLO-OBB) label file -> boxes in pixels of a `width` x `height` image.

    `tolerance` is in pixels, as for the other formats.
    """
    try:
        with open(txt_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(txt_path, f"cannot read: {err}") from None

    expected = "class x1 y1 x2 y2 x3 y3 x4 y4" if obb else "class cx cy w h"
    rows, labels, where = [], [], []
    for number, line in enumerate(lines, start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != len(expected.split()):
            raise InputError(txt_path, f"line {number}: expected {len(expected.split())} values ({expected}), got {len(values)}")
        try:
            class_index = int(values[0])
            coords = [float(v) for v in values[1:]]
        except ValueError:
            raise InputError(txt_path, f"line {number}: expected an integer class and numbers ({expected})") from None
        if not 0 <= class_index < len(class_names):
            raise InputError(txt_path, f"line {number}: class index {class_index} is not in 0..{len(class_names) - 1}")
        if not np.all(np.isfinite(coords)):
            raise InputError(txt_path, f"line {number}: a coordinate is not finite")
        rows.append(coords)
        labels.append(class_names[class_index])
        where.append(f"line {number}")

    scale = np.array([width, height], dtype=np.float64)
    if obb:
        corners = np.array(rows, dtype=np.float64).reshape(-1, 4, 2) * scale
        boxes = Boxes.from_corners(corners, labels)
    else:
        cxcywh = np.array(rows, dtype=np.float64).reshape(-1, 4) * np.tile(scale, 2)
        boxes = Boxes(np.concatenate([cxcywh, np.zeros((len(cxcywh), 1))], axis=1), labels)
    boxes, _ = boxes.validate(width, height, source=txt_path, where=where, tolerance=tolerance)
    return boxes


def write_yolo(path: str | os.PathLike, boxes: Boxes, width: int, height: int,
               class_names: Sequence[str], obb: bool = False) -> Path:
    """Write one image's boxes as a YOLO (or YOLO-OBB) label file."""
    index = {name: i for i, name in enumerate(class_names)}
    for label in boxes.labels:
        if label not in index:
            raise InputError(path, f"label {label!r} is not among the class names {list(class_names)}")
    scale = np.array([width, height], dtype=np.float64)
    if obb:
        values = boxes.corners().reshape(-1, 8) / np.tile(scale, 4)
    else:
        x0, y0, x1, y1 = boxes.xyxy().T
        values = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1) / np.tile(scale, 2)
    lines = [" ".join([str(index[label])] + [format_number(v, 8) for v in row]) for label, row in zip(boxes.labels, values, strict=True)]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def write_yolo_data_yaml(dir: str | os.PathLike, class_names: Sequence[str], train: str = "images/train",
                         val: str = "images/val", test: str | None = None) -> Path:
    """Write `dir`/data.yaml for ultralytics: train/val(/test) image folders and class names.

    No `path` key: ultralytics then takes the yaml's own folder as the dataset root, so the
    dataset can be moved (an absolute path would name wherever it was written, a temporary
    staging folder included; a relative one is resolved against ultralytics' datasets folder).
    """
    dir = Path(dir)
    data = {"train": train, "val": val}
    if test is not None:
        data["test"] = test
    data.update({"nc": len(class_names), "names": {i: name for i, name in enumerate(class_names)}})
    with atomic_write(dir / "data.yaml") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return dir / "data.yaml"


def read_yolo_class_names(yaml_path: str | os.PathLike) -> list[str]:
    """Class names from an ultralytics data.yaml (`names` as a list or as {index: name})."""
    try:
        with open(yaml_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(yaml_path, f"cannot read: {err}") from None
    except yaml.YAMLError as err:
        raise InputError(yaml_path, f"malformed YAML: {' '.join(str(err).split())}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        if sorted(names) != list(range(len(names))):
            raise InputError(yaml_path, f"'names' indices must be 0..{len(names) - 1}, got {sorted(names)}")
        return [str(names[i]) for i in range(len(names))]
    raise InputError(yaml_path, "no 'names' list or {index: name} mapping")

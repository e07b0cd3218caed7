"""COCO detection JSON, with an optional per-annotation `rbox` for rotated boxes.

Standard COCO carries horizontal boxes only (`bbox` = [x, y, w, h]). earthsynth writes,
for rotated boxes, an extra annotation field `"rbox": [cx, cy, w, h, angle_degrees]` and
the box's 4 corners as its `segmentation` polygon, so COCO tools (pycocotools, COCOeval)
still see a valid file with the enclosing `bbox`, and this reader gets the rotation back.
A file with any `rbox` is read as rotated boxes throughout.

`iscrowd` regions and boxes we mark `"difficult": 1` are read with the difficult flag set
(both mean "do not count in evaluation"); we write `iscrowd` 0 and `difficult` only where
it is true, so a plain file stays plain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, check_label
from earthsynth.errors import InputError


def read_coco(json_path: str | os.PathLike, class_names: Sequence[str] | None = None,
              tolerance: float = 1.0) -> tuple[list[tuple[dict, Boxes]], list[str]]:
    """A COCO JSON file -> ([(image dict, boxes), ...] in the file's image order, category names).

    Category names are listed in the order of their ids. The image dicts are the file's own
    (id, file_name, width, height, ...), plus `clipped`: boxes overrunning the image by at
    most `tolerance` px that were clipped to it.
    """
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise InputError(json_path, f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(json_path, f"cannot read: {err}") from None
    except RecursionError:  # json's decoder recurses once per level of [ or {
        raise InputError(json_path, "JSON nested too deeply to be a COCO file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(json_path, "not a COCO file: no 'images' list at the top level")
    if not isinstance(data.get("categories"), list):
        raise InputError(json_path, "not a COCO file: no 'categories' list at the top level")

    # categories: id -> name
    names_by_id: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise InputError(json_path, f"category {i} needs an integer 'id' and a string 'name'")
        if cat["id"] in names_by_id:
            raise InputError(json_path, f"category id {cat['id']} appears twice")
        names_by_id[cat["id"]] = cat["name"]
    categories = [names_by_id[k] for k in sorted(names_by_id)]

    # images: id -> info, with room for their annotations
    images: dict[int, dict] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise InputError(json_path, f"image {i} is not an object")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            if not isinstance(image.get(key), kind):
                raise InputError(json_path, f"image {i}: missing or bad '{key}'")
        if image["id"] in images:
            raise InputError(json_path, f"image id {image['id']} appears twice")
        if image["width"] <= 0 or image["height"] <= 0:
            raise InputError(json_path, f"image {image['file_name']}: size {image['width']}x{image['height']} is not positive")
        images[image["id"]] = image

    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise InputError(json_path, "'annotations' is not a list")
    rotated = any(isinstance(a, dict) and "rbox" in a for a in annotations)
    per_image: dict[int, list] = {image_id: [] for image_id in images}  # (row, label, difficult, where)
    for i, ann in enumerate(annotations):
        place = f"annotation id {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotation {i}"
        if not isinstance(ann, dict):
            raise InputError(json_path, f"{place} is not an object")
        if ann.get("image_id") not in images:
            raise InputError(json_path, f"{place}: image_id {ann.get('image_id')!r} is not among the images")
        if ann.get("category_id") not in names_by_id:
            raise InputError(json_path, f"{place}: category_id {ann.get('category_id')!r} is not among the categories")
        label = names_by_id[ann["category_id"]]
        check_label(label, class_names, json_path, place)
        if "rbox" in ann:
            row = _numbers(ann["rbox"], 5, json_path, place, "rbox")
        else:
            x, y, w, h = _numbers(ann.get("bbox"), 4, json_path, place, "bbox")
            row = [x + w / 2, y + h / 2, w, h, 0.0]
        difficult = bool(ann.get("iscrowd", 0)) or bool(ann.get("difficult", 0))
        per_image[ann["image_id"]].append((row, label, difficult, place))

    records = []
    for image_id, image in images.items():
        items = per_image[image_id]
        boxes = Boxes(np.array([it[0] for it in items]).reshape(-1, 5), [it[1] for it in items],
                      rotated=rotated, difficult=np.array([it[2] for it in items], dtype=bool))
        where = [f"image {image['file_name']}, {it[3]}" for it in items]
        boxes, clipped = boxes.validate(image["width"], image["height"], source=json_path, where=where, tolerance=tolerance)
        records.append(({**image, "clipped": clipped}, boxes))
    return records, categories


def write_coco(path: str | os.PathLike, images: Sequence[tuple[str, int, int, Boxes]],
               categories: Sequence[str]) -> Path:
    """Write images [(file_name, width, height, boxes), ...] as one COCO JSON file.

    Image, annotation and category ids count from 1 in the order given. `bbox` is the
    enclosing horizontal box, `segmentation` the 4-corner polygon, `area` the box's own
    area (w * h); rotated boxes also get `rbox`. Every label must be among `categories`.
    """
    category_ids = {name: i for i, name in enumerate(categories, start=1)}
    out_images, out_annotations = [], []
    for image_id, (file_name, width, height, boxes) in enumerate(images, start=1):
        out_images.append({"id": image_id, "file_name": str(file_name), "width": int(width), "height": int(height)})
        for box, corners, xyxy, label, difficult in zip(boxes.rboxes, boxes.corners(), boxes.xyxy(),
                                                         boxes.labels, boxes.difficult, strict=True):
            if label not in category_ids:
                raise InputError(path, f"image {file_name}: label {label!r} is not among the categories {list(categories)}")
            x0, y0, x1, y1 = (float(v) for v in xyxy)
            ann = {
                "id": len(out_annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[label],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": float(box[2] * box[3]),
                "segmentation": [[float(v) for v in corners.reshape(-1)]],
                "iscrowd": 0,
            }
            if boxes.rotated:
                ann["rbox"] = [float(v) for v in box]
            if difficult:
                ann["difficult"] = 1
            out_annotations.append(ann)
    data = {
        "info": {"description": "written by earthsynth"},
        "licenses": [],
        "images": out_images,
        "annotations": out_annotations,
        "categories": [{"id": i, "name": name, "supercategory": "object"} for name, i in category_ids.items()],
    }
    with atomic_write(path) as f:
        json.dump(data, f)
    return Path(path)


def _numbers(value, count: int, source, place: str, key: str) -> list[float]:
    """`value` as `count` finite floats, or an InputError naming the annotation and key."""
    if not isinstance(value, list) or len(value) != count:
        raise InputError(source, f"{place}: '{key}' must be a list of {count} numbers, got {value!r}")
    try:
        numbers = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InputError(source, f"{place}: '{key}' must be a list of {count} numbers, got {value!r}") from None
    if not all(np.isfinite(numbers)):
        raise InputError(source, f"{place}: '{key}' has a non-finite value: {value!r}")
    return numbers

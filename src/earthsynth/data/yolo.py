"""YOLO and YOLO-OBB text labels (ultralytics layout), one object per line, normalised to [0, 1].

    YOLO:      class cx cy w h
    YOLO-OBB:  class x1 y1 x2 y2 x3 y3 x4 y4

`class` is an index into the dataset's class names (data.yaml `names`). Rotated boxes
written without `obb` become their enclosing horizontal boxes. Written values are clipped to
[0, 1]: ultralytics drops an image whose labels reach more than 1% outside it as corrupt (a
rotated box cut by a tile edge keeps its angle, so its corners can overhang the image).

`ultralytics_problems` checks a written dataset against the rules of ultralytics' own dataset
check (`check_det_dataset`, `verify_image_label`), which cannot run here (ultralytics needs
torchvision).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, format_number, self_crossing
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
        if obb and self_crossing(coords)[0]:
            raise InputError(txt_path, f"line {number}: the polygon crosses itself (corners not in order around it)")
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
        values = np.clip(boxes.corners().reshape(-1, 8) / np.tile(scale, 4), 0.0, 1.0)
    else:
        x0, y0, x1, y1 = np.clip(boxes.xyxy() / np.tile(scale, 2), 0.0, 1.0).T
        values = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=1)
    lines = [" ".join([str(index[label])] + [format_number(v, 8) for v in row]) for label, row in zip(boxes.labels, values, strict=True)]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


YOLO_SPLITS = ("train", "val", "test")


def write_yolo_data_yaml(dir: str | os.PathLike, class_names: Sequence[str]) -> Path:
    """Write `dir`/data.yaml for ultralytics: the splits that exist as images/<split>/ folders
    and the class names as {index: name} with `nc`. Call it once the images are written.

    No `path` key: ultralytics then takes the yaml's own folder as the dataset root, so the
    dataset can be moved (an absolute path would name wherever it was written, a temporary
    staging folder included; a relative one is resolved against ultralytics' datasets folder).
    ultralytics refuses a file without both `train` and `val`: when one of them was not
    written it names another split's images, and a comment at the top says so.
    """
    dir = Path(dir)
    present = [split for split in YOLO_SPLITS if (dir / "images" / split).is_dir()]
    if not present:
        raise InputError(dir, f"no images/{{{','.join(YOLO_SPLITS)}}} folder to list in data.yaml")
    data = {split: f"images/{split}" for split in present}
    notes = []
    for required in ("train", "val"):
        if required not in data:
            stand_in = next(s for s in YOLO_SPLITS if s in present)
            data[required] = f"images/{stand_in}"
            notes.append(f"# no {required} split was written: {required} names the {stand_in} images "
                         "(ultralytics needs train and val)\n")
    data = {key: data[key] for key in YOLO_SPLITS if key in data}
    data.update({"nc": len(class_names), "names": {i: str(name) for i, name in enumerate(class_names)}})
    with atomic_write(dir / "data.yaml") as f:
        f.write("".join(notes))
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return dir / "data.yaml"


def read_yolo_class_names(yaml_path: str | os.PathLike) -> list[str]:
    """Class names from an ultralytics data.yaml, by ultralytics' rules: `names` as a list or
    as {index: name} with indices 0..n-1 (integers or their text), `nc` (if given) their count."""
    yaml_path = Path(yaml_path)
    return yolo_class_names(load_data_yaml(yaml_path), yaml_path)


def load_data_yaml(yaml_path: Path) -> dict:
    try:
        with open(yaml_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(yaml_path, f"cannot read: {err}") from None
    except yaml.YAMLError as err:
        raise InputError(yaml_path, f"malformed YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise InputError(yaml_path, "nested too deeply to be a data.yaml") from None
    if not isinstance(data, dict):
        raise InputError(yaml_path, f"is a {type(data).__name__}, not a mapping of train, val, names...")
    return data


def yolo_class_names(data: dict, source: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise InputError(source, f"'names' keys must be class indices, got {list(names)}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise InputError(source, f"'names' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list) or not names:
        raise InputError(source, "no 'names' list or {index: name} mapping")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise InputError(source, f"'nc' is {nc!r} but 'names' holds {len(names)} classes")
    return [str(n) for n in names]


def yolo_label_path(image: str | os.PathLike) -> Path | None:
    """Where ultralytics looks for an image's labels: the last /images/ of its path turned into
    /labels/, suffix .txt; None for an image under no images/ folder."""
    parts = str(image).rsplit(f"{os.sep}images{os.sep}", 1)
    if len(parts) != 2:
        return None
    return Path(f"{os.sep}labels{os.sep}".join(parts)).with_suffix(".txt")


# ----------------------------------------------------------------------------- ultralytics' rules
ULTRALYTICS_IMAGE_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic")


def ultralytics_problems(yaml_path: str | os.PathLike, obb: bool = False) -> list[str]:
    """What ultralytics would refuse, or drop as corrupt, in the dataset that `yaml_path`
    describes, as "<file>: <problem>" lines; [] when it would use every image and label.

    Its rules (ultralytics/data/utils.py): the yaml a mapping with `train` and `val`, `names`
    (list or {index: name}) and `nc` agreeing; each split folder present and holding images
    (found recursively); each image readable, at least 10x10 px, of a format it reads; its
    label file (the last /images/ of its path turned into /labels/, suffix .txt; none = no
    objects) with one object per line: 5 values (9 with `obb`), a class index below `nc`,
    coordinates normalised to [0, 1] (it allows 1% over; we write within). Ours on top: no
    `path` key, so the dataset can be moved, and integer class indices.
    """
    yaml_path = Path(yaml_path)
    try:
        data = load_data_yaml(yaml_path)
        nc = len(yolo_class_names(data, yaml_path))
    except InputError as err:
        return [str(err)]
    problems = [f"{yaml_path}: no '{key}' key (ultralytics needs train and val)"
                for key in ("train", "val") if not data.get(key)]
    if "path" in data:
        problems.append(f"{yaml_path}: a 'path' key ties the dataset to one place (without it the yaml's folder is the root)")
    for key in YOLO_SPLITS:
        entries = data.get(key) or []
        for entry in [entries] if isinstance(entries, str) else entries:
            folder = yaml_path.parent / str(entry)
            if not folder.is_dir():
                problems.append(f"{yaml_path}: {key}: {entry} is not a folder")
                continue
            images = sorted(p for p in folder.rglob("*") if p.suffix[1:].lower() in ULTRALYTICS_IMAGE_FORMATS)
            if not images:
                problems.append(f"{yaml_path}: {key}: no images in {entry}")
            for image in images:
                problems += _image_label_problems(image, nc, obb)
    return problems


def _image_label_problems(image: Path, nc: int, obb: bool) -> list[str]:
    from PIL import Image

    try:
        with Image.open(image) as opened:
            opened.verify()
            (width, height), kind = opened.size, (opened.format or "").lower()
    except Exception as err:  # ultralytics drops an image that PIL cannot verify, whatever the error
        return [f"{image}: unreadable image ({' '.join(str(err).split())})"]
    problems = []
    if width < 10 or height < 10:
        problems.append(f"{image}: {width}x{height} px, ultralytics needs at least 10x10")
    if kind not in ULTRALYTICS_IMAGE_FORMATS:
        problems.append(f"{image}: image format {kind or 'unknown'} is not one ultralytics reads")
    label = yolo_label_path(image)
    if label is None:
        return problems + [f"{image}: not under an images/ folder, so ultralytics finds no labels for it"]
    if not label.is_file():
        return problems  # no label file: an image without objects
    columns = 9 if obb else 5
    for number, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        where = f"{label}: line {number}"
        if len(values) != columns:
            problems.append(f"{where}: {len(values)} values, ultralytics' {'OBB' if obb else 'detection'} labels have {columns}")
            continue
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            problems.append(f"{where}: not all numbers")
            continue
        if not values[0].isdigit() or int(values[0]) >= nc:
            problems.append(f"{where}: class {values[0]} is not an index 0..{nc - 1}")
        if not all(0.0 <= v <= 1.0 for v in numbers[1:]):
            problems.append(f"{where}: a coordinate is outside [0, 1]")
    return problems

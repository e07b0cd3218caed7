"""Detection annotations on disk: the per-format readers and writers in one place, deepforest's
CSV, and `read_dataset`, which walks the usual folder layouts of each format.

Per image, every format reads to and writes from a `Boxes` (see earthsynth.boxes):

    VOC XML     read_voc / write_voc          earthsynth.data.voc
    COCO JSON   read_coco / write_coco        earthsynth.data.coco
    DOTA txt    read_dota / write_dota        earthsynth.data.dota
    YOLO txt    read_yolo / write_yolo        earthsynth.data.yolo   (obb=True for YOLO-OBB)
    CSV         read_box_csv / write_box_csv  here (deepforest: image_path,xmin,ymin,xmax,ymax,label)

Bad input raises `InputError` naming the file (and line, object or annotation); writers
replace their file atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthsynth.boxes import Boxes
from earthsynth.data.coco import read_coco, write_coco
from earthsynth.data.common import (
    IMAGE_EXTENSIONS,
    atomic_write,
    check_label,
    find_image,
    format_number,
    image_size,
    inside_folder,
    one_line,
    read_csv_rows,
)
from earthsynth.data.dota import read_dota, write_dota
from earthsynth.data.voc import read_voc, write_voc
from earthsynth.data.yolo import (
    YOLO_SPLITS,
    load_data_yaml,
    read_yolo,
    read_yolo_class_names,
    write_yolo,
    write_yolo_data_yaml,
    yolo_class_names,
    yolo_label_path,
)
from earthsynth.errors import InputError

__all__ = [
    "FORMATS", "read_box_csv", "write_box_csv", "read_dataset",
    "read_voc", "write_voc", "read_coco", "write_coco", "read_dota", "write_dota",
    "read_yolo", "write_yolo", "write_yolo_data_yaml", "read_yolo_class_names",
]

FORMATS = ("voc", "coco", "dota", "yolo", "yolo-obb", "csv")
CSV_COLUMNS = ("image_path", "xmin", "ymin", "xmax", "ymax", "label")


# ----------------------------------------------------------------------------- deepforest CSV
def read_box_csv(csv_path: str | os.PathLike, class_names: Sequence[str] | None = None,
                 image_dir: str | os.PathLike | None = None, tolerance: float = 1.0,
                 allow_outside_paths: bool = False) -> dict[str, Boxes]:
    """A deepforest CSV -> {image file name: boxes}, images in order of first appearance.

    The CSV holds no image sizes: boxes are checked against an image when it is found in
    `image_dir` (default: the CSV's folder), else only for size. A row whose four
    coordinates are all 0 is deepforest's mark for an image without objects. An image_path
    leading outside `image_dir` is refused unless `allow_outside_paths`.
    """
    csv_path = Path(csv_path)
    image_dir = csv_path.parent if image_dir is None else Path(image_dir)
    rows = read_csv_rows(csv_path)
    if not rows:
        raise InputError(csv_path, "empty file, expected a header " + ",".join(CSV_COLUMNS))
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise InputError(csv_path, f"line 1: missing column(s) {', '.join(missing)}")
    column = {name: header.index(name) for name in CSV_COLUMNS}

    per_image: dict[str, list] = {}  # image name -> [(xyxy, label, where)]
    for number, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(csv_path, f"line {number}: expected {len(header)} values, got {len(row)}")
        image = row[column["image_path"]].strip()
        inside_folder(image_dir, image_dir, image, csv_path, f"line {number}", allow_outside_paths)
        label = row[column["label"]].strip()
        try:
            xyxy = [float(row[column[k]]) for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise InputError(csv_path, f"line {number}: xmin, ymin, xmax, ymax must be numbers") from None
        if not np.all(np.isfinite(xyxy)):  # before any arithmetic on them (numpy would warn)
            raise InputError(csv_path, f"line {number}: a coordinate is not finite")
        items = per_image.setdefault(image, [])
        if xyxy == [0.0, 0.0, 0.0, 0.0]:
            continue  # an image with no objects
        check_label(label, class_names, csv_path, f"line {number}")
        items.append((xyxy, label, f"line {number}"))

    result = {}
    for image, items in per_image.items():
        boxes = Boxes.from_xyxy(np.array([it[0] for it in items]).reshape(-1, 4), [it[1] for it in items])
        width = height = None
        if (image_dir / image).is_file():
            width, height = image_size(image_dir / image)
        result[image], _ = boxes.validate(width, height, source=csv_path, where=[it[2] for it in items], tolerance=tolerance)
    return result


def write_box_csv(path: str | os.PathLike, boxes_per_image: dict[str, Boxes]) -> Path:
    """Write {image file name: boxes} as a deepforest CSV (enclosing boxes of rotated ones)."""
    lines = [",".join(CSV_COLUMNS)]
    for image, boxes in boxes_per_image.items():
        for xyxy, label in zip(boxes.xyxy(), boxes.labels, strict=True):
            if "," in image or "," in label or '"' in label:
                raise InputError(path, f"image {image!r} / label {label!r}: commas and quotes are not written to box CSVs")
            lines.append(",".join([image, *(format_number(v) for v in xyxy), label]))
    with atomic_write(path, newline="") as f:
        f.write("\n".join(lines) + "\n")
    return Path(path)


# ----------------------------------------------------------------------------- datasets
def read_dataset(root: str | os.PathLike, fmt: str, class_names: Sequence[str] | None = None,
                 tolerance: float = 1.0, allow_outside_paths: bool = False,
                 splits: Sequence[str] | None = None) -> list[dict]:
    """Read a whole annotated dataset -> one record per image, sorted by image path.

    A record: {"image_path", "width", "height", "boxes", "image_id" (file stem), "annotation_path",
    "split" (the split it was read as, None for a dataset without splits)} plus "gsd" and
    "image_source" for DOTA and "class_names" (the dataset's class list, in id order) for YOLO
    and COCO. Layouts (images found by name, any of .png .jpg .jpeg .tif .tiff .bmp .webp):

    voc       root/Annotations/*.xml with images in root/JPEGImages/, or *.xml next to
              their images in root. The XML's <filename> names the image (else its stem).
              Splits: the image ids listed in root/ImageSets/Main/<split>.txt.
    coco      root is the .json file, or a folder holding exactly one .json (in root or
              root/annotations/) or one per split (instances_<split>.json or <split>.json:
              the export's layout, COCO's instances_train2017.json); `file_name`s are relative
              to images/ beside the json (or beside its annotations/ folder) if that exists,
              else to the json's folder.
    dota      root/labelTxt/*.txt with images root/images/<stem>.*, or that pair in each split
              folder root/<split>/ (the export's and DOTA's own layout); sizes read from the images.
    yolo      root/images/**/<name>.* with labels root/labels/**/<name>.txt (same sub-path;
    yolo-obb  an image without a label file has no objects); class names from
              root/data.yaml unless `class_names` is given. Splits: the folders data.yaml
              names under train, val and test (a label beside its image's last images/ turned
              into labels/, as ultralytics finds it).
    csv       root is a deepforest CSV (or a folder with exactly one); images next to it.

    `splits` None reads every image; a list reads only those splits (a name also matches
    with a year: train -> train2017), refusing in one line a split the dataset lacks, and
    a YOLO folder that data.yaml lists as `test` unless test is asked for. A dataset without
    splits is read whole either way (its records' split None): the caller decides what that means.

    Image sizes stated by an annotation (VOC, COCO) are checked against the image header.
    An image path named in an annotation file (VOC filename, COCO file_name, CSV image_path)
    that is absolute or leads outside the dataset folder is refused unless
    `allow_outside_paths` (a dataset from elsewhere must not make us read any file it names).
    """
    root = Path(root)
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not root.exists():
        raise InputError(root, "no such file or folder")
    if fmt == "voc":
        records = _read_voc_dataset(root, class_names, tolerance, allow_outside_paths, splits)
    elif fmt == "coco":
        records = _read_coco_dataset(root, class_names, tolerance, allow_outside_paths, splits)
    elif fmt == "dota":
        records = _read_dota_dataset(root, class_names, tolerance, splits)
    elif fmt == "csv":
        records = _read_csv_dataset(root, class_names, tolerance, allow_outside_paths)
    else:
        records = _read_yolo_dataset(root, class_names, tolerance, fmt == "yolo-obb", splits, allow_outside_paths)
    return sorted(records, key=lambda r: r["image_path"])


def _record(image_path: Path, width: int, height: int, boxes: Boxes, annotation_path, split: str | None = None,
            **extra) -> dict:
    return {"image_path": str(image_path), "width": width, "height": height, "boxes": boxes,
            "image_id": image_path.stem, "annotation_path": str(annotation_path), "split": split, **extra}


def split_matches(name: str, split: str) -> bool:
    """Whether a split folder or file called `name` is the split `split`: the same word, or
    it followed by a year or version (train2017)."""
    return name == split or (name.startswith(split) and name[len(split):].isdigit())


def _choose_splits(found: dict, splits: Sequence[str] | None, source) -> list[tuple[str, object]]:
    """(name, where) of the splits asked for among those a dataset has ({name: where}), in the
    order asked (None: all); one line naming the dataset and what it has for a missing one."""
    if splits is None:
        return list(found.items())
    chosen = []
    for split in splits:
        names = [name for name in found if split_matches(name, split) and (name, found[name]) not in chosen]
        if not names and not any(split_matches(name, split) for name in found):
            raise InputError(source, f"no {split} split here (it has {', '.join(found)})")
        chosen += [(name, found[name]) for name in names]
    return chosen


def _check_size(annotation_path, image_path: Path, width: int, height: int) -> None:
    actual = image_size(image_path)
    if actual != (width, height):
        raise InputError(annotation_path, f"says {image_path.name} is {width}x{height} but the image is {actual[0]}x{actual[1]}")


def _read_voc_dataset(root: Path, class_names, tolerance, allow_outside_paths, splits) -> list[dict]:
    if (root / "Annotations").is_dir():
        xml_dir, image_dir = root / "Annotations", root / "JPEGImages"
    else:
        xml_dir = image_dir = root
    # the split lists: ImageSets/Main/<split>.txt, one image id a line (<class>_<split>.txt are per-class lists)
    lists = root / "ImageSets" / "Main"
    found = {path.stem: path for path in sorted(lists.glob("*.txt")) if "_" not in path.stem} if lists.is_dir() else {}
    if splits is None or not found:
        parts = [(None, sorted(xml_dir.glob("*.xml")))]
    else:
        parts = [(split, _voc_split_files(xml_dir, path)) for split, path in _choose_splits(found, splits, lists)]
    records, seen = [], set()
    for split, xml_paths in parts:
        for xml_path in xml_paths:
            if xml_path in seen:  # trainval lists the images of train and val again
                continue
            seen.add(xml_path)
            boxes, info = read_voc(xml_path, class_names, tolerance)
            if info["filename"]:
                inside_folder(root, image_dir, info["filename"], xml_path, "<filename>", allow_outside_paths)
            image_path = find_image(image_dir, info["filename"], xml_path.stem)
            if image_path is None:
                raise InputError(xml_path, f"image {info['filename'] or xml_path.stem} not found in {image_dir}")
            _check_size(xml_path, image_path, info["width"], info["height"])
            records.append(_record(image_path, info["width"], info["height"], boxes, xml_path, split))
    return records


def _voc_split_files(xml_dir: Path, list_path: Path) -> list[Path]:
    """The annotation files of the image ids a VOC split list names."""
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(list_path, f"cannot read: {one_line(err)}") from None
    files = []
    for number, line in enumerate(lines, start=1):
        if not line.split():
            continue
        image_id = line.split()[0]
        if Path(image_id).name != image_id:
            raise InputError(list_path, f"line {number}: {image_id!r} is not an image id")
        if not (xml_dir / f"{image_id}.xml").is_file():
            raise InputError(list_path, f"line {number}: no annotation {image_id}.xml in {xml_dir}")
        files.append(xml_dir / f"{image_id}.xml")
    return files


def _single_file(folders: Sequence[Path], pattern: str, what: str) -> Path:
    found = sorted(p for folder in folders if folder.is_dir() for p in folder.glob(pattern))
    if len(found) != 1:
        raise InputError(folders[0], f"expected exactly one {what} here, found {len(found)}: {[p.name for p in found]}")
    return found[0]


def _read_coco_dataset(root: Path, class_names, tolerance, allow_outside_paths, splits) -> list[dict]:
    if root.is_file():
        parts = [(None, root)]
    else:
        found = sorted(p for folder in (root, root / "annotations") if folder.is_dir() for p in folder.glob("*.json"))
        if any(p.stem.startswith("instances_") for p in found):  # COCO's own folder also holds captions_*, person_keypoints_*
            found = [p for p in found if p.stem.startswith("instances_")]
        by_split = {p.stem.rsplit("_", 1)[-1]: p for p in found}  # instances_train -> train
        if found and len(by_split) == len(found) and all(looks_like_split(name) for name in by_split):
            parts = _choose_splits(by_split, splits, root)
        else:
            parts = [(None, _single_file([root, root / "annotations"], "*.json", "COCO .json file"))]
    records = []
    for split, json_path in parts:
        base = json_path.parent.parent if json_path.parent.name == "annotations" else json_path.parent
        image_dir = base / "images" if (base / "images").is_dir() else json_path.parent
        images, categories = read_coco(json_path, class_names, tolerance)
        for image, boxes in images:
            image_path = inside_folder(base, image_dir, image["file_name"], json_path, f"image id {image['id']}",
                                       allow_outside_paths)
            if not image_path.is_file():
                raise InputError(json_path, f"image {image['file_name']} not found in {image_dir}")
            _check_size(json_path, image_path, image["width"], image["height"])
            records.append(_record(image_path, image["width"], image["height"], boxes, json_path, split,
                                   coco_id=image["id"], class_names=categories))
    return records


def looks_like_split(name: str) -> bool:
    """A file or folder name that says which split it holds (train, val, valid, test, train2017...)."""
    return name.lower().startswith(("train", "val", "test"))


def _read_dota_dataset(root: Path, class_names, tolerance, splits) -> list[dict]:
    if (root / "labelTxt").is_dir():
        parts = [(None, root)]
    else:
        found = {folder.name: folder for folder in sorted(root.iterdir()) if (folder / "labelTxt").is_dir()} \
            if root.is_dir() else {}
        if not found:
            raise InputError(root, "no labelTxt/ folder (DOTA layout: labelTxt/*.txt + images/, here or in "
                             "each split folder: train/labelTxt, train/images...)")
        parts = _choose_splits(found, splits, root)
    records = []
    for split, folder in parts:
        image_dir = folder / "images"
        for txt_path in sorted((folder / "labelTxt").glob("*.txt")):
            image_path = find_image(image_dir, None, txt_path.stem)
            if image_path is None:
                raise InputError(txt_path, f"no image {txt_path.stem}.* in {image_dir}")
            width, height = image_size(image_path)
            boxes, meta = read_dota(txt_path, width, height, class_names, tolerance)
            records.append(_record(image_path, width, height, boxes, txt_path, split,
                                   gsd=meta["gsd"], image_source=meta["image_source"]))
    return records


def _read_yolo_dataset(root: Path, class_names, tolerance, obb: bool, splits, allow_outside_paths) -> list[dict]:
    yaml_path = root / "data.yaml"
    if class_names is None and not yaml_path.is_file():
        raise InputError(root, "no data.yaml with the class names (or pass class_names)")
    data = load_data_yaml(yaml_path) if yaml_path.is_file() else {}
    if class_names is None:
        class_names = yolo_class_names(data, yaml_path)
    parts = [] if splits is None else _yolo_split_folders(root, data, splits, yaml_path, allow_outside_paths)
    if not parts:  # every image under images/ (no splits asked for, or data.yaml names none)
        if not (root / "images").is_dir():
            raise InputError(root, "no images/ folder (YOLO layout: images/ + labels/ + data.yaml)")
        parts = [(None, root / "images")]
    records, seen = [], set()
    for split, folder in parts:
        for image_path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS):
            if image_path in seen:  # data.yaml may list one folder under two splits
                continue
            seen.add(image_path)
            width, height = image_size(image_path)
            txt_path = yolo_label_path(image_path)
            if txt_path is None:
                raise InputError(image_path, "is not under an images/ folder, so its labels/ file cannot be found")
            if txt_path.is_file():
                boxes = read_yolo(txt_path, width, height, class_names, obb=obb, tolerance=tolerance)
            else:
                boxes = Boxes(rotated=obb)
            records.append(_record(image_path, width, height, boxes, txt_path, split, class_names=list(class_names)))
    return records


def _yolo_split_folders(root: Path, data: dict, splits, yaml_path: Path, allow_outside_paths) -> list[tuple[str, Path]]:
    """(split, image folder) of the splits asked for, from data.yaml's train / val / test
    entries (a folder or a list of them, relative to the yaml's folder; "../x" also as "x", as
    ultralytics reads it); [] when data.yaml names no split. A folder data.yaml lists as test
    is refused under another split unless test is asked for too: held-out images stay out."""
    listed = {}
    for key in YOLO_SPLITS:
        entries = data.get(key) or []
        folders = []
        for entry in [entries] if isinstance(entries, str) else entries:
            entry = str(entry)
            if not (root / entry).is_dir() and entry.startswith("../") and (root / entry[3:]).is_dir():
                entry = entry[3:]
            folder = inside_folder(root, root, entry, yaml_path, key, allow_outside_paths)
            if not folder.is_dir():
                raise InputError(yaml_path, f"{key}: no {entry}/ folder (image lists in .txt files are not read)")
            folders.append(Path(os.path.normpath(folder)))
        if folders:
            listed[key] = folders
    if not listed:
        return []
    chosen = _choose_splits(listed, splits, yaml_path)
    names = {name for name, _ in chosen}
    held_out = set() if "test" in names else set(listed.get("test", []))
    parts = []
    for name, folders in chosen:
        for folder in folders:
            if folder in held_out:
                raise InputError(yaml_path, f"{name}: {os.path.relpath(folder, root)} is also the test split's "
                                 "folder; ask for the test split to read it")
            parts.append((name, folder))
    return parts


def _read_csv_dataset(root: Path, class_names, tolerance, allow_outside_paths) -> list[dict]:
    csv_path = root if root.is_file() else _single_file([root], "*.csv", "box .csv file")
    records = []
    for name, boxes in read_box_csv(csv_path, class_names, tolerance=tolerance,
                                    allow_outside_paths=allow_outside_paths).items():
        image_path = csv_path.parent / name
        if not image_path.is_file():
            raise InputError(csv_path, f"image {name} not found in {csv_path.parent}")
        width, height = image_size(image_path)
        records.append(_record(image_path, width, height, boxes, csv_path))
    return records

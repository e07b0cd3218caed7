"""Write images with their boxes as a detection dataset, in the layout each format expects.

    coco       images/<split>/<id>.png, annotations/instances_<split>.json
    voc        JPEGImages/<id>.png, Annotations/<id>.xml, ImageSets/Main/<split>.txt
    dota       <split>/images/<id>.png, <split>/labelTxt/<id>.txt (with the gsd header)
    yolo       images/<split>/<id>.png, labels/<split>/<id>.txt, data.yaml
    yolo-obb   the same with rotated boxes (ultralytics OBB format)

Each is what `earthsynth.data.annotations.read_dataset` reads back, and what pycocotools,
DOTA's devkit and ultralytics expect. The dataset is built in a temporary folder beside the
output and renamed into place when complete, so a failure leaves nothing half written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from earthsynth.boxes import Boxes
from earthsynth.data.coco import write_coco
from earthsynth.data.common import check_output_folder, new_hidden_folder
from earthsynth.data.dota import write_dota
from earthsynth.data.voc import write_voc
from earthsynth.data.yolo import write_yolo, write_yolo_data_yaml
from earthsynth.errors import InputError

EXPORT_FORMATS = ("coco", "voc", "dota", "yolo", "yolo-obb")
MIN_TILE_SIZE = 10  # ultralytics drops an image under 10 x 10 px as corrupt


class DatasetWriter:
    """Collects (split, image, boxes) and writes one dataset folder in one format.

    with DatasetWriter(out, "coco", class_names) as writer:
        writer.add("train", "tile_0001", pixels, boxes, gsd=0.1)
    """

    def __init__(self, out: str | Path, fmt: str, class_names: list[str]):
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise InputError(self.out, "output folder exists and is not empty; choose another --out")
        self.fmt = fmt
        self.class_names = list(class_names)
        self.tmp = new_hidden_folder(self.out)  # with the user's umask, unlike mkdtemp
        self.coco_images: dict[str, list] = {}  # split -> [(file_name, w, h, boxes)]
        self.ids: dict[str, list[str]] = {}  # split -> image ids, in order

    def add(self, split: str, image_id: str, pixels: np.ndarray, boxes: Boxes, gsd: float | None = None,
            image_source: str | None = None) -> None:
        height, width = pixels.shape[:2]
        unknown = sorted(set(boxes.labels) - set(self.class_names))
        if unknown:
            raise InputError(image_id, f"classes {unknown} are not among {self.class_names}")
        image_path = {
            "coco": f"images/{split}/{image_id}.png",
            "voc": f"JPEGImages/{image_id}.png",
            "dota": f"{split}/images/{image_id}.png",
            "yolo": f"images/{split}/{image_id}.png",
            "yolo-obb": f"images/{split}/{image_id}.png",
        }[self.fmt]
        (self.tmp / image_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(self.tmp / image_path)
        self.ids.setdefault(split, []).append(image_id)
        if self.fmt == "coco":
            self.coco_images.setdefault(split, []).append((f"{split}/{image_id}.png", width, height, boxes))
        elif self.fmt == "voc":
            (self.tmp / "Annotations").mkdir(exist_ok=True)
            write_voc(self.tmp / "Annotations" / f"{image_id}.xml", f"{image_id}.png", width, height, boxes,
                      depth=pixels.shape[2] if pixels.ndim == 3 else 1)
        elif self.fmt == "dota":
            (self.tmp / split / "labelTxt").mkdir(parents=True, exist_ok=True)
            write_dota(self.tmp / split / "labelTxt" / f"{image_id}.txt", boxes, gsd=gsd, image_source=image_source)
        else:
            (self.tmp / "labels" / split).mkdir(parents=True, exist_ok=True)
            write_yolo(self.tmp / "labels" / split / f"{image_id}.txt", boxes, width, height, self.class_names,
                       obb=self.fmt == "yolo-obb")

    def close(self) -> Path:
        """Write the per-dataset files and move the finished dataset into place."""
        if self.fmt == "coco":
            (self.tmp / "annotations").mkdir(exist_ok=True)
            for split, images in self.coco_images.items():
                write_coco(self.tmp / "annotations" / f"instances_{split}.json", images, self.class_names)
        elif self.fmt == "voc":
            (self.tmp / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            for split, ids in self.ids.items():
                (self.tmp / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
        elif self.fmt in ("yolo", "yolo-obb"):
            if not self.ids:  # no image (an augment run that accepted none): an empty train split
                for kind in ("images", "labels"):
                    (self.tmp / kind / "train").mkdir(parents=True)
            write_yolo_data_yaml(self.tmp, self.class_names)  # lists the images/<split> folders written
        if self.out.exists():
            self.out.rmdir()  # checked empty in __init__
        self.tmp.rename(self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def export_real_tiles(out: str | Path, formats: list[str], splits: list[str], tile_size: int,
                      min_visible: float) -> dict[str, dict[str, int]]:
    """The bundled labelled deepforest tiles, split by source image, in each format under
    out/<format>/. Returns {format: {split: images}}."""
    from earthsynth.data.tiles import RealTiles

    out = Path(out)
    check_output_folder(out, "--out")
    if not tile_size >= MIN_TILE_SIZE:
        raise InputError("--tile-size", f"{tile_size} given; tiles need at least {MIN_TILE_SIZE} px "
                         "(ultralytics drops smaller images)")
    if not 0.0 <= min_visible <= 1.0:  # NaN fails this too
        raise InputError("--min-visible", f"{min_visible} given; a fraction of a box, 0 to 1")
    tiles = {split: RealTiles(split, tile_size=tile_size, min_visible=min_visible) for split in splits}
    if not any(len(dataset) for dataset in tiles.values()):
        raise InputError("--tile-size", f"{tile_size} px: no tile fits in the images of the {', '.join(splits)} "
                         "split(s); choose a smaller one")
    class_names = sorted({name for dataset in tiles.values() for name in dataset.class_names})
    written = {}
    for fmt in formats:
        with DatasetWriter(out / fmt, fmt, class_names) as writer:
            for split, dataset in tiles.items():
                for tile in dataset.tiles:
                    x0, y0 = tile.window[:2]
                    image_id = f"{tile.source.image_id}_x{x0}_y{y0}"
                    writer.add(split, image_id, tile.pixels, tile.boxes, gsd=tile.gsd,
                               image_source=tile.source.source)
        written[fmt] = {split: len(dataset) for split, dataset in tiles.items()}
    return written

"""Annotation files read strictly and written as their tools expect (issue 24): ultralytics'
dataset rules on what augment and export write, output folders with the user's umask, image
paths inside annotation files kept inside the dataset, CSV quotes, bow-tie polygons,
decompression bombs and JSON nested beyond reason."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from earthsynth.boxes import Boxes
from earthsynth.data.annotations import (
    read_box_csv,
    read_coco,
    read_dataset,
    read_dota,
    read_yolo,
    write_coco,
)
from earthsynth.data.common import (
    atomic_directory,
    image_size,
    open_image,
    read_csv_rows,
    self_crossing,
)
from earthsynth.data.export import DatasetWriter
from earthsynth.data.geotiff import read_geotiff
from earthsynth.data.jsonl import read_jsonl
from earthsynth.data.voc import write_voc
from earthsynth.data.yolo import ultralytics_problems, write_yolo, write_yolo_data_yaml
from earthsynth.errors import InputError
from tests_support import assert_input_error

CLASSES = ["Tree", "Dead"]


def save_image(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 60)).save(path)
    return path


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o750
    os.umask(old)


# ----------------------------------------------------------------------------- ultralytics' rules
def edge_boxes(rotated: bool) -> Boxes:
    """Boxes the way augment's layouts hold them: one inside, one at the corner, and for
    rotated boxes one at 45 degrees cut by the image edge, whose corners overhang the image."""
    rows = [[20, 20, 10, 8, 0.0], [4, 4, 8, 8, 0.0]]
    if rotated:
        rows.append([60.5, 30, 8, 8, 45.0])  # corners reach x = 66.2 on a 64 px image
    return Boxes(np.array(rows), ["Tree", "Dead", "Tree"][: len(rows)], rotated=rotated)


@pytest.mark.parametrize("fmt", ["yolo", "yolo-obb"])
def test_augments_yolo_output_passes_ultralytics_rules(tmp_path, fmt, umask_027):
    from earthsynth.jobs.augment import write_candidates

    out = tmp_path / "run"
    records = []
    for i in range(2):
        save_image(out / "candidates" / f"{i:06d}.png")
        boxes = edge_boxes(rotated=fmt == "yolo-obb")
        records.append({"image_id": f"synth_{i:06d}", "file": f"candidates/{i:06d}.png",
                        "layout": {"rboxes": boxes.rboxes.tolist(), "labels": boxes.labels, "rotated": boxes.rotated}})
    write_candidates(out, records, out / fmt, fmt, CLASSES, gsd=0.2)
    assert ultralytics_problems(out / fmt / "data.yaml", obb=fmt == "yolo-obb") == []
    assert (out / fmt).stat().st_mode & 0o777 == umask_027  # the user's umask, not mkdtemp's 0700
    data = yaml.safe_load((out / fmt / "data.yaml").read_text())
    # only the train split was written: val names it (ultralytics needs both), no images/val listed
    assert data == {"train": "images/train", "val": "images/train", "nc": 2, "names": {0: "Tree", 1: "Dead"}}
    assert "no val split was written" in (out / fmt / "data.yaml").read_text()
    values = np.array([line.split()[1:] for line in (out / fmt / "labels" / "train" / "synth_000000.txt").read_text().splitlines()], float)
    assert values.min() >= 0 and values.max() <= 1  # the overhanging corners are clipped


def test_data_yaml_lists_the_splits_that_exist(tmp_path):
    for split in ("val", "test"):
        save_image(tmp_path / "images" / split / "a.png")
    text = write_yolo_data_yaml(tmp_path, CLASSES).read_text()
    assert yaml.safe_load(text) == {"train": "images/val", "val": "images/val", "test": "images/test",
                                    "nc": 2, "names": {0: "Tree", 1: "Dead"}}
    assert text.startswith("# no train split was written: train names the val images")
    assert ultralytics_problems(tmp_path / "data.yaml") == []
    (tmp_path / "images" / "val" / "a.png").unlink()
    (tmp_path / "images" / "val").rmdir()
    (tmp_path / "images" / "test").rename(tmp_path / "images" / "other")
    with pytest.raises(InputError, match="no images/"):
        write_yolo_data_yaml(tmp_path, CLASSES)


def valid_yolo_dataset(root: Path, obb: bool = False) -> Path:
    save_image(root / "images" / "train" / "a.png")
    save_image(root / "images" / "val" / "b.png")
    (root / "labels" / "train").mkdir(parents=True)
    write_yolo(root / "labels" / "train" / "a.txt", edge_boxes(obb), 64, 48, CLASSES, obb=obb)
    return write_yolo_data_yaml(root, CLASSES)


@pytest.mark.parametrize("breaks, problem", [
    (lambda r: r.joinpath("data.yaml").write_text("train: images/train\nnames: [Tree, Dead]\n"), "no 'val' key"),
    (lambda r: r.joinpath("data.yaml").write_text("train: images/train\nval: images/val\nnc: 3\nnames: [Tree, Dead]\n"),
     "'nc' is 3 but 'names' holds 2"),
    (lambda r: r.joinpath("data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: Tree, 2: Dead}\n"),
     "'names' indices must be 0..1"),
    (lambda r: r.joinpath("data.yaml").write_text(f"path: {r}\ntrain: images/train\nval: images/val\nnames: [Tree]\n"),
     "a 'path' key"),
    (lambda r: r.joinpath("data.yaml").write_text("train: images/train\nval: images/test\nnames: [Tree, Dead]\n"),
     "val: images/test is not a folder"),
    (lambda r: r.joinpath("labels/train/a.txt").write_text("0 0.5 0.5 0.1\n"), "4 values, ultralytics' detection labels have 5"),
    (lambda r: r.joinpath("labels/train/a.txt").write_text("2 0.5 0.5 0.1 0.1\n"), "class 2 is not an index 0..1"),
    (lambda r: r.joinpath("labels/train/a.txt").write_text("0 0.5 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n"), "line 2: class -1"),
    (lambda r: r.joinpath("labels/train/a.txt").write_text("0 0.5 0.5 1.2 0.1\n"), "outside [0, 1]"),
    (lambda r: r.joinpath("labels/train/a.txt").write_text("0 0.5 0.5 zero 0.1\n"), "not all numbers"),
    (lambda r: save_image(r / "images" / "val" / "b.png", 8, 48), "8x48 px, ultralytics needs at least 10x10"),
    (lambda r: r.joinpath("images/val/b.png").write_bytes(b"not a png"), "unreadable image"),
])
def test_ultralytics_checker_finds_each_rule_broken(tmp_path, breaks, problem):
    valid_yolo_dataset(tmp_path)
    assert ultralytics_problems(tmp_path / "data.yaml") == []
    breaks(tmp_path)
    problems = ultralytics_problems(tmp_path / "data.yaml")
    assert any(problem in p for p in problems), problems


def test_ultralytics_checker_obb_columns(tmp_path):
    valid_yolo_dataset(tmp_path, obb=True)
    assert ultralytics_problems(tmp_path / "data.yaml", obb=True) == []
    assert any("9 values, ultralytics' detection labels have 5" in p for p in ultralytics_problems(tmp_path / "data.yaml"))


# ----------------------------------------------------------------------------- umask
def test_output_folders_get_the_users_umask(tmp_path, umask_027):
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "out").stat().st_mode & 0o777 == umask_027  # tempfile.mkdtemp would give 0700
    with DatasetWriter(tmp_path / "voc", "voc", CLASSES) as writer:
        writer.add("train", "a", np.zeros((16, 16, 3), np.uint8), Boxes.from_xyxy([[1, 1, 9, 9]], ["Tree"]))
    for folder in (tmp_path / "voc", tmp_path / "voc" / "Annotations"):
        assert folder.stat().st_mode & 0o777 == umask_027


# ----------------------------------------------------------------------------- paths in annotation files
def test_coco_file_name_outside_the_dataset_is_refused(tmp_path):
    save_image(tmp_path / "elsewhere.png")
    save_image(tmp_path / "data" / "images" / "a.png")
    json_path = tmp_path / "data" / "annotations" / "train.json"
    json_path.parent.mkdir()
    for name, shown in (("../../elsewhere.png", "'../../elsewhere.png'"), (str(tmp_path / "elsewhere.png"), "elsewhere.png")):
        write_coco(json_path, [("a.png", 64, 48, Boxes()), (name, 64, 48, Boxes())], CLASSES)
        with pytest.raises(InputError) as err:
            read_dataset(tmp_path / "data", "coco")
        assert_input_error(err, json_path, "image id 2", shown, "leads outside the dataset folder", "--allow-outside-paths")
        records = read_dataset(tmp_path / "data", "coco", allow_outside_paths=True)
        assert (tmp_path / "elsewhere.png").resolve() in {Path(r["image_path"]).resolve() for r in records}
    # ".." that stays inside the dataset folder is fine
    write_coco(json_path, [("../images/a.png", 64, 48, Boxes())], CLASSES)
    assert len(read_dataset(tmp_path / "data", "coco")) == 1


def test_csv_and_voc_image_paths_outside_the_dataset_are_refused(tmp_path):
    save_image(tmp_path / "b.png")
    data = tmp_path / "data"
    save_image(data / "a.png")
    (data / "boxes.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,1,9,9,Tree\n../b.png,1,1,9,9,Tree\n")
    with pytest.raises(InputError) as err:
        read_dataset(data, "csv")
    assert_input_error(err, data / "boxes.csv", "line 3", "'../b.png'", "leads outside")
    with pytest.raises(InputError):
        read_box_csv(data / "boxes.csv")
    assert len(read_dataset(data, "csv", allow_outside_paths=True)) == 2
    (data / "boxes.csv").unlink()
    write_voc(data / "a.xml", "../b.png", 64, 48, Boxes.from_xyxy([[1, 1, 9, 9]], ["Tree"]))
    with pytest.raises(InputError) as err:
        read_dataset(data, "voc")
    assert_input_error(err, data / "a.xml", "<filename>", "leads outside")
    (record,) = read_dataset(data, "voc", allow_outside_paths=True)
    assert Path(record["image_path"]).resolve() == (tmp_path / "b.png").resolve()


# ----------------------------------------------------------------------------- CSV quotes
@pytest.mark.parametrize("text, words", [
    ('image_path,xmin,ymin,xmax,ymax,label\na.png,1,1,9,9,Tree\n"b.png,1,1,9,9,Tree\nc.png,1,1,9,9,Tree\n',
     ["line 3", "a quote opened here is never closed"]),
    ('image_path,xmin,ymin,xmax,ymax,label\n"a.png,1,1,9,9,Tree\nb.png",1,1,9,9,Tree\n',
     ["line 2", "runs on to line 3"]),
    ('image_path,xmin,ymin,xmax,ymax,label\n"a".png,1,1,9,9,Tree\n', ["line 2", "expected after"]),
])
def test_csv_with_a_stray_quote_is_refused(tmp_path, text, words):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_box_csv(path)  # the csv module alone swallows the rest of the file into one value
    assert_input_error(err, path, *words)


def test_csv_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('a,b\r\n\r\n"x, y",2\r\n')
    assert read_csv_rows(path) == [(1, ["a", "b"]), (2, []), (3, ["x, y", "2"])]


# ----------------------------------------------------------------------------- bow ties
def test_self_crossing_quadrilaterals():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10]]
    other_bow_tie = [[0, 0], [10, 0], [0, 10], [10, 10]]
    dart = [[0, 0], [10, 5], [0, 10], [3, 5]]  # concave, not crossing
    assert self_crossing(np.array([square, bow_tie, other_bow_tie, dart])).tolist() == [False, True, True, False]


def test_bow_tie_polygons_are_refused(tmp_path):
    path = tmp_path / "P0001.txt"
    path.write_text("10 10 50 10 50 30 10 30 Tree 0\n10 10 50 30 50 10 10 30 Tree 0\n")
    with pytest.raises(InputError) as err:
        read_dota(path, 64, 48)
    assert_input_error(err, path, "line 2", "crosses itself")
    path.write_text("0 0.1 0.1 0.5 0.5 0.5 0.1 0.1 0.5\n")
    with pytest.raises(InputError) as err:
        read_yolo(path, 64, 48, CLASSES, obb=True)
    assert_input_error(err, path, "line 1", "crosses itself")


# ----------------------------------------------------------------------------- decompression bombs
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_one_line(tmp_path, monkeypatch):
    bomb = png_header_only(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(InputError) as err, open_image(bomb):
        pass
    assert_input_error(err, bomb, "decompression bomb", "1600000000 pixels")
    with warnings.catch_warnings(record=True) as caught:  # its size alone is read quietly (rasterio)
        warnings.simplefilter("always")
        assert image_size(bomb) == (40000, 40000)
    assert [str(w.message) for w in caught] == []
    # over PIL's warning limit (not yet its error limit): refused too, not read with a warning
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    small = save_image(tmp_path / "small.png", 60, 50)  # 3000 px: between 1x and 2x the limit
    with pytest.raises(InputError) as err, open_image(small) as image:
        image.load()
    assert_input_error(err, small, "decompression bomb", "exceeds limit of 2000 pixels")
    with pytest.raises(InputError) as err:  # the reader augment (and upscale) reads PNG / JPEG pixels with
        read_geotiff(small)
    assert_input_error(err, small, "decompression bomb", "exceeds limit of 2000 pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    with open_image(small) as image:
        assert image.size == (60, 50)


# ----------------------------------------------------------------------------- nesting
def test_json_nested_beyond_reason_is_one_line(tmp_path, monkeypatch):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "a.json"
    path.write_text(deep)
    with pytest.raises(InputError) as err:
        read_coco(path)
    assert_input_error(err, path, "nested too deeply")
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"index": 0}) + "\n" + '{"a": ' + deep + "}\n")
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    assert_input_error(err, path, "line 2", "nested too deeply")
    save_image(tmp_path / "y" / "images" / "a.png")
    (tmp_path / "y" / "data.yaml").write_text("names: [[[[[[]]]]]]\n")

    def too_deep(*args, **kwargs):  # what PyYAML raises at ~1000 levels (seconds to build: faked here)
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(yaml, "safe_load", too_deep)
    with pytest.raises(InputError) as err:
        read_dataset(tmp_path / "y", "yolo")
    assert_input_error(err, tmp_path / "y" / "data.yaml", "nested too deeply")


def test_augment_refuses_outside_paths_unless_allowed(tmp_path, capsys, monkeypatch):
    from earthsynth import cli
    from earthsynth.jobs import augment

    save_image(tmp_path / "elsewhere.png", 256, 256)
    save_image(tmp_path / "data" / "a.png", 256, 256)
    boxes = Boxes.from_xyxy([[10, 10, 40, 40]], ["Tree"])
    write_coco(tmp_path / "data" / "train.json", [("a.png", 256, 256, boxes), ("../elsewhere.png", 256, 256, boxes)], CLASSES)
    argv = ["augment", "--data", str(tmp_path / "data"), "--format", "coco", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.json: image id 2: image path '../elsewhere.png' leads outside" in err
    assert not (tmp_path / "out").exists()

    class Reached(Exception):
        pass

    def models_next(*args, **kwargs):  # the dataset was read: stop before the models load
        raise Reached

    monkeypatch.setattr(augment, "load_models", models_next)
    with pytest.raises(Reached):
        cli.main([*argv, "--allow-outside-paths"])


def test_csv_infinite_coordinate_is_one_line_without_warnings(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,1,inf,9,Tree\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning on inf - inf would be a second line
        with pytest.raises(InputError) as err:
            read_box_csv(path)
    assert_input_error(err, path, "line 2", "not finite")

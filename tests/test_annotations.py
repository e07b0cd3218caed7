"""Annotation readers and writers: round trips, the real deepforest files, and bad input."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from earthsynth.boxes import Boxes
from earthsynth.data.annotations import (
    read_box_csv,
    read_coco,
    read_dataset,
    read_dota,
    read_voc,
    read_yolo,
    read_yolo_class_names,
    write_box_csv,
    write_coco,
    write_dota,
    write_voc,
    write_yolo,
    write_yolo_data_yaml,
)
from earthsynth.errors import InputError
from tests_support import assert_input_error

W, H = 640, 480
CLASSES = ["plane", "ship", "small-vehicle"]


def deepforest_dir() -> Path:
    spec = importlib.util.find_spec("deepforest")
    if spec is None:
        pytest.skip("deepforest data not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


def horizontal_boxes() -> Boxes:
    xyxy = [[10, 20, 110, 80], [300.25, 100.5, 350.75, 180.125], [0, 0, 640, 480], [600, 400, 639, 479]]
    return Boxes.from_xyxy(xyxy, ["plane", "ship", "small-vehicle", "plane"], difficult=[0, 1, 0, 0])


def rotated_boxes() -> Boxes:
    """Rotated boxes well inside the image, angles spread over [-90, 90) incl. both ends."""
    angles = [0.0, 30.0, -45.0, 89.9, -89.9, -90.0, 60.123]
    rows = [[100 + 70 * i, 150 + 30 * i, 60 + 5 * i, 25 + 2 * i, a] for i, a in enumerate(angles)]
    labels = [CLASSES[i % 3] for i in range(len(rows))]
    return Boxes(np.array(rows), labels, rotated=True, difficult=[i == 2 for i in range(len(rows))])


def assert_same_boxes(read: Boxes, expected: Boxes, tol: float = 1e-3) -> None:
    assert read.labels == expected.labels
    assert read.rotated == expected.rotated
    np.testing.assert_array_equal(read.difficult, expected.difficult)
    np.testing.assert_allclose(read.rboxes[:, :4], expected.rboxes[:, :4], atol=tol)
    # a rectangle turned by 180 degrees is the same one: compare angles modulo 180
    angle_error = (read.rboxes[:, 4] - expected.rboxes[:, 4] + 90.0) % 180.0 - 90.0
    np.testing.assert_allclose(angle_error, 0.0, atol=tol)


def assert_nothing_left(folder: Path) -> None:
    assert list(folder.iterdir()) == [], [p.name for p in folder.iterdir()]


def save_image(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)
    return path


# ----------------------------------------------------------------------------- VOC
def integer_boxes() -> Boxes:
    xyxy = [[10, 20, 110, 80], [0, 0, 640, 480], [600, 400, 639, 479], [5, 6, 6, 7]]
    return Boxes.from_xyxy(xyxy, ["plane", "ship", "small-vehicle", "plane"], difficult=[0, 1, 0, 0])


@pytest.mark.parametrize("make", [integer_boxes, rotated_boxes])
def test_voc_round_trip(tmp_path, make):
    boxes = make()
    write_voc(tmp_path / "a.xml", "a.png", W, H, boxes)
    read, info = read_voc(tmp_path / "a.xml")
    assert info == {"filename": "a.png", "width": W, "height": H, "depth": 3, "clipped": 0}
    assert_same_boxes(read, boxes)


def test_voc_writes_the_devkits_one_based_pixel_indices(tmp_path):
    # 0-based continuous corners -> 1-based inclusive indices of the pixels the box touches
    xyxy = [[0, 0, 640, 480], [10, 20, 110, 80], [2.3, 4.7, 8.2, 9.0], [3, 3, 3.5, 3.5], [300.25, 100.5, 350.75, 180.125]]
    write_voc(tmp_path / "a.xml", "a.png", W, H, Boxes.from_xyxy(xyxy, ["plane"] * 5))
    root = ET.parse(tmp_path / "a.xml").getroot()
    written = [[el.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")] for el in root.iter("object")]
    assert written == [["1", "1", "640", "480"], ["11", "21", "110", "80"], ["3", "5", "9", "9"], ["4", "4", "4", "4"],
                       ["301", "101", "351", "181"]]
    read, _ = read_voc(tmp_path / "a.xml")  # back to 0-based: the enclosing pixel-aligned box
    np.testing.assert_allclose(read.xyxy(), [[0, 0, 640, 480], [10, 20, 110, 80], [2, 4, 9, 9], [3, 3, 4, 4],
                                             [300, 100, 351, 181]])
    # an enclosing box of a rotated box overhanging the image is clamped inside it
    write_voc(tmp_path / "r.xml", "r.png", 100, 100, Boxes(np.array([[95, 50, 20, 8, 30.0]]), ["ship"], rotated=True))
    bndbox = ET.parse(tmp_path / "r.xml").getroot().find("object/bndbox")
    assert int(bndbox.findtext("xmax")) == 100 and int(bndbox.findtext("xmin")) >= 1


def rolabelimg_read(path: Path) -> list[tuple[str, list[tuple[float, float]], bool]]:
    """What roLabelImg's reader (libs/pascal_voc_io.py, PascalVocReader) makes of a file, redone
    by its rules: every object needs <type>; a 'bndbox' object's corners are int() of its
    texts (a decimal point crashes it); a 'robndbox' object's corners are its (w, h) box
    rotated about (cx, cy) by -angle in its rotatePoint (y down)."""
    shapes = []
    for obj in ET.parse(path).getroot().findall("object"):
        kind = obj.find("type").text  # an object without <type> is an AttributeError there
        if kind == "bndbox":
            x0, y0, x1, y1 = (int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
            shapes.append((obj.find("name").text, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], False))
        elif kind == "robndbox":
            cx, cy, w, h, theta = (float(obj.find(f"robndbox/{k}").text) for k in ("cx", "cy", "w", "h", "angle"))
            t = -theta
            corners = []
            for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
                corners.append((cx + np.cos(t) * dx + np.sin(t) * dy, cy - np.sin(t) * dx + np.cos(t) * dy))
            shapes.append((obj.find("name").text, corners, True))
    return shapes


@pytest.mark.parametrize("make", [horizontal_boxes, rotated_boxes])
def test_rolabelimg_reads_what_we_write(tmp_path, make):
    boxes = make()
    write_voc(tmp_path / "a.xml", "a.png", W, H, boxes)
    root = ET.parse(tmp_path / "a.xml").getroot()
    assert root.findtext("filename") == "a.png"
    angles = [float(a.text) for a in root.iter("angle")]
    assert all(0 <= a < np.pi for a in angles) and len(angles) == (len(boxes) if boxes.rotated else 0)
    shapes = rolabelimg_read(tmp_path / "a.xml")
    assert [s[0] for s in shapes] == boxes.labels and all(s[2] == boxes.rotated for s in shapes)
    for (_, corners, _), want in zip(shapes, boxes.corners() if boxes.rotated else boxes.xyxy(), strict=True):
        corners = np.array(corners)
        if boxes.rotated:  # the same rectangle: the same corners, in some order
            assert min(np.abs(np.roll(corners, k, axis=0) - want).max() for k in range(4)) < 1e-4
        else:  # 1-based pixel indices around the box
            x0, y0, x1, y1 = want
            assert (corners[0] == [np.floor(x0) + 1, np.floor(y0) + 1]).all()
            assert (corners[2] == [np.ceil(x1), np.ceil(y1)]).all()


def test_voc_reads_one_or_zero_based_files(tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml(voc_object(box=(1, 1, 640, 480)) + voc_object(box=(11, 21, 110, 80))))
    read, _ = read_voc(tmp_path / "a.xml")
    np.testing.assert_allclose(read.xyxy(), [[0, 0, 640, 480], [10, 20, 110, 80]])
    read, _ = read_voc(tmp_path / "a.xml", one_based=False)
    np.testing.assert_allclose(read.xyxy(), [[1, 1, 640, 480], [11, 21, 110, 80]])


def test_voc_reads_rolabelimg_robndbox(tmp_path):
    # roLabelImg: angle in radians, width axis along (cos a, sin a) on screen, a in [0, pi)
    xml = """<annotation><filename>r.png</filename><size><width>640</width><height>480</height></size>
    <object><type>robndbox</type><name>ship</name><difficult>0</difficult>
    <robndbox><cx>200</cx><cy>150</cy><w>80</w><h>20</h><angle>2.6179939</angle></robndbox></object>
    </annotation>"""
    (tmp_path / "r.xml").write_text(xml)
    boxes, _ = read_voc(tmp_path / "r.xml")
    assert boxes.rotated
    np.testing.assert_allclose(boxes.rboxes[0], [200, 150, 80, 20, -30.0], atol=1e-4)  # 150 deg == -30 deg


EXPECTED_DEEPFOREST = {
    "2019_YELL_2_528000_4978000_image_crop2.xml": (2299, 2472, {"Tree": 574}),
    "2019_YELL_2_541000_4977000_image_crop.xml": (1249, 1035, {"Tree": 279}),
    "OSBS_029.xml": (400, 400, {"Tree": 61}),
    "SOAP_061.xml": (400, 400, {"Alive": 9, "Dead": 28}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_DEEPFOREST))
def test_deepforest_xml_counts(name):
    width, height, counts = EXPECTED_DEEPFOREST[name]
    boxes, info = read_voc(deepforest_dir() / name, one_based=False)
    assert (info["width"], info["height"]) == (width, height)
    assert boxes.class_counts() == counts
    assert info["clipped"] == 0  # no deepforest box overruns its image
    assert not boxes.rotated


def test_deepforest_csv_counts():
    data = deepforest_dir()
    assert {k: v.class_counts() for k, v in read_box_csv(data / "OSBS_029.csv").items()} == {"OSBS_029.tif": {"Tree": 61}}
    assert {k: len(v) for k, v in read_box_csv(data / "example.csv").items()} == {"2019_YELL_2_541000_4977000_image_crop.png": 79}
    multi = read_box_csv(data / "testfile_multi.csv", class_names=["Dead", "Alive"])
    assert multi["SOAP_061.png"].class_counts() == {"Alive": 9, "Dead": 28}
    # the CSV and the XML of the same image hold the same boxes: deepforest's XML is 0-based
    xml_boxes, _ = read_voc(data / "SOAP_061.xml", one_based=False)
    np.testing.assert_allclose(multi["SOAP_061.png"].xyxy(), xml_boxes.xyxy())


def test_deepforest_folder_as_voc_dataset():
    records = read_dataset(deepforest_dir(), "voc")
    assert [(r["image_id"], len(r["boxes"])) for r in records] == [
        ("2019_YELL_2_528000_4978000_image_crop2", 574),
        ("2019_YELL_2_541000_4977000_image_crop", 279),
        ("OSBS_029", 61),
        ("SOAP_061", 37),
    ]
    assert records[2]["image_path"].endswith("OSBS_029.tif")


def test_box_csv_round_trip_and_dataset(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png")
    boxes = horizontal_boxes()
    write_box_csv(tmp_path / "boxes.csv", {"a.png": boxes, "b.png": boxes.select([0])})
    read = read_box_csv(tmp_path / "boxes.csv")
    assert_same_boxes(read["a.png"], Boxes(boxes.rboxes, boxes.labels))  # the CSV has no difficult flag
    records = read_dataset(tmp_path, "csv")
    assert [(r["image_id"], r["width"], len(r["boxes"])) for r in records] == [("a", W, 4), ("b", W, 1)]


def test_voc_one_pixel_overrun_is_clipped(tmp_path):
    (tmp_path / "a.xml").write_text(voc_xml(voc_object(box=(0, 11, 100, 481))))  # 0 and 481: one pixel out
    boxes, info = read_voc(tmp_path / "a.xml")
    assert info["clipped"] == 1
    np.testing.assert_allclose(boxes.xyxy(), [[0, 10, 100, 480]])


def voc_xml(objects: str, size: str = "<size><width>640</width><height>480</height><depth>3</depth></size>") -> str:
    return f"<annotation><filename>a.png</filename>{size}{objects}</annotation>"


def voc_object(name="plane", box=(10, 10, 50, 50), difficult="0") -> str:
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


@pytest.mark.parametrize("text, words", [
    ("<annotation><size>", ["malformed XML", "line 1"]),
    (voc_xml(voc_object(), size=""), ["missing <size><width>"]),
    (voc_xml(voc_object(box=(10, 10, 9, 50))), ["object 1", "zero or negative size"]),  # 10..10 is 1 px
    (voc_xml(voc_object() + voc_object(box=(600, 10, 700, 50))), ["object 2", "extends outside the 640x480 image"]),
    (voc_xml(voc_object(box=(700, 10, 800, 50))), ["object 1", "lies outside"]),
    (voc_xml(voc_object(name="tree")), ["object 1", "unknown class 'tree'"]),
    (voc_xml(voc_object(box=(10, "ten", 50, 50))), ["object 1", "<ymin> is 'ten'"]),
    (voc_xml(voc_object(box=(10, "nan", 50, 50))), ["object 1", "not a finite number"]),
    (voc_xml("<object><name>plane</name></object>"), ["object 1", "neither <bndbox> nor <robndbox>"]),
    (voc_xml(voc_object(difficult="yes")), ["object 1", "<difficult>"]),
])
def test_voc_bad_input(tmp_path, text, words):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_voc(path, class_names=CLASSES)
    assert_input_error(err, path, *words)


# ----------------------------------------------------------------------------- COCO
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2, in annToMask
def test_coco_round_trip_and_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [("a.png", W, H, horizontal_boxes()), ("b.png", W, H, Boxes()), ("c.png", 800, 600, horizontal_boxes().select([0, 1]))]
    write_coco(tmp_path / "gt.json", images, CLASSES)
    records, categories = read_coco(tmp_path / "gt.json")
    assert categories == CLASSES
    assert [r[0]["file_name"] for r in records] == ["a.png", "b.png", "c.png"]
    for (_, _, _, boxes), (_, read) in zip(images, records, strict=True):
        assert_same_boxes(read, boxes)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        assert sorted(gt.getCatIds()) == [1, 2, 3] and len(gt.getAnnIds()) == 6
        detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                      for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)  # AP@[.5:.95] of the ground truth against itself
    assert gt.annToMask(gt.loadAnns(1)[0]).sum() > 0  # the polygon segmentation is usable


def test_coco_rotated_round_trip(tmp_path):
    boxes = rotated_boxes()
    write_coco(tmp_path / "r.json", [("r.png", W, H, boxes)], CLASSES)
    ann = json.loads((tmp_path / "r.json").read_text())["annotations"][1]
    assert len(ann["segmentation"][0]) == 8 and len(ann["rbox"]) == 5
    (_, read), = read_coco(tmp_path / "r.json")[0]
    assert_same_boxes(read, boxes)


def coco_file(path: Path, annotations: list, images=None) -> Path:
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "width": W, "height": H}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "plane"}]}))
    return path


@pytest.mark.parametrize("annotations, words", [
    ([{"id": 7, "image_id": 1, "category_id": 1}], ["annotation id 7", "'bbox' must be a list of 4 numbers"]),
    ([{"id": 7, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5]}], ["annotation id 7", "image_id 2"]),
    ([{"id": 7, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}], ["annotation id 7", "category_id 9"]),
    ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 5]}], ["annotation id 7", "zero or negative size"]),
    ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [630, 1, 50, 5]}], ["a.png, annotation id 7", "extends outside"]),
    ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "rbox": [1, 2]}], ["'rbox' must be a list of 5"]),
])
def test_coco_bad_annotations(tmp_path, annotations, words):
    path = coco_file(tmp_path / "bad.json", annotations)
    with pytest.raises(InputError) as err:
        read_coco(path)
    assert_input_error(err, path, *words)


def test_coco_bad_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(InputError) as err:
        read_coco(path)
    assert_input_error(err, path, "malformed JSON at line 2")
    coco_file(path, [], images=[{"id": 1, "file_name": "a.png", "width": W}])
    with pytest.raises(InputError) as err:
        read_coco(path)
    assert_input_error(err, path, "image 0", "'height'")
    path.write_text('{"annotations": []}')
    with pytest.raises(InputError) as err:
        read_coco(path)
    assert_input_error(err, path, "no 'images' list")


def test_coco_unknown_class_and_failed_write(tmp_path):
    path = coco_file(tmp_path / "a.json", [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(InputError) as err:
        read_coco(path, class_names=["ship"])
    assert_input_error(err, path, "unknown class 'plane'")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as err:
        write_coco(out / "gt.json", [("a.png", W, H, horizontal_boxes())], ["plane"])
    assert_input_error(err, out / "gt.json", "'ship' is not among the categories")
    assert_nothing_left(out)


# ----------------------------------------------------------------------------- DOTA
@pytest.mark.parametrize("make", [horizontal_boxes, rotated_boxes])
def test_dota_round_trip(tmp_path, make):
    boxes = make()
    write_dota(tmp_path / "a.txt", boxes, gsd=0.146343590398, image_source="GoogleEarth")
    read, meta = read_dota(tmp_path / "a.txt", W, H)
    assert meta == {"image_source": "GoogleEarth", "gsd": 0.146343590398, "clipped": 0}
    assert_same_boxes(read, Boxes(boxes.rboxes, boxes.labels, rotated=True, difficult=boxes.difficult))


def test_dota_header_null_gsd_and_short_lines(tmp_path):
    path = tmp_path / "P0001.txt"
    path.write_text("imagesource:GoogleEarth\ngsd:null\n10 10 50 10 50 30 10 30 plane 0\n\n60 60 90 60 90 70 60 70 ship\n")
    boxes, meta = read_dota(path)
    assert meta["gsd"] is None and meta["image_source"] == "GoogleEarth"
    np.testing.assert_allclose(boxes.rboxes, [[30, 20, 40, 20, 0], [75, 65, 30, 10, 0]], atol=1e-4)
    assert boxes.labels == ["plane", "ship"] and not boxes.difficult.any()


@pytest.mark.parametrize("line, words", [
    ("10 10 50 10 50 30 10 30 plane 0 extra", ["line 3", "expected 10 values", "got 11"]),
    ("10 10 50 10 50 30 10 plane 0", ["line 3", "must be numbers"]),  # 9 tokens, but 'plane' is read as a coordinate
    ("10 10 50 10 50 30 10 nan plane 0", ["line 3", "not finite"]),
    ("10 10 10 10 10 10 10 10 plane 0", ["line 3", "zero or negative size"]),
    ("10 10 50 10 50 30 10 30 tree 0", ["line 3", "unknown class 'tree'"]),
    ("10 10 50 10 50 30 10 30 plane 2", ["line 3", "difficulty is '2'"]),
    ("600 10 650 10 650 30 600 30 plane 0", ["line 3", "extends outside the 640x480 image"]),
])
def test_dota_bad_lines(tmp_path, line, words):
    path = tmp_path / "bad.txt"
    path.write_text(f"imagesource:GoogleEarth\ngsd:0.5\n{line}\n")
    with pytest.raises(InputError) as err:
        read_dota(path, W, H, class_names=CLASSES)
    assert_input_error(err, path, *words)


def test_dota_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        write_dota(tmp_path / "a.txt", Boxes.from_xyxy([[1, 1, 5, 5]], ["small vehicle"]))
    assert_input_error(err, tmp_path / "a.txt", "white space")
    assert_nothing_left(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_dota(tmp_path / "a.txt", horizontal_boxes())
    before = path.read_text()
    with pytest.raises(InputError):
        write_dota(path, Boxes.from_xyxy([[1, 1, 5, 5]], ["small vehicle"]))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# ----------------------------------------------------------------------------- YOLO
@pytest.mark.parametrize("obb, make", [(False, horizontal_boxes), (True, horizontal_boxes), (True, rotated_boxes)])
def test_yolo_round_trip(tmp_path, obb, make):
    boxes = make()
    write_yolo(tmp_path / "a.txt", boxes, W, H, CLASSES, obb=obb)
    read = read_yolo(tmp_path / "a.txt", W, H, CLASSES, obb=obb)
    expected = Boxes(boxes.rboxes, boxes.labels, rotated=obb)  # YOLO has no difficult flag
    assert_same_boxes(read, expected)


def test_yolo_rotated_written_as_enclosing_boxes(tmp_path):
    boxes = rotated_boxes()
    write_yolo(tmp_path / "a.txt", boxes, W, H, CLASSES)
    read = read_yolo(tmp_path / "a.txt", W, H, CLASSES)
    np.testing.assert_allclose(read.xyxy(), boxes.xyxy(), atol=1e-3)


def test_yolo_data_yaml_and_dataset(tmp_path):
    save_image(tmp_path / "images" / "train" / "a.png")
    save_image(tmp_path / "images" / "val" / "b.jpg", 320, 240)
    yaml_path = write_yolo_data_yaml(tmp_path, CLASSES)
    assert read_yolo_class_names(yaml_path) == CLASSES
    (tmp_path / "labels" / "train").mkdir(parents=True)
    write_yolo(tmp_path / "labels" / "train" / "a.txt", rotated_boxes(), W, H, CLASSES, obb=True)
    records = read_dataset(tmp_path, "yolo-obb")
    assert [(r["image_id"], r["width"], r["height"], len(r["boxes"])) for r in records] == [("a", W, H, 7), ("b", 320, 240, 0)]
    assert_same_boxes(records[0]["boxes"], Boxes(rotated_boxes().rboxes, rotated_boxes().labels, rotated=True))


@pytest.mark.parametrize("obb, line, words", [
    (False, "0 0.5 0.5 0.1", ["line 2", "expected 5 values (class cx cy w h), got 4"]),
    (True, "0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2 0.3", ["line 2", "expected 9 values", "got 10"]),
    (False, "3 0.5 0.5 0.1 0.1", ["line 2", "class index 3 is not in 0..2"]),
    (False, "zero 0.5 0.5 0.1 0.1", ["line 2", "integer class"]),
    (False, "0 0.5 nan 0.1 0.1", ["line 2", "not finite"]),
    (False, "0 0.98 0.5 0.1 0.1", ["line 2", "extends outside"]),
    (False, "0 0.5 0.5 0 0.1", ["line 2", "zero or negative size"]),
])
def test_yolo_bad_lines(tmp_path, obb, line, words):
    path = tmp_path / "bad.txt"
    path.write_text(("0 0.1 0.1 0.2 0.1 0.2 0.2 0.1 0.2" if obb else "1 0.5 0.5 0.1 0.1") + f"\n{line}\n")
    with pytest.raises(InputError) as err:
        read_yolo(path, W, H, CLASSES, obb=obb)
    assert_input_error(err, path, *words)


def test_yolo_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(InputError) as err:
        write_yolo(tmp_path / "a.txt", horizontal_boxes(), W, H, ["plane"])
    assert_input_error(err, tmp_path / "a.txt", "'ship' is not among the class names")
    assert_nothing_left(tmp_path)


# ----------------------------------------------------------------------------- dataset layouts
def test_voc_dataset_layout(tmp_path):
    save_image(tmp_path / "JPEGImages" / "a.jpg")
    (tmp_path / "Annotations").mkdir()
    write_voc(tmp_path / "Annotations" / "a.xml", "a.jpg", W, H, rotated_boxes())
    (record,) = read_dataset(tmp_path, "voc")
    assert record["image_path"] == str(tmp_path / "JPEGImages" / "a.jpg") and len(record["boxes"]) == 7
    write_voc(tmp_path / "Annotations" / "a.xml", "a.jpg", 100, 100, Boxes())
    with pytest.raises(InputError) as err:
        read_dataset(tmp_path, "voc")
    assert_input_error(err, tmp_path / "Annotations" / "a.xml", "is 100x100 but the image is 640x480")


def test_coco_dataset_layout(tmp_path):
    save_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    write_coco(tmp_path / "annotations" / "train.json", [("a.png", W, H, horizontal_boxes())], CLASSES)
    (record,) = read_dataset(tmp_path, "coco")
    assert record["image_path"] == str(tmp_path / "images" / "a.png") and record["coco_id"] == 1
    assert_same_boxes(record["boxes"], horizontal_boxes())
    assert read_dataset(tmp_path / "annotations" / "train.json", "coco")[0]["image_path"] == record["image_path"]
    write_coco(tmp_path / "annotations" / "train.json", [("b.png", W, H, Boxes())], CLASSES)
    with pytest.raises(InputError) as err:
        read_dataset(tmp_path, "coco")
    assert_input_error(err, tmp_path / "annotations" / "train.json", "image b.png not found")


def test_dota_dataset_layout(tmp_path):
    save_image(tmp_path / "images" / "P0001.png")
    (tmp_path / "labelTxt").mkdir()
    write_dota(tmp_path / "labelTxt" / "P0001.txt", rotated_boxes(), gsd=0.3)
    (record,) = read_dataset(tmp_path, "dota")
    assert (record["image_id"], record["width"], record["height"], record["gsd"]) == ("P0001", W, H, 0.3)
    assert len(record["boxes"]) == 7
    with pytest.raises(ValueError, match="unknown annotation format"):
        read_dataset(tmp_path, "pascal")

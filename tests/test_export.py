"""The bundled labelled tiles exported in every detection format, and read back."""

import numpy as np
import pytest
import yaml

from earthsynth.boxes import Boxes
from earthsynth.data.annotations import read_dataset
from earthsynth.data.export import EXPORT_FORMATS, DatasetWriter, export_real_tiles
from earthsynth.data.tiles import RealTiles
from earthsynth.data.yolo import ultralytics_problems
from earthsynth.errors import InputError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    counts = export_real_tiles(out, list(EXPORT_FORMATS), ["val", "test"], tile_size=200, min_visible=0.5)
    return out, counts


def expected_boxes() -> dict[str, Boxes]:
    found = {}
    for split in ("val", "test"):
        for tile in RealTiles(split, tile_size=200).tiles:
            found[f"{tile.source.image_id}_x{tile.window[0]}_y{tile.window[1]}"] = tile.boxes
    return found


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_reads_back_with_the_same_boxes(exported, fmt):
    out, counts = exported
    assert counts[fmt] == {"val": 4, "test": 4}
    root = out / fmt
    if fmt == "coco":
        records = [r for split in ("val", "test") for r in read_dataset(root / "annotations" / f"instances_{split}.json", "coco")]
    elif fmt == "dota":
        records = [r for split in ("val", "test") for r in read_dataset(root / split, "dota")]
        assert all(r["gsd"] == pytest.approx(0.1) for r in records)
    else:
        records = read_dataset(root, fmt)
    expected = expected_boxes()
    assert sorted(r["image_id"] for r in records) == sorted(expected)
    for record in records:
        want = expected[record["image_id"]]
        assert record["boxes"].labels == want.labels
        # YOLO stores normalised coordinates with 6 decimals: 200 px -> 1e-4 px
        np.testing.assert_allclose(record["boxes"].xyxy(), want.xyxy(), atol=1e-3)


def test_exported_coco_loads_in_pycocotools_and_yolo_yaml_names_the_final_folder(exported):
    from pycocotools.coco import COCO

    out, _ = exported
    coco = COCO(str(out / "coco" / "annotations" / "instances_val.json"))
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"Alive", "Dead", "Tree"}
    assert len(coco.getImgIds()) == 4
    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    # no `path`: ultralytics takes the yaml's folder as the root, so the dataset can be moved
    assert "path" not in data and data["test"] == "images/test"
    assert (out / "voc" / "ImageSets" / "Main" / "val.txt").read_text().count("\n") == 4


@pytest.mark.parametrize("fmt", ["yolo", "yolo-obb"])
def test_exported_yolo_passes_ultralytics_dataset_rules(exported, fmt):
    out, _ = exported
    assert ultralytics_problems(out / fmt / "data.yaml", obb=fmt == "yolo-obb") == []
    # val and test were exported, no train: ultralytics needs a train entry, it names the val images
    data = yaml.safe_load((out / fmt / "data.yaml").read_text())
    assert (data["train"], data["val"], data["test"], data["nc"]) == ("images/val", "images/val", "images/test", 3)


def test_a_failed_export_leaves_nothing(tmp_path):
    pixels = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InputError, match="not among"):
        with DatasetWriter(tmp_path / "out", "coco", ["Tree"]) as writer:
            writer.add("train", "a", pixels, Boxes.from_xyxy([[1, 1, 9, 9]], ["Tree"]))
            writer.add("train", "b", pixels, Boxes.from_xyxy([[1, 1, 9, 9]], ["Car"]))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option, value, words", [
    ("tile_size", 0, ["--tile-size", "0 given", "at least 10 px"]),
    ("tile_size", -256, ["--tile-size", "-256 given"]),
    ("tile_size", 5000, ["--tile-size", "5000 px: no tile fits"]),
    ("min_visible", float("nan"), ["--min-visible", "nan given"]),
    ("min_visible", 2.0, ["--min-visible", "2.0 given"]),
])
def test_export_refuses_impossible_tiles_before_writing(tmp_path, option, value, words):
    kwargs = {"tile_size": 200, "min_visible": 0.5, option: value}
    with pytest.raises(InputError) as err:
        export_real_tiles(tmp_path / "out", ["yolo"], ["val"], **kwargs)
    assert all(word in str(err.value) for word in words), str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_yolo_dataset_still_has_its_layout(tmp_path):
    # an augment run that accepted no image writes an empty dataset, not an error
    with DatasetWriter(tmp_path / "yolo", "yolo", ["Tree"]):
        pass
    assert yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["train"] == "images/train"
    assert read_dataset(tmp_path / "yolo", "yolo") == []

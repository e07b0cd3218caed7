"""What `earthsynth augment --data` reads: only the training split of a multi-split dataset
unless others are named (test with a warning), the export's root folders, the user's class
names and ids kept in the synthetic labels (classes the models do not know generated as theirs),
and the GSD from DOTA headers and GeoTIFF pixel sizes."""

import json

import numpy as np
import pytest
import yaml

import test_augment
from earthsynth.boxes import Boxes
from earthsynth.cli import main
from earthsynth.data.export import EXPORT_FORMATS, DatasetWriter, export_real_tiles
from earthsynth.data.geotiff import Raster, write_geotiff
from earthsynth.data.voc import write_voc
from earthsynth.errors import InputError
from earthsynth.generation.aerogen.pipeline import AeroGenPipeline
from earthsynth.jobs.augment import (
    AugmentConfig,
    dataset_class_names,
    dataset_records,
    dataset_tiles,
    describe_records,
    input_identity,
    load_records,
)
from tests_support import assert_input_error

models = test_augment.models  # the tiny random aerogen, detector and classifier folders (a module fixture)
SPLITS = ("train", "val", "test")


def fast(models) -> list[str]:
    """test_augment's tiny models, no filter, one denoising step."""
    return [*test_augment.cli_flags(models), "steps=1"]


def three_split_dataset(root, fmt, class_names=("Alive", "Dead", "Tree")):
    """One 32 px image per split, each with one box of its own class: train Tree, val Alive, test Dead."""
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    with DatasetWriter(root, fmt, list(class_names)) as writer:
        for split, label in zip(SPLITS, ("Tree", "Alive", "Dead")):
            writer.add(split, f"{split}_img", pixels, Boxes.from_xyxy([[4, 4, 20, 20]], [label]), gsd=0.1)
    return root


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_only_the_training_split_is_read_unless_others_are_named(tmp_path, fmt):
    root = three_split_dataset(tmp_path / fmt, fmt)
    if fmt == "dota":  # the export's layout: one folder per split
        assert sorted(p.name for p in root.iterdir()) == list(sorted(SPLITS))
    records = dataset_records(str(root), fmt)
    assert [(r["image_id"], r["split"]) for r in records] == [("train_img", "train")]
    assert input_identity(str(root), fmt, records)["splits"] == ["train"]
    assert not any(line.startswith("warning") for line in describe_records(str(root), records))

    records = dataset_records(str(root), fmt, splits=["train", "val"])
    assert sorted(r["image_id"] for r in records) == ["train_img", "val_img"]
    assert {r["split"] for r in records} == {"train", "val"}
    with_test = dataset_records(str(root), fmt, splits=["test", "train"])
    assert sorted(r["image_id"] for r in with_test) == ["test_img", "train_img"]
    lines = describe_records(str(root), with_test)
    assert lines[-1].startswith("warning: split test is held-out data")
    assert any("split train: 1 images, objects Tree 1" in line for line in lines)
    assert input_identity(str(root), fmt, with_test)["sha256"] != input_identity(str(root), fmt, records)["sha256"]

    with pytest.raises(InputError, match="no trainval split here"):
        dataset_records(str(root), fmt, splits=["trainval"])


def test_a_yolo_split_that_names_the_test_folder_is_refused_and_lists_of_folders_are_read(tmp_path):
    root = three_split_dataset(tmp_path / "yolo", "yolo")
    data_yaml = root / "data.yaml"
    data = yaml.safe_load(data_yaml.read_text())
    data_yaml.write_text(yaml.safe_dump({**data, "train": "images/test"}))  # e.g. an export of the test split only
    with pytest.raises(InputError) as err:
        dataset_records(str(root), "yolo")
    assert_input_error(err, data_yaml, "train: images/test is also the test split's folder")
    assert [r["image_id"] for r in dataset_records(str(root), "yolo", splits=["train", "test"])] == ["test_img"]

    data_yaml.write_text(yaml.safe_dump({**data, "train": ["images/train", "images/val"]}))
    assert [r["image_id"] for r in dataset_records(str(root), "yolo")] == ["train_img", "val_img"]
    data_yaml.write_text(yaml.safe_dump({**data, "train": "images/missing"}))
    with pytest.raises(InputError) as err:
        dataset_records(str(root), "yolo")
    assert_input_error(err, data_yaml, "train: no images/missing/ folder")


def test_a_dataset_without_splits_is_read_whole_and_refuses_named_splits(tmp_path):
    data = three_split_dataset(tmp_path / "data", "coco")
    for split in ("val", "test"):
        (data / "annotations" / f"instances_{split}.json").unlink()
    json_path = data / "annotations" / "instances_train.json"
    json_path.rename(json_path.with_name("trees.json"))  # one .json, no split in its name
    records = dataset_records(str(data), "coco")
    assert len(records) == 1 and {r["split"] for r in records} == {None}
    assert "splits" not in input_identity(str(data), "coco", records)  # the identity of earlier runs stands
    assert describe_records(str(data), records)[0].startswith("input: the whole dataset (it has no splits): 1 images")
    with pytest.raises(InputError) as err:
        dataset_records(str(data), "coco", splits=["val"])
    assert_input_error(err, "--splits val", "has no splits")


def test_the_class_list_keeps_the_files_order_and_ids(tmp_path):
    root = three_split_dataset(tmp_path / "yolo", "yolo", class_names=("Tree", "Dead", "Alive"))
    assert dataset_class_names(dataset_records(str(root), "yolo")) == ["Tree", "Dead", "Alive"]
    root = three_split_dataset(tmp_path / "dota", "dota")  # no class list in the files: the labels read, sorted
    assert dataset_class_names(dataset_records(str(root), "dota", splits=["val", "train"])) == ["Alive", "Tree"]


def test_gsd_from_a_dota_header_a_geotiff_and_the_setting_which_wins(tmp_path):
    dota = three_split_dataset(tmp_path / "dota", "dota")  # headers say gsd:0.1
    config = AugmentConfig(resample=2)
    (tile,) = dataset_tiles(dataset_records(str(dota), "dota"), str(dota), 16, config)
    assert (tile.gsd, tile.gsd_source) == (pytest.approx(0.2), "DOTA gsd: header")

    voc = tmp_path / "voc"
    voc.mkdir()
    pixels = np.random.default_rng(1).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    write_geotiff(voc / "scene.tif", Raster(data=pixels, crs="EPSG:32617",
                                            transform=(0.3, 0.0, 404000.0, 0.0, -0.3, 3285000.0)))
    write_voc(voc / "scene.xml", "scene.tif", 32, 32, Boxes.from_xyxy([[4, 4, 20, 20]], ["Tree"]))
    records = dataset_records(str(voc), "voc")
    (tile,) = dataset_tiles(records, str(voc), 16, config)
    assert (tile.gsd, tile.gsd_source) == (pytest.approx(0.6), "GeoTIFF pixel size")
    (tile,) = dataset_tiles(records, str(voc), 16, AugmentConfig(resample=2, gsd=0.5))
    assert (tile.gsd, tile.gsd_source) == (pytest.approx(1.0), "gsd setting")


def test_augment_reads_the_dota_export_root_with_its_gsd_and_the_split_named(models, tmp_path, capsys):
    # the export's small splits (4 tiles each); its training split is read by default (tested above)
    export_real_tiles(tmp_path / "export", ["dota"], ["val", "test"], tile_size=200, min_visible=0.5)
    capsys.readouterr()
    out = tmp_path / "out"
    # one 192 px window per exported 200 px tile (16 px model x resample 12)
    code = main(["augment", "--data", str(tmp_path / "export" / "dota"), "--format", "dota", "--splits", "val",
                 "--out", str(out), "--num-images", "2", "--out-format", "dota", "resample=12", "max_candidates=2",
                 *fast(models)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "input: split val: 4 images" in captured.out and "split test" not in captured.out + captured.err
    assert "GSD of the generated images 1.2 m/px, from DOTA gsd: header (16 tiles)" in captured.out
    assert yaml.safe_load((out / "augment_config.yaml").read_text())["input"]["splits"] == ["val"]
    records = load_records(out)
    assert all("1.2 m/px" in r["prompt"] and "unknown resolution" not in r["prompt"] for r in records)
    # SOAP_061's Alive and Dead, none of the test image's Tree
    assert {label for r in records for label in r["layout"]["labels"]} <= {"Alive", "Dead"}
    header = next((out / "dota").rglob("labelTxt/*.txt")).read_text().splitlines()
    assert float(next(line for line in header if line.startswith("gsd:"))[4:]) == pytest.approx(1.2)


def test_two_class_data_keeps_its_names_and_ids_and_is_generated_as_the_models_class(models, tmp_path, capsys,
                                                                                    monkeypatch):
    from earthsynth.data.tiles import RealTiles

    data = tmp_path / "soap"
    with_boxes = [t for t in RealTiles("val", tile_size=48, gsd_factors=(1,)).tiles if len(t.boxes)]  # SOAP_061
    alive = next(t for t in with_boxes if "Alive" in t.boxes.labels)
    tiles = [alive, *[t for t in with_boxes if t is not alive][:2]]
    assert {label for t in tiles for label in t.boxes.labels} == {"Alive", "Dead"}
    with DatasetWriter(data, "yolo", ["Dead", "Alive"]) as writer:  # ids not in sorted order: Dead 0, Alive 1
        for k, tile in enumerate(tiles):
            writer.add("train", f"soap{k}", tile.pixels, tile.boxes)
    conditioned = []
    original = AeroGenPipeline.__call__

    def spy(self, prompt, boxes, *args, **kwargs):
        conditioned.extend(label for layout in boxes for label in layout.labels)
        return original(self, prompt, boxes, *args, **kwargs)

    monkeypatch.setattr(AeroGenPipeline, "__call__", spy)
    out = tmp_path / "out"
    # one 48 px window per image (16 px model x resample 3), layouts from the real ones
    code = main(["augment", "--data", str(data), "--format", "yolo", "--out", str(out), "--num-images", "2",
                 "--out-format", "yolo,coco,dota,voc", "resample=3", "max_candidates=2", "augmented_fraction=1",
                 *fast(models)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "classes Alive, Dead are not ones the models were trained on: generated and filtered as Tree" in captured.out
    assert conditioned and set(conditioned) == {"Tree"}  # the generator saw the class it was trained on

    written = {label for r in load_records(out) if r["accepted"] for label in r["layout"]["labels"]}
    assert written and written <= {"Alive", "Dead"}
    assert yaml.safe_load((out / "yolo" / "data.yaml").read_text())["names"] == {0: "Dead", 1: "Alive"}
    coco = json.loads((out / "coco" / "annotations" / "instances_train.json").read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "Dead"), (2, "Alive")]
    ids = {c["id"]: c["name"] for c in coco["categories"]}
    assert {ids[a["category_id"]] for a in coco["annotations"]} == written
    dota = {line.split()[8] for path in (out / "dota").rglob("labelTxt/*.txt")
            for line in path.read_text().splitlines() if not line.startswith(("gsd:", "imagesource:"))}
    assert dota == written
    voc = " ".join(path.read_text() for path in (out / "voc" / "Annotations").glob("*.xml"))
    assert all(f"<name>{name}</name>" in voc for name in written) and "<name>Tree</name>" not in voc


def test_cli_splits_option_warns_for_test_and_refuses_what_cannot_be(models, tmp_path, capsys):
    root = three_split_dataset(tmp_path / "coco", "coco", class_names=("Alive", "Dead", "Tree"))
    out = tmp_path / "out"
    flags = ["--format", "coco", "--num-images", "1", "resample=1", "max_candidates=1", *fast(models)]
    assert main(["augment", "--data", str(root), "--splits", "train,test", "--out", str(out), *flags]) == 0
    captured = capsys.readouterr()
    assert "earthsynth: warning: split test is held-out data" in captured.err
    assert "input: split train: 1 images" in captured.out and "input: split test: 1 images" in captured.out

    for argv, words in [
        (["augment", "--demo", "--splits", "train", "--out", str(tmp_path / "x")], "--splits"),
        (["augment", "--data", str(root), "--splits", "train,,val", "--out", str(tmp_path / "x"), *flags],
         "comma-separated split names"),
        (["augment", "--data", str(root), "--splits", "validation", "--out", str(tmp_path / "x"), *flags],
         "no validation split here (it has test, train, val)"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and words in err, err
    assert not (tmp_path / "x").exists()

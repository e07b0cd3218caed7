"""`earthsynth augment --mode inpaint`: each candidate is a real tile with new objects painted
into its background; its labels are the real boxes and the new ones, its real pixels outside
the new boxes (grown by the fade band) are the tile's, and the manifest names the mode and the
tile. Tiny random models (test_augment's), the bundled tiles (--demo)."""

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

import test_augment
from earthsynth.augment.inpaint_mode import bundled_training_rows, new_classes
from earthsynth.boxes import Boxes
from earthsynth.cli import main
from earthsynth.jobs.augment import demo_tiles, load_records

models = test_augment.models  # the tiny random aerogen, detector and classifier folders (a module fixture)
BAND = 3  # the tiny pixel-space pipeline's inpaint_band: the masks grow the new boxes by this much


def test_demo_inpaint_keeps_the_real_tiles_and_adds_labelled_objects(models, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["augment", "--demo", "--mode", "inpaint", "--out", str(out), "--num-images", "3",
                 "--out-format", "coco", *test_augment.cli_flags(models), "max_candidates=4"])
    assert code == 0, capsys.readouterr().err
    assert "3 of 4 candidates accepted" in capsys.readouterr().out
    tiles = {tile.image_id: tile for tile in demo_tiles(16)}
    allowed = bundled_training_rows(16)
    records = load_records(out)
    coco = COCO(str(out / "coco" / "annotations" / "instances_train.json"))
    written = {image["file_name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]: len(coco.getAnnIds(imgIds=image["id"]))
               for image in coco.dataset["images"]}
    for record in records:
        assert record["mode"] == "inpaint"
        _, tile_id, added = record["origin"].split(":")
        tile = tiles[tile_id]
        assert tile_id in allowed  # never a tile of the in-domain validation block, buffer or test area
        real, new = len(tile.boxes), int(added.removeprefix("add"))
        boxes = np.asarray(record["layout"]["rboxes"])
        assert new >= 1 and len(boxes) == len(record["layout"]["labels"]) == real + new
        np.testing.assert_allclose(boxes[:real], tile.boxes.rboxes, atol=1e-3)  # the real boxes, as they were
        assert record["scores"]["objects"] == real + new  # the filter judged them all
        if record["accepted"]:
            assert written[record["image_id"]] == real + new

        pixels = np.asarray(Image.open(out / record["file"]).convert("RGB"))
        added_boxes = Boxes(boxes[real:], record["layout"]["labels"][real:])
        near = np.zeros(pixels.shape[:2], bool)  # every pixel within BAND + 1 of a new box's corners' hull
        for x0, y0, x1, y1 in added_boxes.xyxy():
            near[max(int(y0) - BAND - 1, 0):int(np.ceil(y1)) + BAND + 1,
                 max(int(x0) - BAND - 1, 0):int(np.ceil(x1)) + BAND + 1] = True
        np.testing.assert_array_equal(pixels[~near], tile.pixels[~near])
        assert (pixels[near] != tile.pixels[near]).any()
    assert len(written) == 3 and len(records) == 4  # two batches of two, the first three accepted


def test_the_new_objects_are_what_the_layout_has_more_of():
    tile = Boxes.from_xyxy(np.array([[0, 0, 4, 4], [5, 5, 9, 9]]), ["Alive", "Dead"])
    layout = Boxes.from_xyxy(np.array([[0, 0, 4, 4]] * 4), ["Alive", "Alive", "Dead", "Alive"])
    assert new_classes(layout, tile, "Alive") == ["Alive", "Alive"]
    assert new_classes(tile, tile, "Alive") == ["Alive"]  # nothing more: one of the layout's first class
    assert new_classes(Boxes(), tile, "Dead") == ["Dead"]  # an empty layout: the most frequent class


def test_an_unknown_mode_is_one_line(models, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["augment", "--demo", "--mode", "paint", "--out", str(out), *test_augment.cli_flags(models)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--mode paint" in err and "generate or inpaint" in err
    assert not out.exists()

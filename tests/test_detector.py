"""The compact detector: shapes, target encode/decode round trip, augmentation, save/load,
training through the one loop, and the COCO mAP / layout-match metrics."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from earthsynth.augment.detector import CompactDetector, decode, load_detector
from earthsynth.augment.detector.train import augment, dataset, encode_targets
from earthsynth.augment.metrics import box_iou, detection_map, match_layout
from earthsynth.boxes import Boxes
from earthsynth.config import load_config
from earthsynth.data.coco import write_coco
from earthsynth.errors import InputError
from earthsynth.training.loop import train
from tests_support import assert_input_error

CLASSES = ["Tree", "Dead"]


def tiny_detector(rotated=False) -> CompactDetector:
    torch.manual_seed(0)
    return CompactDetector(class_names=CLASSES, rotated=rotated, widths=[8, 16, 16], head_width=8)


def horizontal_boxes() -> Boxes:
    return Boxes.from_xyxy([[10, 10, 30, 26], [40, 41, 50, 60], [3, 50, 13, 62]], ["Tree", "Tree", "Dead"])


def rotated_boxes() -> Boxes:
    return Boxes(np.array([[20, 20, 24, 10, 30], [45, 30, 12, 20, -60], [10, 50, 9, 9, 0]]),
                 ["Tree", "Tree", "Dead"], rotated=True)


def perfect_outputs(targets: dict) -> dict:
    """Head maps that say exactly what the targets say (heatmap as logits)."""
    outputs = {k: v for k, v in targets.items() if k != "mask"}
    outputs["heatmap"] = torch.logit(targets["heatmap"].clamp(1e-6, 1 - 1e-6))
    return outputs


def sort_rows(rboxes: np.ndarray) -> np.ndarray:
    return rboxes[np.lexsort(rboxes[:, :2].T[::-1])]


@pytest.mark.parametrize("rotated", [False, True])
def test_forward_shapes_and_detect_on_any_size(rotated):
    model = tiny_detector(rotated)
    outputs = model(torch.rand(2, 3, 37, 50))  # padded inside to 40 x 56 (multiple of 8)
    assert outputs["heatmap"].shape == (2, 2, 10, 14)
    assert outputs["size"].shape == outputs["offset"].shape == (2, 2, 10, 14)
    assert ("angle" in outputs) == rotated
    with torch.no_grad():  # a heatmap with many peaks
        model.heatmap_head[-1].weight.normal_(0.0, 1.0)
    results = model.detect(torch.rand(2, 3, 36, 50), score_threshold=1e-6, max_detections=5)
    assert len(results) == 2
    for boxes, scores in results:
        assert len(boxes) == len(scores) == 5
        assert np.all(np.diff(scores) <= 0)  # best first
        assert set(boxes.labels) <= set(CLASSES) and boxes.rotated == rotated
        assert np.all(boxes.rboxes[:, 0] <= 50) and np.all(boxes.rboxes[:, 1] <= 36)
    high = model.detect(torch.rand(3, 37, 50), score_threshold=1.1)[0]  # one image, (3, H, W)
    assert len(high[0]) == 0


@pytest.mark.parametrize("rotated", [False, True])
def test_decode_recovers_boxes_from_perfect_target_maps(rotated):
    boxes = rotated_boxes() if rotated else horizontal_boxes()
    targets = encode_targets([boxes, Boxes()], CLASSES, 64, 70, rotated, multiple=8)
    assert targets["heatmap"].shape == (2, 2, 16, 18)  # 70 padded to 72
    assert targets["mask"][0].sum() == 3 and targets["mask"][1].sum() == 0
    (found, scores), (empty, _) = decode(perfect_outputs(targets), CLASSES, 64, 70, rotated, 0.5, 100)
    assert len(empty) == 0 and len(found) == 3 and np.all(scores > 0.99)
    expected = boxes.rboxes.copy()
    if rotated:  # the model's form: w >= h, angle of the long side
        expected[1] = [45, 30, 20, 12, 30]
    np.testing.assert_allclose(sort_rows(found.rboxes), sort_rows(expected), atol=1e-4)
    dead = found.rboxes[np.array(found.labels) == "Dead"]
    np.testing.assert_allclose(dead, boxes.rboxes[2:3], atol=1e-4)


def test_augment_moves_boxes_with_the_pixels():
    torch.manual_seed(1)
    boxes = Boxes.from_xyxy([[4, 8, 12, 28]], ["Tree"])  # a tall bright bar, off-centre
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 8:28, 4:12] = 1.0
    seen = set()
    for _ in range(64):
        out, (moved,) = augment(image, [boxes], color_jitter=0.0)
        mask = torch.from_numpy(moved.masks(32, 32)[0]).bool()
        assert out[0, 0][mask].min() == 1.0 and out[0, 0][~mask].max() == 0.0
        seen.add(tuple(np.round(moved.xyxy()[0]).astype(int)))
    assert len(seen) == 8  # all right-angle rotations and mirrors occur


def test_save_load_round_trip(tmp_path):
    model = tiny_detector(rotated=True).eval()
    model.save_pretrained(tmp_path / "det")
    loaded = load_detector(tmp_path / "det")
    assert loaded.class_names == CLASSES and loaded.rotated and not loaded.training
    images = torch.rand(1, 3, 32, 32)
    for key, value in model(images).items():
        torch.testing.assert_close(loaded(images)[key], value)


def test_bad_checkpoint_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        load_detector(tmp_path / "missing")
    assert_input_error(err, tmp_path / "missing", "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as err:
        load_detector(empty)
    assert_input_error(err, empty, "not a detector checkpoint")
    other = tmp_path / "unet"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(InputError) as err:
        load_detector(other)
    assert_input_error(err, other, "UNet2DModel")
    tiny_detector().save_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(InputError) as err:
        load_detector(tmp_path / "broken")
    assert_input_error(err, tmp_path / "broken", "cannot load")


def test_train_tiny_config_writes_a_loadable_detector(tmp_path):
    # an extra dataset of two 40x40 images (larger than the 32 px tiles: collate pads)
    extra = tmp_path / "extra"
    (extra / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(extra / "images" / name)
    write_coco(extra / "labels.json", [(n, 40, 40, Boxes.from_xyxy([[5, 5, 20, 20]], ["Tree"])) for n in ("a.png", "b.png")],
               ["Tree"])
    tree = {
        "family": "detector", "output_dir": str(tmp_path / "run"),
        "model": {"widths": [8, 16], "head_width": 8, "real_fraction": 0.25, "extra_data": str(extra)},
        "data": {"tile_size": 32, "gsd_factors": [4]},
        "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1.0e-3, "log_every": 1},
    }
    config = load_config(tree=tree)
    full = len(dataset(load_config(tree={**tree, "model": {}})))
    assert len(dataset(config)) == round(0.25 * full) + 2
    result = train(config, show_progress=False)
    assert len(result["losses"]) == 3 and all(np.isfinite(loss) for _, loss in result["losses"])
    detector = load_detector(tmp_path / "run")  # a run folder: its final/
    assert detector.class_names == ["Tree"]
    boxes, scores = detector.detect(torch.rand(1, 3, 48, 48), score_threshold=0.0, max_detections=3)[0]
    assert len(boxes) == 3 and boxes.labels == ["Tree"] * 3


def test_detection_map_is_one_for_perfect_predictions_and_less_when_shifted():
    truth = horizontal_boxes()
    ground_truth = [("a", truth, 64, 64), ("b", truth.select([0]), 64, 64)]
    perfect = [(truth, np.array([0.9, 0.8, 0.7])), (truth.select([0]), np.array([0.6]))]
    result = detection_map(ground_truth, perfect, CLASSES)
    assert result["mAP50"] == pytest.approx(1.0) and result["mAP50_95"] == pytest.approx(1.0)
    assert result["per_class_AP50"] == pytest.approx({"Tree": 1.0, "Dead": 1.0})
    # shifted by 3 px: IoU 0.6-0.8, still right at 0.5 but not at the strict thresholds
    shifted = [(b.translate(3, 0), s) for b, s in perfect]
    result = detection_map(ground_truth, shifted, CLASSES)
    assert result["mAP50"] == pytest.approx(1.0) and 0.1 < result["mAP50_95"] < 0.6
    # the Dead box missed, a false Tree with the best score
    wrong = Boxes.from_xyxy([[50, 0, 60, 8]], ["Tree"]).concat(truth.select([0, 1]))
    result = detection_map(ground_truth[:1], [(wrong, np.array([0.95, 0.9, 0.8]))], CLASSES)
    assert result["per_class_AP50"]["Dead"] == 0.0 and 0.3 < result["per_class_AP50"]["Tree"] < 0.9
    assert detection_map(ground_truth, [(Boxes(), np.zeros(0))] * 2, CLASSES)["mAP50"] == 0.0


def test_match_layout_counts_class_aware_greedy_matches():
    target = horizontal_boxes()
    predicted = Boxes.from_xyxy([[11, 10, 31, 26],   # Tree 0, IoU 0.9
                                 [40, 41, 50, 60],   # Tree 1 but called Dead: no match
                                 [3, 50, 13, 62],    # Dead, exact
                                 [10, 10, 30, 26]],  # Tree 0 again, lower score: duplicate
                                ["Tree", "Dead", "Dead", "Tree"])
    result = match_layout(target, predicted, [0.9, 0.8, 0.7, 0.6])
    assert result["recall"] == pytest.approx(2 / 3) and result["precision"] == pytest.approx(2 / 4)
    assert result["matched_iou_mean"] == pytest.approx((1.0 + 19 / 21) / 2)
    assert match_layout(target, Boxes())["precision"] == 1.0 and match_layout(target, Boxes())["recall"] == 0.0
    assert match_layout(Boxes(), predicted)["recall"] == 1.0


def test_match_layout_uses_polygon_iou_for_rotated_boxes():
    target = Boxes(np.array([[20, 20, 20, 6, 45]]), ["Tree"], rotated=True)
    crossing = Boxes(np.array([[20, 20, 20, 6, -45]]), ["Tree"], rotated=True)  # same enclosing box
    # two 20 x 6 bars crossing at right angles: 36 / (120 + 120 - 36)
    assert box_iou(target, crossing)[0, 0] == pytest.approx(36 / 204)
    assert match_layout(target, crossing)["recall"] == 0.0
    # the same bar with the long side named as height: the same rectangle
    same = Boxes(np.array([[20, 20, 6, 20, -45]]), ["Tree"], rotated=True)
    result = match_layout(target, same, [0.5])
    assert result["recall"] == 1.0 and result["precision"] == 1.0
    assert result["matched_iou_mean"] == pytest.approx(1.0)
    nudged = Boxes(np.array([[21, 20, 20, 6, 45]]), ["Tree"], rotated=True)  # 1 px along x
    assert 0.7 < match_layout(target, nudged)["matched_iou_mean"] < 0.9

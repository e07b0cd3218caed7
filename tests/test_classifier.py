"""The crop classifier of the semantic filter: crop geometry, per-image probabilities in box
order, save / load, background crops that avoid the objects, the family's loss and a short
training run through the one loop."""

import json

import numpy as np
import pytest
import torch

from earthsynth.augment.classifier import (
    BACKGROUND,
    CropClassifier,
    extract_crops,
    load_classifier,
    object_vs_background_accuracy,
)
from earthsynth.augment.classifier.model import crop_regions
from earthsynth.augment.classifier.train import (
    FAMILY,
    CropDataset,
    background_boxes,
    build,
    iou_matrix,
    jitter_colors,
    lower_resolution,
    real_crops,
)
from earthsynth.augment.detector import CompactDetector
from earthsynth.boxes import Boxes
from earthsynth.config import load_config
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles
from earthsynth.errors import InputError
from earthsynth.training.loop import train
from tests_support import assert_input_error

COLOUR = torch.tensor([0.2, 0.5, 0.8])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ops this small run fastest on one thread; two threads on a busy shared machine can
    make the short training run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_classifier(**kwargs) -> CropClassifier:
    torch.manual_seed(0)
    return CropClassifier(**{"class_names": ["Tree", "Dead"], "crop_size": 8, "widths": [4, 8], **kwargs})


def patch_image(size: int = 32) -> torch.Tensor:
    """A black (1, 3, size, size) image with a coloured 8 x 8 patch at x, y in [8, 16)."""
    image = torch.zeros(1, 3, size, size)
    image[0, :, 8:16, 8:16] = COLOUR[:, None, None]
    return image


# ----------------------------------------------------------------------------- crops
def test_crop_regions_widen_the_enclosing_horizontal_box():
    boxes = Boxes.from_xyxy([[10, 20, 30, 60]], ["Tree"])
    np.testing.assert_allclose(crop_regions(boxes, 0.25), [[5, 10, 35, 70]])
    np.testing.assert_allclose(crop_regions(boxes, 0.0), [[10, 20, 30, 60]])
    # a 20 x 10 box turned by 90 degrees encloses 10 x 20
    turned = Boxes(np.array([[20.0, 20.0, 20.0, 10.0, 90.0]]), ["Tree"], rotated=True)
    np.testing.assert_allclose(crop_regions(turned, 0.0), [[15, 10, 25, 30]], atol=1e-6)


@pytest.mark.parametrize("crop_size", [8, 4])  # 4: the window is sampled 2x finer and averaged
def test_a_box_on_a_coloured_patch_gives_a_crop_of_that_colour(crop_size):
    boxes = Boxes.from_xyxy([[8, 8, 16, 16]], ["Tree"])
    crops = extract_crops(patch_image(), [boxes], crop_size=crop_size, context=0.0)
    assert crops.shape == (1, 3, crop_size, crop_size)
    expected = COLOUR[:, None, None].expand(3, crop_size, crop_size)
    torch.testing.assert_close(crops[0], expected)


def test_context_shows_the_surroundings_around_the_box():
    boxes = Boxes.from_xyxy([[8, 8, 16, 16]], ["Tree"])
    crop = extract_crops(patch_image(), [boxes], crop_size=16, context=0.5)[0]  # window [4, 20)
    torch.testing.assert_close(crop[:, 4:12, 4:12], COLOUR[:, None, None].expand(3, 8, 8))
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[4:12, 4:12] = False
    assert crop[:, outside].abs().max() == 0


def test_window_outside_the_image_is_zero_and_keeps_the_box_in_place():
    image = torch.full((1, 3, 32, 32), 0.6)
    boxes = Boxes.from_xyxy([[-8, 4, 8, 20]], ["Tree"])  # left half outside the image
    crop = extract_crops(image, [boxes], crop_size=16, context=0.0)[0]
    assert crop[:, :, :8].abs().max() == 0
    torch.testing.assert_close(crop[:, :, 8:], torch.full((3, 16, 8), 0.6))


def test_crops_come_image_by_image_and_box_by_box():
    images = torch.stack([torch.full((3, 16, 16), v) for v in (0.1, 0.5, 0.9)])
    boxes = [Boxes.from_xyxy([[2, 2, 10, 10], [4, 4, 12, 12]], ["Tree", "Tree"]),
             Boxes(),
             Boxes.from_xyxy([[3, 3, 9, 9]], ["Tree"])]
    crops = extract_crops(images, boxes, crop_size=6, context=0.0)
    assert crops.shape == (3, 3, 6, 6)
    np.testing.assert_allclose(crops.mean(dim=(1, 2, 3)).numpy(), [0.1, 0.1, 0.9], atol=1e-6)
    # a box's crop does not depend on the other boxes of the batch (the sub-sampling is per box)
    small = Boxes.from_xyxy([[3.3, 2.7, 9.1, 11.4]], ["Tree"])
    images = torch.rand(2, 3, 16, 16)
    alone = extract_crops(images[:1], [small], crop_size=4, context=0.2)
    with_big = extract_crops(images, [small, Boxes.from_xyxy([[0, 0, 16, 16]], ["Tree"])], crop_size=4, context=0.2)
    torch.testing.assert_close(with_big[:1], alone)
    empty = extract_crops(images, [Boxes()] * 2, crop_size=6, context=0.0)
    assert empty.shape == (0, 3, 6, 6)
    with pytest.raises(ValueError):
        extract_crops(images, boxes, crop_size=6, context=0.0)


# ----------------------------------------------------------------------------- model
def test_classify_gives_per_image_probabilities_in_box_order():
    model = tiny_classifier()
    model.train()
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    boxes = [Boxes.from_xyxy([[2, 2, 12, 12], [16, 10, 30, 28]], ["Tree", "Dead"]),
             Boxes(),
             Boxes.from_xyxy([[0, 0, 10, 8], [5, 20, 15, 31], [20, 3, 28, 12]], ["Tree"] * 3)]
    out = model.classify(images, boxes)
    assert model.training  # classify leaves the mode as it found it
    assert model.class_names_with_background == ["Tree", "Dead", BACKGROUND]
    assert [p.shape for p in out] == [(2, 3), (0, 3), (3, 3)]
    for probabilities in out:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert np.all(probabilities >= 0)
    # the same rows as the model on the crops, and reversed boxes give reversed rows
    model.eval()
    with torch.no_grad():
        direct = torch.softmax(model(extract_crops(images, boxes, 8, model.config.context)), dim=1).numpy()
    np.testing.assert_allclose(np.concatenate(out), direct, atol=1e-6)
    reversed_out = model.classify(images[2:], [boxes[2].select(np.array([2, 1, 0]))])[0]
    np.testing.assert_allclose(reversed_out, out[2][::-1], atol=1e-6)
    assert not np.allclose(out[2][0], out[2][1])  # different crops, different answers


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_classifier(standardize=True, context=0.1).eval()
    model.save_pretrained(tmp_path / "run" / "final")
    for folder in (tmp_path / "run" / "final", tmp_path / "run"):  # final/ or the run folder
        loaded = load_classifier(folder)
        assert not loaded.training
        assert list(loaded.config.class_names) == ["Tree", "Dead"]
        assert loaded.config.standardize and loaded.config.context == 0.1
        images = torch.rand(2, 3, 24, 24)
        boxes = [Boxes.from_xyxy([[3, 3, 15, 12]], ["Tree"]), Boxes.from_xyxy([[6, 1, 20, 22]], ["Dead"])]
        for a, b in zip(model.classify(images, boxes), loaded.classify(images, boxes)):
            np.testing.assert_array_equal(a, b)


def test_bad_classifier_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as err:
        load_classifier(tmp_path / "missing")
    assert_input_error(err, tmp_path / "missing", "not a classifier checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as err:
        load_classifier(empty)
    assert_input_error(err, empty, "not a classifier checkpoint")
    detector = tmp_path / "detector"
    CompactDetector(class_names=["Tree"], widths=[4, 8], head_width=4).save_pretrained(detector)
    with pytest.raises(InputError) as err:
        load_classifier(detector)
    assert_input_error(err, detector, "CropClassifier")
    broken = tmp_path / "broken"
    tiny_classifier().save_pretrained(broken)
    assert json.loads((broken / "config.json").read_text())["_class_name"] == "CropClassifier"
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(InputError) as err:
        load_classifier(broken)
    assert_input_error(err, broken, "cannot load")


# ----------------------------------------------------------------------------- real crops
def test_background_boxes_avoid_the_objects():
    objects = Boxes.from_xyxy([[10, 10, 30, 30], [40, 5, 60, 20], [20, 40, 35, 62]], ["Tree"] * 3)
    sizes = np.array([[12.0, 12.0], [8.0, 16.0], [20.0, 10.0]])
    found = background_boxes(objects, 64, sizes, count=6, rng=np.random.default_rng(0), attempts=500)
    assert len(found) == 6 and found.labels == [BACKGROUND] * 6
    xyxy = found.xyxy()
    assert np.all(xyxy >= 0) and np.all(xyxy <= 64)
    assert iou_matrix(xyxy, objects.xyxy()).max() < 0.1
    centres = (objects.xyxy()[:, :2] + objects.xyxy()[:, 2:]) / 2
    for box in xyxy:
        assert not np.any(np.all((centres >= box[:2]) & (centres <= box[2:]), axis=1))
    # sizes come from `sizes`
    wh = np.round(found.rboxes[:, 2:4], 6)
    assert all(any(np.allclose(row, s) for s in sizes) for row in wh)
    # no objects: any place will do; objects everywhere: nowhere is background
    assert len(background_boxes(Boxes(), 64, sizes, 3, np.random.default_rng(0))) == 3
    grid = Boxes.from_xyxy([[x, y, x + 16, y + 16] for x in range(0, 64, 16) for y in range(0, 64, 16)], ["Tree"] * 16)
    assert len(background_boxes(grid, 64, np.array([[16.0, 16.0]]), 3, np.random.default_rng(0))) == 0


@pytest.fixture(scope="module")
def real_tiles():
    return RealTiles("train", tile_size=64, gsd_factors=(2,)).tiles[:40]


def test_real_crops_label_every_object_and_the_background(real_tiles):
    crops, labels = real_crops(real_tiles, crop_size=16, context=0.25, background_per_image=2, seed=0)
    objects = sum(len(t.boxes) for t in real_tiles)
    assert objects > 10
    assert labels.count("Tree") == objects
    assert 0 < labels.count(BACKGROUND) <= 2 * len(real_tiles)
    assert crops.shape == (len(labels), 3, 16, 16)
    assert crops.min() >= 0 and crops.max() <= 1
    with pytest.raises(InputError, match="Tree"):
        CropDataset(crops, labels, ["Dead"])
    dataset = CropDataset(crops, labels, ["Tree"])
    assert dataset[0]["crop"].shape == (3, 16, 16) and set(dataset.labels.tolist()) == {0, 1}


# ----------------------------------------------------------------------------- family
def test_crop_augmentations_keep_values_and_range():
    torch.manual_seed(0)
    crops = torch.rand(16, 3, 8, 8)
    turned = random_flips(crops, transpose=True)
    for a, b in zip(crops, turned):  # a flip or quarter turn moves pixels, never changes them
        torch.testing.assert_close(a.flatten().sort().values, b.flatten().sort().values)
    jittered = jitter_colors(crops, 0.5)
    assert jittered.shape == crops.shape and jittered.min() >= 0 and jittered.max() <= 1
    assert not torch.allclose(jittered, crops)
    torch.testing.assert_close(lower_resolution(crops, 0.0), crops)
    assert not torch.allclose(lower_resolution(crops, 1.0), crops)


def test_family_loss_is_a_differentiable_scalar():
    config = load_config(tree={"family": "classifier", "output_dir": "unused",
                               "model": {"crop_size": 8, "widths": [4, 8], "color_jitter": 0.2, "low_resolution": 0.5}})
    components = build(config)
    batch = {"crop": torch.rand(6, 3, 8, 8), "label": torch.tensor([0, 1, 0, 1, 1, 0])}
    loss = FAMILY.loss(components, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert components["classifier"].head.weight.grad.abs().sum() > 0


def test_short_training_lowers_the_loss_and_exports_a_loadable_classifier(tmp_path):
    config = load_config(tree={
        "family": "classifier", "output_dir": str(tmp_path / "run"),
        "model": {"crop_size": 16, "widths": [8, 16], "background_per_image": 1},
        "data": {"tile_size": 64, "gsd_factors": [2]},
        "train": {"max_steps": 100, "batch_size": 32, "learning_rate": 3.0e-3, "checkpoint_every": 100,
                  "log_every": 10},
    })
    result = train(config, show_progress=False)
    losses = [loss for _, loss in result["losses"]]
    assert len(losses) == 100 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])
    model = load_classifier(tmp_path / "run")
    assert list(model.config.class_names) == ["Tree"] and model.config.crop_size == 16
    assert (tmp_path / "run" / "final" / "train_config.yaml").exists()
    # it tells trees from background on another site (val, SOAP_061: "Alive" / "Dead" trees)
    # better than chance; measured: balanced accuracy ~0.7 after these 100 steps
    tiles = RealTiles("val", tile_size=64, gsd_factors=(2,)).tiles
    crops, labels = real_crops(tiles, 16, model.config.context, 3, seed=1)
    scores = object_vs_background_accuracy(model, crops, labels)
    assert scores["objects"] > 30 and scores["backgrounds"] > 30
    assert (scores["object_recall"] + scores["background_recall"]) / 2 > 0.6

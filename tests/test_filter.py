"""The sample filter's decisions, with scripted stand-ins for the detector and the crop
classifier (so every outcome is known) and real tiles as images (so the quality checks
pass where they should)."""

import numpy as np
import pytest
import torch

from earthsynth.augment.filter import FilterConfig, SampleFilter
from earthsynth.boxes import Boxes
from earthsynth.data.tiles import RealTiles

LAYOUT = Boxes.from_xyxy([[5, 5, 20, 20], [30, 30, 50, 50]], ["Tree", "Tree"])
EXTRAS = Boxes.from_xyxy([[0, 40, 10, 50], [50, 0, 60, 12], [22, 50, 30, 60]], ["Tree"] * 3)


class ScriptedDetector:
    """Returns the detections it was given for each image of the next batch, best first."""

    def __init__(self):
        self.detections: list[Boxes] = []
        self.thresholds: list[float] = []

    def detect(self, images, score_threshold):
        assert len(images) == len(self.detections)
        self.thresholds.append(score_threshold)
        return [(boxes, np.linspace(0.9, 0.5, len(boxes))) for boxes in self.detections]


class ScriptedClassifier:
    """Says each box shows its layout class, unless told otherwise for an image (by index)."""

    class_names_with_background = ["Tree", "Dead", "background"]

    def __init__(self):
        self.answers: dict[int, list[str]] = {}

    def classify(self, images, boxes):
        out = []
        for i, b in enumerate(boxes):
            names = self.answers.get(i, b.labels)
            probabilities = np.full((len(b), 3), 0.1)
            probabilities[np.arange(len(b)), [self.class_names_with_background.index(n) for n in names]] = 0.8
            out.append(probabilities)
        return out


@pytest.fixture(scope="module")
def real_images():
    """(N, 3, 64, 64) real deepforest tiles in [0, 1] at 0.2 m/px, and their uint8 pixels."""
    tiles = RealTiles("train", tile_size=64, gsd_factors=(2,)).tiles[:12]
    pixels = [t.pixels for t in tiles]
    return torch.stack([torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in pixels]), pixels


# the thresholds these tests were written for (a run calibrates the ones left empty)
FIXED = {"min_recall": 0.5, "min_precision": 0.5, "min_class_agreement": 0.5, "max_saturated_fraction": 0.2,
         "min_std": 0.02, "min_edge_energy": 0.008, "max_edge_energy": 0.12, "duplicate_similarity": 0.95}


def make_filter(**config):
    return SampleFilter(FilterConfig(**{**FIXED, **config}), ScriptedDetector(), ScriptedClassifier())


def run(sample_filter, images, layouts, detections, keys=None):
    sample_filter.detector.detections = detections
    return sample_filter(images, layouts, keys or [f"gen/{i}" for i in range(len(images))])


def test_detections_matching_the_layout_are_accepted(real_images):
    images, _ = real_images
    sample_filter = make_filter(detector_score=0.4)
    (result,) = run(sample_filter, images[:1], [LAYOUT], [LAYOUT])
    assert result["passed"] and result["reasons"] == []
    assert result["checks"] == {"quality": True, "layout": True, "semantic": True, "duplicate": True}
    scores = result["scores"]
    assert scores["recall"] == 1.0 and scores["precision"] == 1.0 and scores["matched_iou"] == pytest.approx(1.0)
    assert scores["detections"] == 2 and scores["class_agreement"] == 1.0
    assert scores["finite"] == 1.0 and scores["std"] > 0.05
    assert scores["duplicate_of"] is None  # nothing stored yet
    assert sample_filter.detector.thresholds == [0.4]  # the config's score threshold reaches the detector
    assert sample_filter.duplicates.keys == ["gen/0"]  # accepted images join the index


def test_missed_objects_reject_on_recall(real_images):
    images, _ = real_images
    sample_filter = make_filter()
    one_found = LAYOUT.select(np.array([1]))
    moved = LAYOUT.translate(12, 0)  # both boxes, IoU < 0.5 with their targets
    results = run(sample_filter, images[:3], [LAYOUT] * 3, [Boxes(), moved, one_found])
    for result in results[:2]:
        assert not result["passed"] and not result["checks"]["layout"]
        assert result["scores"]["recall"] == 0.0
        assert result["reasons"][0] == "layout: none of the 2 conditioned objects found"
    assert len(results[0]["reasons"]) == 1  # no detections: nothing wrong among them
    assert results[1]["scores"]["precision"] == 0.0  # two detections, neither matches
    assert results[1]["reasons"][1].startswith("layout: precision 0.00")
    assert results[2]["passed"] and results[2]["scores"]["recall"] == 0.5  # at min_recall: enough
    # a box found with the wrong class is missed too (matching is class-aware)
    wrong_class = Boxes(LAYOUT.rboxes.copy(), ["Dead", "Dead"])
    (result,) = run(make_filter(), images[3:4], [LAYOUT], [wrong_class])
    assert not result["passed"] and result["scores"]["recall"] == 0.0


def test_extra_detections_reject_on_precision(real_images):
    images, _ = real_images
    results = run(make_filter(), images[:2], [LAYOUT, LAYOUT], [LAYOUT.concat(EXTRAS), LAYOUT.concat(EXTRAS.select([0, 1]))])
    rejected, kept = results
    assert rejected["scores"]["recall"] == 1.0 and rejected["scores"]["precision"] == pytest.approx(0.4)
    assert not rejected["passed"] and not rejected["checks"]["layout"]
    assert len(rejected["reasons"]) == 1 and rejected["reasons"][0].startswith("layout: precision 0.40")
    assert "5 detections" in rejected["reasons"][0]
    assert kept["passed"] and kept["scores"]["precision"] == 0.5  # at min_precision: enough


def test_classifier_disagreement_rejects_on_semantics(real_images):
    images, _ = real_images
    sample_filter = make_filter()
    sample_filter.classifier.answers = {0: ["Dead", "background"], 1: ["Tree", "background"]}
    disagree, half = run(sample_filter, images[:2], [LAYOUT, LAYOUT], [LAYOUT, LAYOUT])
    assert not disagree["passed"] and disagree["checks"] == {
        "quality": True, "layout": True, "semantic": False, "duplicate": True}
    assert disagree["scores"]["class_agreement"] == 0.0
    assert len(disagree["reasons"]) == 1 and disagree["reasons"][0].startswith("semantic:")
    assert half["passed"] and half["scores"]["class_agreement"] == 0.5
    strict = make_filter(min_class_agreement=0.75)
    strict.classifier.answers = {0: ["Tree", "background"]}
    assert not run(strict, images[1:2], [LAYOUT], [LAYOUT])[0]["passed"]


def test_bad_quality_rejects(real_images):
    images, _ = real_images
    broken = images[:2].clone()
    broken[0, :, 10, 10] = float("nan")
    broken[1] = 0.5  # blank
    nan_image, blank = run(make_filter(), broken, [LAYOUT, LAYOUT], [LAYOUT, LAYOUT])
    for result in (nan_image, blank):
        assert not result["passed"] and not result["checks"]["quality"]
        assert all(r.startswith("quality: ") for r in result["reasons"])
    assert nan_image["scores"]["finite"] == 0.0 and "NaN" in nan_image["reasons"][0]
    assert any("flat image" in r for r in blank["reasons"])
    # the config's quality limits are the ones applied
    (strict,) = run(make_filter(min_std=0.5), images[:1], [LAYOUT], [LAYOUT])
    assert not strict["passed"] and any("flat image" in r for r in strict["reasons"])


def test_copies_of_accepted_images_are_duplicates(real_images):
    images, _ = real_images
    sample_filter = make_filter()
    batch = torch.stack([images[0], images[1], images[0]])
    first, other, copy = run(sample_filter, batch, [LAYOUT] * 3, [LAYOUT] * 3, keys=["a", "b", "c"])
    assert first["passed"] and other["passed"]
    assert not copy["passed"] and copy["checks"]["duplicate"] is False
    assert copy["reasons"] == ["duplicate of a (1.00)"]
    assert copy["scores"]["duplicate_of"] == "a" and copy["scores"]["duplicate_similarity"] == pytest.approx(1.0)
    assert other["scores"]["duplicate_of"] == "a" and other["scores"]["duplicate_similarity"] < 0.9
    # later batches too, also for a slightly changed copy
    shifted = (images[1:2] * 0.97 + 0.02).clamp(0, 1)
    (again,) = run(sample_filter, shifted, [LAYOUT], [LAYOUT], keys=["d"])
    assert not again["passed"] and again["scores"]["duplicate_of"] == "b"
    assert sample_filter.duplicates.keys == ["a", "b"]


def test_rejected_images_do_not_block_their_copies(real_images):
    images, _ = real_images
    sample_filter = make_filter()
    rejected, copy = run(sample_filter, torch.stack([images[2], images[2]]), [LAYOUT] * 2, [Boxes(), LAYOUT])
    assert not rejected["passed"] and copy["passed"]


def test_reference_images_may_not_be_copied(real_images):
    images, pixels = real_images
    sample_filter = make_filter()
    sample_filter.add_reference("real/7", pixels[7])  # uint8 pixels, as the real tiles hold them
    copied, fresh = run(sample_filter, images[[7, 8]], [LAYOUT] * 2, [LAYOUT] * 2)
    assert not copied["passed"] and copied["reasons"] == ["duplicate of real/7 (1.00)"]
    assert fresh["passed"]


def test_disabled_filter_keeps_everything_but_still_scores(real_images):
    images, _ = real_images
    sample_filter = make_filter(enabled=False)
    sample_filter.classifier.answers = {1: ["Dead", "Dead"]}
    broken = images[:4].clone()
    broken[2, 0, 0, 0] = float("nan")
    broken[3] = broken[0]
    results = run(sample_filter, broken, [LAYOUT] * 4, [Boxes(), LAYOUT, LAYOUT, LAYOUT])
    assert all(r["passed"] for r in results)
    assert [r["checks"] for r in results] == [
        {"quality": True, "layout": False, "semantic": True, "duplicate": True},
        {"quality": True, "layout": True, "semantic": False, "duplicate": True},
        {"quality": False, "layout": True, "semantic": True, "duplicate": True},
        {"quality": True, "layout": True, "semantic": True, "duplicate": False},
    ]
    assert results[0]["reasons"][0].startswith("layout: none of the 2")
    assert results[1]["reasons"][0].startswith("semantic:")
    assert results[2]["reasons"][0].startswith("quality:")
    assert results[3]["reasons"][0].startswith("duplicate of gen/0")
    assert results[0]["scores"]["recall"] == 0.0 and results[1]["scores"]["class_agreement"] == 0.0


def test_empty_layout_without_detections_is_accepted(real_images):
    images, _ = real_images
    empty, extra = run(make_filter(), images[4:6], [Boxes(), Boxes()], [Boxes(), EXTRAS])
    assert empty["passed"] and empty["reasons"] == []
    assert empty["scores"]["recall"] == 1.0 and empty["scores"]["precision"] == 1.0
    assert empty["scores"]["class_agreement"] == 1.0 and empty["scores"]["detections"] == 0
    # objects in an image that should have none: precision 0
    assert not extra["passed"] and extra["scores"]["precision"] == 0.0
    # but a blank image with an empty layout still fails on quality
    (blank,) = run(make_filter(), torch.full((1, 3, 64, 64), 0.3), [Boxes()], [Boxes()])
    assert not blank["passed"] and blank["checks"]["quality"] is False


def test_a_layout_is_confirmed_only_by_objects_found(real_images):
    """However low min_recall and min_precision (a calibrated detector may need 0), an image
    with objects passes only if one of them is found, and an empty one only if nothing is."""
    images, _ = real_images
    lax = make_filter(min_recall=0.0, min_precision=0.0)
    one_found = LAYOUT.select(np.array([0]))
    none, one, empty_clean, empty_busy = run(lax, images[:4], [LAYOUT, LAYOUT, Boxes(), Boxes()],
                                             [Boxes(), one_found, Boxes(), EXTRAS])
    assert not none["passed"] and none["reasons"] == ["layout: none of the 2 conditioned objects found"]
    assert one["passed"] and one["scores"]["recall"] == 0.5 and one["scores"]["objects"] == 2
    assert empty_clean["passed"] and empty_clean["scores"]["objects"] == 0
    assert not empty_busy["passed"] and empty_busy["reasons"] == ["layout: 3 detections on an empty layout"]


def test_thresholds_must_be_set_or_calibrated():
    with pytest.raises(ValueError, match="min_recall, min_precision, min_class_agreement"):
        SampleFilter(FilterConfig(), ScriptedDetector(), ScriptedClassifier())
    with pytest.raises(ValueError, match="^filter thresholds not set: duplicate_similarity "):
        SampleFilter(FilterConfig(**{**FIXED, "duplicate_similarity": None}), ScriptedDetector(), ScriptedClassifier())


def real_scores(n: int, rng) -> tuple[list[dict], list[dict]]:
    """Scores of n real tiles as real_tile_scores gives them (model scores, image scores)."""
    model = [{"objects": 3, "detections": 3, "recall": r, "precision": p, "class_agreement": a}
             for r, p, a in zip(rng.choice([1 / 3, 2 / 3, 1.0], n), rng.uniform(0.2, 1, n), rng.uniform(0, 1, n))]
    image = [{"finite": True, "saturated_fraction": s, "std": d, "edge_energy": e, "duplicate_similarity": u,
              "duplicate_of": "real:x"}
             for s, d, e, u in zip(rng.uniform(0, 0.01, n), rng.uniform(0.05, 0.2, n), rng.uniform(0.03, 0.09, n),
                                   rng.uniform(0.3, 0.9, n))]
    return model, image


@pytest.mark.parametrize("share", [0.9, 0.5, 1.0])
def test_calibrated_thresholds_pass_the_share_of_real_tiles(share):
    from earthsynth.augment.filter import BOUNDS, CHECKS, calibrate, real_pass_rates

    model, image = real_scores(200, np.random.default_rng(1))
    config, calibrated = calibrate(FilterConfig(real_pass_share=share), model, image)
    assert calibrated == sorted(BOUNDS) and all(getattr(config, name) is not None for name in BOUNDS)
    rates = real_pass_rates(config, model, image)
    assert set(rates) == set(CHECKS) and all(judged == 200 for _, judged in rates.values())
    for check, (passed, judged) in rates.items():
        assert passed / judged >= share, check  # at least the share passes each check (quality: 4 bounds)
    for check in ("semantic", "duplicate"):  # one bound on a continuous score: about the share, no more
        assert rates[check][0] / 200 <= share + 0.01, check
    # a number the user gave stays, and is not calibrated
    strict, calibrated = calibrate(FilterConfig(real_pass_share=share, min_std=0.5), model, image)
    assert strict.min_std == 0.5 and "min_std" not in calibrated and strict.max_edge_energy == config.max_edge_energy
    assert real_pass_rates(strict, model, image)["quality"][0] == 0  # every real std is below 0.5


def test_threshold_at_rounds_outwards():
    from earthsynth.augment.filter import threshold_at

    values = [0.12345, 0.5, 0.7, 0.98761]
    assert threshold_at(values, 0.25, "min") == 0.1234  # floor: 0.12345 still passes
    assert threshold_at(values, 0.25, "max") == 0.9877  # ceil: 0.98761 still passes
    assert threshold_at(values, 0.25, "below") == pytest.approx(0.9877)  # strictly above the largest
    assert threshold_at([0.5], 0.0, "below") > 0.5


def test_nearest_other_reference(real_images):
    from earthsynth.augment.quality import DuplicateIndex

    _, pixels = real_images
    index = DuplicateIndex()
    index.add("a", pixels[0])
    assert index.nearest(pixels[0]) == ("a", pytest.approx(1.0))
    assert index.nearest(pixels[0], exclude="a") == (None, -1.0)  # no other
    index.add("b", pixels[1])
    key, similarity = index.nearest(pixels[0], exclude="a")
    assert key == "b" and similarity < 0.95

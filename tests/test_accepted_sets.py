"""What `earthsynth augment` accepts: the manifest, run.json, the report and the written datasets
agree on it; the accepted set keeps the objects-per-image distribution of the layouts (which the
sampler draws from the real tiles) however much more often the filter passes empty layouts; the
filter's thresholds are calibrated on real tiles, and the real and candidate pass rates of every
check are recorded."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

import test_augment
from earthsynth.augment.filter import BOUNDS, CHECKS
from earthsynth.augment.layouts import (
    CountQuota,
    LayoutSampler,
    count_bins,
    count_targets,
    load_layouts,
    objects_histogram,
)
from earthsynth.augment.report import load_manifest, load_run, record_boxes
from earthsynth.boxes import Boxes
from earthsynth.jobs import augment as job
from earthsynth.jobs.augment import RealTile, run_augment

models = test_augment.models  # the tiny random aerogen, detector and classifier folders (a module fixture)


def written_counts(out, fmt: str) -> tuple[int, int]:
    """(images, labels) of a dataset written in `fmt`, counted from its files."""
    if fmt == "coco":
        coco = COCO(str(out / "coco" / "annotations" / "instances_train.json"))
        return len(coco.getImgIds()), len(coco.getAnnIds())
    assert fmt == "yolo"
    images = list((out / "yolo" / "images").rglob("*.png"))
    labels = sum(len(path.read_text().splitlines()) for path in (out / "yolo" / "labels").rglob("*.txt"))
    return len(images), labels


def test_manifest_run_report_and_datasets_agree_on_what_was_accepted(models, tmp_path):
    """The first batch of 3 passes (filter off) where 2 are wanted: the third passed, but is not
    in the datasets, so nowhere is it called accepted (the manifest and the report said 3)."""
    out = tmp_path / "out"
    config = test_augment.config(models, num_images=2, max_candidates=6, batch_size=3)
    summary = run_augment(out, config, show_progress=False)
    records = load_manifest(out / "manifest.jsonl")
    run = load_run(out / "run.json")
    accepted = [r for r in records if r["accepted"]]
    objects = sum(len(r["layout"]["labels"]) for r in accepted)
    assert len(records) == 3 and all(r["passed"] for r in records)
    assert len(accepted) == 2 == summary["accepted"] == run["accepted"] and run["passed"] == 3
    assert records[2]["reasons"][-1] == "not needed: the set holds its 2 images"  # after the filter's own
    for fmt in ("coco", "yolo"):
        assert written_counts(out, fmt) == (2, objects), fmt
    assert run["pass_rates"]["candidates"]["accepted"] == [2, 3] and run["pass_rates"]["candidates"]["passed"] == [3, 3]
    histogram = run["synthetic"]["objects_histogram"]
    assert sum(histogram) == 2 and sum(k * n for k, n in enumerate(histogram)) == objects
    assert run["synthetic"]["objects_per_image"] == pytest.approx(objects / 2)
    page = (out / "report.html").read_text()
    for row in (["candidates", 3], ["passed the filter", 3], ["accepted", 2], ["rejected", 1]):
        assert f"<td>{row[0]}</td><td>{row[1]}</td>" in page, row

    # the bundled tiles: thresholds calibrated on SOAP_061 (detector, classifier) and on the
    # training tiles above the in-domain test area (quality, duplicates), every one recorded
    calibration = run["calibration"]
    assert calibration["real_pass_share"] == 0.9 and calibration["calibrated"] == sorted(BOUNDS)
    assert all(isinstance(run["thresholds"][name], float) for name in BOUNDS)
    for check in CHECKS:
        where = calibration["tiles"][check]
        assert where.startswith("SOAP_061" if check in ("layout", "semantic") else "the training images above"), where
        passed, judged = run["pass_rates"]["real"][check]
        assert 0 < judged <= job.CALIBRATION_TILES and 0 <= passed <= judged
    assert "OSBS" not in json.dumps(calibration)
    assert "SOAP_061" in page and "real tiles passing" in page


class FavoursEmptyLayouts:
    """A filter that passes every empty layout but only every second one with objects (by
    candidate index), as the real detector does in spirit: empty layouts pass far more often."""

    def __init__(self):
        self.config = None

    def add_reference(self, key, pixels):
        pass

    def __call__(self, images, layouts, keys, own=None):
        verdicts = []
        for boxes, key in zip(layouts, keys):
            passed = len(boxes) == 0 or int(key.removeprefix("synth_")) % 2 == 0
            verdicts.append({"passed": passed, "reasons": [] if passed else ["layout: scripted"],
                             "checks": {check: passed or check != "layout" for check in CHECKS},
                             "scores": {"objects": len(boxes)}})
        return verdicts


def scripted_filter(config, detector, classifier, tiles, size, class_map, demo):
    real = {check: {"tiles": "scripted", "passed": 9, "judged": 10} for check in CHECKS}
    return FavoursEmptyLayouts(), {"thresholds": {}, "calibrated": [], "real_pass_share": 0.9, "real": real}


def mixed_counts_dataset(root):
    """A COCO dataset of 16 px images (one tile each for the tiny 16 px model) holding 0 to 3 small boxes."""
    from earthsynth.data.export import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter(root, "coco", ["Tree"]) as writer:
        for k, count in enumerate([0, 0, 0, 1, 1, 2, 2, 3]):
            corners = [[1 + 5 * j, 1 + 5 * j, 5 + 5 * j, 5 + 5 * j] for j in range(count)]
            writer.add("train", f"img{k}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                       Boxes.from_xyxy(np.reshape(corners, (-1, 4)), ["Tree"] * count))
    return root


def test_the_accepted_set_keeps_the_layouts_objects_per_image(models, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "calibrated_filter", scripted_filter)
    data = mixed_counts_dataset(tmp_path / "data")
    out = tmp_path / "out"
    config = test_augment.config(models, num_images=6, max_candidates=40, batch_size=8, resample=1)
    config.filter.enabled = True
    summary = run_augment(out, config, data=str(data), fmt="coco", show_progress=False)
    quota = CountQuota.matching(objects_histogram(load_layouts(out / "layouts.jsonl")), 6)
    assert quota.starts[:3] == [0, 1, 2] and quota.targets[0] < 6  # a mix of counts to keep

    records = load_manifest(out / "manifest.jsonl")
    accepted = [r for r in records if r["accepted"]]
    passed = [r for r in records if r["passed"]]
    for record in accepted:
        assert quota.take(len(record["layout"]["labels"]))
    assert quota.full()  # as many images with each number of objects as the layouts make
    assert summary["synthetic"]["objects_histogram"] == objects_histogram([record_boxes(r) for r in accepted])
    assert summary["real"]["objects_histogram"] == [3, 2, 2, 1]
    # taken as they passed, the set would hold more empty images
    assert np.mean([not r["layout"]["labels"] for r in passed]) > quota.targets[0] / 6
    for record in passed:
        if not record["accepted"]:
            assert record["reasons"] == [quota.why_not(len(record["layout"]["labels"]))]
    # once a number of objects was had, its candidates were not even made
    generated = {r["index"] for r in records}
    assert len(generated) < max(generated) + 1
    assert written_counts(out, "coco") == (6, sum(len(r["layout"]["labels"]) for r in accepted))
    run = load_run(out / "run.json")
    assert run["pass_rates"]["real"]["layout"] == [9, 10]
    page = (out / "report.html").read_text()
    mean = run["synthetic"]["objects_per_image"]
    assert "<h2>Objects per image</h2>" in page and f"<td>mean</td><td>1.12</td><td>{mean:.2f}</td>" in page


def test_count_bins_targets_and_quota():
    trees = [134, 89, 90, 51, 29, 30, 11, 10, 2, 3, 1]  # the bundled training tiles
    assert count_bins(trees) == [0, 1, 2, 3, 4, 5, 6]  # 6 to 10 objects together
    dense = [1] * 100  # 0 to 99 cars, as many images with each
    assert count_bins(dense) == list(range(0, 100, 5))  # 20 bins of 5% each
    assert count_bins([5]) == [0] and count_bins([0, 0, 4]) == [0]  # one bin: all counts
    assert count_targets([134, 89, 90, 51, 29, 30, 27], 32) == [10, 6, 6, 4, 2, 2, 2]
    assert count_targets([1, 1, 1], 2) == [1, 1, 0]  # equal remainders: the earlier bin
    assert count_targets([0, 0], 3) == [3, 0]  # nothing to scale: all in the first bin
    for n in (1, 7, 64):
        assert sum(count_targets([5, 3, 0, 2], n)) == n

    quota = CountQuota.matching(trees, 32)
    assert quota.starts == [0, 1, 2, 3, 4, 5, 6] and quota.targets == [10, 6, 6, 4, 2, 2, 2] and quota.wanted == 32
    assert [quota.take(k) for k in (4, 4, 4, 9, 7, 30, 5)] == [True, True, False, True, True, False, True]
    assert not quota.wants(6) and quota.wants(5) and quota.wants(0) and quota.total == 5 and not quota.full()
    assert quota.why_not(4) == "not needed: the set holds its 2 images with 4 objects"
    assert quota.why_not(12) == "not needed: the set holds its 2 images with 6 or more objects"
    dense_quota = CountQuota.matching(dense, 40)
    assert dense_quota.targets == [2] * 20 and dense_quota.why_not(7) == "not needed: the set holds its 2 images with 5-9 objects"
    halves = CountQuota.matching(trees, 32, share=2)  # two processes: each half, rounded up
    assert halves.targets == [5, 3, 3, 2, 1, 1, 1]
    first = CountQuota.first(2)
    assert [first.take(k) for k in (5, 0, 1)] == [True, True, False] and first.full()
    assert first.why_not(1) == "not needed: the set holds its 2 images"


def test_the_sampler_draws_the_real_objects_per_image():
    """Counted over 2000 drawn layouts, the objects-per-image distribution is the real tiles'
    (what the accepted set is held to): within 0.1 objects on average and 5% in total variation."""
    tiles = job.demo_tiles(64)
    records = [(t.image_id, 64, 64, t.boxes) for t in tiles]
    layouts = LayoutSampler.fit(records).sample(2000, np.random.default_rng(0), 64, 64)
    real, drawn = (np.asarray(objects_histogram(x), dtype=float) for x in (records, layouts))
    size = max(len(real), len(drawn))
    real, drawn = (np.pad(h / h.sum(), (0, size - len(h))) for h in (real, drawn))
    assert abs((real - drawn) @ np.arange(size)) < 0.1
    assert np.abs(real - drawn).sum() / 2 < 0.05


def test_a_users_tiles_are_their_own_calibration_set():
    rng = np.random.default_rng(0)
    tiles = [RealTile(f"img_x{k}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                      Boxes.from_xyxy([[2, 2, 9, 9]], ["Tree"]), "d", None, "") for k in range(300)]
    model_tiles, image_tiles, where = job.calibration_tiles(tiles, 16, demo=False)
    assert len(model_tiles) == len(image_tiles) == job.CALIBRATION_TILES  # a seeded share of many
    assert set(where.values()) == {f"the input's tiles ({job.CALIBRATION_TILES} of 300)"}
    keys = [key for key, _ in image_tiles]
    assert len(set(keys)) == len(keys) and all(key.startswith("real:img_x") for key in keys)
    assert job.calibration_tiles(tiles, 16, demo=False)[1][0][0] == keys[0]  # the same choice every run
    few = job.calibration_tiles(tiles[:5], 16, demo=False)
    assert [key for key, _ in few[1]] == [f"real:img_x{k}" for k in range(5)]

"""The layout sampler: fitted statistics, sampled and augmented layouts, rebalancing, files."""

import json

import numpy as np
import pytest

from earthsynth.augment.layouts import (
    LayoutRecord,
    LayoutSampler,
    layout_statistics,
    load_layouts,
    pairwise_overlaps,
    real_layout_records,
    save_layouts,
)
from earthsynth.boxes import Boxes
from earthsynth.errors import InputError
from tests_support import assert_input_error

CAR_ANGLES = (-30.0, 0.0, 45.0)  # the orientations of the rotated synthetic cars


def synthetic_records(rotated: bool, images: int = 60, seed: int = 0):
    """128 px images on a 4x4 grid of 32 px cells: 3-8 small "car"s each, and one large
    "plane" in about one image in ten (the rare class)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(images):
        n_cars = int(rng.integers(3, 9))
        has_plane = rng.random() < 0.1
        cells = rng.permutation(16)[: n_cars + has_plane]
        rows, labels = [], []
        for k, cell in enumerate(cells):
            cx, cy = (cell % 4) * 32 + 16 + rng.uniform(-3, 3), (cell // 4) * 32 + 16 + rng.uniform(-3, 3)
            if k < n_cars:
                angle = float(rng.choice(CAR_ANGLES)) + rng.normal(0, 1.0) if rotated else 0.0
                rows.append([cx, cy, rng.uniform(9, 12), rng.uniform(4, 6), angle])
                labels.append("car")
            else:
                rows.append([cx, cy, rng.uniform(20, 24), rng.uniform(20, 24), 0.0])
                labels.append("plane")
        records.append((f"img{i}", 128, 128, Boxes(np.array(rows).reshape(-1, 5), labels, rotated=rotated)))
    return records


def all_inside(layout: LayoutRecord) -> bool:
    corners = layout.boxes.corners()
    return bool(np.all((corners >= -1e-6) & (corners <= np.array([layout.width, layout.height]) + 1e-6)))


@pytest.fixture(scope="module")
def horizontal():
    records = synthetic_records(rotated=False)
    return records, LayoutSampler.fit(records)


@pytest.fixture(scope="module")
def rotated():
    records = synthetic_records(rotated=True)
    return records, LayoutSampler.fit(records)


@pytest.fixture(scope="module")
def deepforest():
    from earthsynth.data.tiles import RealTiles

    records = real_layout_records(RealTiles("train", tile_size=64, gsd_factors=(2,)))
    return records, LayoutSampler.fit(records)


def test_fit_statistics(horizontal, rotated):
    records, sampler = horizontal
    assert sampler.classes == ["car", "plane"] and not sampler.rotated
    cars = sum(b.class_counts().get("car", 0) for *_, b in records)
    planes = [b.class_counts().get("plane", 0) for *_, b in records]
    assert sampler.stats["car"].objects == cars
    assert sampler.stats["plane"].count_hist == np.bincount(planes).tolist()  # zeros included
    assert sum(sampler.objects_per_image) == len(records)
    assert sampler.cooccurrence[0, 1] == sum(planes)  # every plane image also has cars
    assert sampler.stats["car"].density.sum() == cars
    assert not np.any(sampler.stats["car"].angles)
    assert rotated[1].rotated  # detected from the data
    assert not LayoutSampler.fit(rotated[0], rotated=False).rotated
    table = sampler.describe()
    assert "car" in table and "plane" in table and "horizontal" in table


@pytest.mark.parametrize("which", ["horizontal", "rotated"])
def test_boxes_inside_and_apart(which, request):
    _, sampler = request.getfixturevalue(which)
    layouts = sampler.sample(80, np.random.default_rng(1), 128, 128, max_overlap=0.2, max_objects=6)
    assert len(layouts) == 80
    assert sum(layout.origin == "sampled" for layout in layouts) == 40
    for layout in layouts:
        assert all_inside(layout), layout.origin
        assert len(layout.boxes) <= 6
        assert layout.boxes.rotated == sampler.rotated
        if layout.origin == "sampled":
            iou, cover = pairwise_overlaps(layout.boxes)
            assert cover.max(initial=0) <= 0.2 + 1e-6 and iou.max(initial=0) <= 0.2 + 1e-6
        else:
            assert layout.origin.startswith("augmented:img")


def test_rare_class_rebalanced(horizontal):
    records, sampler = horizontal
    real = layout_statistics(records)
    natural = layout_statistics(sampler.sample(100, np.random.default_rng(2), 128, 128))
    assert natural["classes"]["plane"]["objects"] < 25
    for fraction in (0.0, 0.5, 1.0):
        layouts = sampler.sample(100, np.random.default_rng(3), 128, 128, per_class={"plane": 150},
                                 augmented_fraction=fraction)
        stats = layout_statistics(layouts)
        assert 135 <= stats["classes"]["plane"]["objects"] <= 165, (fraction, stats)
        # the class not named keeps its natural frequency
        cars = stats["classes"]["car"]["objects_per_image"]
        assert cars == pytest.approx(real["classes"]["car"]["objects_per_image"], rel=0.3), fraction
    # removing a class entirely works too
    none = sampler.sample(30, np.random.default_rng(4), 128, 128, per_class={"car": 0})
    assert layout_statistics(none)["classes"].get("car") is None


def test_max_objects_is_a_hard_limit(horizontal):
    _, sampler = horizontal
    layouts = sampler.sample(20, np.random.default_rng(5), 128, 128, per_class={"car": 10_000}, max_objects=5)
    assert max(len(layout.boxes) for layout in layouts) == 5


def test_angle_distribution(rotated, horizontal):
    records, sampler = rotated
    layouts = sampler.sample(60, np.random.default_rng(6), 128, 128, augmented_fraction=0.0)
    angles = np.concatenate([layout.boxes.rboxes[[label == "car" for label in layout.boxes.labels], 4] for layout in layouts])
    assert len(angles) > 100
    # every sampled car angle is near one of the real modes, and every mode is used
    nearest = np.abs(angles[:, None] - np.array(CAR_ANGLES)[None]).argmin(axis=1)
    assert np.all(np.abs(angles - np.array(CAR_ANGLES)[nearest]) < 10)
    shares = np.bincount(nearest, minlength=3) / len(angles)
    assert np.all(np.abs(shares - 1 / 3) < 0.12), shares
    # horizontal data stays exactly horizontal, augmented layouts included
    flat = horizontal[1].sample(40, np.random.default_rng(6), 128, 128)
    assert not any(np.any(layout.boxes.rboxes[:, 4]) for layout in flat)


def test_augmented_layouts_are_moved_copies():
    """One real box near the top-left corner: augmented copies land near one of the eight
    flips / quarter turns of it, at the requested size, and all eight are used."""
    box = Boxes.from_xyxy([[30, 20, 70, 30]], ["ship"])  # 40 x 10 at centre (50, 25) of 200 x 100
    sampler = LayoutSampler.fit([("one", 200, 100, box)])
    layouts = sampler.sample(80, np.random.default_rng(7), 100, 100, augmented_fraction=1.0)
    seen = set()
    for layout in layouts:
        assert layout.origin.startswith("augmented:one:") and all_inside(layout)
        assert len(layout.boxes) == 1
        cx, cy, w, h, _ = layout.boxes.rboxes[0]
        # rescaled to 100 x 100 the box is 20 x 10 at (25, 25) (or 10 x 20 turned); the shift
        # of up to 10 % never pushes it over the edge
        assert sorted([w, h]) == pytest.approx([10, 20], rel=0.25)
        corner = (cx > 50, cy > 50, w > h)
        seen.add(corner)
    assert len(seen) == 8


def test_deepforest_layouts_match_real_statistics(deepforest):
    records, sampler = deepforest
    real = layout_statistics(records)
    assert real["images"] == 450 and real["objects"] == 877  # train tiles at 0.2 m/px
    layouts = sampler.sample(300, np.random.default_rng(8), 64, 64)
    synthetic = layout_statistics(layouts)
    assert synthetic["median_size"] == pytest.approx(real["median_size"], rel=0.25)
    assert synthetic["mean_objects_per_image"] == pytest.approx(real["mean_objects_per_image"], rel=0.25)
    sampled = [layout for layout in layouts if layout.origin == "sampled"]
    assert layout_statistics(sampled)["median_size"] == pytest.approx(real["median_size"], rel=0.25)
    for layout in layouts:
        assert all_inside(layout) and not layout.boxes.rotated
    # the same statistics at a larger size give proportionally larger boxes
    large = layout_statistics(sampler.sample(50, np.random.default_rng(8), 256, 256))
    assert large["median_size"] == pytest.approx(real["median_size"], rel=0.25)


def test_deterministic_by_seed(rotated):
    _, sampler = rotated
    a = sampler.sample(20, np.random.default_rng(9), 96, 128, per_class={"plane": 10})
    b = sampler.sample(20, np.random.default_rng(9), 96, 128, per_class={"plane": 10})
    c = sampler.sample(20, np.random.default_rng(10), 96, 128, per_class={"plane": 10})
    assert [x.origin for x in a] == [x.origin for x in b]
    assert all(np.array_equal(x.boxes.rboxes, y.boxes.rboxes) and x.boxes.labels == y.boxes.labels for x, y in zip(a, b))
    assert not all(np.array_equal(x.boxes.rboxes, y.boxes.rboxes) for x, y in zip(a, c))


def test_sampler_round_trip(rotated, tmp_path):
    _, sampler = rotated
    path = tmp_path / "sampler" / "layouts.json"
    sampler.save(path)
    loaded = LayoutSampler.load(path)
    assert loaded.to_dict() == sampler.to_dict()
    np.testing.assert_array_equal(loaded.stats["car"].angles, sampler.stats["car"].angles)
    a = sampler.sample(10, np.random.default_rng(11), 128, 128)
    b = loaded.sample(10, np.random.default_rng(11), 128, 128)
    assert all(np.array_equal(x.boxes.rboxes, y.boxes.rboxes) for x, y in zip(a, b))
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(InputError) as err:
        LayoutSampler.load(path)
    assert_input_error(err, path, "not a layout sampler")


def test_layouts_round_trip(rotated, tmp_path):
    _, sampler = rotated
    layouts = sampler.sample(12, np.random.default_rng(12), 128, 128)
    layouts.append(LayoutRecord(64, 32, Boxes(), "real:empty"))
    path = tmp_path / "layouts.jsonl"
    save_layouts(path, layouts)
    assert len(path.read_text().splitlines()) == 13
    back = load_layouts(path)
    assert [(x.width, x.height, x.origin) for x in back] == [(x.width, x.height, x.origin) for x in layouts]
    for x, y in zip(back, layouts):
        np.testing.assert_array_equal(x.boxes.rboxes, y.boxes.rboxes)
        assert x.boxes.labels == y.boxes.labels and x.boxes.rotated == y.boxes.rotated


def test_unknown_class_is_an_input_error(horizontal):
    _, sampler = horizontal
    with pytest.raises(InputError) as err:
        sampler.sample(5, np.random.default_rng(0), 128, 128, per_class={"ship": 3})
    message = str(err.value)
    assert "'ship'" in message and "car" in message and "plane" in message


def test_malformed_layout_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"width": 64, "height": 64, "rboxes": [[10, 10, 4, 4, 0]], "labels": ["Tree"], "origin": "sampled"})
    cases = {
        "{not json": "line 2",
        json.dumps({"width": 64, "height": 64, "rboxes": [[10, 10, 4]], "labels": ["Tree"]}): "rboxes",
        json.dumps({"width": 64, "height": 64, "rboxes": [[10, 10, 4, 4, 0]], "labels": []}): "labels",
        json.dumps({"width": 64, "rboxes": [], "labels": []}): "missing height",
        json.dumps({"width": 64, "height": 64, "rboxes": [[100, 10, 4, 4, 0]], "labels": ["Tree"]}): "outside",
    }
    for bad, words in cases.items():
        path.write_text(good + "\n" + bad + "\n" + good + "\n")
        with pytest.raises(InputError) as err:
            load_layouts(path)
        assert_input_error(err, path, "line 2", words)

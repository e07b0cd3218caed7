"""Image-quality checks of generated images: broken, blown-out, blank and noise-like images
are flagged, real tiles pass, both image layouts agree, and near-duplicates are found."""

import numpy as np
import pytest
import torch

from earthsynth.augment.quality import (
    DuplicateIndex,
    QualityThresholds,
    edge_energy,
    image_quality,
    quality_reasons,
    signature,
    to_float_chw,
)
from earthsynth.data.tiles import RealTiles


@pytest.fixture(scope="module")
def tiles():
    """(H, W, 3) uint8 pixels of real 64 px deepforest tiles at 0.2 m/px."""
    return [t.pixels for t in RealTiles("train", tile_size=64, gsd_factors=(2,)).tiles[:30]]


def as_float(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return pixels.transpose(2, 0, 1)[None].astype(np.float64) / 255.0


def reasons_of(images) -> list[str]:
    return quality_reasons(image_quality(images)[0])


def test_real_tiles_pass(tiles):
    for pixels in tiles:
        assert reasons_of(pixels[None]) == []
    scores = image_quality(tiles[0][None])[0]
    assert scores["finite"] and scores["saturated_fraction"] < 0.01
    assert scores["std"] > 0.05 and 0.02 < scores["edge_energy"] < 0.1


def test_nan_image_is_flagged_and_still_scored(tiles):
    image = as_float(tiles[0])
    image[0, :, 10, 20] = np.nan
    scores = image_quality(image)[0]
    assert not scores["finite"]
    assert all(np.isfinite(scores[k]) for k in ("saturated_fraction", "std", "edge_energy"))
    reasons = quality_reasons(scores)
    assert len(reasons) == 1 and "NaN" in reasons[0]
    image[0, 1, 3, 3] = np.inf
    assert not image_quality(torch.from_numpy(image))[0]["finite"]


def test_saturated_image_is_flagged(tiles):
    white = np.ones((1, 3, 64, 64))
    scores = image_quality(white)[0]
    assert scores["saturated_fraction"] == 1.0
    assert any("clipped" in r for r in quality_reasons(scores))
    # fully clipped colours count too, a real tile does not: half pure red is over the limit
    image = as_float(tiles[1])
    image[0, :, :32] = np.array([1.0, 0.0, 0.0])[:, None, None]
    scores = image_quality(image)[0]
    assert scores["saturated_fraction"] == pytest.approx(0.5)
    assert [r for r in quality_reasons(scores) if "clipped" in r]
    # a bright pixel that is not clipped in every channel is not saturated
    image = as_float(tiles[1])
    image[0, :2] = 1.0
    assert image_quality(image)[0]["saturated_fraction"] == 0.0


def test_blank_image_is_flagged():
    blank = np.full((1, 3, 64, 64), 0.4)
    scores = image_quality(blank)[0]
    assert scores["std"] == pytest.approx(0.0) and scores["edge_energy"] == pytest.approx(0.0)
    assert scores["saturated_fraction"] == 0.0
    reasons = quality_reasons(scores)
    assert any(r.startswith("flat image") for r in reasons)
    assert any(r.startswith("no detail") for r in reasons)


def test_noise_is_flagged():
    rng = np.random.default_rng(0)
    colour = rng.uniform(0, 1, (1, 3, 64, 64))  # independent channels: must not average away
    grey = rng.uniform(0, 1, (1, 1, 64, 64)).repeat(3, axis=1)
    gaussian = np.clip(rng.normal(0.5, 0.5, (1, 3, 64, 64)), 0, 1)
    for noise in (colour, grey, gaussian):
        assert any(r.startswith("noise-like") for r in reasons_of(noise))


def test_thresholds_can_be_changed(tiles):
    scores = image_quality(tiles[0][None])[0]
    strict = QualityThresholds(min_std=scores["std"] + 0.01)
    assert [r for r in quality_reasons(scores, strict) if r.startswith("flat image")]
    with_duplicate = {**scores, "duplicate_of": "real/0", "duplicate_similarity": 0.97}
    reasons = quality_reasons(with_duplicate)
    assert len(reasons) == 1 and "real/0" in reasons[0]
    assert quality_reasons(with_duplicate, QualityThresholds(duplicate_similarity=0.99)) == []


def test_edge_energy_of_a_ramp_is_its_slope():
    ramp = np.tile(np.arange(64) * 0.01, (64, 1))
    assert edge_energy(ramp) == pytest.approx(0.01, rel=0.03)  # the replicated border halves one column
    assert edge_energy(ramp.T) == pytest.approx(edge_energy(ramp))


def test_uint8_hwc_and_float_chw_agree(tiles):
    pixels = np.stack(tiles[:3])
    floats = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    from_uint8 = image_quality(pixels)
    for other in (floats, torch.from_numpy(floats), torch.from_numpy(pixels)):  # a uint8 tensor is HWC too
        for a, b in zip(from_uint8, image_quality(other)):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    np.testing.assert_allclose(signature(pixels[0]), signature(floats[0]), atol=1e-6)


@pytest.mark.parametrize("shape, dtype", [
    ((1, 3, 64, 64), np.uint8),  # uint8 must be channels last
    ((1, 64, 64, 3), np.float32),  # float must be channels first
    ((3, 64, 64), np.float32),  # no batch axis
    ((1, 4, 64, 64), np.float32),  # not RGB
    ((64, 64, 3), np.uint8),
])
def test_bad_shapes_raise_value_error(shape, dtype):
    with pytest.raises(ValueError):
        to_float_chw(np.zeros(shape, dtype))
    with pytest.raises(ValueError):
        image_quality(np.zeros(shape, dtype))


def test_duplicate_index_finds_copies_but_not_other_tiles(tiles):
    index = DuplicateIndex()
    assert index.nearest(tiles[0]) == (None, -1.0)
    assert not index.is_duplicate(tiles[0])[0]
    index.add("real/0", tiles[0])
    index.add("real/5", tiles[5])
    assert len(index) == 2 and index.keys == ["real/0", "real/5"]

    duplicate, key, similarity = index.is_duplicate(tiles[0].copy())
    assert duplicate and key == "real/0" and similarity == pytest.approx(1.0)
    # noise and a brightness shift, as a float image: still the same picture
    rng = np.random.default_rng(0)
    changed = np.clip(as_float(tiles[0])[0] + rng.normal(0, 0.03, (3, 64, 64)) + 0.06, 0, 1)
    duplicate, key, similarity = index.is_duplicate(torch.from_numpy(changed))
    assert duplicate and key == "real/0" and similarity > 0.97
    # shifted by one pixel
    assert index.is_duplicate(np.roll(tiles[0], 1, axis=1))[:2] == (True, "real/0")
    # other real windows of the same forest are not copies
    for pixels in tiles[1:5] + tiles[6:]:
        duplicate, _, similarity = index.is_duplicate(pixels)
        assert not duplicate and similarity < 0.9

    # a flat image has no pattern: similar to nothing, not even to another flat image
    index.add("flat", np.full((64, 64, 3), 120, np.uint8))
    assert not np.any(signature(np.full((64, 64, 3), 90, np.uint8)))
    assert not index.is_duplicate(np.full((64, 64, 3), 90, np.uint8))[0]


def test_duplicate_threshold_is_configurable(tiles):
    index = DuplicateIndex(threshold=0.5)
    index.add("a", tiles[0])
    _, _, similarity = index.is_duplicate(tiles[1])
    assert index.is_duplicate(tiles[1])[0] == (similarity >= 0.5)
    assert DuplicateIndex().threshold == QualityThresholds().duplicate_similarity

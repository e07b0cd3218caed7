"""Copy-paste, evaluate's baseline: crowns land in their boxes, nothing lands outside a box,
no box hides another, the same seed gives the same images."""

import numpy as np
import pytest

from earthsynth.augment.copy_paste import copy_paste_images, crown_alpha, cut_crowns, paste_crowns
from earthsynth.boxes import Boxes


def crown_tiles() -> list[tuple[np.ndarray, Boxes]]:
    """Two black 48 px tiles, each with white crowns in its boxes (one cut by the tile edge)."""
    tiles = []
    for boxes in ([[6, 8, 18, 16], [30, 30, 38, 44], [40, 0, 48, 10]], [[10, 20, 22, 30]]):
        pixels = np.zeros((48, 48, 3), np.uint8)
        for x0, y0, x1, y1 in boxes:
            pixels[y0:y1, x0:x1] = 255
        tiles.append((pixels, Boxes.from_xyxy(np.array(boxes, np.float64), ["Tree"] * len(boxes))))
    return tiles


def test_pasted_boxes_hold_their_crowns_and_nothing_lands_outside_a_box():
    tiles = crown_tiles()
    crowns = cut_crowns(tiles)
    assert len(crowns) == 3  # the crown cut by the tile edge is not copied
    rng = np.random.default_rng(0)
    pasted = 0
    for background, own in tiles * 3:
        pixels, boxes = paste_crowns(background, own, crowns, 4, rng, max_cover=0.3)
        xyxy = boxes.xyxy()
        assert np.array_equal(xyxy[:len(own)], own.xyxy()) and set(boxes.labels) == {"Tree"}
        inside_a_box = np.zeros(pixels.shape[:2], bool)
        for x0, y0, x1, y1 in xyxy.astype(int):
            inside_a_box[y0:y1, x0:x1] = True
        assert not pixels[~inside_a_box].any()  # every bright pixel lies in a box
        for i in range(len(own), len(xyxy)):
            pasted += 1
            x0, y0, x1, y1 = xyxy[i].astype(int)
            crown = pixels[y0:y1, x0:x1].max(axis=2) > 0
            # the crown spans its box: bright pixels reach each side, and its centre is white
            assert crown.any(axis=0)[[0, -1]].all() and crown.any(axis=1)[[0, -1]].all()
            assert (pixels[(y0 + y1) // 2, (x0 + x1) // 2] == 255).all()
            for j in range(i):  # it hides at most 30 % of any box placed before it
                a, b = xyxy[i], xyxy[j]
                overlap = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
                assert overlap <= 0.3 * (b[2] - b[0]) * (b[3] - b[1])
    assert pasted >= 12


def test_same_seed_same_images_other_seed_other_images():
    tiles = crown_tiles()
    first, again, other = (copy_paste_images(tiles, 4, seed) for seed in (5, 5, 6))
    for (a, boxes_a), (b, boxes_b) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(boxes_a.xyxy(), boxes_b.xyxy())
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))


def test_the_crown_mask_is_an_ellipse_touching_its_box():
    alpha = crown_alpha(7, 10)
    assert alpha[3, 0] > 0.5 and alpha[3, -1] > 0.5 and alpha[0, 4] > 0.5 and alpha[-1, 5] > 0.5
    assert alpha[0, 0] == alpha[-1, -1] == 0.0 and alpha[3, 5] == 1.0


def test_tiles_without_a_whole_crown_are_refused():
    pixels = np.zeros((16, 16, 3), np.uint8)
    edge = Boxes.from_xyxy(np.array([[0.0, 0.0, 8.0, 8.0]]), ["Tree"])
    with pytest.raises(ValueError, match="whole crown"):
        copy_paste_images([(pixels, edge)], 2, 0)

import numpy as np
import pytest

from earthsynth.boxes import (
    Boxes,
    HBox,
    RBox,
    corners_to_rbox,
    normalize_angle,
    rbox_to_corners,
    xyxy_to_rbox,
)
from earthsynth.errors import InputError


@pytest.mark.parametrize("angle", [-89.0, -45.0, -10.0, 0.0, 30.0, 60.0, 89.0])
def test_rbox_corners_round_trip(angle):
    rbox = np.array([[40.0, 30.0, 24.0, 10.0, angle]])
    back = corners_to_rbox(rbox_to_corners(rbox))
    np.testing.assert_allclose(back[0, :4], rbox[0, :4], atol=1e-3)
    assert abs(normalize_angle(back[0, 4] - angle)) < 1e-3


def test_corner_order_is_clockwise_from_top_left():
    corners = rbox_to_corners(xyxy_to_rbox([[10, 20, 30, 60]]))[0]
    np.testing.assert_allclose(corners, [[10, 20], [30, 20], [30, 60], [10, 60]])
    # positive angle turns clockwise on screen (y down): the top-right corner moves down
    turned = rbox_to_corners(np.array([[20, 40, 20, 40, 10.0]]))[0]
    assert turned[1, 1] > 20


def test_from_list_and_xyxy():
    boxes = Boxes.from_list([HBox(0, 0, 10, 20, "a"), RBox(50, 50, 10, 10, 45, "b")])
    assert boxes.rotated and boxes.labels == ["a", "b"]
    np.testing.assert_allclose(boxes.xyxy()[0], [0, 0, 10, 20])
    half_diag = 10 * np.sqrt(2) / 2
    np.testing.assert_allclose(boxes.xyxy()[1], [50 - half_diag, 50 - half_diag, 50 + half_diag, 50 + half_diag])


def test_clip_horizontal_keeps_by_visible_fraction():
    boxes = Boxes.from_xyxy([[0, 0, 10, 10], [95, 0, 105, 10], [98, 0, 108, 10]], ["a", "b", "c"])
    clipped, index = boxes.clip(0, 0, 100, 100, min_visible=0.4)
    # b keeps 50 % (kept and cut), c keeps 20 % (dropped)
    assert index.tolist() == [0, 1]
    np.testing.assert_allclose(clipped.xyxy()[1], [95, 0, 100, 10])
    # the window moves the boxes into its own coordinates
    moved, _ = boxes.clip(50, 0, 150, 100, min_visible=0.4)
    np.testing.assert_allclose(moved.xyxy(), [[45, 0, 55, 10], [48, 0, 58, 10]])


def test_clip_rotated_keeps_angle():
    boxes = Boxes(np.array([[100.0, 50.0, 40.0, 10.0, 30.0]]), ["r"], rotated=True)
    clipped, index = boxes.clip(0, 0, 100, 100, min_visible=0.3)
    assert index.tolist() == [0]
    assert clipped.rboxes[0, 4] == pytest.approx(30.0)
    assert clipped.areas()[0] < boxes.areas()[0]
    # the clipped box stays inside the window, up to the corner of its own orientation
    assert clipped.xyxy()[0, 2] <= 100 + 10 * np.sin(np.deg2rad(30)) + 1e-6


def test_masks_count_pixel_centres():
    boxes = Boxes(np.array([[10.0, 10.0, 6.0, 4.0, 0.0], [50.0, 50.0, 20.0, 20.0, 45.0]]), ["a", "b"], rotated=True)
    masks = boxes.masks(100, 100)
    assert masks[0].sum() == 24
    assert abs(int(masks[1].sum()) - 400) <= 25  # a 45-degree square: within its rasterised border


def test_flips_are_involutions():
    boxes = Boxes(np.array([[10.0, 20.0, 6.0, 4.0, 25.0]]), ["a"], rotated=True)
    np.testing.assert_allclose(boxes.hflip(64).hflip(64).rboxes, boxes.rboxes)
    flipped = boxes.hflip(64).corners()[0]
    np.testing.assert_allclose(sorted(flipped[:, 0]), sorted(64 - boxes.corners()[0][:, 0]), atol=1e-9)


def test_validate_names_source_and_problem():
    boxes = Boxes.from_xyxy([[5, 5, 20, 20], [90, 90, 130, 120]], ["a", "b"])
    with pytest.raises(InputError) as err:
        boxes.validate(100, 100, source="scene.xml")
    message = str(err.value)
    assert message.startswith("scene.xml: box 1 (b): box at") and "outside" in message and "\n" not in message
    with pytest.raises(InputError, match="zero or negative size"):
        Boxes.from_xyxy([[5, 5, 5, 20]], ["a"]).validate(100, 100, source="x")
    Boxes.from_xyxy([[0, 0, 100.5, 100]], ["a"]).validate(100, 100, source="x")  # within tolerance

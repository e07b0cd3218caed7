"""The one random-flip helper: images, stacked maps and boxes move together."""

import numpy as np
import pytest
import torch

from earthsynth.boxes import Boxes
from earthsynth.data.flips import random_flips


def box_image(boxes: Boxes, size: int) -> torch.Tensor:
    """A (1, size, size) image that is 1 inside the boxes' axis-aligned extent."""
    image = torch.zeros(1, size, size)
    for x0, y0, x1, y1 in boxes.xyxy().round().astype(int):
        image[0, y0:y1, x0:x1] = 1
    return image


@pytest.mark.parametrize("transpose", [False, True])
def test_boxes_follow_their_image(transpose):
    torch.manual_seed(0)
    size = 32
    boxes = [Boxes.from_xyxy(np.array([[2.0, 3.0, 10.0, 20.0], [15.0, 1.0, 30.0, 6.0]]), ["a", "b"])
             for _ in range(16)]
    images = torch.stack([box_image(b, size) for b in boxes])
    flipped, moved = random_flips(images, boxes, transpose=transpose)
    views = set()
    for image, b in zip(flipped, moved):
        torch.testing.assert_close(image, box_image(b, size))
        assert b.labels == ["a", "b"]
        views.add(tuple(image.flatten().nonzero()[:3, 0].tolist()))
    assert len(views) >= (5 if transpose else 3)  # several of the 8 (or 4) views were drawn


def test_maps_stacked_on_channels_move_with_the_image():
    torch.manual_seed(1)
    image = torch.rand(8, 3, 16, 16)
    stacked = torch.cat([image, image[:, :1]], dim=1)  # a "map" equal to the first band
    flipped = random_flips(stacked)
    torch.testing.assert_close(flipped[:, 3], flipped[:, 0])


def test_transpose_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        random_flips(torch.zeros(2, 3, 8, 16), transpose=True)

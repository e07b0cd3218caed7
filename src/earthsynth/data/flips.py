"""Random right-angle flips for training, the one helper every family uses: an image, the
control maps stacked on its channels and its boxes move together."""

from __future__ import annotations

import torch

from earthsynth.boxes import Boxes


def random_flips(images: torch.Tensor, boxes: list[Boxes] | None = None,
                 transpose: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[Boxes]]:
    """Each (C, H, W) image of the batch flipped left-right and/or up-down with probability
    1/2 (nadir views have no up); with `transpose` (square images only) also mirrored on its
    diagonal, so all 8 right-angle views occur. `boxes`, one Boxes per image, follow their
    image; with them, (images, boxes) is returned. Drawn from torch's global RNG, so a
    resumed run draws the same flips."""
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    if transpose and height != width:
        raise ValueError(f"transposing needs square images, got {height}x{width}")
    if boxes is not None and len(boxes) != batch:
        raise ValueError(f"{len(boxes)} box lists for {batch} images")
    draws = (torch.rand(batch, 3) < 0.5).tolist()
    out_images, out_boxes = [], []
    for i, (do_transpose, do_hflip, do_vflip) in enumerate(draws):
        image = images[i]
        image_boxes = boxes[i] if boxes is not None else None
        if transpose and do_transpose:
            image = image.transpose(-1, -2)
            image_boxes = image_boxes.transpose() if image_boxes is not None else None
        if do_hflip:
            image = image.flip(-1)
            image_boxes = image_boxes.hflip(width) if image_boxes is not None else None
        if do_vflip:
            image = image.flip(-2)
            image_boxes = image_boxes.vflip(height) if image_boxes is not None else None
        out_images.append(image)
        out_boxes.append(image_boxes)
    flipped = torch.stack(out_images)
    return flipped if boxes is None else (flipped, out_boxes)

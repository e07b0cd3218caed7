"""Copy-paste augmentation: the cheap baseline that synthetic data has to beat.

Real crowns are cut by their boxes from real training tiles and pasted, with their boxes, at
random places on other real training tiles (after Ghiasi et al. 2021, "Simple Copy-Paste is
a Strong Data Augmentation Method"). A crown is its box's pixels seen through an ellipse
inscribed in the box (crowns are round; the box's corners would carry the donor's ground),
turned by a random multiple of 90 degrees and mirrored. A place is refused where the crown
would hide more than `max_cover` of a box already there, so every box stays a visible object.
Everything is drawn from one numpy generator seeded by `seed`: the same tiles and seed give
the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earthsynth.boxes import Boxes

MIN_CROWN_SIDE = 4  # pixels; smaller boxes are not worth a paste
PLACES_TRIED = 20  # random places tried per crown before it is left out


def crown_alpha(height: int, width: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: an ellipse inscribed in the box, 1 inside, falling to
    0 over about a pixel at its edge (0.5 on the ellipse) so the paste leaves no hard seam."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = np.hypot((x - (width - 1) / 2) / (width / 2), (y - (height - 1) / 2) / (height / 2))
    return ((1 - radius) * min(width, height) / 2 + 0.5).clip(0, 1)


def cut_crowns(tiles: Sequence[tuple[np.ndarray, Boxes]]) -> list[tuple[np.ndarray, str]]:
    """(pixels, label) of every box of `tiles` ((H, W, 3) uint8 pixels and their Boxes) that
    lies wholly inside its tile, at least MIN_CROWN_SIDE pixels a side; crowns that a tile
    edge cuts are left out, they are not whole."""
    crowns = []
    for pixels, boxes in tiles:
        height, width = pixels.shape[:2]
        for (x0, y0, x1, y1), label in zip(np.round(boxes.xyxy()).astype(int), boxes.labels):
            inside = x0 > 0 and y0 > 0 and x1 < width and y1 < height
            if inside and min(x1 - x0, y1 - y0) >= MIN_CROWN_SIDE:
                crowns.append((pixels[y0:y1, x0:x1].copy(), label))
    return crowns


def covers_too_much(box: np.ndarray, others: np.ndarray, max_cover: float) -> bool:
    """Whether `box` (x0, y0, x1, y1) hides more than `max_cover` of any of `others` (N, 4)."""
    if not len(others):
        return False
    width = (np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])).clip(0)
    height = (np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])).clip(0)
    areas = ((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])).clip(1e-9)
    return bool((width * height / areas > max_cover).any())


def paste_crowns(background: np.ndarray, boxes: Boxes, crowns: list[tuple[np.ndarray, str]], count: int,
                 rng: np.random.Generator, max_cover: float = 0.3) -> tuple[np.ndarray, Boxes]:
    """`background` with up to `count` crowns drawn from `crowns` pasted at random places where
    they hide at most `max_cover` of any box (its own and those pasted before), and its boxes
    with one box per pasted crown added."""
    pixels = background.astype(np.float32)
    height, width = pixels.shape[:2]
    placed = [boxes.xyxy()]
    labels = list(boxes.labels)
    for _ in range(count):
        crown, label = crowns[rng.integers(len(crowns))]
        crown = np.rot90(crown, rng.integers(4))
        if rng.integers(2):
            crown = crown[:, ::-1]
        h, w = crown.shape[:2]
        if h > height or w > width:
            continue
        for _ in range(PLACES_TRIED):
            x0, y0 = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
            box = np.array([x0, y0, x0 + w, y0 + h], np.float64)
            if not covers_too_much(box, np.concatenate(placed), max_cover):
                alpha = crown_alpha(h, w)[..., None]
                pixels[y0:y0 + h, x0:x0 + w] = alpha * crown + (1 - alpha) * pixels[y0:y0 + h, x0:x0 + w]
                placed.append(box[None])
                labels.append(label)
                break
    return np.round(pixels).astype(np.uint8), Boxes.from_xyxy(np.concatenate(placed), labels)


def copy_paste_images(tiles: Sequence[tuple[np.ndarray, Boxes]], count: int, seed: int,
                      crowns_per_image: int = 0, max_cover: float = 0.3) -> list[tuple[np.ndarray, Boxes]]:
    """`count` images: each a tile of `tiles` drawn at random with `crowns_per_image` crowns
    cut from `tiles` pasted onto it (0: the mean number of boxes per tile, at least 1).
    ValueError if no tile holds a whole crown."""
    crowns = cut_crowns(tiles)
    if not crowns:
        raise ValueError(f"none of the {len(tiles)} tiles holds a whole crown of at least {MIN_CROWN_SIDE} px to copy")
    per_image = crowns_per_image or max(1, round(sum(len(boxes) for _, boxes in tiles) / len(tiles)))
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        background, boxes = tiles[rng.integers(len(tiles))]
        images.append(paste_crowns(background, boxes, crowns, per_image, rng, max_cover))
    return images

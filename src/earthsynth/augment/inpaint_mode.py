"""`earthsynth augment --mode inpaint`: new objects painted into real tiles.

The default mode (`generate`) has aerogen draw whole images for sampled layouts. This one keeps
a real training tile as it is - background, objects and their boxes - and has aerogen draw only
new objects into its background (AeroGenPipeline.inpaint: the whole layout, real boxes
included, and the tile with the new boxes masked):

    candidate i:  a real tile (a seeded draw among those with fewer boxes than the i-th
                    sampled layout, if there are any)
                  + new boxes: the classes the layout has more of than the tile, at least one,
                    shaped and placed by the layout sampler (its size / aspect / angle draws
                    and centre density), inside the tile, overlapping the real boxes and each
                    other by at most max_overlap
                  mask = the new boxes grown by the pipeline's fade band (the generated
                    pixels fade into the real ones outside the objects themselves)
                  labels = real boxes + new boxes, all judged by the filter

So the objects per image follow the sampled layouts wherever the tile has room, the background
is real, and the real pixels outside the mask are written unchanged. Of the bundled tiles only
those above the in-domain validation block are used: pixels of an evaluation area must not
enter the synthetic training set.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from earthsynth.augment.layouts import LayoutRecord, LayoutSampler
from earthsynth.boxes import Boxes
from earthsynth.errors import InputError

if TYPE_CHECKING:
    from earthsynth.jobs.augment import AugmentConfig, RealTile

MODES = ("generate", "inpaint")
SOURCE_ATTEMPTS = 20  # tiles tried for a candidate before it is given up as having no room


def check_mode(config: AugmentConfig) -> None:
    if config.mode not in MODES:
        raise InputError(f"--mode {config.mode}", f"choose {' or '.join(MODES)}")


@functools.lru_cache(maxsize=2)
def bundled_training_rows(size: int) -> frozenset[str]:
    """Ids (as demo_tiles names them) of the bundled tiles above the YELL images' in-domain
    validation block: the rows no evaluation scores or stops on."""
    from earthsynth.data.tiles import RealTiles

    tiles = RealTiles("indomain-train", tile_size=size, gsd_factors=(2,)).tiles
    return frozenset(f"{t.source.image_id}_x{t.window[0]}_y{t.window[1]}" for t in tiles)


def background_tiles(tiles: list[RealTile], size: int, demo: bool, max_objects: int) -> list[RealTile]:
    """The real tiles new objects may be painted into: a user's training tiles, or the bundled
    ones above the in-domain validation block; each with room for one more box in the layout."""
    allowed = bundled_training_rows(size) if demo else None
    chosen = [t for t in tiles if (allowed is None or t.image_id in allowed) and len(t.boxes) < max_objects]
    if not chosen:
        raise InputError("--mode inpaint", f"no real tile with fewer than {max_objects} boxes to paint new objects into")
    return chosen


def new_classes(wanted: Boxes, have: Boxes, fallback: str) -> list[str]:
    """The objects a candidate adds: what the sampled layout has more of than the tile, or one
    object of its first class (the tile's most frequent one if the layout is empty)."""
    counts = have.class_counts()
    names = [name for name, count in wanted.class_counts().items() for _ in range(count - counts.get(name, 0))]
    if names:
        return names
    return [wanted.labels[0] if len(wanted) else fallback]


def inpaint_layouts(pipe, sampler: LayoutSampler, layouts: list[LayoutRecord], tiles: list[RealTile],
                    config: AugmentConfig, size: int, demo: bool) -> tuple[list[LayoutRecord], list[RealTile]]:
    """Each candidate's layout (the source tile's boxes, then the new ones; origin
    "inpaint:<tile id>:add<N>") and its source tile, from the sampled `layouts` (one seeded
    draw: the same in every process)."""
    if not sampler.classes:
        raise InputError("--mode inpaint", "the real tiles have no boxes, so there is no class of object to add")
    max_objects = min(config.max_objects, pipe.layout_encoder.config.max_objects)
    sources = background_tiles(tiles, size, demo, max_objects)
    rng = np.random.default_rng(config.seed + 2)  # the layouts take seed, the prompts seed + 1
    common = max(sampler.classes, key=lambda name: sampler.stats[name].objects)
    records, chosen = [], []
    by_count = np.array([len(tile.boxes) for tile in sources])
    for index, layout in enumerate(layouts):
        # tiles with room for the layout's objects, so the candidates' counts follow the layouts'
        roomy = np.flatnonzero(by_count < max(len(layout.boxes), 1))
        pool = roomy if len(roomy) else np.arange(len(sources))
        for _ in range(SOURCE_ATTEMPTS):
            tile = sources[int(pool[rng.integers(len(pool))])]
            real = Boxes(tile.boxes.rboxes, tile.boxes.labels, sampler.rotated)
            names = new_classes(layout.boxes, real, common)[:max_objects - len(real)]
            rows, labels = sampler._place(rng, names, size, size, real.rboxes, config.max_overlap)
            if len(rows):
                break
        else:
            raise InputError("--mode inpaint", f"candidate {index}: no room for a new object in {SOURCE_ATTEMPTS} "
                             "real tiles (their boxes fill them); use --mode generate")
        boxes = real.concat(Boxes(rows, labels, sampler.rotated))
        records.append(LayoutRecord(size, size, boxes, f"inpaint:{tile.image_id}:add{len(rows)}"))
        chosen.append(tile)
    return records, chosen


def new_object_mask(layout: LayoutRecord, source: RealTile, margin: int) -> np.ndarray:
    """(H, W) uint8: 1 on the boxes the layout adds to its source tile's, grown by `margin`
    pixels (every pixel a new box touches, and the band the generated pixels fade in over)."""
    new = layout.boxes.select(np.arange(len(source.boxes), len(layout.boxes)))
    mask = new.masks(layout.height, layout.width).max(axis=0)
    return cv2.dilate(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))


def inpaint_inputs(pipe, config: AugmentConfig, sources: list[RealTile], layouts: list[LayoutRecord]) -> dict:
    """The inpainting arguments of one batch of candidates for the aerogen call (none in
    generate mode): the source tiles and the masks of their new objects."""
    if config.mode != "inpaint":
        return {}
    images = torch.from_numpy(np.stack([tile.pixels for tile in sources])).permute(0, 3, 1, 2).float() / 255
    masks = np.stack([new_object_mask(layout, tile, pipe.inpaint_band) for layout, tile in zip(layouts, sources)])
    return {"image": images, "mask_image": torch.from_numpy(masks)[:, None].float()}


def source_references(config: AugmentConfig, sources: list[RealTile]) -> list[str] | None:
    """Per candidate, the filter's duplicate reference it is made from (its real tile, keyed as
    calibrated_filter keys the real tiles): a copy of it outside the new objects by design, so
    not counted a duplicate of it (of other real tiles and passed candidates it still may be).
    None in generate mode."""
    if config.mode != "inpaint":
        return None
    return [f"real:{tile.image_id}" for tile in sources]

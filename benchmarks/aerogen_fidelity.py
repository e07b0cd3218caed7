"""Layout fidelity of aerogen: does the generated image hold the objects it was asked for?

    .venv/bin/python benchmarks/aerogen_fidelity.py [--model DIR] [--detector DIR] [--seeds 2] [--steps 20]

The real-trained compact detector (the bundled one by default) is run on images generated
from real layouts and scored with pycocotools mAP50 / mAP50:95 against those layouts,
side by side with
  - the same detector on the real tiles the layouts come from (upper bound: what it finds
    in real images of this kind), and
  - images generated from the same prompts with the layout dropped (lower bound: objects the
    detector finds where they were asked for by chance, from the text alone);
  - and with the layout guided apart from the text (layout_guidance_scale, `earthsynth
    augment`'s default).
The layouts are those of the validation image (SOAP_061, another NEON site, never trained
on; its "Alive" / "Dead" labels count as "Tree"), cut as the training tiles are: 64 px at
0.2 m/px, windows every 32 px. The held-out test image is not used. Each layout is generated
with --seeds noise seeds. About 4 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import time

import torch

from earthsynth.augment.detector import load_detector
from earthsynth.augment.metrics import detection_map
from earthsynth.boxes import Boxes
from earthsynth.data.captions import make_caption
from earthsynth.data.tiles import RealTiles
from earthsynth.generation.aerogen import AeroGenPipeline
from earthsynth.jobs.load import bundled_checkpoint


def as_trees(boxes: Boxes) -> Boxes:
    return Boxes(boxes.rboxes, ["Tree"] * len(boxes), boxes.rotated, boxes.difficult)


def score(detector, images: torch.Tensor, layouts: list[Boxes]) -> dict:
    """mAP of the detector's findings in `images` (B, 3, H, W) [0, 1] against `layouts`."""
    found = detector.detect(images, score_threshold=0.05, max_detections=100)
    height, width = images.shape[-2:]
    truth = [(str(i), boxes, width, height) for i, boxes in enumerate(layouts)]
    return detection_map(truth, found, ["Tree"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="aerogen pipeline folder (default: bundled)")
    parser.add_argument("--detector", help="detector folder (default: bundled)")
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds per layout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layout-guidance", type=float, default=2.0, help="for the row with layout guidance")
    args = parser.parse_args()

    pipe = AeroGenPipeline.from_pretrained(args.model or bundled_checkpoint("aerogen"))
    pipe.set_progress_bar_config(disable=True)
    detector = load_detector(args.detector or bundled_checkpoint("detector"))
    size = pipe.unet.config.sample_size
    tiles = RealTiles("val", tile_size=size, gsd_factors=(2,), overlap=size // 2).tiles
    tiles = [t for t in tiles if len(t.boxes)]
    layouts = [as_trees(t.boxes) for t in tiles]
    prompts = [make_caption(t.source.description, t.gsd, layout.class_counts(), t.land_cover)
               for t, layout in zip(tiles, layouts)]
    real = torch.stack([torch.from_numpy(t.pixels).permute(2, 0, 1).float() / 255 for t in tiles])

    def generate(with_layout: bool, seed: int, layout_guidance: float | None = None) -> tuple[torch.Tensor, float]:
        images, started = [], time.perf_counter()
        for start in range(0, len(tiles), args.batch):
            part = range(start, min(start + args.batch, len(tiles)))
            generators = [torch.Generator().manual_seed(seed * 100_003 + i) for i in part]
            boxes = [layouts[i] if with_layout else Boxes() for i in part]
            out = pipe([prompts[i] for i in part], boxes, None, size, size, args.steps, args.guidance,
                       layout_guidance_scale=layout_guidance, generator=generators, output_type="pt")
            images.append(out.images.float())
        return torch.cat(images), time.perf_counter() - started

    rows = [("real validation tiles (upper bound)", score(detector, real, layouts), len(tiles), None)]
    for name, with_layout, layout_guidance in (
            ("aerogen, conditioned on the layouts", True, None),
            (f"aerogen, conditioned, + layout guidance {args.layout_guidance}", True, args.layout_guidance),
            ("aerogen, layout dropped (lower bound)", False, None)):
        results, seconds = [], 0.0
        for seed in range(args.seeds):
            images, took = generate(with_layout, seed, layout_guidance)
            results.append(score(detector, images, layouts))
            seconds += took
        mean = {key: sum(r[key] for r in results) / len(results) for key in ("mAP50", "mAP50_95")}
        rows.append((name, mean, len(tiles) * args.seeds, seconds))

    objects = sum(len(layout) for layout in layouts)
    print(f"\nLayout fidelity: {len(tiles)} layouts of SOAP_061 ({objects} trees), {size} px at 0.2 m/px, "
          f"{args.steps} steps, guidance {args.guidance}, {args.seeds} seeds\n")
    print("| images | count | detector mAP50 | mAP50:95 | generation s |")
    print("|---|---|---|---|---|")
    for name, result, count, seconds in rows:
        took = f"{seconds:.0f}" if seconds is not None else "-"
        print(f"| {name} | {count} | {100 * result['mAP50']:.1f} | {100 * result['mAP50_95']:.1f} | {took} |")


if __name__ == "__main__":
    main()

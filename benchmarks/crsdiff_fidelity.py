"""crsdiff: control fidelity on held-out real tiles. Prints a markdown table.

    .venv/bin/python benchmarks/crsdiff_fidelity.py [--model DIR] [--tiles 32] [--steps 20] [--tolerance 2] [--json PATH]

Tiles: 64 px tiles of OSBS_029 (the held-out test image, never trained on) at 0.1 and
0.2 m/px. For each tile, crsdiff generates an image from the tile's caption and metadata
(GSD, latitude / longitude of its centre) with: no map; its Canny edge map; Canny + sketch +
content. The Canny edges of each generated image are compared with the tile's own Canny
map: edge F1, an edge pixel matching when the other map has an edge within `tolerance`
pixels. Without the map the model can only guess where edges go, so that row is the
baseline the map has to beat. Same seeds for every row. About 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from earthsynth.conditioning.control import canny
from earthsynth.conditioning.scalars import SCALAR_FIELDS
from earthsynth.data.control_tiles import ControlTiles
from earthsynth.generation.common import bundled_checkpoint
from earthsynth.generation.crsdiff import CRSDiffPipeline
from earthsynth.image_metrics import edge_f1

SETTINGS = {"text + metadata, no map": (), "+ canny": ("canny",), "+ canny, sketch, content": ("canny", "sketch", "content")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="crsdiff pipeline folder (default: the bundled one)")
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    start = time.time()
    pipe = CRSDiffPipeline.from_pretrained(args.model or bundled_checkpoint("crsdiff"))
    pipe.set_progress_bar_config(disable=True)

    tiles = ControlTiles("test", tile_size=64, gsd_factors=[1, 2], balance_gsd=False)
    samples = [tiles[int(i)] for i in np.linspace(0, len(tiles) - 1, min(args.tiles, len(tiles)))]
    prompts = [s["caption"] for s in samples]
    metadata = [{k: v for k, v in s["metadata"].items() if k in SCALAR_FIELDS} for s in samples]
    references = [s["controls"]["canny"][0].numpy() for s in samples]

    results = {}
    for name, maps in SETTINGS.items():
        controls = {m: torch.stack([s["controls"][m] for s in samples]) for m in maps}
        generators = [torch.Generator().manual_seed(i) for i in range(len(samples))]
        images = pipe(prompts, metadata=metadata, controls=controls, num_inference_steps=args.steps,
                      generator=generators, output_type="np").images
        scores = [edge_f1(canny(image), reference, args.tolerance) for image, reference in zip(images, references)]
        results[name] = {"edge_f1": float(np.mean(scores)), "edge_f1_std": float(np.std(scores)),
                         "edge_density": float(np.mean([canny(image).mean() for image in images]))}
    reference_density = float(np.mean([r.mean() for r in references]))

    print(f"{len(samples)} held-out OSBS_029 tiles (64 px, 0.1 and 0.2 m/px), {args.steps} steps, guidance 4, "
          f"edge F1 at {args.tolerance:g} px; real tiles' edge density {reference_density:.3f}")
    print()
    print("| crsdiff conditions | edge F1 vs the tile's Canny map | std | edge density |")
    print("|---|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['edge_f1']:.3f} | {row['edge_f1_std']:.3f} | {row['edge_density']:.3f} |")
    print(f"\n{time.time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tiles": len(samples), "tolerance": args.tolerance, "reference_edge_density": reference_density,
                       "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()

"""text2earth: resolution control and scene stitching, measured. Prints markdown tables.

    .venv/bin/python benchmarks/text2earth_quality.py [--model DIR] [--per-class 24] [--steps 20] [--judges 3] [--json PATH]

1. Resolution control. A small CNN learns to name the GSD class (0.1, 0.2 or 0.4 m/px) of
   64 px real tiles: trained on the two YELL training images (deepforest at factors 1, 2, 4),
   its checkpoint picked on the Soaproot Saddle images (SOAP_061, the validation image, and
   SOAP_031, which ships without boxes and is trained on by nothing), its accuracy reported
   on OSBS_029 (the held-out test image). Then text2earth generates `per-class` images at
   each requested GSD and the classifier names their class: top-1 accuracy against the
   requested class (chance is 33%), for text + GSD (guided together, and with the GSD
   guided separately at 3) and for GSD alone. The prompts are the same for every GSD (a
   NEON description and a land-cover phrase, no object counts, which grow with the GSD), so
   only the GSD condition can tell the classes apart; a row with the GSD unknown (None)
   shows what the text alone gives. One classifier is a noisy judge of images unlike its
   training tiles, so `--judges` classifiers (seeds 0, 1, ...) name the same generated
   images and the table gives each one's accuracy and their mean.
   A texture table beside it, judge-free: the mean step between neighbouring pixels and
   the contrast of real and generated tiles at each GSD (finer GSDs have larger steps).
2. Scene stitching. `generate_scene` makes 256 x 256 scenes from 64 px tiles overlapping by
   16; the seam score is the mean absolute step across the tiles' borders over the mean
   step elsewhere (1 = no seam). Beside it: the same tiles generated independently and
   pasted side by side, the naive way.
About 30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earthsynth.data.schema import image_to_tensor
from earthsynth.data.sources import SourceImage, deepforest_images, deepforest_unlabelled_val
from earthsynth.data.tiles import cut_tiles
from earthsynth.generation.common import tile_starts
from earthsynth.generation.text2earth import Text2EarthPipeline
from earthsynth.image_metrics import seam_score
from earthsynth.jobs.load import bundled_checkpoint

GSD_CLASSES = (0.1, 0.2, 0.4)  # deepforest at factors 1, 2, 4
PROMPTS = ("NEON airborne RGB orthophoto, Yellowstone National Park, dense vegetation",
           "NEON airborne RGB orthophoto, Yellowstone National Park, mixed vegetation and open ground",
           "NEON airborne RGB orthophoto, Soaproot Saddle, Sierra Nevada, dense vegetation",
           "NEON airborne RGB orthophoto, Ordway-Swisher Biological Station, Florida, mixed vegetation and open ground")


def real_tiles(images: list[SourceImage], overlap: int) -> tuple[torch.Tensor, torch.Tensor]:
    tiles, labels = [], []
    for label, gsd in enumerate(GSD_CLASSES):
        for image in images:
            cut = cut_tiles(image, 64, round(gsd / image.gsd), overlap)
            tiles += [image_to_tensor(tile.pixels) for tile in cut]
            labels += [label] * len(cut)
    return torch.stack(tiles), torch.tensor(labels)


class GSDClassifier(nn.Module):
    def __init__(self, classes: int = len(GSD_CLASSES)):
        super().__init__()
        layers, channels = [], 1
        for width in (32, 64, 96, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # grey and standardised per tile: the sites differ in colour and brightness, the
        # GSD shows in the scale of the texture
        grey = images.mean(1, keepdim=True)
        x = (grey - grey.mean((2, 3), keepdim=True)) / grey.std((2, 3), keepdim=True).clamp(min=1e-3)
        return self.head(self.features(x).mean((2, 3)))


def dihedral(images: torch.Tensor) -> torch.Tensor:
    """A random flip and quarter turn per image: nadir views have no up."""
    turns = torch.randint(4, (len(images),))
    images = torch.stack([torch.rot90(image, int(k), dims=(1, 2)) for image, k in zip(images, turns)])
    flip = torch.rand(len(images)) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def confusion(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Rows: true class; columns: named class (the model is left in the mode it was in)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in images.split(256)])
    model.train(was_training)
    counts = np.zeros((len(GSD_CLASSES), len(GSD_CLASSES)), dtype=int)
    np.add.at(counts, (labels.numpy(), predicted.numpy()), 1)
    return counts


def balanced_accuracy(counts: np.ndarray) -> float:
    """Mean over the classes present of the share of that class named right (the held-out
    images give 16 times more 0.1 m tiles than 0.4 m ones)."""
    present = counts.sum(1) > 0
    return float(np.mean(np.diag(counts)[present] / counts.sum(1)[present]))


def judge_tiles() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    images = deepforest_images()
    return {
        "train": real_tiles([i for i in images if i.split == "train"], overlap=32),
        # the held-out images are small (a 0.4 m tile covers a quarter of one): denser tiles there
        "val": real_tiles([i for i in images if i.split == "val"] + [deepforest_unlabelled_val()], overlap=48),
        "test": real_tiles([i for i in images if i.split == "test"], overlap=48),
    }


def train_classifier(tiles: dict, seed: int, steps: int = 3000, batch: int = 64) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    train_x, train_y = tiles["train"]
    val_x, val_y = tiles["val"]
    test_x, test_y = tiles["test"]
    # classes are balanced by sampling: the 0.1 m tiles outnumber the 0.4 m ones 16 to 1
    weights = 1.0 / torch.bincount(train_y).float()[train_y]
    model = GSDClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps, pct_start=0.05)
    best, best_state = -1.0, None
    for step in range(1, steps + 1):
        index = torch.multinomial(weights, batch, replacement=True)
        loss = F.cross_entropy(model(dihedral(train_x[index])), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0:
            val = balanced_accuracy(confusion(model, val_x, val_y))
            if val > best:
                best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    test_counts = confusion(model, test_x, test_y)
    return model, {"seed": seed, "val_accuracy": best, "test_accuracy": balanced_accuracy(test_counts),
                   "val_confusion": confusion(model, val_x, val_y).tolist(), "test_confusion": test_counts.tolist()}


def texture(images: torch.Tensor) -> tuple[float, float]:
    """(mean absolute step between neighbouring pixels, mean per-channel contrast as a standard
    deviation) of [0, 1] images: a judge-free look at whether generated tiles are as fine
    and as contrasted as real tiles of the same GSD."""
    step = ((images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., 1:] - images[..., :-1]).abs().mean()) / 2
    return float(step), float(images.std((2, 3)).mean())


def texture_by_class(images: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, float]]:
    return [texture(images[labels == label]) for label in range(len(GSD_CLASSES))]


def resolution_control(pipe, classifiers: list[nn.Module], per_class: int, steps: int) -> dict:
    """Every classifier names the class of the same generated images."""
    rows = {}
    settings = {"text + GSD": (True, None), "text + GSD, separate GSD guidance 3": (True, 3.0),
                "GSD only (empty prompt)": (False, None)}
    for name, (with_text, gsd_guidance) in settings.items():
        confusions = np.zeros((len(classifiers), 3, 3), dtype=int)
        textures = []
        for label, gsd in enumerate(GSD_CLASSES):
            prompts = [PROMPTS[i % len(PROMPTS)] if with_text else "" for i in range(per_class)]
            generators = [torch.Generator().manual_seed(1000 * label + i) for i in range(per_class)]
            images = pipe(prompts, gsd=gsd, num_inference_steps=steps, gsd_guidance_scale=gsd_guidance,
                          generator=generators, output_type="pt").images
            textures.append(texture(images))
            for k, classifier in enumerate(classifiers):
                with torch.no_grad():
                    predicted = classifier(images).argmax(1).numpy()
                np.add.at(confusions[k, label], predicted, 1)
        accuracies = [float(np.trace(c)) / (3 * per_class) for c in confusions]
        rows[name] = {"accuracy": float(np.mean(accuracies)), "accuracy_per_classifier": accuracies,
                      "confusion": confusions.tolist(), "texture": textures}
    # the text alone, GSD unknown: which classes does the model drift to?
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(per_class)]
    images = pipe(prompts, gsd=None, num_inference_steps=steps,
                  generator=[torch.Generator().manual_seed(5000 + i) for i in range(per_class)], output_type="pt").images
    with torch.no_grad():
        counts = [np.bincount(classifier(images).argmax(1).numpy(), minlength=3).tolist() for classifier in classifiers]
    rows["text only, GSD unknown"] = {"predicted_counts": counts}
    return rows


def stitching(pipe, scenes: int, steps: int, size: int = 256, tile: int = 64, overlap: int = 16) -> dict:
    blended, naive = [], []
    starts = tile_starts(size, tile, overlap)
    borders = sorted({s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size})
    for k in range(scenes):
        prompt, gsd = PROMPTS[k % len(PROMPTS)], GSD_CLASSES[k % len(GSD_CLASSES)]
        scene = pipe.generate_scene(prompt, gsd=gsd, width=size, height=size, tile=tile, overlap=overlap,
                                    num_inference_steps=steps, generator=torch.Generator().manual_seed(k),
                                    output_type="np").images[0]
        blended.append(seam_score(scene, borders, borders))
        count = (size // tile) ** 2
        tiles = pipe([prompt] * count, gsd=gsd, height=tile, width=tile, num_inference_steps=steps,
                     generator=[torch.Generator().manual_seed(100 * k + i) for i in range(count)],
                     output_type="np").images
        per_row = size // tile
        pasted = np.concatenate([np.concatenate(list(tiles[r * per_row:(r + 1) * per_row]), axis=1)
                                 for r in range(per_row)], axis=0)
        edges = list(range(tile, size, tile))
        naive.append(seam_score(pasted, edges, edges))
    return {"generate_scene": float(np.mean(blended)), "independent tiles pasted": float(np.mean(naive)),
            "scenes": scenes, "size": size, "tile": tile, "overlap": overlap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="text2earth pipeline folder (default: the bundled one)")
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--judges", type=int, default=3, help="GSD classifiers trained with seeds 0..N-1")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    start = time.time()
    pipe = Text2EarthPipeline.from_pretrained(args.model or bundled_checkpoint("text2earth"))
    pipe.set_progress_bar_config(disable=True)

    tiles = judge_tiles()
    judges = [train_classifier(tiles, seed) for seed in range(args.judges)]
    classifiers, real = [judge for judge, _ in judges], [report for _, report in judges]
    control = resolution_control(pipe, classifiers, args.per_class, args.steps)
    seams = stitching(pipe, args.scenes, args.steps)

    counts = {split: torch.bincount(y, minlength=3).tolist() for split, (_, y) in tiles.items()}
    print(f"GSD classes {', '.join(f'{g} m/px' for g in GSD_CLASSES)}; real tiles per class {counts}; "
          f"{args.judges} classifiers (seeds 0-{args.judges - 1}), each picked on validation")
    print()
    seeds = " | ".join(f"seed {r['seed']}" for r in real)
    print(f"| images | top-1 accuracy, classes balanced (chance 33%): mean | {seeds} |")
    print("|---|---|" + "---|" * len(real))

    def row(name: str, values: list[float]) -> None:
        print(f"| {name} | **{np.mean(values):.0%}** | " + " | ".join(f"{v:.0%}" for v in values) + " |")

    row("real, SOAP_061 + SOAP_031 (validation, picked the checkpoint)", [r["val_accuracy"] for r in real])
    row("real, OSBS_029 (held-out test)", [r["test_accuracy"] for r in real])
    generated = [name for name in control if "accuracy" in control[name]]
    for name in generated:
        row(f"text2earth, {name}, {args.per_class} per class", control[name]["accuracy_per_classifier"])
    print()
    print("confusions of the seed-0 classifier (rows: true or requested 0.1 / 0.2 / 0.4 m; columns: named):")
    print("  real validation", real[0]["val_confusion"], "real test", real[0]["test_confusion"])
    for name in generated:
        print(f"  {name}", control[name]["confusion"][0])
    print("text only, GSD unknown, named 0.1 / 0.2 / 0.4 m by each classifier:",
          control["text only, GSD unknown"]["predicted_counts"])
    print()
    print("| tiles: neighbour step / contrast (std), [0, 1] RGB | " + " | ".join(f"{g} m" for g in GSD_CLASSES) + " |")
    print("|---|" + "---|" * len(GSD_CLASSES))

    def texture_row(name: str, values) -> None:
        print(f"| {name} | " + " | ".join(f"{step:.3f} / {contrast:.3f}" for step, contrast in values) + " |")

    texture_row("real, YELL (training)", texture_by_class(*tiles["train"]))
    texture_row("real, OSBS_029 (held-out test)", texture_by_class(*tiles["test"]))
    for name in generated:
        texture_row(f"text2earth, {name}", control[name]["texture"])
    print()
    print(f"| {seams['size']} px scenes from {seams['tile']} px tiles ({seams['scenes']} scenes) | seam score (1 = none) |")
    print("|---|---|")
    print(f"| generate_scene (overlap {seams['overlap']}, outputs blended every step) | {seams['generate_scene']:.2f} |")
    print(f"| independent tiles pasted side by side | {seams['independent tiles pasted']:.2f} |")
    print(f"\n{time.time() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"classifier": real, "resolution_control": control, "stitching": seams}, handle, indent=1)


if __name__ == "__main__":
    main()

"""Training of the crop classifier through the one loop (`earthsynth train configs/classifier.yaml`):
the model config, crops of real objects and of real background, augmentation, loss, export and FAMILY."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from earthsynth.augment.classifier.model import BACKGROUND, CropClassifier, extract_crops
from earthsynth.boxes import Boxes
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, Tile
from earthsynth.errors import InputError
from earthsynth.registry import Family


@dataclass
class ClassifierModelConfig:
    class_names: list[str] = field(default_factory=lambda: ["Tree"])  # object classes; "background" is added
    crop_size: int = 32  # every crop is resampled to crop_size x crop_size pixels
    context: float = 0.25  # margin around the box on each side, as a fraction of its width / height
    widths: list[int] = field(default_factory=lambda: [32, 64, 96])  # channels of the conv stages
    background_per_image: int = 2  # background crops per training tile, placed by train.seed
    color_jitter: float = 0.0  # training: random brightness, contrast and saturation changes up to this fraction
    low_resolution: float = 0.0  # training: chance of a crop being down- and upsampled (smaller, blurrier objects)
    standardize: bool = False  # the model sees each crop with its own mean and contrast removed


# ----------------------------------------------------------------------------- real crops
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) intersection over union."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def background_boxes(tile_boxes: Boxes, size: int, sizes: np.ndarray, count: int, rng: np.random.Generator,
                     attempts: int = 50) -> Boxes:
    """Up to `count` boxes inside a size x size tile, sized like real objects (drawn from
    `sizes`, (K, 2) widths and heights), that overlap no object: IoU < 0.1 with every box
    and no object centre inside (a big window around a small tree has a small IoU)."""
    objects = tile_boxes.xyxy()
    centres = (objects[:, :2] + objects[:, 2:]) / 2
    found: list[list[float]] = []
    for _ in range(attempts):
        if len(found) == count:
            break
        w, h = np.minimum(sizes[rng.integers(len(sizes))], size)
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        candidate = np.array([[x0, y0, x0 + w, y0 + h]])
        if len(objects):
            if iou_matrix(candidate, objects).max() >= 0.1:
                continue
            inside = (centres >= candidate[0, :2]) & (centres <= candidate[0, 2:])
            if inside.all(axis=1).any():
                continue
        found.append(candidate[0].tolist())
    return Boxes.from_xyxy(np.array(found).reshape(-1, 4), [BACKGROUND] * len(found))


def real_crops(tiles: Sequence[Tile], crop_size: int, context: float, background_per_image: int,
               seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Crops of every object of the tiles (labelled with its class) plus background crops
    ("background") -> ((N, 3, S, S) crops in [0, 1], N labels)."""
    rng = np.random.default_rng(seed)
    labelled = [t.boxes.rboxes[:, 2:4] for t in tiles if len(t.boxes)]
    sizes = np.concatenate(labelled) if labelled else np.array([[crop_size, crop_size]], dtype=np.float64)
    crops, labels = [], []
    for tile in tiles:
        size = tile.pixels.shape[0]
        both = tile.boxes.concat(background_boxes(tile.boxes, size, sizes, background_per_image, rng))
        image = torch.from_numpy(tile.pixels).permute(2, 0, 1)[None].float() / 255.0
        crops.append(extract_crops(image, [both], crop_size, context))
        labels += both.labels
    return torch.cat(crops), labels


class CropDataset(Dataset):
    """Precomputed crops and class indices, as {"crop": (3, S, S), "label": int} samples."""

    def __init__(self, crops: torch.Tensor, labels: Sequence[str], class_names: Sequence[str], source: str = "dataset"):
        names = [*class_names, BACKGROUND]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise InputError(source, f"object classes {unknown} are not in model.class_names {list(class_names)}")
        self.crops = crops
        self.labels = torch.tensor([names.index(label) for label in labels], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"crop": self.crops[index], "label": self.labels[index]}


def collate_crops(samples: list[dict]) -> dict:
    return {"crop": torch.stack([s["crop"] for s in samples]), "label": torch.stack([s["label"] for s in samples])}


# ----------------------------------------------------------------------------- family
def build(config) -> dict:
    mc = config.model
    model = CropClassifier(class_names=list(mc.class_names), crop_size=mc.crop_size, context=mc.context,
                           widths=list(mc.widths), standardize=mc.standardize)
    return {"classifier": model, "config": config}


def dataset(config) -> CropDataset:
    dc, mc = config.data, config.model
    tiles = RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                      overlap=dc.overlap, min_visible=dc.min_visible,
                      exclude_test_area=dc.exclude_test_area).tiles
    crops, labels = real_crops(tiles, mc.crop_size, mc.context, mc.background_per_image, config.train.seed)
    return CropDataset(crops, labels, mc.class_names, source=f"data split {dc.split}")


def jitter_colors(crops: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation per crop, each scaled by up to +-strength."""
    n = len(crops)

    def factors():
        return 1 + (torch.rand(n, 1, 1, 1) * 2 - 1) * strength

    gray = crops.mean(dim=1, keepdim=True)
    crops = gray + (crops - gray) * factors()  # saturation
    mean = crops.mean(dim=(1, 2, 3), keepdim=True)
    crops = mean + (crops - mean) * factors()  # contrast
    return (crops * factors()).clamp(0, 1)  # brightness


def lower_resolution(crops: torch.Tensor, chance: float) -> torch.Tensor:
    """Down- and upsample a random `chance` of the crops by 1.5-3x: objects smaller than
    the training ones (or a softer generator) look blurrier after resizing to crop_size."""
    size = crops.shape[-1]
    out = crops.clone()
    for i in torch.nonzero(torch.rand(len(crops)) < chance).flatten().tolist():
        small = max(4, int(size / float(torch.empty(1).uniform_(1.5, 3.0))))
        low = F.interpolate(crops[i:i + 1], size=small, mode="area")
        out[i] = F.interpolate(low, size=size, mode="bilinear", align_corners=False)[0]
    return out


def loss(components: dict, batch: dict) -> torch.Tensor:
    model = components["classifier"]
    mc = components["config"].model
    crops = batch["crop"]
    if components["config"].data.hflip:
        crops = random_flips(crops, transpose=True)
    if mc.color_jitter > 0:
        crops = jitter_colors(crops, mc.color_jitter)
    if mc.low_resolution > 0:
        crops = lower_resolution(crops, mc.low_resolution)
    logits = model(crops.to(model.device, model.dtype))
    return F.cross_entropy(logits.float(), batch["label"].to(logits.device))


def export(components: dict, config, directory: Path) -> None:
    components["classifier"].save_pretrained(directory)


FAMILY = Family(
    name="classifier",
    model_config=ClassifierModelConfig,
    build=build,
    trainable=("classifier",),
    dataset=dataset,
    collate=collate_crops,
    loss=loss,
    export=export,
    description="crop classifier (object classes + background) on real crops, for the semantic filter",
)

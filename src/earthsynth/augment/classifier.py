"""A small crop classifier trained on real object crops, for the semantic-consistency filter.

A generated image comes with the boxes it was conditioned on. The filter crops every box
(its horizontal bounding box plus a context margin), and this classifier, trained on crops
of REAL objects and of real background, says whether the crop shows the object class it
was asked for. The model has the object classes plus a last "background" class.

Crops are cut by one function, `extract_crops`, for training and for inference, so both
see the same geometry: the box's enclosing horizontal box, widened by `context` times its
size on every side, resampled (anti-aliased) to `crop_size` x `crop_size`; whatever lies
outside the image is zero.

Train:    earthsynth train configs/classifier.yaml
Use:      model = load_classifier("runs/classifier/final")
          probabilities = model.classify(images, boxes_list)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.data import Dataset

from earthsynth.boxes import Boxes
from earthsynth.data.flips import random_flips
from earthsynth.data.tiles import RealTiles, Tile
from earthsynth.errors import InputError
from earthsynth.registry import Family

BACKGROUND = "background"


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


# ----------------------------------------------------------------------------- crops
def crop_regions(boxes: Boxes, context: float) -> np.ndarray:
    """(N, 4) x0 y0 x1 y1 crop windows: each box's enclosing horizontal box, widened by
    `context` times its width (height) on the left and right (top and bottom)."""
    xyxy = boxes.xyxy()
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    return xyxy + np.stack([-w, -h, w, h], axis=1) * context


def extract_crops(images: torch.Tensor, boxes_list: Sequence[Boxes], crop_size: int, context: float) -> torch.Tensor:
    """Crops of every box of every image -> (total boxes, C, crop_size, crop_size).

    images: (B, C, H, W) float. Crops come image by image, box by box. A rotated box is
    cropped through its enclosing horizontal box; parts of a window outside the image are
    zero, so a box at the border keeps its place and scale in the crop. A window larger
    than the crop is sampled on a k-times finer grid and averaged (anti-aliasing); k is
    chosen per box, so a box's crop does not depend on the other boxes of the batch.
    """
    if images.ndim != 4 or len(images) != len(boxes_list):
        raise ValueError(f"need (B, C, H, W) images and B box sets, got {tuple(images.shape)} and {len(boxes_list)}")
    _, channels, height, width = images.shape
    windows, owners = [], []
    for i, boxes in enumerate(boxes_list):
        if len(boxes):
            windows.append(crop_regions(boxes, context))
            owners += [i] * len(boxes)
    if not windows:
        return images.new_zeros((0, channels, crop_size, crop_size))
    windows = np.concatenate(windows)
    owners = np.array(owners)
    extents = (windows[:, 2:] - windows[:, :2]).max(axis=1)
    # sub-samples per output pixel along each axis, per box
    factors = np.clip(np.ceil(extents / crop_size), 1, 8).astype(int)
    crops = images.new_zeros((len(windows), channels, crop_size, crop_size))
    for k in np.unique(factors):  # one grid_sample per factor: the grid size must be shared
        chosen = np.nonzero(factors == k)[0]
        window = torch.as_tensor(windows[chosen], dtype=torch.float32, device=images.device)
        n = crop_size * int(k)
        # centres of the n x n sample cells inside each window, in image pixels (pixel i spans [i, i+1))
        steps = (torch.arange(n, dtype=torch.float32, device=images.device) + 0.5) / n
        xs = window[:, 0:1] + steps[None] * (window[:, 2:3] - window[:, 0:1])  # (N, n)
        ys = window[:, 1:2] + steps[None] * (window[:, 3:4] - window[:, 1:2])
        # grid_sample with align_corners=False maps -1 / +1 to the outer edges of the image
        gx = (2 * xs / width - 1)[:, None, :].expand(-1, n, -1)
        gy = (2 * ys / height - 1)[:, :, None].expand(-1, -1, n)
        grid = torch.stack([gx, gy], dim=-1).to(images.dtype)
        source = images[torch.as_tensor(owners[chosen], device=images.device)]
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        crops[torch.as_tensor(chosen, device=images.device)] = F.avg_pool2d(sampled, int(k)) if k > 1 else sampled
    return crops


# ----------------------------------------------------------------------------- model
class CropClassifier(ModelMixin, ConfigMixin):
    """A small CNN: per stage two 3x3 conv + GroupNorm + SiLU, then 2x downsampling;
    global average pooling and a linear head over the classes plus "background"."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, class_names: Sequence[str] = ("Tree",), crop_size: int = 32, context: float = 0.25,
                 widths: Sequence[int] = (32, 64, 96), standardize: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, len(class_names) + 1)

    @property
    def class_names_with_background(self) -> list[str]:
        return [*self.config.class_names, BACKGROUND]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) crops in [0, 1] -> (N, classes + 1) logits."""
        if self.config.standardize:
            mean = crops.mean(dim=(1, 2, 3), keepdim=True)
            std = crops.std(dim=(1, 2, 3), keepdim=True)
            crops = (crops - mean) / (std + 0.05)
        else:
            crops = crops * 2 - 1
        features = self.features(crops)
        return self.head(features.mean(dim=(2, 3)))

    @torch.no_grad()
    def classify(self, images: torch.Tensor, boxes: Sequence[Boxes]) -> list[np.ndarray]:
        """Class probabilities of every box: images (B, 3, H, W) float in [0, 1] and one Boxes
        per image -> per image an (N, classes + 1) array, rows in box order, the last column
        "background"."""
        was_training = self.training
        self.eval()
        crops = extract_crops(images.float(), boxes, self.config.crop_size, self.config.context)
        probabilities = torch.softmax(self(crops.to(self.device, self.dtype)).float(), dim=1).cpu().numpy()
        self.train(was_training)
        out, start = [], 0
        for b in boxes:
            out.append(probabilities[start:start + len(b)])
            start += len(b)
        return out


def load_classifier(directory: str | Path) -> CropClassifier:
    """A trained classifier from its folder (the run's `final/`, or the run folder itself)."""
    directory = Path(directory)
    if not (directory / "config.json").exists() and (directory / "final" / "config.json").exists():
        directory = directory / "final"
    config_path = directory / "config.json"
    if not config_path.exists():
        raise InputError(directory, "not a classifier checkpoint (no config.json); train one with "
                                    "`earthsynth train configs/classifier.yaml` and pass its final/ folder")
    if f'"{CropClassifier.__name__}"' not in config_path.read_text():
        raise InputError(directory, f"config.json does not describe a {CropClassifier.__name__}")
    try:
        model = CropClassifier.from_pretrained(directory)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(directory, f"cannot load the classifier weights ({str(err).splitlines()[0]})") from None
    return model.eval()


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


@torch.no_grad()
def object_vs_background_accuracy(model: CropClassifier, crops: torch.Tensor, labels: Sequence[str],
                                  batch_size: int = 256) -> dict:
    """How often the model tells objects (any class) from background on labelled crops:
    {"accuracy", "object_recall", "background_recall", "objects", "backgrounds"}. Works for
    crops whose object classes the model does not know (e.g. "Alive" / "Dead" of SOAP_061)."""
    model.eval()
    background = len(model.config.class_names)
    predicted = torch.cat([model(crops[i:i + batch_size].to(model.device, model.dtype)).argmax(1).cpu()
                           for i in range(0, len(crops), batch_size)])
    is_object = torch.tensor([label != BACKGROUND for label in labels])
    said_object = predicted != background
    return {
        "accuracy": float((is_object == said_object).float().mean()),
        "object_recall": float(said_object[is_object].float().mean()),
        "background_recall": float((~said_object[~is_object]).float().mean()),
        "objects": int(is_object.sum()),
        "backgrounds": int((~is_object).sum()),
    }


# ----------------------------------------------------------------------------- family
def build(config) -> dict:
    mc = config.model
    model = CropClassifier(class_names=list(mc.class_names), crop_size=mc.crop_size, context=mc.context,
                           widths=list(mc.widths), standardize=mc.standardize)
    return {"classifier": model, "config": config}


def dataset(config) -> CropDataset:
    dc, mc = config.data, config.model
    tiles = RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                      overlap=dc.overlap, min_visible=dc.min_visible).tiles
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

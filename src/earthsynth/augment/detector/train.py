"""Training of the compact detector through the one loop (`earthsynth train configs/detector.yaml`):
the model config, the CenterNet targets and loss, the data (the real tiles of `data.split`
plus, optionally, an extra dataset folder, e.g. synthetic), augmentation, export and FAMILY;
and `train_until_best`, the early-stopped training `earthsynth evaluate` runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from earthsynth.augment.detector.model import STRIDE, CompactDetector
from earthsynth.boxes import Boxes, normalize_angle
from earthsynth.data.flips import random_flips
from earthsynth.data.schema import Sample, image_to_tensor
from earthsynth.data.tiles import RealTiles
from earthsynth.errors import InputError
from earthsynth.registry import Family


@dataclass
class DetectorModelConfig:
    class_names: list[str] = field(default_factory=lambda: ["Tree"])
    rotated: bool = False  # predict rotated boxes (angle head); horizontal data then train with angle 0
    widths: list[int] = field(default_factory=lambda: [24, 48, 64, 96])  # backbone stages, strides 2, 4, 8, 16
    head_width: int = 48
    extra_data: str = ""  # an extra training dataset folder (added to the real tiles), e.g. synthetic data
    extra_format: str = "coco"  # its format: any of earthsynth.data.annotations.FORMATS
    real_fraction: float = 1.0  # use this fraction of the real training tiles (low-data regime)
    real_fraction_seed: int = 0  # seed of the permutation that picks them
    extra_share: float = 0.0  # share of the draws that are extra_data images (both repeated); 0 = each image once
    size_weight: float = 1.0  # loss weights of the heads (the heatmap's is 1)
    offset_weight: float = 1.0
    angle_weight: float = 1.0
    gaussian_scale: float = 0.54  # heatmap Gaussian sigma = gaussian_scale * box side / 6 (TTFNet's alpha)
    regression_area: float = 0.3  # cells where a box's Gaussian is at least this regress it (1.0: centre cells only)
    color_jitter: float = 0.1  # training: random brightness / contrast / saturation change of up to this fraction
    scale_jitter: float = 0.2  # training: each batch resized by a random factor in [1 - this, 1 + this]
    score_threshold: float = 0.3  # default of detect()
    max_detections: int = 100  # default of detect()


# ----------------------------------------------------------------------------- targets
def map_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Size of the output maps for an input of height x width (padded to `multiple`)."""
    return (height + (-height) % multiple) // STRIDE, (width + (-width) % multiple) // STRIDE


def box_parameters(boxes: Boxes, rotated: bool) -> np.ndarray:
    """(N, 5) cx, cy, w, h, angle as the model learns them: for a horizontal model the
    enclosing horizontal box; for a rotated one the form with w >= h (angle of the long side)."""
    if not rotated:
        xyxy = boxes.xyxy()
        return np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                         xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1], np.zeros(len(xyxy))], axis=1)
    params = boxes.rboxes.copy()
    tall = params[:, 3] > params[:, 2]
    params[tall, 2], params[tall, 3] = boxes.rboxes[tall, 3], boxes.rboxes[tall, 2]
    params[tall, 4] += 90.0
    params[:, 4] = normalize_angle(params[:, 4])
    return params


def encode_targets(boxes_list: list[Boxes], class_names: list[str], height: int, width: int,
                   rotated: bool, multiple: int, gaussian_scale: float = 0.54,
                   regression_area: float = 0.3) -> dict[str, torch.Tensor]:
    """Training targets for a batch, laid out like the model's outputs.

    heatmap (B, C, h, w): per class the maximum of one Gaussian per box (1 at the box's
    centre cell), sigma along each box axis = gaussian_scale * side / 6 (at least 0.5 cell).
    size, offset (centre - cell, in cells), angle (B, 2, h, w): the box each cell regresses,
    the one whose Gaussian is highest there; weight (B, h, w): that Gaussian's value where
    it is at least `regression_area`, else 0 (1.0 trains the centre cells only), so cells
    next to a centre learn the box too (TTFNet's dense regression: more samples per step).
    mask (B, h, w): 1 at the centre cells. Other classes than `class_names` raise ValueError.
    """
    map_h, map_w = map_size(height, width, multiple)
    batch, num_classes = len(boxes_list), len(class_names)
    heatmap = np.zeros((batch, num_classes, map_h, map_w), dtype=np.float32)
    size = np.zeros((batch, 2, map_h, map_w), dtype=np.float32)
    offset = np.zeros((batch, 2, map_h, map_w), dtype=np.float32)
    angle = np.zeros((batch, 2, map_h, map_w), dtype=np.float32)
    weight = np.zeros((batch, map_h, map_w), dtype=np.float32)
    mask = np.zeros((batch, map_h, map_w), dtype=np.float32)
    grid_y, grid_x = np.mgrid[0:map_h, 0:map_w].astype(np.float64)
    index = {name: i for i, name in enumerate(class_names)}
    for b, boxes in enumerate(boxes_list):
        unknown = sorted(set(boxes.labels) - set(index))
        if unknown:
            raise ValueError(f"boxes of class(es) {unknown} are not among the detector's classes {class_names}")
        params = box_parameters(boxes, rotated)
        keep = (params[:, 2] > 0) & (params[:, 3] > 0)
        owner = np.zeros((map_h, map_w))  # the highest Gaussian so far at each cell
        for (cx, cy, w, h, a), label in zip(params[keep], np.array(boxes.labels, dtype=object)[keep]):
            centre_x, centre_y = cx / STRIDE, cy / STRIDE
            cell_x = int(np.clip(np.floor(centre_x), 0, map_w - 1))
            cell_y = int(np.clip(np.floor(centre_y), 0, map_h - 1))
            # the Gaussian in the box's own axes, peaking at the centre cell
            rad = np.deg2rad(a)
            dx, dy = grid_x - cell_x, grid_y - cell_y
            u = dx * np.cos(rad) + dy * np.sin(rad)
            v = -dx * np.sin(rad) + dy * np.cos(rad)
            sigma_u = max(gaussian_scale * w / STRIDE / 6, 0.5)
            sigma_v = max(gaussian_scale * h / STRIDE / 6, 0.5)
            gaussian = np.exp(-(u**2 / (2 * sigma_u**2) + v**2 / (2 * sigma_v**2)))
            gaussian[cell_y, cell_x] = 1.0
            c = index[label]
            np.maximum(heatmap[b, c], gaussian, out=heatmap[b, c])
            cells = (gaussian >= min(regression_area, 1.0)) & (gaussian >= owner)
            owner[cells] = gaussian[cells]
            weight[b][cells] = gaussian[cells]
            size[b, 0][cells], size[b, 1][cells] = np.log(w / STRIDE), np.log(h / STRIDE)
            offset[b, 0][cells] = centre_x - grid_x[cells]
            offset[b, 1][cells] = centre_y - grid_y[cells]
            angle[b, 0][cells], angle[b, 1][cells] = np.sin(2 * rad), np.cos(2 * rad)
            mask[b, cell_y, cell_x] = 1.0
    targets = {"heatmap": heatmap, "size": size, "offset": offset, "weight": weight, "mask": mask}
    if rotated:
        targets["angle"] = angle
    return {k: torch.from_numpy(v) for k, v in targets.items()}


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed (divide by the number of objects)."""
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = log_p.exp()
    positive = target.eq(1).float()
    positive_loss = positive * (1 - p) ** 2 * log_p
    negative_loss = (1 - positive) * (1 - target) ** 4 * p**2 * log_not_p
    return -(positive_loss + negative_loss).sum()


def detection_loss(outputs: dict, targets: dict, size_weight: float = 1.0, offset_weight: float = 1.0,
                   angle_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal heatmap loss per object plus L1 regression weighted by `weight`.
    Returns the total and its parts (for logs)."""
    num_objects = targets["mask"].sum().clamp_min(1.0)
    parts = {"heatmap": focal_loss(outputs["heatmap"], targets["heatmap"]) / num_objects}
    weight = targets["weight"][:, None]
    total_weight = weight.sum().clamp_min(1e-6)

    def l1(name: str) -> torch.Tensor:
        return (torch.abs(outputs[name] - targets[name]) * weight).sum() / (2 * total_weight)

    parts["size"] = l1("size")
    parts["offset"] = l1("offset")
    total = parts["heatmap"] + size_weight * parts["size"] + offset_weight * parts["offset"]
    if "angle" in targets:
        parts["angle"] = l1("angle")
        total = total + angle_weight * parts["angle"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


# ----------------------------------------------------------------------------- data
class AnnotatedImages(Dataset):
    """Records of earthsynth.data.annotations.read_dataset as sample dicts (RGB images)."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        from PIL import Image

        record = self.records[index]
        with Image.open(record["image_path"]) as image:
            pixels = np.asarray(image.convert("RGB"))
        return Sample(image=image_to_tensor(pixels), boxes=record["boxes"], image_id=record["image_id"],
                      path=record["image_path"], gsd=record.get("gsd"))


def real_subset(tiles: Dataset, fraction: float, seed: int) -> Dataset:
    """`fraction` of the tiles (at least one), picked by a permutation seeded with `seed`."""
    if not 0.0 < fraction <= 1.0:
        raise InputError("model.real_fraction", f"must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return tiles
    count = max(1, round(fraction * len(tiles)))
    order = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(seed))
    return Subset(tiles, sorted(order[:count].tolist()))


def mixed(real: Dataset, extra: Dataset, share: float) -> Dataset:
    """`real` then `extra`, each repeated (cycling) so that `share` of an epoch's draws are
    `extra` images and every image comes at least once; share 0: each image once."""
    both = ConcatDataset([real, extra])
    if share == 0:
        return both
    total = max(len(real) / (1 - share), len(extra) / share)
    extra_draws = round(total * share)
    real_draws = max(len(real), round(total) - extra_draws)
    return Subset(both, [i % len(real) for i in range(real_draws)]
                  + [len(real) + i % len(extra) for i in range(extra_draws)])


# the tiles of the run train_until_best is training, by data settings: each of its rounds
# builds the dataset again, and cutting the YELL images takes about a second
ROUND_TILES: dict[tuple, RealTiles] = {}


def tiles_key(dc) -> tuple:
    return (dc.split, dc.tile_size, tuple(dc.sources), tuple(dc.gsd_factors), dc.overlap, dc.min_visible,
            dc.exclude_test_area)


def real_training_tiles(config) -> RealTiles:
    """All the real tiles of `data` (the in-domain test area and its buffer left out when
    data.exclude_test_area), their classes checked against the model's."""
    dc, mc = config.data, config.model
    tiles = ROUND_TILES.get(tiles_key(dc)) or RealTiles(
        split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors, overlap=dc.overlap,
        min_visible=dc.min_visible, exclude_test_area=dc.exclude_test_area)
    unknown = sorted(set(tiles.class_names) - set(mc.class_names))
    if unknown:
        raise InputError("model.class_names", f"the {dc.split} tiles have class(es) {unknown} not in {mc.class_names}")
    return tiles


def dataset(config) -> Dataset:
    """The real tiles of `data` (a `real_fraction` of them) plus the `extra_data` folder,
    mixed at `extra_share`."""
    from earthsynth.data.annotations import read_dataset

    mc = config.model
    real = real_subset(real_training_tiles(config), mc.real_fraction, mc.real_fraction_seed)
    if not mc.extra_data:
        return real
    records = read_dataset(mc.extra_data, mc.extra_format, class_names=mc.class_names)
    if not records:
        raise InputError(mc.extra_data, f"no annotated images found (format {mc.extra_format})")
    return mixed(real, AnnotatedImages(records), mc.extra_share)


def collate(samples: list[Sample]) -> dict:
    """Images padded (bottom, right, with zeros) to the largest in the batch and stacked;
    boxes and every other key kept as lists."""
    batch = {key: [s.get(key) for s in samples] for key in samples[0]}
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    batch["image"] = torch.stack([F.pad(s["image"], (0, width - s["image"].shape[2], 0, height - s["image"].shape[1]))
                                  for s in samples])
    return batch


# ----------------------------------------------------------------------------- training
def augment(images: torch.Tensor, boxes_list: list[Boxes], color_jitter: float,
            scale_jitter: float = 0.0) -> tuple[torch.Tensor, list[Boxes]]:
    """Random flips, transposes (with the flips: all 8 right-angle rotations and mirrors, for
    square batches), colour jitter and a resize of the batch by a factor in [1 - scale_jitter,
    1 + scale_jitter] (boxes scaled with it), drawn from torch's global RNG (so resumes are exact)."""
    height, width = images.shape[-2:]
    images, out_boxes = random_flips(images, boxes_list, transpose=height == width)
    if color_jitter > 0:
        jitter = (torch.rand(3, images.shape[0], 1, 1, 1) * 2 - 1) * color_jitter + 1
        brightness, contrast, saturation = jitter
        gray = images.mean(dim=1, keepdim=True)
        images = gray + (images - gray) * saturation
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * contrast + mean) * brightness
        images = images.clamp(0, 1)
    if scale_jitter > 0:
        factor = 1 + (float(torch.rand(())) * 2 - 1) * scale_jitter
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
        out_boxes = [boxes.scale(size[1] / width, size[0] / height) for boxes in out_boxes]
    return images, out_boxes


def build(config) -> dict:
    mc = config.model
    detector = CompactDetector(class_names=list(mc.class_names), rotated=mc.rotated, widths=list(mc.widths),
                               head_width=mc.head_width, score_threshold=mc.score_threshold,
                               max_detections=mc.max_detections)
    return {"detector": detector, "config": config}


def loss(components: dict, batch: dict) -> torch.Tensor:
    detector = components["detector"]
    config = components["config"]
    mc = config.model
    images, boxes_list = batch["image"], list(batch["boxes"])
    if config.data.hflip:
        images, boxes_list = augment(images, boxes_list, mc.color_jitter, mc.scale_jitter)
    height, width = images.shape[-2:]
    targets = encode_targets(boxes_list, detector.class_names, height, width, detector.rotated,
                             detector.multiple, mc.gaussian_scale, mc.regression_area)
    outputs = detector(images.to(detector.device))
    targets = {k: v.to(detector.device) for k, v in targets.items()}
    total, _parts = detection_loss(outputs, targets, mc.size_weight, mc.offset_weight, mc.angle_weight)
    return total


def export(components: dict, config, directory) -> None:
    components["detector"].save_pretrained(Path(directory))


# ----------------------------------------------------------------------------- early stopping
ROUND_SCHEDULES = ("constant", "constant_with_warmup")  # learning rates that do not depend on max_steps


def train_until_best(tree: dict, samples: list, every: int, patience: int, class_agnostic: bool = False) -> dict:
    """Train the detector run config `tree` (a dict, as YAML gives it) in rounds of `every`
    steps, each resuming the last exactly through the one loop, and score `samples` (dicts
    with "image" and "boxes", the validation data) after each round: the best model by mAP50
    is kept in <output_dir>/best, training stops after `patience` rounds without improvement
    or at train.max_steps (the budget), and the curve goes to <output_dir>/curve.json.
    The rounds resume with a larger max_steps, so the learning rate schedule must not depend
    on it (ROUND_SCHEDULES). Returns the curve's dict."""
    from earthsynth.augment.detector.model import evaluate_detector, load_detector
    from earthsynth.config import load_config
    from earthsynth.data.common import atomic_write
    from earthsynth.training.loop import train

    config = load_config(tree=tree)  # checked once, before the first round
    budget, schedule = config.train.max_steps, config.train.lr_scheduler
    if schedule not in ROUND_SCHEDULES:
        raise InputError("train.lr_scheduler", f"early stopping trains in rounds and needs one of "
                                               f"{', '.join(ROUND_SCHEDULES)}, got {schedule!r}")
    if every < 1 or patience < 1:
        raise ValueError(f"every and patience must be at least 1, got {every}, {patience}")
    output_dir = Path(config.output_dir)
    curve = {"every": every, "patience": patience, "budget_steps": budget, "points": []}
    best, waited, step = -1.0, 0, 0
    ROUND_TILES[tiles_key(config.data)] = real_training_tiles(config)
    try:
        while step < budget and waited < patience:
            step = min(step + every, budget)
            rounds = dataclasses.replace(config.train, max_steps=step, resume="auto")
            result = train(dataclasses.replace(config, train=rounds), show_progress=False)
            scores = evaluate_detector(load_detector(result["final_dir"]), samples, class_agnostic=class_agnostic)
            curve["points"].append({"step": step, "mAP50": scores["mAP50"], "mAP50_95": scores["mAP50_95"],
                                    "loss": result["losses"][-1][1] if result["losses"] else None})
            if scores["mAP50"] > best:  # the first round always counts as an improvement
                best, waited = scores["mAP50"], 0
                shutil.rmtree(output_dir / "best", ignore_errors=True)
                os.replace(result["final_dir"], output_dir / "best")
                curve.update(best_step=step, best_mAP50=best, best_mAP50_95=scores["mAP50_95"])
            else:
                waited += 1
    finally:
        ROUND_TILES.clear()
    curve["stopped_at"] = step
    for name in ("checkpoints", "final"):  # the rounds' resume points and the last round's model
        shutil.rmtree(output_dir / name, ignore_errors=True)
    with atomic_write(output_dir / "curve.json") as f:
        json.dump(curve, f, indent=2)
    return curve


FAMILY = Family(
    name="detector",
    model_config=DetectorModelConfig,
    build=build,
    trainable=("detector",),
    dataset=dataset,
    collate=collate,
    loss=loss,
    export=export,
    description="compact anchor-free detector (horizontal or rotated boxes) for filtering and the downstream proof",
)

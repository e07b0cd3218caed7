"""A compact anchor-free detector (CenterNet-like), small enough to train in minutes on a CPU.

It plays two parts: the filter asks it whether a generated image shows the objects it was
conditioned on, and it is the downstream model that shows whether synthetic data helps
(trained on real tiles only vs real + synthetic, mAP on the held-out image).

Model: a conv backbone (one stage per entry of `widths`, each halving the resolution), an
FPN-style top-down merge into one map at stride 4, and heads on that map:
- heatmap: one channel per class, trained with the focal loss of CenterNet (Zhou et al.
  2019) against Gaussians centred on the boxes and sized by them;
- size: log(w / stride), log(h / stride);
- offset: the sub-cell position of the centre;
- angle (rotated models only): (sin 2a, cos 2a), since a rectangle turned by 180 degrees
  is the same one. Rotated boxes are put in the form w >= h first, so the angle is the
  direction of the long side.
Decoding keeps the 3x3 local maxima of the heatmap, the top k, above a score threshold.
Any input size works (the input is padded to a multiple of the deepest stride inside).

Training goes through the one loop (`earthsynth train configs/detector.yaml`); the data are
the real tiles of `data.split` plus, optionally, an extra dataset folder (e.g. synthetic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from earthsynth.boxes import Boxes, normalize_angle
from earthsynth.data.flips import random_flips
from earthsynth.data.common import one_line
from earthsynth.data.schema import Sample, image_to_tensor
from earthsynth.data.tiles import RealTiles
from earthsynth.errors import InputError
from earthsynth.registry import Family

STRIDE = 4  # output map resolution relative to the input


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
    size_weight: float = 1.0  # loss weights of the heads (the heatmap's is 1)
    offset_weight: float = 1.0
    angle_weight: float = 1.0
    gaussian_scale: float = 0.54  # heatmap Gaussian sigma = gaussian_scale * box side / 6 (TTFNet's alpha)
    regression_area: float = 0.3  # cells where a box's Gaussian is at least this regress it (1.0: centre cells only)
    color_jitter: float = 0.1  # training: random brightness / contrast / saturation change of up to this fraction
    score_threshold: float = 0.3  # default of detect()
    max_detections: int = 100  # default of detect()


# ----------------------------------------------------------------------------- model
def conv_norm_act(in_channels: int, out_channels: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_norm_act(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class CompactDetector(ModelMixin, ConfigMixin):
    """Anchor-free detector: heatmap + size + offset (+ angle) heads on one stride-4 map.

    forward(images) -> {"heatmap": (B, C, h, w) logits, "size": (B, 2, h, w),
    "offset": (B, 2, h, w)[, "angle": (B, 2, h, w)]} for images (B, 3, H, W) in [0, 1],
    where h, w = padded H, W / 4. `detect` decodes them to boxes in input pixels.
    """

    @register_to_config
    def __init__(self, class_names: list[str] = ("Tree",), rotated: bool = False,
                 widths: list[int] = (24, 48, 64, 96), head_width: int = 48,
                 score_threshold: float = 0.3, max_detections: int = 100):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"need at least 2 backbone stages (stride 4 output), got widths={list(widths)}")
        if not class_names:
            raise ValueError("need at least one class name")
        self.class_names = list(class_names)
        self.rotated = rotated
        # stage i runs at stride 2 ** (i + 1); the first is a plain strided conv (full-size
        # maps are the costly ones on a CPU), the others add a residual block
        stages, in_channels = [], 3
        for i, width in enumerate(widths):
            layers = [conv_norm_act(in_channels, width, stride=2)]
            if i > 0:
                layers.append(ResidualBlock(width))
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        # top-down merge of the stride >= 4 stages into one stride-4 map
        self.lateral = nn.ModuleList([nn.Conv2d(w, head_width, 1) for w in widths[1:]])
        self.merge = conv_norm_act(head_width, head_width)

        def head(out_channels: int) -> nn.Sequential:
            return nn.Sequential(conv_norm_act(head_width, head_width), nn.Conv2d(head_width, out_channels, 1))

        self.heatmap_head = head(len(self.class_names))
        regression = 4 + (2 if rotated else 0)  # size (2), offset (2), angle (2)
        self.regression_head = head(regression)
        # start with a 1 % object prior so the focal loss does not open on a flood of positives
        nn.init.constant_(self.heatmap_head[-1].bias, -math.log(99.0))
        nn.init.zeros_(self.regression_head[-1].bias)
        with torch.no_grad():
            self.regression_head[-1].bias[:2] = math.log(16.0 / STRIDE)  # a typical crown of 16 px
            self.regression_head[-1].bias[2:4] = 0.5  # centres in the middle of their cell

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (the deepest stride)."""
        return 2 ** len(self.stages)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        # per image and channel standardisation: sites differ in brightness and colour
        mean = images.mean(dim=(2, 3), keepdim=True)
        std = images.std(dim=(2, 3), keepdim=True).clamp_min(0.02)
        x = (images - mean) / std
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        merged = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[1:-1])):
            merged = F.interpolate(merged, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        merged = self.merge(merged)
        regression = self.regression_head(merged)
        outputs = {"heatmap": self.heatmap_head(merged), "size": regression[:, 0:2], "offset": regression[:, 2:4]}
        if self.rotated:
            outputs["angle"] = regression[:, 4:6]
        return outputs

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float | None = None,
               max_detections: int | None = None) -> list[tuple[Boxes, np.ndarray]]:
        """images (B, 3, H, W) (or one (3, H, W)) float in [0, 1] -> per image (Boxes with class
        labels in input pixels, scores (N,)), best first. Defaults from the model config."""
        if images.ndim == 3:
            images = images[None]
        threshold = self.config.score_threshold if score_threshold is None else score_threshold
        top_k = self.config.max_detections if max_detections is None else max_detections
        was_training = self.training
        self.eval()
        try:
            outputs = self(images.to(self.device, self.dtype))
        finally:
            self.train(was_training)
        height, width = images.shape[-2:]
        return decode(outputs, self.class_names, height, width, self.rotated, threshold, top_k)


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


def decode(outputs: dict, class_names: list[str], height: int, width: int, rotated: bool,
           score_threshold: float = 0.3, max_detections: int = 100) -> list[tuple[Boxes, np.ndarray]]:
    """Head maps -> per image (Boxes in input pixels, scores), best first.

    Peaks are the cells equal to the maximum of their 3x3 neighbourhood; the best
    `max_detections` over all classes above `score_threshold` are kept (cells wholly in
    the padding never). Centres are kept inside the image, horizontal boxes clipped to it.
    """
    heat = torch.sigmoid(outputs["heatmap"].float())
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    batch, num_classes, map_h, map_w = heat.shape
    # cells wholly in the padding never count
    cells_y, cells_x = torch.arange(map_h, device=heat.device), torch.arange(map_w, device=heat.device)
    padding = (cells_y[:, None] * STRIDE >= height) | (cells_x[None, :] * STRIDE >= width)
    peaks = peaks.masked_fill(padding, -1.0)
    k = max(0, min(max_detections, num_classes * map_h * map_w))
    scores, flat = peaks.reshape(batch, -1).topk(k, dim=1)
    results = []
    for b in range(batch):
        keep = scores[b] >= score_threshold
        s, f = scores[b][keep], flat[b][keep]
        cls, cell = f // (map_h * map_w), f % (map_h * map_w)
        cell_y, cell_x = cell // map_w, cell % map_w
        offset = outputs["offset"][b, :, cell_y, cell_x].float()
        size = outputs["size"][b, :, cell_y, cell_x].float().clamp(-10, 10).exp() * STRIDE
        cx = ((cell_x.float() + offset[0]) * STRIDE).clamp(0, width)
        cy = ((cell_y.float() + offset[1]) * STRIDE).clamp(0, height)
        if rotated:
            sin2, cos2 = outputs["angle"][b, :, cell_y, cell_x].float()
            angle = torch.rad2deg(0.5 * torch.atan2(sin2, cos2))
        else:
            angle = torch.zeros_like(cx)
        rboxes = torch.stack([cx, cy, size[0], size[1], angle], dim=1).cpu().numpy().astype(np.float64)
        s, cls = s.cpu().numpy(), cls.cpu().numpy()
        labels = [class_names[c] for c in cls]
        if rotated:
            rboxes[:, 4] = normalize_angle(rboxes[:, 4])
            boxes = Boxes(rboxes, labels, rotated=True)
        else:
            xyxy = Boxes(rboxes, labels).xyxy()
            xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
            xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
            boxes = Boxes.from_xyxy(xyxy, labels)
        results.append((boxes, s.astype(np.float64)))
    return results


def load_detector(directory) -> CompactDetector:
    """A detector saved with `save_pretrained` (or a training run folder holding final/),
    in eval mode. InputError if the folder is not a detector checkpoint."""
    path = Path(directory)
    if (path / "final" / "config.json").is_file() and not (path / "config.json").is_file():
        path = path / "final"
    if not path.is_dir():
        raise InputError(path, "no such folder (expected a detector checkpoint)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InputError(path, "not a detector checkpoint (no config.json)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(config_file, f"cannot read: {one_line(err)}") from None
    if class_name != CompactDetector.__name__:
        raise InputError(path, f"not a detector checkpoint (config.json is for {class_name or 'an unknown class'})")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(path, "not a detector checkpoint (no weights file)")
    try:
        detector = CompactDetector.from_pretrained(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise InputError(path, f"cannot load the detector: {one_line(err)}") from None
    return detector.eval()


def evaluate_detector(detector: CompactDetector, samples, class_agnostic: bool = False,
                      score_threshold: float = 0.05, max_detections: int = 300) -> dict:
    """COCO mAP (earthsynth.augment.metrics.detection_map, fractions) of `detector` on sample
    dicts with "image" and "boxes" (e.g. RealTiles("test", tile_size=200, gsd_factors=(2,))).

    class_agnostic: every box and detection counts as one class "object" (to score a
    "Tree" detector on data labelled "Alive" / "Dead"). Images run one at a time, so they
    may differ in size.
    """
    from earthsynth.augment.metrics import detection_map

    ground_truth, predictions = [], []
    for index, sample in enumerate(samples):
        image, boxes = sample["image"], sample["boxes"]
        predicted, scores = detector.detect(image[None], score_threshold, max_detections)[0]
        if class_agnostic:
            boxes = Boxes(boxes.rboxes, ["object"] * len(boxes), boxes.rotated, boxes.difficult)
            predicted = Boxes(predicted.rboxes, ["object"] * len(predicted), predicted.rotated)
        ground_truth.append((sample.get("image_id", str(index)), boxes, image.shape[-1], image.shape[-2]))
        predictions.append((predicted, scores))
    class_names = ["object"] if class_agnostic else detector.class_names
    return detection_map(ground_truth, predictions, class_names)


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


def dataset(config) -> Dataset:
    """The real tiles of `data` (a `real_fraction` of them) plus the `extra_data` folder."""
    from earthsynth.data.annotations import read_dataset

    dc, mc = config.data, config.model
    tiles = RealTiles(split=dc.split, tile_size=dc.tile_size, sources=dc.sources, gsd_factors=dc.gsd_factors,
                      overlap=dc.overlap, min_visible=dc.min_visible)
    unknown = sorted(set(tiles.class_names) - set(mc.class_names))
    if unknown:
        raise InputError("model.class_names", f"the {dc.split} tiles have class(es) {unknown} not in {mc.class_names}")
    parts = [real_subset(tiles, mc.real_fraction, mc.real_fraction_seed)]
    if mc.extra_data:
        records = read_dataset(mc.extra_data, mc.extra_format, class_names=mc.class_names)
        if not records:
            raise InputError(mc.extra_data, f"no annotated images found (format {mc.extra_format})")
        parts.append(AnnotatedImages(records))
    return ConcatDataset(parts) if len(parts) > 1 else parts[0]


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
def augment(images: torch.Tensor, boxes_list: list[Boxes], color_jitter: float) -> tuple[torch.Tensor, list[Boxes]]:
    """Random flips, transposes (with the flips: all 8 right-angle rotations and mirrors, for
    square batches) and colour jitter, drawn from torch's global RNG (so resumes are exact)."""
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
        images, boxes_list = augment(images, boxes_list, mc.color_jitter)
    height, width = images.shape[-2:]
    targets = encode_targets(boxes_list, detector.class_names, height, width, detector.rotated,
                             detector.multiple, mc.gaussian_scale, mc.regression_area)
    outputs = detector(images.to(detector.device))
    targets = {k: v.to(detector.device) for k, v in targets.items()}
    total, _parts = detection_loss(outputs, targets, mc.size_weight, mc.offset_weight, mc.angle_weight)
    return total


def export(components: dict, config, directory) -> None:
    components["detector"].save_pretrained(Path(directory))


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

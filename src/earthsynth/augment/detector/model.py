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

This module holds the model and what inference needs (decode, load, evaluate); training
(config, targets, loss, data, FAMILY) is in train.py: `earthsynth train configs/detector.yaml`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthsynth.boxes import Boxes, normalize_angle
from earthsynth.data.common import one_line
from earthsynth.errors import InputError
from earthsynth.weights import use_safetensors

STRIDE = 4  # output map resolution relative to the input


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
    safetensors = use_safetensors(path)  # pickled weights refused unless allowed
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise InputError(path, "not a detector checkpoint (no weights file)")
    try:
        detector = CompactDetector.from_pretrained(path, use_safetensors=safetensors)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise InputError(path, f"cannot load the detector: {one_line(err)}") from None
    return detector.eval()


def evaluate_detector(detector: CompactDetector, samples, class_agnostic: bool = False,
                      score_threshold: float = 0.05, max_detections: int = 300, batch_size: int = 32) -> dict:
    """COCO mAP (earthsynth.augment.metrics.detection_map, fractions) of `detector` on sample
    dicts with "image" and "boxes" (e.g. RealTiles("test", tile_size=200, gsd_factors=(2,))).

    class_agnostic: every box and detection counts as one class "object" (to score a
    "Tree" detector on data labelled "Alive" / "Dead"). Images of the same size run in
    batches of `batch_size` (the model normalises each image on its own, so a batch gives
    what one at a time gives); they may differ in size.
    """
    from earthsynth.augment.metrics import detection_map

    samples = list(samples)
    by_size: dict[tuple, list[int]] = {}
    for index, sample in enumerate(samples):
        by_size.setdefault(tuple(sample["image"].shape), []).append(index)
    detections: list = [None] * len(samples)
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images = torch.stack([samples[i]["image"] for i in chunk])
            for i, result in zip(chunk, detector.detect(images, score_threshold, max_detections)):
                detections[i] = result
    ground_truth, predictions = [], []
    for index, (sample, (predicted, scores)) in enumerate(zip(samples, detections)):
        image, boxes = sample["image"], sample["boxes"]
        if class_agnostic:
            boxes = Boxes(boxes.rboxes, ["object"] * len(boxes), boxes.rotated, boxes.difficult)
            predicted = Boxes(predicted.rboxes, ["object"] * len(predicted), predicted.rotated)
        ground_truth.append((sample.get("image_id", str(index)), boxes, image.shape[-1], image.shape[-2]))
        predictions.append((predicted, scores))
    class_names = ["object"] if class_agnostic else detector.class_names
    return detection_map(ground_truth, predictions, class_names)

"""A small crop classifier trained on real object crops, for the semantic-consistency filter.

A generated image comes with the boxes it was conditioned on. The filter crops every box
(its horizontal bounding box plus a context margin), and this classifier, trained on crops
of REAL objects and of real background, says whether the crop shows the object class it
was asked for. The model has the object classes plus a last "background" class.

Crops are cut by one function, `extract_crops`, for training and for inference, so both
see the same geometry: the box's enclosing horizontal box, widened by `context` times its
size on every side, resampled (anti-aliased) to `crop_size` x `crop_size`; whatever lies
outside the image is zero.

Train:    earthsynth train configs/classifier.yaml (train.py: config, real crops, loss, FAMILY)
Use:      model = load_classifier("runs/classifier/final")
          probabilities = model.classify(images, boxes_list)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from earthsynth.boxes import Boxes
from earthsynth.errors import InputError
from earthsynth.weights import use_safetensors

BACKGROUND = "background"


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
    safetensors = use_safetensors(directory)  # pickled weights refused unless allowed
    try:
        model = CropClassifier.from_pretrained(directory, use_safetensors=safetensors)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(directory, f"cannot load the classifier weights ({str(err).splitlines()[0]})") from None
    return model.eval()


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

"""Small helpers the generation families share."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images."""
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in array]


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def gsd_values(gsds: list[float | None]) -> torch.Tensor:
    """(B, 1) float tensor, NaN where the ground sample distance is unknown."""
    return torch.tensor([[np.nan if g is None else float(g)] for g in gsds], dtype=torch.float32)


def bundled_checkpoint(name: str):
    """The folder of a bundled default checkpoint (src/earthsynth/assets/<name>)."""
    from pathlib import Path

    from earthsynth.errors import InputError

    folder = Path(__file__).resolve().parents[1] / "assets" / name
    if not folder.is_dir():
        raise InputError(f"assets/{name}", "bundled checkpoint missing; train it with "
                         f"`earthsynth train configs/{name}.yaml` and pass the folder explicitly")
    return folder

"""Object layouts (boxes with classes) -> layout tokens for cross-attention, and masks.

Every box, horizontal or rotated, is given as its 4 corners normalised to [0, 1] image
coordinates (x to the right, y down), in the corner order of `earthsynth.boxes`. A
horizontal box is simply a quad whose corners are axis aligned.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def fourier_features(x: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """(..., D) coordinates in [0, 1] -> (..., D * 2 * num_frequencies) sin/cos features.

    Frequencies are pi * 2^k, k = 0..F-1: the lowest one maps [0, 1] onto half a turn, so
    sin and cos together tell every coordinate apart; the highest resolves ~1/2^F.
    """
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)
    angles = x.unsqueeze(-1) * freqs  # (..., D, F)
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (..., D, 2F)
    return features.flatten(-2)


class LayoutEncoder(ModelMixin, ConfigMixin):
    """Boxes (corners + class embedding) -> one token per object slot.

    Empty slots and dropped layouts (classifier-free guidance) both get the same learned
    null token, so "no object here" and "no layout given" look alike to the UNet.
    """

    @register_to_config
    def __init__(
        self,
        max_objects: int = 32,
        class_embed_dim: int = 384,
        out_dim: int = 768,
        num_frequencies: int = 8,
        hidden_dim: int | None = None,
    ):
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        in_dim = 8 * 2 * num_frequencies + class_embed_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )
        self.null_token = nn.Parameter(torch.randn(out_dim) * 0.02)

    def forward(
        self,
        corners: torch.Tensor,
        class_embeddings: torch.Tensor,
        valid: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """corners (B, N, 4, 2) in [0, 1]; class_embeddings (B, N, class_embed_dim);
        valid (B, N) bool; drop (B,) bool, True = whole layout replaced by null tokens.
        Returns tokens (B, N, out_dim)."""
        if corners.ndim != 4 or corners.shape[2:] != (4, 2):
            raise ValueError(f"corners must have shape (B, N, 4, 2), got {tuple(corners.shape)}")
        batch, num = corners.shape[:2]
        if num > self.config.max_objects:
            raise ValueError(f"{num} object slots exceed max_objects={self.config.max_objects}")
        if class_embeddings.shape != (batch, num, self.config.class_embed_dim):
            raise ValueError(
                f"class_embeddings must have shape {(batch, num, self.config.class_embed_dim)}, "
                f"got {tuple(class_embeddings.shape)}"
            )
        if valid.shape != (batch, num):
            raise ValueError(f"valid must have shape {(batch, num)}, got {tuple(valid.shape)}")

        use_null = ~valid.to(device=corners.device, dtype=torch.bool)
        if drop is not None:
            if drop.shape != (batch,):
                raise ValueError(f"drop must have shape ({batch},), got {tuple(drop.shape)}")
            use_null = use_null | drop.to(device=corners.device, dtype=torch.bool)[:, None]

        # Empty slots may hold anything (NaN padding included): zero them before the MLP so
        # nothing non-finite reaches the gradient.
        keep = ~use_null[..., None]
        coords = torch.where(keep, corners.flatten(2).float(), 0.0)  # (B, N, 8)
        classes = torch.where(keep, class_embeddings.float(), 0.0)
        features = torch.cat(
            [fourier_features(coords, self.config.num_frequencies), classes], dim=-1
        )
        tokens = self.mlp(
            features.to(self.null_token.dtype)
        )  # features in float32, then weights' dtype
        return torch.where(use_null[..., None], self.null_token, tokens)


def rasterize_quads(
    corners: torch.Tensor, valid: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Convex quads -> (B, N, H, W) float masks of the pixels whose centre lies inside.

    corners (B, N, 4, 2) normalised to [0, 1] (x right, y down), so the same layout gives
    masks at any resolution (image or latent). Pixel (i, j) has its centre at
    ((j + 0.5) / W, (i + 0.5) / H). A centre is inside when it lies on the inner side of all
    four edges; the inner side comes from the sign of the quad's area, so either corner
    winding works. Centres exactly on an edge count as inside. Invalid slots and quads of
    zero area give all-zero masks.
    """
    if corners.ndim != 4 or corners.shape[2:] != (4, 2):
        raise ValueError(f"corners must have shape (B, N, 4, 2), got {tuple(corners.shape)}")
    corners = corners.float()
    ys = (torch.arange(height, device=corners.device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=corners.device, dtype=torch.float32) + 0.5) / width
    px, py = xs.view(1, 1, 1, width), ys.view(1, 1, height, 1)

    x, y = corners[..., 0], corners[..., 1]  # (B, N, 4)
    x_next, y_next = x.roll(-1, dims=-1), y.roll(-1, dims=-1)
    # Shoelace: twice the signed area; its sign says which side of each edge is inside.
    orientation = torch.sign((x * y_next - x_next * y).sum(-1))  # (B, N)

    inside = (valid.to(corners.device).bool() & (orientation != 0))[..., None, None]
    inside = inside.expand(*corners.shape[:2], height, width)
    for k in range(4):  # the four edges; everything else is vectorised
        ex = (x_next[..., k] - x[..., k])[..., None, None]
        ey = (y_next[..., k] - y[..., k])[..., None, None]
        cross = ex * (py - y[..., k, None, None]) - ey * (px - x[..., k, None, None])
        inside = inside & (cross * orientation[..., None, None] >= 0)
    return inside.float()


def layout_from_boxes(boxes_per_image, width: int, height: int, max_objects: int) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """`earthsynth.boxes.Boxes` of each image -> the LayoutEncoder's inputs.

    Returns corners (B, max_objects, 4, 2) normalised by the image size, valid (B, max_objects)
    and the labels of each image's slots ('' for empty ones), to be embedded as class text.
    More boxes than `max_objects` is an error, not a silent cut.
    """
    batch = len(boxes_per_image)
    corners = torch.zeros(batch, max_objects, 4, 2)
    valid = torch.zeros(batch, max_objects, dtype=torch.bool)
    labels: list[list[str]] = []
    scale = torch.tensor([width, height], dtype=torch.float32)
    for i, boxes in enumerate(boxes_per_image):  # Boxes are numpy, per image; the rest is batched
        if len(boxes) > max_objects:
            raise ValueError(f"image {i} has {len(boxes)} boxes, more than max_objects={max_objects}")
        corners[i, : len(boxes)] = torch.from_numpy(boxes.corners()).float() / scale
        valid[i, : len(boxes)] = True
        labels.append(list(boxes.labels) + [""] * (max_objects - len(boxes)))
    return corners, valid, labels

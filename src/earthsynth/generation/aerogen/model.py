"""The aerogen denoiser: a diffusers UNet whose cross-attention also reads the layout.

Layout conditioning, after the AeroGen paper, in three parts:
- layout tokens: one token per object (Fourier features of its 4 normalised corners + the
  text embedding of its class name, `earthsynth.conditioning.LayoutEncoder`), plus a
  background token;
- decoupled cross-attention: every cross-attention layer attends to the text as usual and,
  with its own key/value projections, to the layout tokens; the two results are added;
- mask attention: a pixel attends only to the tokens of the objects whose rasterised
  (rotated) polygon covers it, and to the background token.
On top of that the rasterised layout (object occupancy and object outlines) is given to the
UNet as extra input channels. That is our addition: small models trained for minutes on a
CPU place objects from the canvas long before they learn it through attention alone.

A dropped layout (classifier-free guidance) is all null tokens, no object masks and an
empty canvas, so "no layout" is one well-defined input that guidance can push away from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthsynth.conditioning.layout import rasterize_quads


@dataclass
class LayoutInputs:
    """What the layout attention needs in every cross-attention layer.

    tokens (B, 1 + N, D): the background token then one token per object slot.
    masks (B, 1 + N, H, W): where each token may be attended from, at image resolution
        (the background row is all ones); each layer pools it to its own resolution.
    canvas (B, 2, H, W): the rasterised layout given as extra input channels, or None.
    The layout is the same in every denoising step, so the pipeline builds this once per
    call and the pooled masks are kept per layer resolution.
    """

    tokens: torch.Tensor
    masks: torch.Tensor
    canvas: torch.Tensor | None = None
    pooled: dict = field(default_factory=dict, repr=False)

    def allowed(self, positions: int) -> torch.Tensor:
        """(B, 1 + N, positions) bool: which token each position of a layer may attend to."""
        if positions not in self.pooled:
            self.pooled[positions] = pool_masks(self.masks, positions) > 0.5
        return self.pooled[positions]


class SelfAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor, accepting (and ignoring) the layout the UNet hands to
    every attention layer through cross_attention_kwargs."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 layout: LayoutInputs | None = None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def pool_masks(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K, h * w) at the resolution of a layer with `tokens` positions.
    Max pooling, so an object smaller than a cell still claims the cell it lies in."""
    height, width = masks.shape[-2:]
    factor = round(math.sqrt(height * width / tokens))
    h, w = height // factor, width // factor
    if h * w != tokens:
        raise ValueError(f"cannot match a {height}x{width} layout to an attention layer of {tokens} positions")
    return F.adaptive_max_pool2d(masks, (h, w)).flatten(2)


class LayoutAttnProcessor(nn.Module):
    """Text cross-attention + masked layout cross-attention with separate key/value
    projections (decoupled), summed."""

    def __init__(self, inner_dim: int, layout_dim: int, scale: float = 1.0):
        super().__init__()
        self.to_k_layout = nn.Linear(layout_dim, inner_dim, bias=False)
        self.to_v_layout = nn.Linear(layout_dim, inner_dim, bias=False)
        self.scale = scale

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 layout: LayoutInputs | None = None):
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("the layout processor expects the (B, HW, C) tokens of a transformer block")
        residual = hidden_states
        batch, positions, _ = hidden_states.shape
        heads = attn.heads

        def split_heads(x):
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query = split_heads(attn.to_q(hidden_states))
        text = encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], batch)
            attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
        out = F.scaled_dot_product_attention(query, split_heads(attn.to_k(text)), split_heads(attn.to_v(text)),
                                             attn_mask=attention_mask)
        if layout is not None:
            allowed = layout.allowed(positions)  # (B, K, HW)
            bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~allowed, float("-inf")).transpose(1, 2)[:, None]  # (B, 1, HW, K)
            tokens = layout.tokens.to(query.dtype)
            out_layout = F.scaled_dot_product_attention(
                query, split_heads(self.to_k_layout(tokens)), split_heads(self.to_v_layout(tokens)), attn_mask=bias)
            out = out + self.scale * out_layout
        out = out.transpose(1, 2).reshape(batch, positions, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def layout_canvas(masks: torch.Tensor) -> torch.Tensor:
    """Object masks (B, N, H, W) -> (B, 2, H, W): occupancy and object outlines (so
    touching crowns stay separate objects), in [-1, 1] like the pixels."""
    occupancy = masks.amax(1, keepdim=True)
    eroded = -F.max_pool2d(-masks, 3, stride=1, padding=1)
    outlines = (masks - eroded).amax(1, keepdim=True)
    return torch.cat([occupancy, outlines], dim=1) * 2 - 1


class AeroGenUNet(ModelMixin, ConfigMixin):
    """UNet2DConditionModel + layout attention in every cross-attention layer + layout canvas.

    forward(sample, timestep, text_tokens, text_mask, layout_tokens, corners, valid) where the
    layout tokens come from the LayoutEncoder and corners (B, N, 4, 2) are normalised to [0, 1].
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64, 128, 192),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_head_dim: int = 16,
        cross_attention_dim: int = 384,
        layout_dim: int = 384,
        layout_scale: float = 1.0,
        use_canvas: bool = True,
    ):
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels + (2 if use_canvas else 0),
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=min(32, block_out_channels[0]),
        )
        processors = {}
        for name, module in self.unet.named_modules():
            if isinstance(module, Attention):
                if name.endswith("attn2"):
                    processors[f"{name}.processor"] = LayoutAttnProcessor(module.to_k.out_features, layout_dim, layout_scale)
                else:
                    processors[f"{name}.processor"] = SelfAttnProcessor()
        self.unet.set_attn_processor(processors)

    def prepare_layout(self, layout_tokens, corners, valid, height: int, width: int) -> LayoutInputs:
        """Rasterise the layout once: object masks, their pooled versions and the canvas."""
        object_masks = rasterize_quads(corners, valid, height, width)  # (B, N, H, W)
        background = torch.ones_like(object_masks[:, :1])
        canvas = layout_canvas(object_masks) if self.config.use_canvas else None
        return LayoutInputs(tokens=layout_tokens, masks=torch.cat([background, object_masks], dim=1), canvas=canvas)

    def forward(self, sample, timestep, text_tokens, text_mask, layout_tokens=None, corners=None, valid=None,
                layout: LayoutInputs | None = None):
        """Either layout_tokens + corners + valid, or a LayoutInputs from prepare_layout."""
        if layout is None:
            layout = self.prepare_layout(layout_tokens, corners, valid, *sample.shape[-2:])
        if layout.canvas is not None:
            sample = torch.cat([sample, layout.canvas.to(sample.dtype)], dim=1)
        return self.unet(sample, timestep, encoder_hidden_states=text_tokens, encoder_attention_mask=text_mask,
                         cross_attention_kwargs={"layout": layout}).sample


def encode_layout(layout_encoder, corners: torch.Tensor, class_embeddings: torch.Tensor, valid: torch.Tensor,
                  drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LayoutEncoder tokens with the background token in front, and the object slots that
    stay visible (valid and not dropped), for AeroGenUNet.forward."""
    tokens = layout_encoder(corners, class_embeddings, valid, drop=drop)
    background = layout_encoder.null_token.expand(tokens.shape[0], 1, -1)
    visible = valid.to(tokens.device) & ~drop.to(tokens.device)[:, None]
    return torch.cat([background, tokens], dim=1), visible

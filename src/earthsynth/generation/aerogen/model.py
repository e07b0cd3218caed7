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
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from earthsynth.conditioning.layout import rasterize_quads
from earthsynth.generation.metadata_unet import unet_arguments
from earthsynth.generation.stable_diffusion import check_loaded, read_unet


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


class SelfAttnProcessor:
    """Self-attention: runs whichever diffusers processor the attention switches chose
    (SDPA by default, sliced, xformers...), accepting (and ignoring) the layout the UNet
    hands to every attention layer through cross_attention_kwargs."""

    def __init__(self, processor=None):
        self.processor = processor if processor is not None else AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 layout: LayoutInputs | None = None, layout_scale: float = 1.0):
        extra = {} if temb is None else {"temb": temb}  # not every diffusers processor takes temb
        return self.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **extra)


def pool_masks(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K, h * w) at the resolution of a layer with `tokens` positions.
    Max pooling, so an object smaller than a cell still claims the cell it lies in."""
    height, width = masks.shape[-2:]
    factor = round(math.sqrt(height * width / tokens))
    h, w = height // factor, width // factor
    if h * w != tokens:
        raise ValueError(f"cannot match a {height}x{width} layout to an attention layer of {tokens} positions")
    return F.adaptive_max_pool2d(masks, (h, w)).flatten(2)


def attend(query, key, value, bias, kind, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for (B, heads, L, d) queries and (B, heads, S, d) keys and
    values, computed the way the diffusers processor `kind` computes it: SDPA (AttnProcessor2_0,
    and AttnProcessor, whose plain softmax gives the same numbers), in slices of `slice_size`
    (batch x head) rows (SlicedAttnProcessor) or by xformers (XFormersAttnProcessor).
    bias is additive, broadcastable to (B, heads, L, S), or None."""
    if isinstance(kind, (AttnProcessor2_0, AttnProcessor)):
        # no explicit scale: the default 1/sqrt(d) keeps the bundled model's numbers bit for bit
        return F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    batch, heads, length, dim = query.shape
    rows = batch * heads
    query, key, value = (x.reshape(rows, -1, dim) for x in (query, key, value))
    if bias is not None:
        bias = bias.to(query.dtype).expand(batch, heads, length, key.shape[1]).reshape(rows, length, -1)
    if isinstance(kind, SlicedAttnProcessor):
        out = torch.empty_like(query)
        for start in range(0, rows, kind.slice_size):
            part = slice(start, start + kind.slice_size)
            out[part] = F.scaled_dot_product_attention(query[part], key[part], value[part],
                                                       attn_mask=None if bias is None else bias[part], scale=scale)
    elif isinstance(kind, XFormersAttnProcessor):
        import xformers.ops

        if bias is not None:
            # xformers wants the bias's rows 8-aligned in memory: pad the storage, keep the view
            aligned = -(-bias.shape[-1] // 8) * 8
            bias = bias.new_zeros(rows, length, aligned)[..., : bias.shape[-1]].copy_(bias)
        out = xformers.ops.memory_efficient_attention(query.contiguous(), key.contiguous(), value.contiguous(),
                                                      attn_bias=bias, op=kind.attention_op, scale=scale)
    else:
        raise ValueError(f"the layout attention cannot run as {type(kind).__name__}")
    return out.reshape(batch, heads, length, dim)


class LayoutAttnProcessor(nn.Module):
    """Text cross-attention + masked layout cross-attention with separate key/value
    projections (decoupled), summed.

    `kind` is the diffusers processor whose way of computing attention this one follows
    (SDPA by default); the attention switches set it (see LayoutAttention), the layout
    projections stay."""

    def __init__(self, inner_dim: int, layout_dim: int, scale: float = 1.0):
        super().__init__()
        self.to_k_layout = nn.Linear(layout_dim, inner_dim, bias=False)
        self.to_v_layout = nn.Linear(layout_dim, inner_dim, bias=False)
        self.scale = scale
        self.kind = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 layout: LayoutInputs | None = None, layout_scale: float = 1.0):
        """layout_scale (a cross_attention_kwargs entry) multiplies the layout attention's
        contribution at inference: 0 ignores the boxes' tokens."""
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
        out = attend(query, split_heads(attn.to_k(text)), split_heads(attn.to_v(text)), attention_mask, self.kind,
                     attn.scale)
        if layout is not None:
            allowed = layout.allowed(positions)  # (B, K, HW)
            bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
            bias = bias.masked_fill(~allowed, float("-inf")).transpose(1, 2)[:, None]  # (B, 1, HW, K)
            tokens = layout.tokens.to(query.dtype)
            out_layout = attend(query, split_heads(self.to_k_layout(tokens)), split_heads(self.to_v_layout(tokens)),
                                bias, self.kind, attn.scale)
            out = out + self.scale * layout_scale * out_layout
        out = out.transpose(1, 2).reshape(batch, positions, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class LayoutAttention(Attention):
    """diffusers' Attention whose processor switches keep our processors.

    Every switch (`set_attn_processor`, `set_default_attn_processor`, attention slicing,
    xformers on and off) ends in `set_processor` with a stock diffusers processor, which
    would drop the layout attention and its trained projections. Here the stock processor
    only chooses how attention is computed: a self-attention layer runs it, a layout layer
    follows it (SDPA, sliced or xformers; see `attend`). The UNet's attention modules are
    turned into this class after diffusers builds them (same state, same keys)."""

    def set_processor(self, processor) -> None:
        current = getattr(self, "processor", None)
        if isinstance(processor, (LayoutAttnProcessor, SelfAttnProcessor)):
            super().set_processor(processor)
        elif isinstance(current, SelfAttnProcessor):
            current.processor = processor
        elif isinstance(current, LayoutAttnProcessor):
            if not isinstance(processor, (AttnProcessor2_0, AttnProcessor, SlicedAttnProcessor, XFormersAttnProcessor)):
                raise ValueError(f"{type(processor).__name__} would replace the layout attention (the boxes would be "
                                 "ignored); the layout layers run as AttnProcessor2_0, AttnProcessor, "
                                 "SlicedAttnProcessor or XFormersAttnProcessor")
            current.kind = processor
        else:
            super().set_processor(processor)


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
        unet_extra: dict | None = None,
    ):
        """unet_extra: further UNet2DConditionModel arguments, e.g. the rest of a Stable
        Diffusion UNet's config (use_linear_projection, norm_num_groups...)."""
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_arguments(
            unet_extra, sample_size=sample_size, in_channels=in_channels + (2 if use_canvas else 0),
            out_channels=out_channels, block_out_channels=block_out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim))
        processors = {}
        for name, module in self.unet.named_modules():
            if isinstance(module, Attention):
                module.__class__ = LayoutAttention  # so diffusers' attention switches keep the layout
                if name.endswith("attn2"):
                    processors[f"{name}.processor"] = LayoutAttnProcessor(module.to_k.out_features, layout_dim, layout_scale)
                else:
                    processors[f"{name}.processor"] = SelfAttnProcessor()
        self.unet.set_attn_processor(processors)

    @classmethod
    def from_stable_diffusion(cls, folder, layout_dim: int, use_canvas: bool = True) -> AeroGenUNet:
        """A Stable Diffusion folder's UNet with its weights as they are, and what the layout
        adds starting silent: the canvas channels of the input convolution and the layout
        values are zero (the layout keys keep their random start, so they learn once the
        values do), so at step 0 the model gives exactly the SD UNet's output."""
        sd = read_unet(folder)
        model = cls(**sd.named, layout_dim=layout_dim, use_canvas=use_canvas, unet_extra=sd.extra)
        weights = dict(sd.weights)
        if use_canvas:  # SD's input convolution, plus zero weights for the two canvas channels
            conv = weights["conv_in.weight"]
            weights["conv_in.weight"] = torch.cat([conv, conv.new_zeros(conv.shape[0], 2, *conv.shape[2:])], dim=1)
        fresh = {name for name in model.unet.state_dict() if "_layout." in name}
        missing, unexpected = model.unet.load_state_dict(weights, strict=False)
        check_loaded(sd, missing, unexpected, fresh)
        for processor in model.unet.attn_processors.values():
            if isinstance(processor, LayoutAttnProcessor):
                nn.init.zeros_(processor.to_v_layout.weight)
        # what earthsynth adds to the SD UNet, trained even when only the added parts train
        model.added_prefixes = tuple(f"unet.{name}" for name in sorted(fresh)) + (
            ("unet.conv_in.",) if use_canvas else ())
        return model

    # diffusers' attention switches, on the inner UNet: its attention layers are LayoutAttention,
    # so each switch changes how attention is computed and keeps the layout attention
    @property
    def attn_processors(self) -> dict:
        return self.unet.attn_processors

    def set_attn_processor(self, processor) -> None:
        self.unet.set_attn_processor(processor)

    def set_default_attn_processor(self) -> None:
        """PyTorch's SDPA everywhere, as after loading (the inner UNet's own version refuses our processors)."""
        self.unet.set_attn_processor(AttnProcessor2_0())

    def set_attention_slice(self, slice_size="auto") -> None:
        """What pipe.enable_attention_slicing calls (None turns slicing off)."""
        self.unet.set_attention_slice(slice_size)

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op=None) -> None:
        if valid:
            import importlib.util

            if importlib.util.find_spec("xformers") is None or not torch.cuda.is_available():
                raise ValueError("xformers attention needs the xformers package and a CUDA device; "
                                 "the model keeps PyTorch's SDPA attention")
        super().set_use_memory_efficient_attention_xformers(valid, attention_op)

    def prepare_layout(self, layout_tokens, corners, valid, height: int, width: int) -> LayoutInputs:
        """Rasterise the layout once: object masks, their pooled versions and the canvas."""
        object_masks = rasterize_quads(corners, valid, height, width)  # (B, N, H, W)
        background = torch.ones_like(object_masks[:, :1])
        canvas = layout_canvas(object_masks) if self.config.use_canvas else None
        return LayoutInputs(tokens=layout_tokens, masks=torch.cat([background, object_masks], dim=1), canvas=canvas)

    def forward(self, sample, timestep, text_tokens, text_mask, layout_tokens=None, corners=None, valid=None,
                layout: LayoutInputs | None = None, cross_attention_kwargs: dict | None = None):
        """Either layout_tokens + corners + valid, or a LayoutInputs from prepare_layout.
        cross_attention_kwargs go to every attention processor (e.g. layout_scale)."""
        if layout is None:
            layout = self.prepare_layout(layout_tokens, corners, valid, *sample.shape[-2:])
        if layout.canvas is not None:
            sample = torch.cat([sample, layout.canvas.to(sample.dtype)], dim=1)
        return self.unet(sample, timestep, encoder_hidden_states=text_tokens, encoder_attention_mask=text_mask,
                         cross_attention_kwargs={**(cross_attention_kwargs or {}), "layout": layout}).sample


def encode_layout(layout_encoder, corners: torch.Tensor, class_embeddings: torch.Tensor, valid: torch.Tensor,
                  drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LayoutEncoder tokens with the background token in front, and the object slots that
    stay visible (valid and not dropped), for AeroGenUNet.forward."""
    tokens = layout_encoder(corners, class_embeddings, valid, drop=drop)
    background = layout_encoder.null_token.expand(tokens.shape[0], 1, -1)
    visible = valid.to(tokens.device) & ~drop.to(tokens.device)[:, None]
    return torch.cat([background, tokens], dim=1), visible

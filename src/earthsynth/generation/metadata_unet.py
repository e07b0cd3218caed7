"""The denoiser text2earth and crsdiff share: a diffusers UNet2DConditionModel whose
timestep embedding also carries scalar metadata.

Resolution guidance (Text2Earth) and metadata conditioning (CRS-Diff) are the same
mechanism: each scalar (GSD, date, cloud cover, position) is embedded by
`earthsynth.conditioning.ScalarEmbedding`, which gives a learned null vector where a value
is unknown or dropped, and the sum is added to the timestep embedding through the UNet's
identity class embedding. Text enters through cross-attention; control residuals (crsdiff)
through the UNet's skip connections and middle block.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from earthsynth.conditioning.scalars import ScalarEmbedding
from earthsynth.errors import InputError
from earthsynth.generation.stable_diffusion import (
    check_loaded,
    check_parts_without_pretrained,
    choose_trained_parts,
    read_unet,
)


def unet_block_types(levels: int, attention_levels: int) -> tuple[list[str], list[str]]:
    """Down and up block types with cross-attention on the `attention_levels` coarsest levels."""
    if not 0 < attention_levels < levels:
        raise ValueError(f"attention_levels must be between 1 and {levels - 1}, got {attention_levels}")
    plain = levels - attention_levels
    down = ["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * attention_levels
    up = ["CrossAttnUpBlock2D"] * attention_levels + ["UpBlock2D"] * plain
    return down, up


def unet_arguments(unet_extra: dict | None, **named) -> dict:
    """UNet2DConditionModel arguments: our named ones over `unet_extra` (the rest of a Stable
    Diffusion UNet's config, e.g. use_linear_projection) over our default group norm."""
    return {"norm_num_groups": min(32, named["block_out_channels"][0]), **(unet_extra or {}),
            **{k: tuple(v) if isinstance(v, list) else v for k, v in named.items()}}


class MetadataUNet(ModelMixin, ConfigMixin):
    """forward(sample, timestep, text_tokens, text_mask, scalars, scalar_drop=None,
    down_residuals=None, mid_residual=None) -> the model output (noise or velocity).

    scalars (B, F) are natural units in the order of `scalar_fields`, NaN = unknown;
    scalar_drop (B, F) bool replaces values by their null (classifier-free guidance).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D",
                                             "CrossAttnDownBlock2D"),
        up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        attention_head_dim: int = 16,
        cross_attention_dim: int = 384,
        scalar_fields: tuple[str, ...] = ("gsd",),
        scalar_frequencies: int = 16,
        unet_extra: dict | None = None,
    ):
        """unet_extra: further UNet2DConditionModel arguments, e.g. the rest of a Stable
        Diffusion UNet's config (use_linear_projection, norm_num_groups...)."""
        super().__init__()
        self.unet = UNet2DConditionModel(**unet_arguments(
            unet_extra, sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            block_out_channels=block_out_channels, down_block_types=down_block_types, up_block_types=up_block_types,
            layers_per_block=layers_per_block, cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            class_embed_type="identity"))  # the metadata embedding is added to the timestep embedding
        time_embed_dim = self.unet.time_embedding.linear_2.out_features
        self.scalar_embedding = ScalarEmbedding(fields=tuple(scalar_fields), embed_dim=time_embed_dim,
                                                num_frequencies=scalar_frequencies)

    @classmethod
    def from_stable_diffusion(cls, folder, scalar_fields, in_channels: int | None = None) -> MetadataUNet:
        """A Stable Diffusion folder's UNet (`unet/`, safetensors) with its weights as they are
        and a metadata embedding that starts silent (zero output), so that at step 0 the model
        gives exactly the SD UNet's output. `in_channels` other than SD's (pixel mode, 3) gets a
        fresh input and output convolution, everything else is copied."""
        sd = read_unet(folder)
        channels = sd.named["in_channels"] if in_channels is None else in_channels
        model = cls(**{**sd.named, "in_channels": channels, "out_channels": channels},
                    scalar_fields=tuple(scalar_fields), unet_extra=sd.extra)
        # another channel count (pixel mode) gets fresh input and output convolutions
        fresh = {k for k in model.unet.state_dict() if k.startswith(("conv_in.", "conv_out."))} \
            if channels != sd.named["in_channels"] else set()
        weights = {k: v for k, v in sd.weights.items() if k not in fresh}
        missing, unexpected = model.unet.load_state_dict(weights, strict=False)
        check_loaded(sd, missing, unexpected, fresh)
        model.scalar_embedding.silence()
        # what earthsynth adds to the SD UNet, trained even when only the added parts train
        model.added_prefixes = ("scalar_embedding.",) + tuple(f"unet.{name}" for name in sorted(fresh))
        return model

    @property
    def stride(self) -> int:
        """Height and width must be multiples of this."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample, timestep, text_tokens, text_mask, scalars, scalar_drop=None,
                down_residuals=None, mid_residual=None, cross_attention_kwargs=None) -> torch.Tensor:
        metadata = self.scalar_embedding(scalars, scalar_drop).to(sample.dtype)
        return self.unet(sample, timestep, encoder_hidden_states=text_tokens, encoder_attention_mask=text_mask,
                         class_labels=metadata, down_block_additional_residuals=down_residuals,
                         mid_block_additional_residual=mid_residual,
                         cross_attention_kwargs=cross_attention_kwargs).sample


def build_metadata_unet(model_config, sample_size: int, cross_attention_dim: int, scalar_fields,
                        family: str, in_channels: int = 3) -> MetadataUNet:
    """The UNet a text2earth / crsdiff model config describes: a Stable Diffusion UNet when
    `model_config.pretrained` names an SD folder (its weights as they are, the metadata
    embedding silent at the start, `train_parts` choosing what trains), else a fresh one of
    block_out_channels, layers_per_block, attention_levels, attention_head_dim, initialised
    from `model_config.init_unet` when that names a folder. sample_size and in_channels are
    on the grid the UNet works on (latent or pixel)."""
    if model_config.pretrained:
        unet = MetadataUNet.from_stable_diffusion(model_config.pretrained, scalar_fields, in_channels)
        choose_trained_parts(unet, model_config.train_parts)
        return unet
    check_parts_without_pretrained(model_config.train_parts)
    down, up = unet_block_types(len(model_config.block_out_channels), model_config.attention_levels)
    unet = MetadataUNet(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                        block_out_channels=list(model_config.block_out_channels),
                        down_block_types=down, up_block_types=up, layers_per_block=model_config.layers_per_block,
                        attention_head_dim=model_config.attention_head_dim, cross_attention_dim=cross_attention_dim,
                        scalar_fields=tuple(scalar_fields))
    if model_config.init_unet:
        copied, total = init_from_pretrained_unet(unet, model_config.init_unet)
        print(f"{family}: {copied} of {total} UNet tensors initialised from {model_config.init_unet}")
    return unet


def init_from_pretrained_unet(model: MetadataUNet, directory) -> tuple[int, int]:
    """Copy into `model` every tensor of a local UNet whose name and shape match; the rest
    keeps its initialisation. Returns (tensors copied, tensors in the model).

    `directory` is a diffusers UNet2DConditionModel (a Stable Diffusion folder's unet/, or a
    UNet folder), or an earthsynth pipeline or MetadataUNet folder, such as a bundled model
    to fine-tune: its tensors, metadata embedding included, carry over under their own names.
    What matches a Stable Diffusion UNet depends on the run config: one with its widths,
    layers and attention placement copies nearly everything but the pixel-space input and
    output convolutions (3 channels here, 4 latent channels in Stable Diffusion)."""
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(directory)
    if (folder / "unet").is_dir():
        folder = folder / "unet"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(folder, "no UNet weights in .safetensors here (pickled weights are not read)")
    pretrained = {}
    for path in files:
        pretrained.update(load_file(path))
    own = model.state_dict()
    matching = {}
    for name, tensor in pretrained.items():
        # an earthsynth MetadataUNet names its tensors unet.* and scalar_embedding.*; a diffusers UNet has no prefix
        target = name if name in own else f"unet.{name}"
        if target in own and own[target].shape == tensor.shape:
            matching[target] = tensor
    model.load_state_dict(matching, strict=False)
    return len(matching), len(own)

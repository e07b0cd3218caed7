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


def unet_block_types(levels: int, attention_levels: int) -> tuple[list[str], list[str]]:
    """Down and up block types with cross-attention on the `attention_levels` coarsest levels."""
    if not 0 < attention_levels < levels:
        raise ValueError(f"attention_levels must be between 1 and {levels - 1}, got {attention_levels}")
    plain = levels - attention_levels
    down = ["DownBlock2D"] * plain + ["CrossAttnDownBlock2D"] * attention_levels
    up = ["CrossAttnUpBlock2D"] * attention_levels + ["UpBlock2D"] * plain
    return down, up


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
        arguments = {
            "norm_num_groups": min(32, block_out_channels[0]),
            **(unet_extra or {}),
            "sample_size": sample_size,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "block_out_channels": tuple(block_out_channels),
            "down_block_types": tuple(down_block_types),
            "up_block_types": tuple(up_block_types),
            "layers_per_block": layers_per_block,
            "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": attention_head_dim,
            "class_embed_type": "identity",  # the metadata embedding is added to the timestep embedding
        }
        self.unet = UNet2DConditionModel(**arguments)
        time_embed_dim = self.unet.time_embedding.linear_2.out_features
        self.scalar_embedding = ScalarEmbedding(fields=tuple(scalar_fields), embed_dim=time_embed_dim,
                                                num_frequencies=scalar_frequencies)

    @classmethod
    def from_stable_diffusion(cls, folder, scalar_fields, in_channels: int | None = None) -> MetadataUNet:
        """A Stable Diffusion folder's UNet (`unet/`, safetensors) with its weights as they are
        and a metadata embedding that starts silent (zero output), so that at step 0 the model
        gives exactly the SD UNet's output. `in_channels` other than SD's (pixel mode, 3) gets a
        fresh input and output convolution, everything else is copied."""
        from pathlib import Path

        from safetensors.torch import load_file

        unet_folder = Path(folder) / "unet"
        if not (unet_folder / "config.json").exists():
            raise InputError(folder, "not a diffusers Stable Diffusion folder (no unet/config.json)")
        files = sorted(unet_folder.glob("*.safetensors"))
        if not files:
            raise InputError(unet_folder, "no UNet weights in .safetensors here (pickled weights are not read)")
        sd = {k: v for k, v in UNet2DConditionModel.load_config(unet_folder).items() if not k.startswith("_")}
        if sd.get("class_embed_type") or sd.get("addition_embed_type") or sd.get("num_class_embeds"):
            raise InputError(unet_folder, "this UNet already has a class or added embedding; expected SD 1.x / 2.x")
        named = ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types",
                 "up_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim")
        channels = sd["in_channels"] if in_channels is None else in_channels
        model = cls(sample_size=sd["sample_size"], in_channels=channels, out_channels=channels,
                    block_out_channels=sd["block_out_channels"], down_block_types=sd["down_block_types"],
                    up_block_types=sd["up_block_types"], layers_per_block=sd["layers_per_block"],
                    cross_attention_dim=sd["cross_attention_dim"], attention_head_dim=sd["attention_head_dim"],
                    scalar_fields=tuple(scalar_fields),
                    unet_extra={k: v for k, v in sd.items() if k not in named and k != "class_embed_type"})
        weights = {}
        for path in files:
            weights.update(load_file(path))
        if channels != sd["in_channels"]:
            weights = {k: v for k, v in weights.items() if not k.startswith(("conv_in.", "conv_out."))}
        missing, unexpected = model.unet.load_state_dict(weights, strict=False)
        if unexpected or any(not k.startswith(("conv_in.", "conv_out.")) for k in missing):
            raise InputError(unet_folder, f"UNet weights do not match its config ({len(missing)} missing, "
                                          f"{len(unexpected)} unexpected tensors)")
        model.scalar_embedding.silence()
        # what earthsynth adds to the SD UNet, trained even when only the added parts train
        model.added_prefixes = ("scalar_embedding.",) + (
            ("unet.conv_in.", "unet.conv_out.") if channels != sd["in_channels"] else ())
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


TRAIN_PARTS = ("all", "added", "attention")


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
    if model_config.train_parts != "all":  # nothing pretrained to keep frozen: say so, do not ignore it
        raise InputError("model.train_parts", f"{model_config.train_parts!r} needs model.pretrained (a Stable "
                                              "Diffusion folder whose own weights stay frozen); without one "
                                              "everything trains: leave it at all")
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


def choose_trained_parts(unet: MetadataUNet, parts: str) -> None:
    """What of a pretrained UNet trains: "all"; "added" (what earthsynth adds to it: the
    metadata embedding, and input / output convolutions that were not copied); "attention"
    (the added parts and the attention layers, where text conditioning lives)."""
    if parts not in TRAIN_PARTS:
        raise InputError("model.train_parts", f"must be one of {', '.join(TRAIN_PARTS)}, got {parts!r}")
    if parts == "all":
        return
    for name, parameter in unet.named_parameters():
        added = name.startswith(getattr(unet, "added_prefixes", ("scalar_embedding.",)))
        attention = ".attentions." in name or "attn" in name
        parameter.requires_grad_(added or (parts == "attention" and attention))

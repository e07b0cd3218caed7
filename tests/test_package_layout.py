"""The package's shape: pipelines import no training code, every registry entry is a train.py's
Family, and the public API (the five pipelines, bundled_model, diffusers' generic loader)."""

import importlib
import json
import subprocess
import sys

import pytest

import earthsynth
from earthsynth.registry import FAMILIES, Family, get_family

PIPELINE_FAMILIES = ("text2earth", "crsdiff", "aerogen", "hsi", "ediffsr")

# What inference must not pull in. diffusers' modeling_utils itself imports accelerate whenever it
# is installed, so accelerate's modules count only beyond those that diffusers brings.
TRAINING_ONLY = r"""
import re, sys
import diffusers.models.modeling_utils, diffusers.pipelines.pipeline_utils
from_diffusers = set(sys.modules)
import {module}
patterns = [r"earthsynth\.training(\..*)?", r"earthsynth\.generation\.[^.]+\.train", r"earthsynth\.augment\.[^.]+\.train",
            r"earthsynth\.data\.tiles", r"earthsynth\.data\.control_tiles", r"accelerate(\..*)?"]
print(sorted(m for m in set(sys.modules) - from_diffusers if any(re.fullmatch(p, m) for p in patterns)))
"""


def loaded_training_modules(module: str) -> list[str]:
    """Import `module` in a fresh interpreter; the training-only modules that came with it."""
    result = subprocess.run([sys.executable, "-c", TRAINING_ONLY.format(module=module)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stdout.strip().splitlines()[-1])  # a printed list of names


@pytest.mark.parametrize("module", [f"earthsynth.generation.{family}.pipeline" for family in PIPELINE_FAMILIES]
                         + ["earthsynth.augment.detector", "earthsynth.augment.classifier"])
def test_inference_modules_import_no_training_code(module):
    assert loaded_training_modules(module) == []


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_registry_entry_is_the_family_of_a_train_module(name):
    module_name, attribute = FAMILIES[name].split(":")
    assert module_name.endswith(".train"), f"{name}: {module_name} is not a train.py"
    family = get_family(name)
    assert isinstance(family, Family) and family.name == name
    assert importlib.import_module(module_name).__file__.endswith("train.py")


def test_the_registry_docstring_names_the_real_layout():
    import earthsynth.registry as registry

    assert "train.py" in registry.__doc__ and "augment/" in registry.__doc__


def test_earthsynth_exports_the_five_pipelines_and_imports_nothing_heavy():
    for name, module in earthsynth.PIPELINES.items():
        assert name in earthsynth.__all__
        assert getattr(earthsynth, name) is getattr(importlib.import_module(module), name)
    code = "import sys, earthsynth; print([m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


def test_bundled_model_finds_every_bundled_folder_and_refuses_other_names():
    for name in earthsynth.BUNDLED_MODELS:
        folder = earthsynth.bundled_model(name)
        assert (folder / "train_config.yaml").is_file()
        assert (folder / ("model_index.json" if name in PIPELINE_FAMILIES else "config.json")).is_file()
    with pytest.raises(ValueError, match="no bundled model 'sd15'; choose one of text2earth"):
        earthsynth.bundled_model("sd15")


def test_diffusion_pipeline_from_pretrained_returns_ours_for_every_bundled_folder():
    # diffusers imported first, earthsynth after, in a fresh interpreter (the other order runs here)
    code = """
import diffusers, json
import earthsynth
print(json.dumps({name: type(diffusers.DiffusionPipeline.from_pretrained(earthsynth.bundled_model(name))).__name__
                  for name in ("text2earth", "crsdiff", "aerogen", "hsi", "ediffsr")}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {module.split(".")[2]: name for name, module in earthsynth.PIPELINES.items()}
    assert loaded == expected

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(earthsynth.bundled_model("aerogen"))
    assert type(pipe) is earthsynth.AeroGenPipeline
    assert pipe.unet.config == earthsynth.AeroGenPipeline.from_pretrained(earthsynth.bundled_model("aerogen")).unet.config

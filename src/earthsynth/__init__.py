"""earthsynth: synthesise remote-sensing data with conditional diffusion models.

The five pipelines load like any diffusers pipeline, from a bundled folder or a training run's
`final/` export:

    from earthsynth import AeroGenPipeline, bundled_model
    pipe = AeroGenPipeline.from_pretrained(bundled_model("aerogen"))

    import earthsynth
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(earthsynth.bundled_model("aerogen"))  # an AeroGenPipeline

The public names are imported lazily, so `import earthsynth` (and `earthsynth --help`) does not
pay for torch or diffusers.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# the pipelines' modules import no training code
PIPELINES = {
    "Text2EarthPipeline": "earthsynth.generation.text2earth.pipeline",
    "CRSDiffPipeline": "earthsynth.generation.crsdiff.pipeline",
    "AeroGenPipeline": "earthsynth.generation.aerogen.pipeline",
    "HSIDenoisePipeline": "earthsynth.generation.hsi.pipeline",
    "EDiffSRPipeline": "earthsynth.generation.ediffsr.pipeline",
}

# public name -> module
_PUBLIC = {
    **PIPELINES,
    "AeroGenUNet": "earthsynth.generation.aerogen.model",
    "LayoutEncoder": "earthsynth.conditioning.layout",
    "ScalarEmbedding": "earthsynth.conditioning.scalars",
    "ControlAdapter": "earthsynth.conditioning.control",
    "CompactDetector": "earthsynth.augment.detector.model",
    "CropClassifier": "earthsynth.augment.classifier.model",
    "EANet": "earthsynth.generation.ediffsr.model",
    "MeanRevertingScheduler": "earthsynth.generation.ediffsr.scheduler",
}

# the checkpoints that ship in earthsynth/assets: the five pipelines and the augment filter's models
BUNDLED_MODELS = ("text2earth", "crsdiff", "aerogen", "hsi", "ediffsr", "detector", "classifier")

__all__ = sorted([*_PUBLIC, "BUNDLED_MODELS", "PIPELINES", "bundled_model"])


def bundled_model(name: str) -> Path:  # noqa: F821 - pathlib is imported when called
    """The folder of a bundled checkpoint, e.g. bundled_model("aerogen"): pass it to
    `from_pretrained`, or to the CLI's --model-dir. Names: BUNDLED_MODELS."""
    from pathlib import Path

    if name not in BUNDLED_MODELS:
        raise ValueError(f"no bundled model {name!r}; choose one of {', '.join(BUNDLED_MODELS)}")
    folder = Path(__file__).resolve().parent / "assets" / name
    if not folder.is_dir():
        raise ValueError(f"the bundled model {name!r} is missing from this installation ({folder})")
    return folder


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'earthsynth' has no attribute {name!r}")


# ----------------------------------------------------------------------------- diffusers
# diffusers.DiffusionPipeline.from_pretrained(folder) looks model_index.json's `_class_name` up
# as an attribute of the `diffusers` module (pipeline_loading_utils._get_pipeline_class); it has
# no registry for other libraries' pipelines, and a `[file, class]` entry would make every load
# ask for trust_remote_code. So earthsynth adds its five names to diffusers' own table of lazy
# names, pointing at this package, whose __getattr__ above imports a pipeline when it is asked
# for. That is done as soon as both packages are imported, in either order, and imports nothing.
_ALIAS = "_earthsynth"  # diffusers resolves a lazy name as the submodule diffusers.<alias>


def _register_pipelines(diffusers_module) -> None:
    table = getattr(diffusers_module, "_class_to_module", None)
    if table is None:  # not the lazy module this was written for: DiffusionPipeline cannot find us
        return
    sys.modules[f"diffusers.{_ALIAS}"] = sys.modules[__name__]
    for name in PIPELINES:
        table.setdefault(name, _ALIAS)


class _RegisterWhenDiffusersLoads:
    """A one-shot import hook: lets diffusers import as usual, then registers the pipelines."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "diffusers":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("diffusers")
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _register_pipelines(sys.modules["diffusers"])  # diffusers replaced itself with its lazy module

        spec.loader.exec_module = exec_module
        return spec


if "diffusers" in sys.modules:
    _register_pipelines(sys.modules["diffusers"])
else:
    sys.meta_path.insert(0, _RegisterWhenDiffusersLoads())

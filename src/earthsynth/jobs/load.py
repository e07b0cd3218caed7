"""Where the jobs get their models: the bundled checkpoints, one `load_pipeline` for every
family, and the device and dtype the models run on.

The device is accelerate's (`PartialState().device`) unless one is asked for, so under
`accelerate launch --multi_gpu` each process runs on its own GPU, and on a machine without
one everything stays on the CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path

import torch

from earthsynth import PIPELINES, bundled_model
from earthsynth.errors import InputError
from earthsynth.weights import use_safetensors

# family -> its pipeline class; earthsynth.PIPELINES names the class's module
PIPELINE_CLASSES = {
    "text2earth": "Text2EarthPipeline",
    "crsdiff": "CRSDiffPipeline",
    "aerogen": "AeroGenPipeline",
    "hsi": "HSIDenoisePipeline",
    "ediffsr": "EDiffSRPipeline",
}
TEXT_FAMILIES = ("text2earth", "crsdiff", "aerogen")  # their text encoder is loaded apart from the folder
FLOAT32_ONLY = ("hsi",)  # its robust low-rank fits (SVD, medians) need full precision
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bundled_checkpoint(name: str) -> Path:
    """The folder of a bundled default checkpoint (earthsynth.bundled_model), as an InputError
    the CLI reports in one line when it is missing."""
    try:
        return bundled_model(name)
    except ValueError as err:
        raise InputError(f"assets/{name}", f"{err}; train it with `earthsynth train configs/{name}.yaml` "
                         "and pass the folder explicitly") from None


def job_state():
    """accelerate's state of this process (created on first use)."""
    from accelerate import PartialState

    # several processes without a GPU (accelerate launch --multi_gpu, torchrun): gloo on the CPU
    return PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())


def job_device(device: str | torch.device | None = None) -> torch.device:
    """`device` when given ("cpu", "cuda:1", ...), else accelerate's device for this process."""
    if device is None or device == "":
        return job_state().device
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device}", "not a torch device; e.g. cpu, cuda, cuda:1, mps") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}", "CUDA is not available on this machine")
    return chosen


def job_dtype(dtype: str | torch.dtype | None = None) -> torch.dtype:
    """float32 (the default), bfloat16 or float16, by name or as a torch dtype."""
    if dtype is None or dtype == "":
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype}", f"choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def quiet_loading_bars():
    """No "Loading pipeline components" / checkpoint-shard bars from diffusers and transformers:
    the jobs draw their own bar of the work done, and stderr is for that and errors."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    switches = [(diffusers_logging, diffusers_logging.is_progress_bar_enabled()),
                (transformers_logging, transformers_logging.is_progress_bar_enabled())]
    for library, _ in switches:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_on in switches:
            if was_on:
                library.enable_progress_bar()


def pipeline_class(family: str):
    if family not in PIPELINE_CLASSES:
        raise InputError(f"family {family}", f"no pipeline; choose one of {', '.join(PIPELINE_CLASSES)}")
    name = PIPELINE_CLASSES[family]
    module = PIPELINES[name]
    return getattr(importlib.import_module(module), name)


def load_pipeline(family: str, folder=None, device=None, dtype=None):
    """The `family` pipeline in `folder` (default: the bundled checkpoint) on `device` (default:
    accelerate's) in `dtype` (default float32), its per-step bar off. A text encoder is loaded
    now, so a missing one is an error before any image. A folder that is not such a pipeline,
    or holds pickled weights while earthsynth.weights.pickle_allowed is off, is an InputError."""
    from earthsynth.data.common import one_line

    cls = pipeline_class(family)
    device, dtype = job_device(device), job_dtype(dtype)
    if family in FLOAT32_ONLY and dtype != torch.float32:
        raise InputError(f"--dtype {str(dtype).removeprefix('torch.')}", f"the {family} pipeline runs in float32 only")
    folder = Path(folder) if folder else bundled_checkpoint(family)
    safetensors = use_safetensors(folder)  # pickled weights refused unless allowed (--allow-pickle)
    if not (folder / "model_index.json").is_file():
        raise InputError(folder, f"not an {family} pipeline folder (no model_index.json)")
    with quiet_loading_bars():
        try:
            pipe = cls.from_pretrained(folder, dtype=dtype, use_safetensors=safetensors)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(folder, f"cannot load the {family} pipeline ({one_line(err)})") from None
        if family in TEXT_FAMILIES:
            pipe.text_conditioner  # noqa: B018 - loads it
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

"""Model weights are read from safetensors. A pickled file (.bin, .pt, .ckpt...) can run code
when it is loaded, so a model given that way is refused in one line unless the user allows it
(`--allow-pickle` on the commands that load models; `with pickle_allowed():` in Python).

Every place that loads a model folder asks `use_safetensors(path)` first and passes its answer
to from_pretrained, so diffusers and transformers never fall back to a pickle on their own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from earthsynth.errors import InputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_allowed = False  # a process-wide switch: the app's worker threads load models too


@contextlib.contextmanager
def pickle_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, pickled weights load (the user trusts them); the switch is restored after."""
    global _allowed
    before, _allowed = _allowed, allowed
    try:
        yield
    finally:
        _allowed = before


def pickled_weights(path: str | os.PathLike) -> list[Path]:
    """The pickled weight files a model path would be read from: the path itself, or those in
    the folder and its sub-folders (a pipeline's unet/, text_encoder/...) that sit beside no
    .safetensors file (loaders take safetensors first when both are there)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not path.is_dir():
        return [path]
    if not path.is_dir():
        return []
    found = []
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        files = [p for p in folder.iterdir() if p.is_file()]
        if not any(p.suffix == ".safetensors" for p in files):
            found += sorted(p for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    return found


def use_safetensors(path: str | os.PathLike) -> bool | None:
    """from_pretrained's `use_safetensors` for a model at `path`: True (safetensors or an error),
    after refusing a path whose weights are pickled; None (the library's choice, safetensors
    first) when pickle is allowed."""
    if _allowed:
        return None
    pickled = pickled_weights(path)
    if pickled:
        name = pickled[0].relative_to(path) if pickled[0] != Path(path) else pickled[0].name
        raise InputError(path, f"holds pickled weights ({name}), which can run code when loaded; convert them to "
                               "safetensors, or pass --allow-pickle if you trust them")
    return True

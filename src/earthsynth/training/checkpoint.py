"""Training checkpoints written atomically and resumed exactly.

A checkpoint is a folder `step-000100/` holding
- model.safetensors: the trainable weights; ema.safetensors: their moving average;
- optimizer.pt, lr_scheduler.pt: optimizer and schedule state (plain tensors, read with
  torch.load(weights_only=True), so no pickled code is ever executed);
- state.json: step counters; rng-rank{r}.safetensors/.json: each process's torch, numpy
  and python RNG states, so the losses after a resume equal an uninterrupted run's.
It is written to a temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint that `resume: latest` would pick up; what a killed run leaves of
one (a hidden `.step-000100.*` folder) the next run in that output_dir removes.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from earthsynth.data.common import (
    atomic_directory,
    atomic_path,
    check_output_folder,
    remove_stale_temporaries,
)

STEP_DIR = re.compile(r"^step-(\d+)$")


def prepare_output_dir(output_dir: str | Path, option: str = "output_dir") -> None:
    """Before a run, in every process: refuse in one line an output_dir that cannot be a folder,
    then remove the temporaries of a killed run there (a hidden `final/` or checkpoint being
    written, a checkpoint's half-written RNG file of another process)."""
    check_output_folder(output_dir, option)
    output_dir = Path(output_dir)
    remove_stale_temporaries(output_dir, "final")
    remove_stale_temporaries(output_dir / "checkpoints", r"step-\d+")
    for checkpoint in list_checkpoints(output_dir / "checkpoints"):
        remove_stale_temporaries(checkpoint, r"rng-rank\d+\.safetensors")


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    extra = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss]}
    return tensors, extra


def set_rng_state(tensors: dict[str, torch.Tensor], extra: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    kind, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = extra["python"]
    random.setstate((version, tuple(internal), gauss))


def save_rng(directory: Path, rank: int) -> None:
    """This process's RNG states into `directory` (one pair of files per process)."""
    tensors, extra = rng_state()
    with atomic_path(Path(directory) / f"rng-rank{rank}.safetensors") as tmp:
        save_file(tensors, tmp)
    (Path(directory) / f"rng-rank{rank}.json").write_text(json.dumps(extra))


def load_rng(directory: Path, rank: int) -> bool:
    tensors_file = Path(directory) / f"rng-rank{rank}.safetensors"
    if not tensors_file.exists():
        return False
    set_rng_state(load_file(tensors_file), json.loads((Path(directory) / f"rng-rank{rank}.json").read_text()))
    return True


def save_checkpoint(directory: Path, model_state: dict, ema_state: dict | None, optimizer, lr_scheduler,
                    counters: dict) -> Path:
    """Write one checkpoint folder atomically, with the RNG of the calling (main) process;
    other processes add theirs with `save_rng` afterwards."""
    with atomic_directory(directory) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / "model.safetensors")
        if ema_state is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema_state.items()}, tmp / "ema.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        save_rng(tmp, rank=0)
        (tmp / "state.json").write_text(json.dumps(counters, indent=1))
    return Path(directory)


def load_checkpoint(directory: Path, model, ema, optimizer, lr_scheduler, rank: int = 0) -> dict:
    """Restore everything `save_checkpoint` wrote (and this rank's RNG); returns the counters."""
    directory = Path(directory)
    model.load_state_dict(load_file(directory / "model.safetensors"))
    if ema is not None:
        ema.load_state_dict(load_file(directory / "ema.safetensors"))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(directory / "lr_scheduler.pt", weights_only=True))
    load_rng(directory, rank)
    return json.loads((directory / "state.json").read_text())


def list_checkpoints(checkpoint_root: Path) -> list[Path]:
    root = Path(checkpoint_root)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def prune_checkpoints(checkpoint_root: Path, keep: int) -> None:
    for old in list_checkpoints(checkpoint_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)

"""The one training loop: every family trains through `train(config)`.

A family supplies components and a `loss(components, batch)` (earthsynth.registry.Family);
this loop does the rest with accelerate: data order and sharding, gradient accumulation,
mixed precision, clipping, EMA, lr schedule, logs, previews, atomic checkpoints and exact
resume. Several processes (torchrun or `accelerate launch`, GPU or gloo on CPU) each take a
disjoint shard of every epoch.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from earthsynth.config import RunConfig, save_config
from earthsynth.errors import InputError
from earthsynth.model_card import write_model_card
from earthsynth.registry import Family, get_family
from earthsynth.training.checkpoint import (
    atomic_directory,
    list_checkpoints,
    load_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    save_checkpoint,
    save_rng,
)
from earthsynth.training.ema import EMA


class LossModule(nn.Module):
    """The trainable components behind one forward(batch) -> loss, so accelerate (and DDP)
    wrap a single module. Frozen helpers (text encoder, scheduler) stay unregistered."""

    def __init__(self, family: Family, components: dict):
        super().__init__()
        self.family = family
        # a trainable name a run does not build (an optional part, e.g. a discriminator) is skipped
        self.trainable = nn.ModuleDict({name: components[name] for name in family.trainable if name in components})
        self.frozen = {k: v for k, v in components.items() if k not in family.trainable}

    def components(self) -> dict:
        return {**self.frozen, **dict(self.trainable.items())}

    def forward(self, batch: dict) -> torch.Tensor:
        return self.family.loss(self.components(), batch)


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> list[list[int]]:
    """Sample indices of one epoch for one process: a permutation fixed by (seed, epoch),
    dealt out to the processes, cut into full batches. Deterministic, so a resume at micro
    step k sees exactly the batches an uninterrupted run sees."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    mine = order[rank::world]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)]


class BatchOrder:
    """`epoch_batches` of every epoch from micro-step `start` on, without end: the batch sampler
    of the loop's DataLoader. Its workers only load and collate the samples named here (a
    family's dataset is deterministic per index; random augmentation belongs in the loss, on
    the RNG the checkpoints save), so any num_workers reads the same batches and a resume
    starts at the right one."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world: int, start: int):
        self.draw = lambda epoch: epoch_batches(num_samples, batch_size, seed, epoch, rank, world)
        self.per_epoch = len(self.draw(0))
        self.start = start

    def __iter__(self):
        epoch, position = divmod(self.start, self.per_epoch)
        while True:
            yield from self.draw(epoch)[position:]
            epoch, position = epoch + 1, 0


MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


def resolve_mixed_precision(configured: str) -> str:
    """The precision to train in: the config's, else the launcher's (`accelerate launch
    --mixed_precision X` sets ACCELERATE_MIXED_PRECISION), else no. A launcher asking for another
    precision than the config's is refused, never silently overridden; its "no" is also
    accelerate launch's default when the flag is not given, so it counts as no request."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() or "no"
    for where, value in (("train.mixed_precision", configured), ("ACCELERATE_MIXED_PRECISION", launcher)):
        if value and value not in MIXED_PRECISION:
            raise InputError(where, f"must be one of {', '.join(MIXED_PRECISION)}, got {value!r}")
    if not configured:
        return launcher
    if launcher not in ("no", configured):
        raise InputError("train.mixed_precision", f"the config says {configured} but the launcher asks for {launcher} "
                                                  "(accelerate launch --mixed_precision); make them agree, or leave "
                                                  "train.mixed_precision empty to take the launcher's")
    return configured


def resolve_resume(config: RunConfig) -> Path | None:
    """The checkpoint train.resume names: "latest" (there must be one), "auto" (the latest if
    there is one, else None: start), a checkpoint folder, or "" (None)."""
    resume = config.train.resume
    if not resume:
        return None
    if resume in ("latest", "auto"):
        checkpoints = Path(config.output_dir) / "checkpoints"
        found = list_checkpoints(checkpoints)
        if not found and resume == "latest":
            raise InputError("--resume latest", f"no checkpoint in {checkpoints} to resume; start without --resume, "
                                                "or use --resume auto to resume only where there is one")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "model.safetensors").exists():
        raise InputError(path, "not a checkpoint folder (no model.safetensors)")
    return path


class MetricsLog:
    """metrics.csv (always) and tensorboard (if asked), written by the main process."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "seconds")

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if resume_step and path.exists():  # drop rows a crashed run wrote after its checkpoint
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)


def save_preview(family: Family, components: dict, config: RunConfig, path: Path) -> None:
    from earthsynth.generation.common import image_grid

    # previews must not move the training RNG, or resumed runs would diverge
    with torch.random.fork_rng(devices=[]):
        generator = torch.Generator().manual_seed(config.train.seed)
        images = family.preview(components, config, generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)


def enable_gradient_checkpointing(trainable: nn.Module, family: str) -> None:
    """Switch on diffusers' gradient checkpointing in every trainable module that has it
    (a UNet, a VAE); a family with none refuses the switch rather than ignore it."""
    switched = [m for m in trainable.modules() if getattr(m, "_supports_gradient_checkpointing", False)]
    if not switched:
        raise InputError("train.gradient_checkpointing", f"the {family} family has no module that supports it")
    for module in switched:
        module.enable_gradient_checkpointing()


def train(config: RunConfig, command: str = "", show_progress: bool = True) -> dict:
    """Train `config`; returns {"losses": [(step, loss)...], "output_dir", "final_dir"}."""
    family = get_family(config.family)
    # the saved config records the precision the run really used
    precision = resolve_mixed_precision(config.train.mixed_precision)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))
    tc = config.train
    output_dir = Path(config.output_dir)
    prepare_output_dir(output_dir)  # before any work; a killed run's temporaries go
    resume_from = resolve_resume(config)
    # a second train() in the same process (tests, notebooks) may ask for other precision
    AcceleratorState._reset_state()
    # several processes but no GPU (torchrun, or `accelerate launch --multi_gpu` on a CPU
    # machine): run them on the CPU with gloo instead of failing to find CUDA
    several_cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=several_cpu_processes,
        mixed_precision=precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        log_with="tensorboard" if tc.logger == "tensorboard" else None,
        project_dir=str(output_dir),
    )
    set_seed(tc.seed)  # same model init on every process
    components = family.build(config)
    dataset = family.dataset(config)
    model = LossModule(family, components)
    if tc.gradient_checkpointing:
        enable_gradient_checkpointing(model.trainable, config.family)
    params = [p for p in model.trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.learning_rate, betas=(tc.adam_beta1, tc.adam_beta2),
                                  weight_decay=tc.weight_decay)
    lr_scheduler = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.lr_warmup_steps,
                                 num_training_steps=tc.max_steps)
    # the lr schedule is stepped by hand once per optimizer step: accelerate's wrapper would
    # step it once per process, changing the schedule with the number of processes
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = EMA(unwrapped.trainable, tc.ema_decay) if tc.ema_decay > 0 else None

    rank, world = accelerator.process_index, accelerator.num_processes
    batches_per_epoch = len(epoch_batches(len(dataset), tc.batch_size, tc.seed, 0, rank, world))
    if batches_per_epoch == 0:
        raise InputError(config.family, f"dataset has {len(dataset)} samples, fewer than batch_size x processes "
                                        f"= {tc.batch_size * world}")

    step, micro_step, seconds_before = 0, 0, 0.0
    if resume_from is not None:
        counters = load_checkpoint(resume_from, unwrapped.trainable, ema, optimizer, lr_scheduler, rank)
        step, micro_step = counters["step"], counters["micro_step"]
        seconds_before = counters.get("seconds", 0.0)  # the log's time column goes on from there
        accelerator.print(f"resumed from {resume_from} at step {step}")
    else:
        set_seed(tc.seed + rank)  # per-process noise streams

    metrics = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")
        if command:
            (output_dir / "command.txt").write_text(command + "\n")
        metrics = MetricsLog(output_dir / "metrics.csv", step)
    if tc.logger == "tensorboard":
        accelerator.init_trackers(config.family)

    # its own generator for worker seeds: the global RNG stays the loss's alone, as without a loader
    loader = DataLoader(dataset, batch_sampler=BatchOrder(len(dataset), tc.batch_size, tc.seed, rank, world, micro_step),
                        collate_fn=family.collate, num_workers=tc.num_workers, generator=torch.Generator().manual_seed(tc.seed))
    batches = iter(loader)
    losses: list[tuple[int, float]] = []
    progress = tqdm(total=tc.max_steps, initial=step, desc=f"train {config.family}",
                    disable=not (show_progress and accelerator.is_main_process), file=sys.stderr)
    started = time.time()
    running_loss, running_count, grad_norm = 0.0, 0, float("nan")
    model.train()
    try:
        while step < tc.max_steps:
            epoch = micro_step // batches_per_epoch
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = model(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
                optimizer.step()  # accelerate skips it until the last micro-step of the accumulation
                optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            running_loss += loss.detach().float().item()
            running_count += 1
            if not accelerator.sync_gradients:
                continue

            # one optimizer step done
            lr_scheduler.step()
            step += 1
            if ema is not None:
                ema.update(unwrapped.trainable)
            mean_loss = accelerator.reduce(torch.tensor(running_loss / running_count, device=accelerator.device), "mean").item()
            running_loss, running_count = 0.0, 0
            losses.append((step, mean_loss))
            progress.update(1)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            if accelerator.is_main_process and (step % tc.log_every == 0 or step == tc.max_steps or step == 1):
                row = {"step": step, "loss": f"{mean_loss:.6f}", "lr": f"{lr_scheduler.get_last_lr()[0]:.3e}",
                       "grad_norm": f"{grad_norm:.4f}", "seconds": f"{seconds_before + time.time() - started:.2f}"}
                metrics.write(row)
                if tc.logger == "tensorboard":
                    accelerator.log({"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "grad_norm": grad_norm}, step=step)

            if step % tc.checkpoint_every == 0 or step == tc.max_steps:
                directory = output_dir / "checkpoints" / f"step-{step:06d}"
                if accelerator.is_main_process:
                    save_checkpoint(directory, unwrapped.trainable.state_dict(),
                                    ema.state_dict() if ema is not None else None, optimizer, lr_scheduler,
                                    {"step": step, "micro_step": micro_step, "epoch": epoch,
                                     "seconds": seconds_before + time.time() - started})
                accelerator.wait_for_everyone()
                if not accelerator.is_main_process:
                    save_rng(directory, rank)
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    prune_checkpoints(output_dir / "checkpoints", tc.keep_checkpoints)

            if family.preview is not None and accelerator.is_main_process and tc.preview_every and step % tc.preview_every == 0:
                preview_path = output_dir / "previews" / f"step-{step:06d}.png"
                _with_ema(ema, unwrapped, lambda path=preview_path: save_preview(family, unwrapped.components(), config, path))
    finally:  # Ctrl+C included: the bar ends its line before anything is printed after it
        progress.close()
        del batches  # stops the loader's workers
    seconds = time.time() - started

    final_dir = output_dir / "final"
    if accelerator.is_main_process:
        def export():
            if family.preview is not None:
                save_preview(family, unwrapped.components(), config, output_dir / "previews" / f"step-{step:06d}.png")
            if family.export is not None:
                export_final(family, unwrapped.components(), config, final_dir, command)
        _with_ema(ema, unwrapped, export)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.is_main_process and losses:
        steps_run = len(losses)
        accelerator.print(f"trained {steps_run} steps in {seconds:.1f} s ({seconds / max(steps_run, 1):.3f} s/step), "
                          f"last loss {losses[-1][1]:.4f}; output in {output_dir}")
    return {"losses": losses, "output_dir": output_dir, "final_dir": final_dir}


def export_final(family: Family, components: dict, config: RunConfig, final_dir: Path, command: str) -> None:
    """The family's pipeline components plus the config and command that made them, written
    atomically, so `final/` is never half written."""
    with atomic_directory(final_dir) as tmp:
        family.export(components, config, tmp)
        save_config(config, tmp / "train_config.yaml")
        if command:
            (tmp / "command.txt").write_text(command + "\n")
        write_model_card(tmp, metrics_csv=final_dir.parent / "metrics.csv", load_from=final_dir)


def _with_ema(ema: EMA | None, unwrapped: LossModule, action) -> None:
    if ema is None:
        action()
        return
    with ema.applied(unwrapped.trainable):
        action()


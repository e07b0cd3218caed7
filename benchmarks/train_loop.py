"""Overhead of earthsynth's one training loop against a plain PyTorch loop, side by side.

Both train the smoke family's UNet with the same loss on the same real tiles; the plain
loop is `loss.backward(); optimizer.step()` and nothing else, earthsynth's adds accelerate,
EMA, gradient clipping, the lr schedule, CSV logs and one checkpoint. Prints a table.

    .venv/bin/python benchmarks/train_loop.py [--steps 60] [--precision no,bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import tempfile
import time

import torch

from earthsynth.config import load_config
from earthsynth.registry import get_family
from earthsynth.training.loop import epoch_batches, train


def plain_loop(config, steps: int) -> float:
    """Seconds per step of a bare loop over the same batches and loss."""
    family = get_family(config.family)
    torch.manual_seed(config.train.seed)
    components = family.build(config)
    dataset = family.dataset(config)
    params = [p for name in family.trainable for p in components[name].parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.train.learning_rate)
    batches = epoch_batches(len(dataset), config.train.batch_size, config.train.seed, 0, 0, 1)
    bf16 = config.train.mixed_precision == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    warmup = 3
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        batch = family.collate([dataset[j] for j in batches[i % len(batches)]])
        with autocast:
            loss = family.loss(components, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def earthsynth_loop(config, steps: int) -> float:
    """Seconds per step of `earthsynth train`, read from its own metrics log (after 3 steps)."""
    with tempfile.TemporaryDirectory() as out:
        config.output_dir = out
        config.train.max_steps = steps + 3
        config.train.log_every = 1
        config.train.checkpoint_every = steps + 3
        train(config, show_progress=False)
        with open(f"{out}/metrics.csv") as f:
            rows = {int(r["step"]): float(r["seconds"]) for r in csv.DictReader(f)}
    return (rows[steps + 3] - rows[3]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smoke.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="no,bf16")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps each")
    print(f"{'precision':<10} {'plain s/step':>12} {'earthsynth s/step':>18} {'ratio':>6}")
    for precision in args.precision.split(","):
        overrides = [f"train.mixed_precision={precision}", "train.preview_every=0"]
        plain = plain_loop(load_config(args.config, overrides), args.steps)
        ours = earthsynth_loop(load_config(args.config, overrides), args.steps)
        print(f"{precision:<10} {plain:>12.3f} {ours:>18.3f} {ours / plain:>6.2f}")


if __name__ == "__main__":
    main()

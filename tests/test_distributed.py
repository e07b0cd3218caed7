"""Two training processes on the CPU (gloo) through `accelerate launch`, and exact resume there."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests_support import TINY_RUN

ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(config_path: Path, *overrides: str) -> None:
    # accelerate's --cpu launcher starts a single process unless MPI is set up; --multi_gpu
    # starts them with torchrun, and earthsynth falls back to gloo on a machine without CUDA
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "earthsynth.cli", "train",
           str(config_path), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def logged_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f)}


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate CLI not installed beside this python")
def test_two_processes_shard_checkpoint_and_resume_exactly(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    launch(config, f"output_dir={tmp_path / 'a'}")
    step3 = tmp_path / "a" / "checkpoints" / "step-000003"
    assert sorted(p.name for p in step3.glob("rng-rank*.safetensors")) == ["rng-rank0.safetensors", "rng-rank1.safetensors"]

    shutil.copytree(step3, tmp_path / "b" / "checkpoints" / "step-000003")
    launch(config, f"output_dir={tmp_path / 'b'}", "--resume", "latest")
    straight, resumed = logged_losses(tmp_path / "a"), logged_losses(tmp_path / "b")
    assert sorted(resumed) == [4, 5, 6]
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=2e-6), step

"""The one training loop: config validation, loss goes down, exact resume, atomic checkpoints."""

import csv
import json
import shlex
import shutil

import pytest
import torch
import yaml

from earthsynth.config import load_config
from earthsynth.errors import InputError
from earthsynth.training.checkpoint import list_checkpoints
from earthsynth.training.loop import LossModule, epoch_batches, resolve_mixed_precision, train
from tests_support import TINY_RUN as TINY


def tiny_config(output_dir, objective=None, **train_overrides):
    overrides = [f"output_dir={output_dir}"] + [f"train.{k}={v}" for k, v in train_overrides.items()]
    overrides += [f"objective.{k}={v}" for k, v in (objective or {}).items()]
    return load_config(tree=TINY, overrides=overrides)


def test_unknown_key_suggests_the_close_match(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("family: smoke\ntrain:\n  max_step: 10\n")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert "unknown key 'max_step'" in str(err.value) and "did you mean 'max_steps'" in str(err.value)
    with pytest.raises(InputError, match="did you mean 'learning_rate'"):
        load_config(tree=TINY, overrides=["train.learnig_rate=0.1"])
    with pytest.raises(InputError, match="expected int"):
        load_config(tree=TINY, overrides=["train.max_steps=many"])
    with pytest.raises(InputError, match="unknown model family"):
        load_config(tree={"family": "nope"})


def test_objective_keys_live_with_the_families_that_train_with_it(tmp_path):
    from earthsynth.config import RunConfig, save_config

    config = load_config(tree=TINY, overrides=["objective.prediction_type=v_prediction"])
    assert (config.objective.prediction_type, config.objective.snr_gamma) == ("v_prediction", 5.0)
    with pytest.raises(InputError) as err:
        load_config(tree=TINY, overrides=["train.prediction_type=v_prediction"])
    assert "\n" not in str(err.value) and "train.prediction_type moved to objective.prediction_type" in str(err.value)
    with pytest.raises(InputError, match="did you mean 'snr_gamma'"):
        load_config(tree=TINY, overrides=["objective.snr_gama=1"])
    with pytest.raises(InputError, match="must be epsilon or v_prediction"):
        train(tiny_config(tmp_path / "bad", objective={"prediction_type": "sample"}), show_progress=False)
    # hsi and ediffsr set their own schedules, the detector and classifier have none: the keys
    # would be ignored, so they are refused
    for family in ("hsi", "ediffsr", "detector", "classifier"):
        with pytest.raises(InputError, match=f"family {family} does not train with the shared diffusion objective"):
            load_config(tree={"family": family, "objective": {"snr_gamma": 5.0}})
        with pytest.raises(InputError, match=f"train.num_train_timesteps is not read by family {family}"):
            load_config(tree={"family": family, "train": {"num_train_timesteps": 100}})
        assert load_config(tree={"family": family}).objective is None
    # a saved config loads again, with its objective section or without one
    for tree in (TINY, {"family": "hsi"}):
        saved = load_config(tree=tree)
        save_config(saved, tmp_path / "saved.yaml")
        assert isinstance(saved, RunConfig) and load_config(tmp_path / "saved.yaml") == saved


def test_every_config_and_bundled_recipe_loads():
    from pathlib import Path

    import earthsynth

    root = Path(__file__).resolve().parents[1]
    recipes = sorted((root / "configs").glob("*.yaml")) + sorted(
        Path(earthsynth.__file__).parent.glob("assets/*/train_config.yaml"))
    recipes = [path for path in recipes if "family" in yaml.safe_load(path.read_text())]  # not augment.yaml
    assert len(recipes) >= 15
    for path in recipes:
        config = load_config(path)
        assert (config.objective is not None) == (config.family in ("smoke", "text2earth", "crsdiff", "aerogen")), path


def test_overrides_are_parsed_as_yaml_not_eval():
    config = load_config(tree=TINY, overrides=["train.learning_rate=3e-4", "data.gsd_factors=[2, 4]",
                                               "model.text_encoder=__import__('os')"])
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.data.gsd_factors == [2, 4]
    assert config.model.text_encoder == "__import__('os')"  # a plain string, never evaluated
    # YAML reads a bare `no` as false; for a text setting it is the word
    assert load_config(tree=TINY, overrides=["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(tree=TINY, overrides=["data.hflip=no"]).data.hflip is False


def test_epoch_batches_shard_disjointly():
    full = epoch_batches(100, 5, seed=1, epoch=0, rank=0, world=1)
    rank0 = epoch_batches(100, 5, seed=1, epoch=0, rank=0, world=2)
    rank1 = epoch_batches(100, 5, seed=1, epoch=0, rank=1, world=2)
    seen0 = {i for b in rank0 for i in b}
    seen1 = {i for b in rank1 for i in b}
    assert not seen0 & seen1 and len(seen0 | seen1) == 100
    assert full != epoch_batches(100, 5, seed=1, epoch=1, rank=0, world=1)  # reshuffled every epoch


def test_loss_goes_down(tmp_path):
    result = train(tiny_config(tmp_path / "run", max_steps=40, checkpoint_every=100), show_progress=False)
    losses = [loss for _step, loss in result["losses"]]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    final = result["final_dir"]
    assert (final / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (final / "train_config.yaml").exists()


def test_resume_gives_the_same_next_losses(tmp_path):
    straight = train(tiny_config(tmp_path / "a"), show_progress=False)
    checkpoints = list_checkpoints(tmp_path / "a" / "checkpoints")
    assert [c.name for c in checkpoints] == ["step-000003", "step-000006"]
    # nothing half-written is left beside the checkpoints
    assert not [p for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.startswith(".")]

    # a second run that only got as far as the step-3 checkpoint, resumed from there; its clock
    # said 1000 s then, and metrics.csv's time column goes on from there
    shutil.copytree(checkpoints[0], tmp_path / "b" / "checkpoints" / "step-000003")
    state = tmp_path / "b" / "checkpoints" / "step-000003" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "seconds": 1000.0}))
    resumed = train(tiny_config(tmp_path / "b", resume="latest"), show_progress=False)
    assert [s for s, _ in resumed["losses"]] == [4, 5, 6]
    with (tmp_path / "b" / "metrics.csv").open() as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    assert len(seconds) == 3 and 1000.0 < seconds[0] <= seconds[1] <= seconds[2] < 1300.0
    expected = dict(straight["losses"])
    for step, loss in resumed["losses"]:
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-7), step

    # and the final weights agree
    from safetensors.torch import load_file
    wa = load_file(tmp_path / "a" / "checkpoints" / "step-000006" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step-000006" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_bf16_v_prediction_and_tensorboard(tmp_path):
    result = train(tiny_config(tmp_path / "acc", max_steps=2, gradient_accumulation_steps=2,
                               mixed_precision="bf16", objective={"prediction_type": "v_prediction"}, checkpoint_every=100,
                               logger="tensorboard"),
                   show_progress=False)
    assert [s for s, _ in result["losses"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result["losses"])
    assert list((tmp_path / "acc").rglob("events.out.tfevents.*")), "no tensorboard events written"
    assert (tmp_path / "acc" / "previews" / "step-000002.png").exists()


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    from earthsynth.training.checkpoint import atomic_directory

    target = tmp_path / "final"
    with atomic_directory(target) as tmp:
        (tmp / "weights.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights.txt").write_text("half")
        raise RuntimeError("disk full")
    assert (target / "weights.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_data_loader_workers_read_the_same_batches_and_resume_exactly(tmp_path):
    from safetensors.torch import load_file

    straight = train(tiny_config(tmp_path / "a", num_workers=2), show_progress=False)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000003", tmp_path / "b" / "checkpoints" / "step-000003")
    resumed = train(tiny_config(tmp_path / "b", num_workers=2, resume="latest"), show_progress=False)
    assert [s for s, _ in resumed["losses"]] == [4, 5, 6]
    assert dict(resumed["losses"]) == {s: loss for s, loss in straight["losses"] if s > 3}
    wa = load_file(tmp_path / "a" / "checkpoints" / "step-000006" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoints" / "step-000006" / "model.safetensors")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)
    # workers only load what the loop's order names: the same losses as loading in the training process
    in_process = train(tiny_config(tmp_path / "c", max_steps=2, checkpoint_every=100), show_progress=False)
    assert in_process["losses"] == straight["losses"][:2]
    with pytest.raises(InputError, match="num_workers"):
        train(tiny_config(tmp_path / "d", num_workers=-1), show_progress=False)


def test_the_launchers_mixed_precision_is_taken_or_a_conflict_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    train(tiny_config(tmp_path / "run", max_steps=1, checkpoint_every=100), show_progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["mixed_precision"] == "bf16"  # the run used (and records) the launcher's
    with pytest.raises(InputError) as err:
        train(tiny_config(tmp_path / "other", mixed_precision="no"), show_progress=False)
    message = str(err.value)
    assert "\n" not in message and "says no" in message and "asks for bf16" in message
    assert not (tmp_path / "other").exists()
    assert resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # also accelerate launch's default: no request
    assert resolve_mixed_precision("bf16") == "bf16" and resolve_mixed_precision("") == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert resolve_mixed_precision("") == "no"
    with pytest.raises(InputError, match="must be one of no, fp16, bf16, fp8"):
        resolve_mixed_precision("bf61")


def test_ctrl_c_names_the_surviving_checkpoint_and_the_command_that_resumes(tmp_path, monkeypatch, capsys):
    from earthsynth.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    forward, calls = LossModule.forward, []

    def interrupted_at_step_5(self, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(LossModule, "forward", interrupted_at_step_5)
    argv = ["train", str(config), f"output_dir={tmp_path / 'run'}"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    line = err.splitlines()[-1]
    step3 = tmp_path / "run" / "checkpoints" / "step-000003"
    assert err.endswith("\n" + line + "\n")  # on its own line, after the closed progress bar
    assert line == f"earthsynth: interrupted; {step3} survives; resume with: earthsynth {shlex.join(argv)} --resume latest"

    monkeypatch.setattr(LossModule, "forward", forward)
    assert main(shlex.split(line.split("resume with: ")[1])[1:]) == 0
    assert f"resumed from {step3} at step 3" in capsys.readouterr().out
    with (tmp_path / "run" / "metrics.csv").open() as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_resume_latest_without_a_checkpoint_is_refused_and_auto_starts(tmp_path, capsys):
    from earthsynth.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "max_steps": 3}}))
    run = tmp_path / "run"
    assert main(["train", str(config), f"output_dir={run}", "--resume", "latest"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"earthsynth: error: --resume latest: no checkpoint in {run / 'checkpoints'} to resume; start "
                   "without --resume, or use --resume auto to resume only where there is one")
    assert not run.exists()  # refused before any work
    # auto: starts where there is no checkpoint, resumes where there is one
    assert main(["train", str(config), f"output_dir={run}", "--resume", "auto"]) == 0
    assert "resumed from" not in capsys.readouterr().out
    assert main(["train", str(config), f"output_dir={run}", "train.max_steps=4", "--resume", "auto"]) == 0
    assert f"resumed from {run / 'checkpoints' / 'step-000003'} at step 3" in capsys.readouterr().out
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step-000003", "step-000004"]

"""Configs refuse what cannot run, in one line, when they are read: YAML that is no mapping, a
section given a number, numbers outside their range (one table, earthsynth.config.LIMITS, for
every section and family); and models given as pickled weights are refused unless allowed."""

import dataclasses
import shutil
import types
import typing
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from earthsynth.cli import main
from earthsynth.config import LIMITS, DataConfig, ObjectiveConfig, TrainConfig, load_config
from earthsynth.errors import InputError
from earthsynth.registry import FAMILIES, get_family
from earthsynth.weights import pickle_allowed, pickled_weights, use_safetensors
from tests_support import TINY_RUN


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("earthsynth: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "a list"), ("3\n", "the number 3"),
                                        ("hello\n", "the text 'hello'")])
def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path, capsys, text, kind):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    err = one_line_error(capsys, ["train", str(config), f"output_dir={tmp_path / 'run'}"])
    assert err == f"earthsynth: error: {config}: the config file must be a mapping of keys to values, got {kind}"
    err = one_line_error(capsys, ["augment", "--demo", "--out", str(tmp_path / "aug"), "--config", str(config)])
    assert f"{config}: the augment config must be a mapping of keys to values, got {kind}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # nothing written


def test_a_section_given_a_number_is_one_line(tmp_path, capsys):
    for override, words in [("train=5", "train: must be a section (a mapping of keys to values), got the number 5"),
                            ("model=[1, 2]", "model: must be a section (a mapping of keys to values), got a list"),
                            ("train.max_steps.x=1", "'max_steps' is not a section"),
                            ("family=[smoke]", "family: expected a name, got a list")]:
        with pytest.raises(InputError) as err:
            load_config(tree={**TINY_RUN, "train": {"max_steps": 3}}, overrides=[override])
        assert words in str(err.value) and "\n" not in str(err.value), override
    err = one_line_error(capsys, ["augment", "--demo", "--out", str(tmp_path / "aug"), "filter=3"])
    assert err.endswith("augment.filter: must be a section (a mapping of keys to values), got the number 3")
    # an empty section in the YAML is an empty section, and overrides fill it
    config = tmp_path / "run.yaml"
    config.write_text("family: smoke\ntrain:\n")
    assert load_config(config, ["train.max_steps=3"]).train.max_steps == 3
    assert not (tmp_path / "aug").exists()


@pytest.mark.parametrize("override, message", [
    ("train.max_steps=0", "train.max_steps: must be at least 1, got 0"),
    ("train.max_steps=-1", "train.max_steps: must be at least 1, got -1"),
    ("train.learning_rate=0", "train.learning_rate: must be above 0, got 0.0"),
    ("train.learning_rate=-1e-4", "train.learning_rate: must be above 0, got -0.0001"),
    ("train.learning_rate=nan", "train.learning_rate: expected a finite number, got nan"),
    ("train.learning_rate=.inf", "train.learning_rate: expected a finite number, got inf"),
    ("train.batch_size=0", "train.batch_size: must be at least 1, got 0"),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps: must be at least 1, got 0"),
    ("train.num_workers=-1", "train.num_workers: must be at least 0, got -1"),
    ("train.checkpoint_every=0", "train.checkpoint_every: must be at least 1, got 0"),
    ("train.ema_decay=1", "train.ema_decay: must be in [0, 1), got 1.0"),
    ("train.seed=-3", "train.seed: must be in [0, 4294967295], got -3"),
    ("data.tile_size=0", "data.tile_size: must be at least 1, got 0"),
    ("data.gsd_factors=[2, 0]", "data.gsd_factors[1]: must be at least 1, got 0"),
    ("data.gsd_factors=[]", "data.gsd_factors: must not be empty"),
    ("data.overlap=16", "data.overlap: must be below data.tile_size (16), got 16"),
    ("objective.num_train_timesteps=0", "objective.num_train_timesteps: must be at least 1, got 0"),
    ("model.text_dropout=1.5", "model.text_dropout: must be in [0, 1], got 1.5"),
    ("model.block_out_channels=[16, -32]", "model.block_out_channels[1]: must be at least 1, got -32"),
])
def test_numbers_outside_their_range_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(InputError) as err:
        load_config(tree=TINY_RUN, overrides=[override])
    assert str(err.value) == f"config: {message}"


def test_augment_settings_are_checked_by_the_same_table(tmp_path, capsys):
    for setting, message in [("resample=0", "augment.resample: must be at least 1, got 0"),
                             ("steps=0", "augment.steps: must be at least 1, got 0"),
                             ("batch_size=-2", "augment.batch_size: must be at least 1, got -2"),
                             ("guidance_scale=nan", "augment.guidance_scale: expected a finite number, got nan"),
                             ("filter.min_recall=2", "augment.filter.min_recall: must be in [0, 1], got 2.0")]:
        err = one_line_error(capsys, ["augment", "--demo", "--out", str(tmp_path / "aug"), setting])
        assert err == f"earthsynth: error: {message}", setting
    assert not (tmp_path / "aug").exists()


def config_classes() -> list[type]:
    """Every dataclass a config is read into: the shared sections, each family's model config,
    augment's settings and what they nest."""
    from earthsynth.jobs.augment import AugmentConfig

    found, todo = [], [TrainConfig, DataConfig, ObjectiveConfig, AugmentConfig,
                       *(get_family(name).model_config for name in FAMILIES)]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.append(cls)
            todo += [hint for hint in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(hint)]
    return found


def is_numeric(annotation) -> bool:
    if typing.get_origin(annotation) in (list, tuple, typing.Union, types.UnionType):  # float | None too
        return any(is_numeric(arg) for arg in typing.get_args(annotation))
    return annotation in (int, float)


def test_every_numeric_field_has_a_range_its_default_is_in():
    classes = config_classes()
    assert len(classes) >= 13  # 3 sections, 9 families (hsi has two), augment and its filter
    numeric = set()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not is_numeric(hints[f.name]):
                continue
            numeric.add(f.name)
            assert f.name in LIMITS, f"{cls.__name__}.{f.name} has no range in earthsynth.config.LIMITS"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for value in default if isinstance(default, list) else [default]:
                assert value is None or value in LIMITS[f.name], (cls.__name__, f.name, value)  # None: unset
    assert not set(LIMITS) - numeric, "ranges of fields no config has"


def pickled_copy(folder: Path, target: Path) -> Path:
    """`folder` with every .safetensors file replaced by the pickled .bin of the same tensors
    that diffusers and transformers look for."""
    shutil.copytree(folder, target)
    for path in list(target.rglob("*.safetensors")):
        name = "pytorch_model.bin" if path.name == "model.safetensors" else path.with_suffix(".bin").name
        torch.save(load_file(path), path.with_name(name))
        path.unlink()
    return target


def test_pickled_weights_are_found_beside_no_safetensors(tmp_path):
    (tmp_path / "both" / "unet").mkdir(parents=True)
    for name in ("both/unet/diffusion_pytorch_model.bin", "both/unet/diffusion_pytorch_model.safetensors",
                 "pickled/text_encoder/pytorch_model.bin", "pickled/model_index.json", "weights.ckpt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert pickled_weights(tmp_path / "both") == []
    assert pickled_weights(tmp_path / "pickled") == [tmp_path / "pickled/text_encoder/pytorch_model.bin"]
    assert pickled_weights(tmp_path / "weights.ckpt") == [tmp_path / "weights.ckpt"]
    with pytest.raises(InputError) as err:
        use_safetensors(tmp_path / "pickled")
    assert str(err.value) == (f"{tmp_path / 'pickled'}: holds pickled weights (text_encoder/pytorch_model.bin), "
                              "which can run code when loaded; convert them to safetensors, or pass --allow-pickle "
                              "if you trust them")
    assert use_safetensors(tmp_path / "both") is True  # the loader must not fall back to the pickle
    with pickle_allowed():
        assert use_safetensors(tmp_path / "pickled") is None  # the library's choice: safetensors first
    with pytest.raises(InputError, match="weights.ckpt: holds pickled weights"):
        use_safetensors(tmp_path / "weights.ckpt")


def test_pickled_models_are_refused_on_every_loading_path(tmp_path):
    """The text encoder, the filter's detector and classifier and a training run's init folders
    read safetensors only; the jobs' pipelines are tested in test_generate_cli."""
    import earthsynth
    from earthsynth.augment.classifier.model import load_classifier
    from earthsynth.augment.detector.model import load_detector
    from earthsynth.conditioning.text import TextConditioner, default_text_model_dir

    text = pickled_copy(Path(default_text_model_dir()), tmp_path / "text")
    with pytest.raises(InputError, match=r"text: holds pickled weights \(pytorch_model.bin\)"):
        TextConditioner.from_pretrained(text)
    with pickle_allowed():
        assert TextConditioner.from_pretrained(text).dim == 384
    for name, load in (("detector", load_detector), ("classifier", load_classifier)):
        folder = pickled_copy(earthsynth.bundled_model(name), tmp_path / name)
        with pytest.raises(InputError, match=rf"{name}: holds pickled weights \(diffusion_pytorch_model.bin\)"):
            load(folder)
        with pickle_allowed():
            load(folder)
    ediffsr = pickled_copy(earthsynth.bundled_model("ediffsr"), tmp_path / "ediffsr")
    config = load_config(tree={"family": "ediffsr", "model": {"init_from": str(ediffsr)}})
    with pytest.raises(InputError, match="eanet: holds pickled weights"):
        get_family("ediffsr").build(config)


def test_a_pickled_pipeline_is_refused_unless_allowed(tmp_path, capsys):
    import earthsynth

    pickled = pickled_copy(earthsynth.bundled_model("text2earth"), tmp_path / "pickled")
    out = tmp_path / "out.png"
    argv = ["generate", "text2earth", "--prompt", "trees", "--steps", "2", "--out", str(out), "--model", str(pickled)]
    err = one_line_error(capsys, argv)
    assert f"{pickled}: holds pickled weights (unet/diffusion_pytorch_model.bin)" in err and "--allow-pickle" in err
    weights = pickled / "unet" / "diffusion_pytorch_model.bin"
    assert "holds pickled weights" in one_line_error(capsys, [*argv[:-1], str(weights)])
    assert not out.exists()
    assert main([*argv, "--allow-pickle"]) == 0, capsys.readouterr().err
    assert out.exists()

"""The jobs' shared parts: one load_pipeline on accelerate's device (or the asked one, in the
asked dtype), the progress bar that counts the work, the atomic output folder."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import PartialState

from earthsynth.cli import main
from earthsynth.data.common import atomic_directory
from earthsynth.data.geotiff import Raster, write_geotiff
from earthsynth.errors import InputError
from earthsynth.generation.ediffsr import EDiffSRPipeline, MeanRevertingScheduler
from earthsynth.jobs import load
from earthsynth.jobs.augment import expected_candidates
from earthsynth.jobs.progress import JobProgress
from earthsynth.jobs.upscale import upscale_file
from test_upscale import tiny_eanet


@pytest.fixture(scope="module")
def sr_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "sr"
    EDiffSRPipeline(eanet=tiny_eanet(), scheduler=MeanRevertingScheduler(num_train_timesteps=20)).save_pretrained(folder)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "low.png"
    pixels = (np.random.default_rng(0).uniform(0, 255, (3, 8, 8))).astype(np.uint8)
    write_geotiff(path, Raster(data=pixels))
    return path


def test_default_device_is_accelerates_and_asked_device_and_dtype_are_honoured(sr_dir, monkeypatch):
    assert load.job_device() == PartialState().device
    pipe = load.load_pipeline("ediffsr", sr_dir)
    assert pipe.eanet.device == PartialState().device and pipe.eanet.dtype == torch.float32

    # the default really is the state's: a state on another device moves the models there
    monkeypatch.setattr(load, "job_state", lambda: SimpleNamespace(device=torch.device("meta")))
    assert load.load_pipeline("ediffsr", sr_dir).eanet.device.type == "meta"
    pipe = load.load_pipeline("ediffsr", sr_dir, device="cpu", dtype="bfloat16")
    assert pipe.eanet.device.type == "cpu" and pipe.eanet.dtype == torch.bfloat16


def test_augment_puts_its_pipeline_detector_and_classifier_on_the_states_device(monkeypatch):
    from earthsynth.augment.classifier import CropClassifier
    from earthsynth.augment.detector import CompactDetector
    from earthsynth.jobs.augment import AugmentConfig, load_models

    loaded = {}
    monkeypatch.setattr(load, "job_state", lambda: SimpleNamespace(device=torch.device("meta")))
    monkeypatch.setattr("earthsynth.jobs.augment.load_pipeline",
                        lambda family, folder, device, dtype: loaded.update(family=family, device=device, dtype=dtype))
    monkeypatch.setattr("earthsynth.augment.detector.load_detector",
                        lambda folder: CompactDetector(class_names=["Tree"], widths=[8, 8, 8, 8], head_width=8))
    monkeypatch.setattr("earthsynth.augment.classifier.load_classifier",
                        lambda folder: CropClassifier(class_names=["Tree"], crop_size=16, widths=[8, 8]))
    _, detector, classifier = load_models(AugmentConfig(), Path("aerogen"))
    assert loaded == {"family": "aerogen", "device": torch.device("meta"), "dtype": torch.float32}
    assert detector.device.type == classifier.device.type == "meta"
    assert detector.dtype == classifier.dtype == torch.float32  # the filter's scores stay float32
    load_models(AugmentConfig(), Path("aerogen"), dtype="bfloat16")
    assert loaded["dtype"] == torch.bfloat16


def test_bad_device_dtype_and_folder_are_one_line_errors(sr_dir, tmp_path):
    with pytest.raises(InputError, match="not a torch device"):
        load.job_device("gpu0")
    with pytest.raises(InputError, match="choose one of float32, bfloat16, float16"):
        load.job_dtype("half")
    with pytest.raises(InputError, match="not an hsi pipeline folder"):
        load.load_pipeline("hsi", tmp_path)
    with pytest.raises(InputError, match="no pipeline; choose one of"):
        load.load_pipeline("smoke", sr_dir)


def test_upscale_cli_passes_device_and_dtype_and_shows_one_bar_of_its_steps(sr_dir, image, tmp_path, capsys,
                                                                            monkeypatch):
    asked = []
    real_load = load.load_pipeline
    monkeypatch.setattr("earthsynth.jobs.upscale.load_pipeline",
                        lambda *args: asked.append(args[2:]) or real_load(*args))
    out = tmp_path / "high.png"
    assert main(["upscale", str(image), "--out", str(out), "--model", str(sr_dir), "--steps", "3",
                 "--dtype", "float32", "--device", "cpu"]) == 0
    assert asked == [("cpu", "float32")]
    assert out.is_file()
    err = capsys.readouterr().err
    assert "upscale" in err and "3/3" in err  # the job's bar, counting denoising steps
    assert "Loading pipeline components" not in err and "it/s]" not in err.replace("step/s]", "")
    assert main(["upscale", str(image), "--out", str(out), "--model", str(sr_dir), "--device", "gpu0"]) == 1
    assert capsys.readouterr().err.strip() == "earthsynth: error: --device gpu0: not a torch device; e.g. cpu, cuda, cuda:1, mps"


def test_float32_on_the_default_device_is_what_it_was(sr_dir, image, tmp_path):
    """The device / dtype plumbing changes nothing by default: same pixels as an explicit cpu float32 run."""
    upscale_file(image, tmp_path / "a.png", model_dir=sr_dir, steps=2)
    upscale_file(image, tmp_path / "b.png", model_dir=sr_dir, steps=2, device="cpu", dtype="float32")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


class FakePipeline:
    """Takes `steps` steps through diffusers' progress_bar, as the pipelines do."""

    def progress_bar(self, iterable=None, total=None):
        raise AssertionError("the job's bar must replace the pipeline's own while it runs")

    def __call__(self, steps):
        for _ in self.progress_bar(range(steps)):
            pass


class SilentPipeline:
    def __call__(self, steps):
        pass


def test_job_bar_counts_the_steps_a_pipeline_reports_and_restores_its_bar():
    pipe = FakePipeline()
    with JobProgress(10, "job", disable=True) as progress:
        with progress.steps(pipe, 4):
            pipe(3)
            assert progress.done == 3  # moved during the call
        assert progress.done == 4  # the rest of the call's share when it ends
        with progress.steps(pipe, 4):
            pipe(6)  # more steps than expected (tiles): capped at the call's share
        assert progress.done == 8
        silent = SilentPipeline()
        with progress.steps(silent, 2):
            silent(2)
        assert progress.done == 10
    assert "progress_bar" not in vars(pipe)  # the class's method is back


def test_augment_bar_total_follows_the_acceptance_rate():
    assert expected_candidates(tried=10, accepted=2, wanted=4) == 20
    assert expected_candidates(tried=10, accepted=4, wanted=4) == 10
    assert expected_candidates(tried=3, accepted=0, wanted=4) > 10**9


def test_atomic_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "new.txt").write_text("half")
        raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"] and (target / "old.txt").is_file()
    with atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


def test_app_help_names_every_model_dir_family(capsys):
    from earthsynth.app import MODEL_FAMILIES

    with pytest.raises(SystemExit):
        main(["app", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for family in ("aerogen", "hsi", "ediffsr", "text2earth", "crsdiff"):
        assert family in MODEL_FAMILIES and f"{family}/" in help_text


def test_every_pipeline_runs_in_bfloat16_or_refuses_it_in_one_line():
    """--dtype bfloat16 either runs (the network in bf16, the scheduler state as the caller's) or,
    for hsi, is refused before anything loads."""
    load_pipeline = load.load_pipeline
    with pytest.raises(InputError, match="float32 only"):
        load_pipeline("hsi", device="cpu", dtype="bfloat16")
    pipe = load_pipeline("ediffsr", device="cpu", dtype="bfloat16")
    assert pipe.eanet.dtype == torch.bfloat16
    low = torch.from_numpy(np.random.default_rng(0).random((3, 16, 16)).astype(np.float32))
    out = pipe(low, num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out.float()).all()
    pipe = load_pipeline("text2earth", device="cpu", dtype="bfloat16")
    image = pipe("forest", gsd=0.2, num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()

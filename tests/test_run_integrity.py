"""Runs that cannot mix inputs or leave debris: augment's resume identity, a failed run leaving
its folder as it was, Ctrl+C keeping a resumable folder that `evaluate` refuses, killed runs'
temporaries removed by the next run, --out / output_dir that cannot be a folder, and corrupt
augment folders given to `evaluate`; each bad input one line, with nothing written."""

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from earthsynth.augment.filter import SampleFilter
from earthsynth.cli import main
from earthsynth.data.common import remove_stale_temporaries
from earthsynth.errors import InputError
from earthsynth.jobs.augment import dataset_records, input_identity, run_augment
from earthsynth.training.checkpoint import prepare_output_dir
from test_augment import cli_flags, config, models, small_coco_dataset  # noqa: F401 (models is a fixture)
from tests_support import TINY_RUN, assert_input_error


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder` (None for folders) with its bytes."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def small_config(models, **changes):  # noqa: F811 (the fixture's value)
    """Two accepted images out of at most four candidates, one per batch of one step."""
    return config(models, **{"num_images": 2, "max_candidates": 4, "batch_size": 1, "steps": 1, **changes})


@pytest.fixture(scope="module")
def finished(models, tmp_path_factory):  # noqa: F811
    """A finished augment folder (on the bundled tiles), to copy."""
    out = tmp_path_factory.mktemp("finished") / "out"
    run_augment(out, small_config(models), show_progress=False)
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# ----------------------------------------------------------------------------- resume identity
def test_input_identity_hashes_the_files_read_wherever_they_lie(tmp_path):
    data = small_coco_dataset(tmp_path / "data")
    identity = input_identity(str(data), "coco", dataset_records(str(data), "coco"))
    assert identity["format"] == "coco" and identity["files"] == 3  # two images and the json
    (data / "notes.txt").write_text("not part of the dataset")
    moved = Path(shutil.copytree(data, tmp_path / "elsewhere"))
    assert input_identity(str(moved), "coco", dataset_records(str(moved), "coco")) == identity

    image = next((moved / "images" / "train").glob("*.png"))
    pixels = bytearray(image.read_bytes())
    pixels[-20] ^= 1  # same name, same size, other content
    image.write_bytes(bytes(pixels))
    assert input_identity(str(moved), "coco", dataset_records(str(moved), "coco"))["sha256"] != identity["sha256"]


def test_a_rerun_with_another_input_is_refused_and_changes_nothing(models, tmp_path, capsys):  # noqa: F811
    data = small_coco_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = ["augment", "--out", str(out), "--num-images", "1", "resample=1", "max_candidates=2", *cli_flags(models)]
    assert main([*args, "--data", str(data), "--format", "coco"]) == 0
    saved = yaml.safe_load((out / "augment_config.yaml").read_text())["input"]
    assert saved["format"] == "coco" and saved["files"] == 3 and len(saved["sha256"]) == 64
    before = snapshot(out)

    yolo = tmp_path / "yolo"  # the same images and boxes, in another format
    import numpy as np
    from PIL import Image

    from earthsynth.data.export import DatasetWriter

    with DatasetWriter(yolo, "yolo", ["Tree"]) as writer:
        for record in dataset_records(str(data), "coco"):
            pixels = np.asarray(Image.open(record["image_path"]).convert("RGB"))
            writer.add("train", record["image_id"], pixels, record["boxes"])
    changed = Path(shutil.copytree(data, tmp_path / "changed"))
    annotations = next(changed.rglob("*.json"))
    content = json.loads(annotations.read_text())
    content["annotations"] = content["annotations"][:-1]  # one tree less
    annotations.write_text(json.dumps(content))
    capsys.readouterr()
    for extra, words in [(["--demo"], "not --demo"), (["--data", str(yolo), "--format", "yolo"], "not a yolo dataset"),
                         (["--data", str(changed), "--format", "coco"], "coco dataset of 3 files")]:
        assert main([*args, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and out.name in err and "was made from a coco dataset" in err and words in err, err
        assert snapshot(out) == before

    moved = Path(shutil.copytree(data, tmp_path / "moved"))  # the same dataset elsewhere resumes
    assert main([*args, "--data", str(moved), "--format", "coco", "--num-images", "2"]) == 0


def test_a_demo_folder_refuses_a_dataset(finished, models, tmp_path):  # noqa: F811
    out = copy_of(finished, tmp_path)
    with pytest.raises(InputError) as err:
        run_augment(out, small_config(models), data=str(small_coco_dataset(tmp_path / "data")), fmt="coco",
                    show_progress=False)
    assert_input_error(err, out, "was made from --demo, not a coco dataset")


# ----------------------------------------------------------------------------- no leftovers
def fail_on_call(number: int, error: type[BaseException]):
    """A SampleFilter.__call__ that raises `error` on its `number`-th call."""
    original, calls = SampleFilter.__call__, []

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise error("injected")
        return original(self, *args, **kwargs)
    return call


def test_a_run_failing_mid_way_leaves_no_folder(models, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(SampleFilter, "__call__", fail_on_call(2, RuntimeError))
    with pytest.raises(RuntimeError, match="injected"):  # after the first candidate is written
        run_augment(tmp_path / "out", small_config(models), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_resume_failing_at_the_end_leaves_the_folder_as_it_was(finished, models, tmp_path, monkeypatch):  # noqa: F811
    out = copy_of(finished, tmp_path)
    before = snapshot(out)

    def broken_report(*args, **kwargs):
        raise RuntimeError("injected")
    monkeypatch.setattr("earthsynth.augment.report.write_report", broken_report)
    with pytest.raises(RuntimeError, match="injected"):  # one more candidate, then the report fails
        run_augment(out, small_config(models, num_images=3), show_progress=False)
    assert snapshot(out) == before


def test_ctrl_c_keeps_a_resumable_folder_that_evaluate_refuses_until_it_is_finished(finished, models, tmp_path,  # noqa: F811
                                                                                   monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(SampleFilter, "__call__", fail_on_call(2, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run_augment(out, small_config(models), show_progress=False)
    monkeypatch.undo()
    shard = out / "manifest.rank0.jsonl"
    assert len(shard.read_text().splitlines()) == 1 and not (out / "run.json").exists()
    with open(shard, "a") as f:
        f.write('{"index": 1, "image_id": "synth_0000')  # a line a kill -9 cut short

    assert main(["evaluate", "--synthetic", str(out), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and out.name in err and "unfinished" in err
    assert not (tmp_path / "eval").exists()

    run_augment(out, small_config(models), show_progress=False)
    # the same as a run never interrupted, the cut line gone
    for name in ("manifest.jsonl", "manifest.rank0.jsonl", "coco/annotations/instances_train.json",
                 "candidates/000000.png", "candidates/000001.png"):
        assert (out / name).read_bytes() == (finished / name).read_bytes(), name


def test_the_next_run_removes_the_temporaries_of_a_killed_one_and_only_those(finished, models, tmp_path):  # noqa: F811
    out = copy_of(finished, tmp_path)
    debris = [".voc.k3j9x0qa", "..coco.k3j9x0qa.b7w2m1zz", ".finish.zz9x8y7w", ".yolo-obb.a_b_c_d_"]
    for name in debris:
        (out / name).mkdir()
        (out / name / "half.png").write_bytes(b"half")
    files = [".run.json.0123abcd.tmp", ".manifest.jsonl.89abcdef.tmp", "candidates/.000003.png.0f0f0f0f.tmp"]
    for name in files:
        (out / name).write_text("half")
    kept = [".notes.k3j9x0qa", ".coco.keep", ".coco.K3J9X0QA", "coco.k3j9x0qa", "candidates/.mine.png.0123abcd.tmp"]
    for name in kept:
        (out / name).write_text("mine")
    run_augment(out, small_config(models), show_progress=False)
    for name in debris + files:
        assert not (out / name).exists(), name
    for name in kept:
        assert (out / name).read_text() == "mine", name


def test_a_training_run_removes_its_killed_predecessors_temporaries(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-000003").mkdir(parents=True)
    debris = ["checkpoints/.step-000006.k3j9x0qa", ".final.zz9x8y7w"]
    for name in debris:
        (out / name).mkdir()
    files = ["checkpoints/step-000003/.rng-rank1.safetensors.0123abcd.tmp"]
    kept = ["checkpoints/step-000003/model.safetensors", "checkpoints/.backup.k3j9x0qa", ".previews.k3j9x0qa",
            "checkpoints/step-000003/.notes.txt.0123abcd.tmp"]
    for name in files + kept:
        (out / name).write_text("x")
    prepare_output_dir(out)
    assert [name for name in debris + files if (out / name).exists()] == []
    assert [name for name in kept if not (out / name).exists()] == []


def test_remove_stale_temporaries_matches_our_names_only(tmp_path):
    for name in (".coco.k3j9x0qa", ".coco.k3j9x0q", ".cocoa.k3j9x0qa", ".coco.k3j9x0qa.tmp", ".coco.0123abcd.tmp"):
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(tmp_path, "coco") == [".coco.0123abcd.tmp", ".coco.k3j9x0qa"]
    assert remove_stale_temporaries(tmp_path / "missing", "coco") == []


# ----------------------------------------------------------------------------- --out / output_dir
def train_config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    return str(path)


ENTRY_POINTS = {
    "augment": lambda out, tmp: ["augment", "--demo", "--out", out],
    "train": lambda out, tmp: ["train", train_config(tmp), "--output-dir", out],
    "data export": lambda out, tmp: ["data", "export", "--out", out],
    "evaluate": lambda out, tmp: ["evaluate", "--synthetic", str(tmp), "--out", out],
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", ["a file", "under a file", "read-only"])
def test_an_output_folder_that_cannot_be_one_is_one_line(entry, case, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    if case == "a file":
        out, words = blocker, "is a file"
    elif case == "under a file":
        out, words = blocker / "out", "blocker is a file"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        if os.access(locked, os.W_OK):
            pytest.skip("permissions are ignored here (root)")
        out, words = locked / "out", "no permission to write in"
    argv = ENTRY_POINTS[entry](str(out), tmp_path)
    before = snapshot(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and out.name in err and words in err, err
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- corrupt folders to evaluate
def corrupt(out: Path, case: str) -> tuple[str, str]:
    """Break a copy of a finished folder as `case` says; returns the file the error names and words it says."""
    manifest, run = out / "manifest.jsonl", out / "run.json"
    lines = manifest.read_text().splitlines()
    first = json.loads(lines[0])
    if case == "truncated manifest":
        manifest.write_text(manifest.read_text()[:-30])
        return "manifest.jsonl", f"line {len(lines)}: not valid JSON"
    if case == "index as text":
        lines[0] = json.dumps({**first, "index": "0"})
        words = "line 1: missing or non-integer \"index\""
    elif case == "no file key":
        lines[0] = json.dumps({k: v for k, v in first.items() if k != "file"})
        words = "line 1: missing \"file\""
    elif case == "file outside the folder":
        lines[0] = json.dumps({**first, "file": "../../etc/passwd"})
        words = "not a path inside the output folder"
    elif case == "labels not a list":
        lines[0] = json.dumps({**first, "layout": {**first["layout"], "labels": "Tree"}})
        words = "bad \"layout\""
    elif case == "a candidate fewer":
        lines = lines[1:]
        words = "but run.json says"
    elif case == "truncated run.json":
        run.write_text(run.read_text()[:40])
        return "run.json", "not readable JSON"
    elif case == "run.json a list":
        run.write_text("[1, 2]")
        return "run.json", "expected a JSON object"
    elif case == "run.json without accepted":
        run.write_text(json.dumps({k: v for k, v in json.loads(run.read_text()).items() if k != "accepted"}))
        return "run.json", "\"accepted\""
    elif case == "run.json nested beyond reason":
        run.write_text("[" * 100_000)
        return "run.json", "not readable JSON"
    elif case == "candidate missing":
        (out / first["file"]).unlink()
        return Path(first["file"]).name, "missing"
    elif case == "candidate not an image":
        (out / first["file"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        return Path(first["file"]).name, "cannot read the candidate image"
    manifest.write_text("".join(line + "\n" for line in lines))
    return "manifest.jsonl", words


@pytest.mark.parametrize("case", [
    "truncated manifest", "index as text", "no file key", "file outside the folder", "labels not a list",
    "a candidate fewer", "truncated run.json", "run.json a list", "run.json without accepted",
    "run.json nested beyond reason", "candidate missing", "candidate not an image"])
def test_evaluate_refuses_a_corrupt_augment_folder_in_one_line_writing_nothing(finished, case, tmp_path, capsys):
    synthetic = copy_of(finished, tmp_path)
    named, words = corrupt(synthetic, case)
    assert main(["evaluate", "--synthetic", str(synthetic), "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err and words in err, err
    assert not (tmp_path / "eval").exists()

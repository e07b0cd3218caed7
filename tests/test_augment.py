"""`earthsynth augment` end to end with tiny models built in code: dataset written and
loadable, resume without duplicates, refused reruns, filter verdicts in the manifest."""

import json
from dataclasses import replace

import pytest
import torch
from pycocotools.coco import COCO

from earthsynth.augment.classifier import CropClassifier
from earthsynth.augment.detector import CompactDetector
from earthsynth.augment.filter import FilterConfig
from earthsynth.config import load_config
from earthsynth.errors import InputError
from earthsynth.generation.aerogen.train import build, make_pipeline
from earthsynth.jobs.augment import AugmentConfig, load_records, run_augment
from tests_support import assert_input_error

TINY_AEROGEN = {
    "family": "aerogen",
    "model": {"block_out_channels": [8, 16], "attention_levels": 1, "attention_head_dim": 8, "max_objects": 16},
    "data": {"tile_size": 16, "gsd_factors": [8]},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of a tiny aerogen pipeline, detector and classifier (random weights)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    make_pipeline(build(load_config(tree=TINY_AEROGEN))).save_pretrained(root / "aerogen")
    CompactDetector(class_names=["Tree"], widths=[8, 8, 8, 8], head_width=8).save_pretrained(root / "detector")
    CropClassifier(class_names=["Tree"], crop_size=16, widths=[8, 8]).save_pretrained(root / "classifier")
    return root


def config(models, **changes) -> AugmentConfig:
    base = AugmentConfig(num_images=4, max_candidates=10, seed=3, model=str(models / "aerogen"),
                         detector=str(models / "detector"), classifier=str(models / "classifier"),
                         out_formats=["coco", "yolo"], steps=2, batch_size=3,
                         filter=FilterConfig(enabled=False))
    return replace(base, **changes)


def test_writes_a_dataset_pycocotools_loads_and_resumes_without_duplicates(models, tmp_path):
    out = tmp_path / "out"
    summary = run_augment(out, config(models), show_progress=False)
    assert summary["accepted"] == 4
    records = load_records(out)
    chosen = [r for r in records if r["accepted"]][:4]
    coco = COCO(str(out / "coco" / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 4
    assert len(coco.getAnnIds()) == sum(len(r["layout"]["labels"]) for r in chosen)
    assert "path:" not in (out / "yolo" / "data.yaml").read_text()  # not the staging folder: movable
    for name in ("manifest.jsonl", "run.json", "report.html", "report.png", "sampler.json", "layouts.jsonl"):
        assert (out / name).is_file(), name
    for record in records:  # provenance of every candidate
        assert {"seed", "prompt", "layout", "scores", "reasons", "checks", "model"} <= set(record)
        assert (out / record["file"]).is_file()

    first_files = {r["file"]: (out / r["file"]).read_bytes() for r in records}
    again = run_augment(out, config(models, num_images=7), show_progress=False)
    assert again["accepted"] == 7
    indices = [r["index"] for r in load_records(out)]
    assert len(indices) == len(set(indices)) == 7 + (len(indices) - 7)
    shard_lines = (out / "manifest.rank0.jsonl").read_text().splitlines()
    assert len(shard_lines) == len({json.loads(line)["index"] for line in shard_lines})  # nothing generated twice
    for file, data in first_files.items():  # earlier candidates are kept as they were
        assert (out / file).read_bytes() == data
    coco = COCO(str(out / "coco" / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 7


def test_same_seed_gives_the_same_candidates(models, tmp_path):
    run_augment(tmp_path / "a", config(models, num_images=2, max_candidates=3), show_progress=False)
    run_augment(tmp_path / "b", config(models, num_images=2, max_candidates=3), show_progress=False)
    for a, b in zip(load_records(tmp_path / "a"), load_records(tmp_path / "b")):
        assert a["prompt"] == b["prompt"] and a["layout"] == b["layout"]
        assert (tmp_path / "a" / a["file"]).read_bytes() == (tmp_path / "b" / b["file"]).read_bytes()


def test_the_filter_records_its_reasons(models, tmp_path):
    # random detector: nothing it finds matches the layouts, so images with objects fail
    summary = run_augment(tmp_path / "out", config(models, num_images=2, max_candidates=4,
                                                   filter=FilterConfig(detector_score=0.0)), show_progress=False)
    records = load_records(tmp_path / "out")
    assert len(records) == 4
    rejected = [r for r in records if not r["accepted"]]
    assert rejected and all(r["reasons"] for r in rejected)
    assert summary["accepted"] == sum(r["accepted"] for r in records) <= 2
    assert json.loads((tmp_path / "out" / "run.json").read_text())["thresholds"]["detector_score"] == 0.0


def test_refuses_other_settings_foreign_folders_and_bad_options(models, tmp_path):
    out = tmp_path / "out"
    run_augment(out, config(models, num_images=1, max_candidates=2), show_progress=False)
    with pytest.raises(InputError) as err:
        run_augment(out, config(models, num_images=1, max_candidates=2, seed=4), show_progress=False)
    assert_input_error(err, out, "other settings", "seed")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as err:
        run_augment(foreign, config(models), show_progress=False)
    assert_input_error(err, foreign, "not an earthsynth augment output")
    assert (foreign / "notes.txt").read_text() == "mine"

    with pytest.raises(InputError, match="pascal"):
        run_augment(tmp_path / "x", config(models, out_formats=["pascal"]), show_progress=False)
    with pytest.raises(InputError, match="unknown class"):
        run_augment(tmp_path / "y", config(models, per_class={"Car": 5}), show_progress=False)
    with pytest.raises(InputError) as err:
        run_augment(tmp_path / "z", config(models, model=str(tmp_path)), show_progress=False)
    assert_input_error(err, tmp_path, "model_index.json")


def small_coco_dataset(root, images: int = 2, size: int = 48):
    """A user's COCO dataset: real 0.1 m pixels and their trees, written by our own writer."""
    from earthsynth.data.export import DatasetWriter
    from earthsynth.data.tiles import RealTiles

    tiles = [t for t in RealTiles("train", tile_size=size, gsd_factors=(1,)).tiles if len(t.boxes)][:images]
    with DatasetWriter(root, "coco", ["Tree"]) as writer:
        for k, tile in enumerate(tiles):
            writer.add("train", f"img{k}", tile.pixels, tile.boxes)
    return root


def cli_flags(models):
    return [f"--model={models / 'aerogen'}", f"detector={models / 'detector'}",
            f"classifier={models / 'classifier'}", "filter.enabled=false", "steps=2", "batch_size=2"]


def test_cli_augments_a_user_dataset(models, tmp_path, capsys):
    from earthsynth.cli import main

    data = small_coco_dataset(tmp_path / "data")
    code = main(["augment", "--data", str(data), "--format", "coco", "--out", str(tmp_path / "out"),
                 "--num-images", "2", "--out-format", "voc,dota", "--seed", "1", "resample=1", "max_candidates=3",
                 *cli_flags(models)])
    assert code == 0
    assert "2 of 2 candidates accepted" in capsys.readouterr().out
    assert len(list((tmp_path / "out" / "voc" / "Annotations").glob("*.xml"))) == 2
    assert len(list((tmp_path / "out" / "dota").rglob("labelTxt/*.txt"))) == 2


def test_cli_bad_dataset_is_one_line_and_writes_nothing(models, tmp_path, capsys):
    from earthsynth.cli import main

    data = small_coco_dataset(tmp_path / "data", images=1)
    annotations = next(data.rglob("*.json"))
    content = json.loads(annotations.read_text())
    content["annotations"][0]["bbox"] = [40.0, 40.0, 30.0, 30.0]  # runs out of the 48 px image
    annotations.write_text(json.dumps(content))
    out = tmp_path / "out"
    code = main(["augment", "--data", str(data), "--format", "coco", "--out", str(out), *cli_flags(models)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert annotations.name in err and "outside" in err
    assert not out.exists()

    for argv, words in [
        (["augment", "--out", str(out)], "--data PATH --format FMT or --demo"),
        (["augment", "--data", str(data), "--out", str(out)], "needs --format"),
        (["augment", "--demo", "--out", str(out), "--per-class", "Tree"], "NAME=N"),
        (["augment", "--data", str(data), "--format", "kml", "--out", str(out), *cli_flags(models)], "kml"),
        (["augment", "--data", str(tmp_path / "missing"), "--format", "voc", "--out", str(out), *cli_flags(models)],
         "no such file"),
    ]:
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and words in err, err
    assert not out.exists()


def test_two_processes_take_disjoint_shards_and_merge_into_one_dataset(models, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed beside this python")
    data = small_coco_dataset(tmp_path / "data")
    args = ["augment", "--data", str(data), "--format", "coco", "--num-images", "4", "resample=1",
            "max_candidates=6", *cli_flags(models)]
    launched = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
                               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "earthsynth.cli",
                               *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = tmp_path / "two"
    shards = {rank: [json.loads(line)["index"] for line in (two / f"manifest.rank{rank}.jsonl").read_text().splitlines()]
              for rank in (0, 1)}
    assert shards == {0: [0, 2], 1: [1, 3]}
    coco = COCO(str(two / "coco" / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 4

    from earthsynth.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for a, b in zip(load_records(tmp_path / "one"), load_records(two)):
        assert a["index"] == b["index"] and a["layout"] == b["layout"] and a["prompt"] == b["prompt"]
        pixels_a = np.asarray(Image.open(tmp_path / "one" / a["file"]), dtype=int)
        pixels_b = np.asarray(Image.open(two / b["file"]), dtype=int)
        assert np.abs(pixels_a - pixels_b).max() <= 1  # batch composition changes float rounding only


def test_configs_augment_yaml_states_the_defaults():
    from pathlib import Path

    import yaml

    from earthsynth.config import from_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "augment.yaml"
    assert from_dict(AugmentConfig, yaml.safe_load(path.read_text()), str(path)) == AugmentConfig()

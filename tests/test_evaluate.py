"""`earthsynth evaluate`, the protocol: in-domain splits apart from the training rows, the
detector's early stopping and augmentation, the paired statistics, and a tiny run of every
condition through the CLI that writes the table, evaluate.json and the chart."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from earthsynth.augment.evaluate import (
    CONDITIONS,
    EvaluateConfig,
    paired_difference,
    run_tree,
    t_interval,
)
from earthsynth.boxes import Boxes
from earthsynth.cli import main
from earthsynth.data.sources import deepforest_images, in_domain_areas, in_domain_test_rows
from earthsynth.data.tiles import RealTiles


def fake_augment_run(root, size=32, gsd=0.8, labels=("Tree",)):
    """A finished augment folder: 4 candidates of `size` px at `gsd` m/px, 1 and 3 accepted."""
    rng = np.random.default_rng(0)
    (root / "candidates").mkdir(parents=True)
    (root / "augment_config.yaml").write_text("num_images: 2\nseed: 0\n")
    records = []
    for i in range(4):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "candidates" / f"{i:06d}.png")
        records.append({"index": i, "image_id": f"synth_{i:06d}", "file": f"candidates/{i:06d}.png",
                        "accepted": i in (1, 3), "layout": {"rboxes": [[10.0, 12.0, 8.0, 6.0, 0.0]],
                                                            "labels": list(labels), "rotated": False}})
    text = "".join(json.dumps(r) + "\n" for r in records)
    (root / "manifest.jsonl").write_text(text)
    (root / "manifest.rank0.jsonl").write_text(text)
    (root / "run.json").write_text(json.dumps({"candidates": 4, "accepted": 2, "wanted": 2, "num_images": 2,
                                               "gsd": gsd, "image_size": size}))
    return root


def tiny_recipe(path):
    path.write_text(yaml.safe_dump({"family": "detector", "model": {"widths": [8, 8], "head_width": 8},
                                    "train": {"batch_size": 2, "learning_rate": 1.0e-3, "lr_warmup_steps": 0}}))
    return path


def test_paired_interval_matches_a_hand_computation():
    # differences 0.05, 0.02, 0.08: mean 0.05, sd 0.03, se 0.03 / sqrt(3) = 0.0173205;
    # t(0.975, 2) = 4.302653 (a t table), half width 0.0745235
    stats = paired_difference([0.15, 0.22, 0.38], [0.10, 0.20, 0.30])
    assert stats["mean"] == pytest.approx(0.05) and stats["sd"] == pytest.approx(0.03) and stats["n"] == 3
    assert stats["ci95"] == pytest.approx([0.05 - 0.0745235, 0.05 + 0.0745235], abs=1e-6)
    assert stats["values"] == pytest.approx([0.05, 0.02, 0.08])
    # five values, t(0.975, 4) = 2.776445: mean 3, sd sqrt(2.5)
    five = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert five["ci95"] == pytest.approx([3 - 2.776445 * math.sqrt(2.5 / 5), 3 + 2.776445 * math.sqrt(2.5 / 5)])
    assert t_interval([0.4])["ci95"] is None
    with pytest.raises(ValueError):  # a seed missing from one condition is not paired silently
        paired_difference([0.1, 0.2], [0.1])


def test_in_domain_splits_never_overlap_the_training_rows_of_the_bundled_images():
    yell = [image for image in deepforest_images() if in_domain_areas(image) is not None]
    assert sorted(image.image_id[:9] for image in yell) == ["2019_YELL", "2019_YELL"]
    for image in yell:  # read from the real images' headers
        areas, (buffer_start, test_start) = in_domain_areas(image), in_domain_test_rows(image)
        train, val, test = areas["indomain-train"], areas["indomain-val"], areas["indomain-test"]
        assert train[0] == 0 and train[1] == val[0] < val[1] == buffer_start < test_start == test[0]
        assert test[1] == image.header.height and val[1] - val[0] == round(image.header.height / 8)
    starts = {image.image_id: in_domain_areas(image) for image in yell}
    for split in ("indomain-train", "indomain-val", "indomain-test"):
        tiles = RealTiles(split, tile_size=32, gsd_factors=[4])  # 128-row windows fit every area
        assert tiles.tiles and {t.source.image_id for t in tiles.tiles} == set(starts)
        for tile in tiles.tiles:
            first, end = starts[tile.source.image_id][split]
            assert first <= tile.window[1] and tile.window[3] <= end

    # what evaluate trains the detector on: above the validation block, or (stopping on
    # SOAP_061) above the test buffer; never the test area or its buffer
    from earthsynth.augment.detector.train import real_training_tiles
    from earthsynth.config import load_config

    for stop_split, limit in (("indomain-val", "indomain-train"), ("val", "indomain-val")):
        config = EvaluateConfig(synthetic="s", stop_split=stop_split)
        tree = run_tree({"family": "detector"}, config, "real", 0, 32, 4, "out")
        tiles = real_training_tiles(load_config(tree=tree))
        assert all(t.window[3] <= starts[t.source.image_id][limit][1] for t in tiles.tiles)
        assert any(t.window[3] == starts[t.source.image_id][limit][1] for t in tiles.tiles)


def test_the_detector_recipe_mixes_added_images_and_jitters_scale_with_the_boxes():
    from torch.utils.data import TensorDataset

    from earthsynth.augment.detector.train import augment, mixed

    real, extra = TensorDataset(torch.arange(6)), TensorDataset(torch.arange(100, 102))
    draws = [int(item[0]) for item in mixed(real, extra, 0.5)]
    assert sorted(draws) == [0, 1, 2, 3, 4, 5, 100, 100, 100, 101, 101, 101]  # each at least once, half added
    assert len(mixed(real, extra, 0.0)) == 8
    draws = [int(item[0]) for item in mixed(real, extra, 0.9)]
    assert sum(d >= 100 for d in draws) / len(draws) == pytest.approx(0.9, abs=0.02)

    torch.manual_seed(0)
    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 16:32, 24:48] = 1.0
    box = Boxes.from_xyxy(np.array([[24.0, 16.0, 48.0, 32.0]]), ["Tree"])
    sizes = set()
    for _ in range(6):
        out, (moved,) = augment(image, [box], color_jitter=0.0, scale_jitter=0.3)
        sizes.add(out.shape[-1])
        x0, y0, x1, y1 = moved.xyxy()[0]
        bright = out[0, 0] > 0.5
        rows, cols = np.nonzero(bright.numpy())
        assert abs(cols.min() - x0) <= 1 and abs(cols.max() + 1 - x1) <= 1
        assert abs(rows.min() - y0) <= 1 and abs(rows.max() + 1 - y1) <= 1
    assert len(sizes) > 1 and all(45 <= s <= 83 for s in sizes)


def test_scoring_in_batches_gives_what_one_image_at_a_time_gives():
    from earthsynth.augment.detector import CompactDetector, evaluate_detector

    torch.manual_seed(0)
    detector = CompactDetector(widths=[8, 8], head_width=8).eval()
    images = [torch.rand(3, size, size) for size in (32, 32, 48, 32, 48)]
    # each image's ground truth is its own best detection: results handed to the wrong image score less
    samples = [{"image": image, "boxes": detector.detect(image, score_threshold=0.0)[0][0].select([0])}
               for image in images]
    batched = evaluate_detector(detector, samples, score_threshold=0.0, batch_size=2)
    alone = evaluate_detector(detector, samples, score_threshold=0.0, batch_size=1)
    assert batched["mAP50"] == pytest.approx(alone["mAP50"]) and batched["mAP50_95"] == pytest.approx(alone["mAP50_95"])
    assert alone["mAP50"] > 0.5


def test_early_stopping_keeps_the_best_round_and_stops_after_patience(monkeypatch, tmp_path):
    import earthsynth.augment.detector.model as model
    from earthsynth.augment.detector.train import train_until_best
    from earthsynth.errors import InputError

    scores = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # best after round 2, then two rounds without progress

    def scripted(detector, samples, class_agnostic=False):
        return {"mAP50": next(scores), "mAP50_95": 0.0}

    monkeypatch.setattr(model, "evaluate_detector", scripted)
    tree = {"family": "detector", "output_dir": str(tmp_path / "run"), "model": {"widths": [8, 8], "head_width": 8},
            "data": {"split": "indomain-train", "tile_size": 32, "gsd_factors": [16]},
            "train": {"max_steps": 100, "batch_size": 2, "lr_scheduler": "constant", "checkpoint_every": 10**9}}
    curve = train_until_best(tree, [], every=1, patience=2)
    assert [p["step"] for p in curve["points"]] == [1, 2, 3, 4]
    assert curve["best_step"] == 2 and curve["best_mAP50"] == 0.3 and curve["stopped_at"] == 4
    assert json.loads((tmp_path / "run" / "curve.json").read_text()) == curve
    assert (tmp_path / "run" / "best" / "config.json").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [int(line.split(",")[0]) for line in lines[1:]] == [1, 2, 3, 4]  # one run, resumed round by round
    with pytest.raises(InputError, match="constant"):
        train_until_best({**tree, "train": {**tree["train"], "lr_scheduler": "cosine"}}, [], every=1, patience=2)


def test_evaluate_runs_every_condition_and_writes_the_table_json_and_chart(tmp_path, capsys):
    synthetic = fake_augment_run(tmp_path / "synthetic")
    out = tmp_path / "eval"
    code = main(["evaluate", "--synthetic", str(synthetic), "--out", str(out), "--detector-config",
                 str(tiny_recipe(tmp_path / "recipe.yaml")), "--seeds", "0,1", "--steps", "1", "--eval-every", "1",
                 "--patience", "1", "--real-fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    written = json.loads((out / "evaluate.json").read_text())
    assert list(written["conditions"]) == list(CONDITIONS)
    for name, row in written["conditions"].items():
        assert [r["seed"] for r in row["runs"]] == [0, 1]
        assert row["mAP50"]["n"] == 2 and len(row["mAP50"]["ci95"]) == 2
        assert (row["paired_mAP50_minus_real"] is None) == (name == "real")
        assert row["label"] in printed
        assert (out / "runs" / f"{name}_seed0" / "curve.json").is_file()
    assert [written["conditions"][name]["extra_images"] for name in CONDITIONS] == [0, 0, 2, 2, 2, 4]
    protocol = written["protocol"]
    assert protocol["scored_on"]["split"] == "indomain-test" and protocol["stopped_on"]["split"] == "indomain-val"
    assert protocol["tile_size"] == 32 and protocol["gsd_m"] == 0.8 and protocol["budget_steps"] == 1
    assert protocol["scored_on"]["tiles"] > 10 and protocol["scored_on"]["objects"] > 100
    assert written["synthetic_images"]["unfiltered"] == {"images": 2, "accepted": 1}  # candidates 0 and 1
    # the copy-paste set of a seed: 2 images of the working size, with more boxes than their background's
    copy_paste = json.loads((out / "data" / "copy_paste_seed1" / "annotations" / "instances_train.json").read_text())
    assert len(copy_paste["images"]) == 2 and {(i["width"], i["height"]) for i in copy_paste["images"]} == {(32, 32)}
    assert "budget 1 steps" in printed and "| real + copy-paste + filtered |" in printed
    with Image.open(out / "evaluate.png") as chart:
        assert chart.width == 960 and chart.height > 300
    page = (out / "evaluate.html").read_text()
    assert "<svg" in page and "<script" not in page and "https://" not in page
    assert page.count("<rect") == 1 + 2 * len(CONDITIONS) - 1  # the background, a bar per row of both panels

    # stopped and run again with one more seed: the finished runs are read back, not retrained
    (out / "runs" / "filtered_seed1" / "result.json").unlink()  # as if stopped during that run
    code = main(["evaluate", "--synthetic", str(synthetic), "--out", str(out), "--detector-config",
                 str(tiny_recipe(tmp_path / "recipe.yaml")), "--seeds", "0,1,2", "--steps", "1", "--eval-every", "1",
                 "--patience", "1", "--real-fraction", "0.5"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.count("(finished earlier, read back)") == 2 * len(CONDITIONS) - 1
    again = json.loads((out / "evaluate.json").read_text())
    assert again["conditions"]["real"]["runs"][:2] == written["conditions"]["real"]["runs"]
    assert [r["seed"] for r in again["conditions"]["filtered"]["runs"]] == [0, 1, 2]
    # other settings: nothing is read back
    code = main(["evaluate", "--synthetic", str(synthetic), "--out", str(out), "--detector-config",
                 str(tiny_recipe(tmp_path / "recipe.yaml")), "--seeds", "0", "--steps", "2", "--eval-every", "1",
                 "--patience", "1", "--real-fraction", "0.5", "--conditions", "real"])
    assert code == 0 and "read back" not in capsys.readouterr().out


@pytest.mark.parametrize("extra, run_json, words", [
    (["--conditions", "filtered,unfiltered"], {}, "--conditions: choose from"),
    (["--synthetic-share", "1"], {}, "--synthetic-share: must be in [0, 1)"),
    (["--eval-every", "0"], {}, "--eval-every: must be at least 1"),
    (["--patience", "0"], {}, "--patience: must be at least 1"),
    (["--seeds", "1,1"], {}, "--seeds: each seed once"),
    ([], {"gsd": 0.25}, "multiples of 0.1 m/px"),
    ([], {"image_size": "big"}, '"image_size" must be a positive integer'),
    ([], {"image_size": 256, "gsd": 0.2}, "--stop-on: no 256 px tile at 0.2 m/px fits in indomain-val"),
])
def test_bad_settings_are_one_line_and_write_nothing(extra, run_json, words, tmp_path, capsys):
    synthetic = fake_augment_run(tmp_path / "synthetic")
    if run_json:
        run = json.loads((synthetic / "run.json").read_text())
        (synthetic / "run.json").write_text(json.dumps({**run, **run_json}))
    argv = ["evaluate", "--synthetic", str(synthetic), "--out", str(tmp_path / "eval"),
            "--detector-config", str(tiny_recipe(tmp_path / "recipe.yaml")), *extra]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err, err
    assert not (tmp_path / "eval").exists()


def test_synthetic_labels_the_detector_lacks_are_one_line(tmp_path, capsys):
    synthetic = fake_augment_run(tmp_path / "synthetic", labels=("Dead",))
    assert main(["evaluate", "--synthetic", str(synthetic), "--out", str(tmp_path / "eval"),
                 "--detector-config", str(tiny_recipe(tmp_path / "recipe.yaml"))]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "['Dead']" in err and "--detector-config" in err
    assert not (tmp_path / "eval").exists()

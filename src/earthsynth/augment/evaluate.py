"""`earthsynth evaluate`: does the synthetic data make a detector better?

The compact detector is trained three ways, each over several seeds, with the same recipe
and the same number of steps:

    real        a fraction of the real training tiles (the low-data regime)
    filtered    the same real tiles + the accepted images of an augment run
    unfiltered  the same real tiles + as many candidates of that run, taken in candidate
                order whether the filter accepted them or not (the ablation of the filter)

and each model is scored on the held-out real image (OSBS_029, never used for training,
tuning or picking) with pycocotools mAP50 and mAP50:95. The seed picks the real subset,
the initialisation and the batch order, and is shared by the three conditions.

    earthsynth evaluate --synthetic demo-out --out eval-out [--real-fraction 0.25] [--seeds 0,1,2]
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from earthsynth.augment.report import load_manifest, load_run
from earthsynth.data.common import atomic_write, check_output_folder, remove_stale_temporaries
from earthsynth.errors import InputError

CONDITIONS = ("real", "filtered", "unfiltered")


@dataclass
class EvaluateConfig:
    synthetic: str = ""  # an `earthsynth augment` output folder
    real_fraction: float = 0.25  # share of the real training tiles every condition gets
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_steps: int = 0  # detector training steps; 0 = the recipe's
    detector_config: str = ""  # training recipe (YAML); "" = the one that made the bundled detector
    test_tile_size: int = 200  # the scored image is one tile of this size at 0.2 m/px
    split: str = "test"  # test: the held-out OSBS_029; val: SOAP_061 (its Alive / Dead count as one class),
    #                      for choosing settings without looking at the test image
    min_objects: int = 0  # leave out synthetic images with fewer conditioned objects (both sets)
    max_synthetic: int = 0  # use at most this many synthetic images (the first accepted); 0 = all


def detector_recipe(config: EvaluateConfig) -> dict:
    """The detector training config tree to start from."""
    if config.detector_config:
        path = Path(config.detector_config)
    else:
        from earthsynth.jobs.load import bundled_checkpoint

        path = bundled_checkpoint("detector") / "train_config.yaml"
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot read the detector recipe ({str(err).splitlines()[0]})") from None
    if tree.get("family") != "detector":
        raise InputError(path, "not a detector training config (family: detector)")
    return tree


def finished_run(synthetic: Path) -> tuple[list[dict], dict]:
    """The manifest records and run summary of a finished augment folder, checked: one line
    for a folder that is not one, a run that did not finish, or a malformed manifest."""
    if not (synthetic / "augment_config.yaml").is_file():
        raise InputError(synthetic, "not an `earthsynth augment` output folder (no augment_config.yaml)")
    if not (synthetic / "run.json").is_file() or not (synthetic / "manifest.jsonl").is_file():
        raise InputError(synthetic, "holds an unfinished augment run (no run.json: it was interrupted or "
                                    "failed); rerun the same `earthsynth augment` command to finish it")
    run = load_run(synthetic / "run.json")
    records = load_manifest(synthetic / "manifest.jsonl")
    accepted = sum(r["accepted"] for r in records)
    if len(records) != run["candidates"] or accepted < run["accepted"]:
        raise InputError(synthetic / "manifest.jsonl", f"holds {len(records)} candidates, {accepted} accepted, but "
                                                       f"run.json says {run['candidates']}, {run['accepted']}")
    for record in records:
        if not (synthetic / record["file"]).is_file():
            raise InputError(synthetic / record["file"], f"candidate {record['index']} of the manifest is missing")
    return records, run


def synthetic_sets(synthetic: Path, out: Path, min_objects: int = 0,
                   max_images: int = 0) -> dict[str, tuple[Path, int]]:
    """COCO datasets of the accepted candidates and of as many candidates in index order
    (of those with at least `min_objects` objects)."""
    from earthsynth.jobs.augment import write_candidates

    records, run = finished_run(synthetic)
    accepted = [r for r in records if r["accepted"]][: run["accepted"]]
    if not accepted:
        raise InputError(synthetic, "holds no accepted images; raise max_candidates or relax the filter")
    accepted = [r for r in accepted if len(r["layout"]["labels"]) >= min_objects][: max_images or None]
    unfiltered = [r for r in records if len(r["layout"]["labels"]) >= min_objects][: len(accepted)]
    if not accepted:
        raise InputError(synthetic, f"holds no accepted image with at least {min_objects} objects")
    classes = sorted({label for r in records for label in r["layout"]["labels"]}) or ["Tree"]
    sets = {}
    for name, chosen in (("filtered", accepted), ("unfiltered", unfiltered)):
        destination = out / "data" / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(destination.parent, name)
        write_candidates(synthetic, chosen, destination, "coco", classes, run.get("gsd"))
        sets[name] = (destination, sum(r["accepted"] for r in chosen))
    return sets


def train_and_score(tree: dict, output_dir: Path, test_tiles, class_agnostic: bool = False) -> dict:
    from earthsynth.augment.detector import evaluate_detector, load_detector
    from earthsynth.config import load_config
    from earthsynth.training.loop import train

    config = load_config(tree={**tree, "output_dir": str(output_dir)})
    started = time.perf_counter()
    result = train(config, show_progress=False)
    detector = load_detector(result["final_dir"])
    scores = evaluate_detector(detector, test_tiles, class_agnostic=class_agnostic)
    return {"mAP50": scores["mAP50"], "mAP50_95": scores["mAP50_95"], "train_s": round(time.perf_counter() - started, 1),
            "last_loss": result["losses"][-1][1] if result["losses"] else None}


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_evaluate(out: str | Path, config: EvaluateConfig, log=print) -> dict:
    """Train and score every (condition, seed); returns and writes evaluate.json."""
    from earthsynth.data.tiles import RealTiles

    out = Path(out)
    if not config.synthetic:
        raise InputError("--synthetic", "name the `earthsynth augment` output folder to evaluate")
    if not 0.0 < config.real_fraction <= 1.0:
        raise InputError("--real-fraction", f"must be in (0, 1], got {config.real_fraction}")
    if not config.seeds:
        raise InputError("--seeds", "give at least one seed")
    if config.max_steps < 0:
        raise InputError("--steps", f"must be at least 1, got {config.max_steps}")
    if config.split not in ("test", "val"):
        raise InputError("--split", f"must be test or val, got {config.split!r}")
    check_output_folder(out, "--out")
    recipe = detector_recipe(config)
    fresh = not out.exists()
    try:  # the folder is checked before anything is written
        sets = synthetic_sets(Path(config.synthetic), out, config.min_objects, config.max_synthetic)
    except InputError:  # a candidate image found unreadable while writing: nothing stays either
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    test_tiles = RealTiles(config.split, tile_size=config.test_tile_size, gsd_factors=(2,))

    runs: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    for seed in config.seeds:
        for condition in CONDITIONS:
            tree = json.loads(json.dumps(recipe))  # a deep copy
            model = tree.setdefault("model", {})
            model.update(real_fraction=config.real_fraction, real_fraction_seed=seed, extra_data="")
            if condition != "real":
                model.update(extra_data=str(sets[condition][0]), extra_format="coco")
            train_config = tree.setdefault("train", {})
            train_config.update(seed=seed, checkpoint_every=10**9, keep_checkpoints=1)
            if config.max_steps:
                train_config["max_steps"] = config.max_steps
            scores = train_and_score(tree, out / "runs" / f"{condition}_seed{seed}", test_tiles,
                                     class_agnostic=config.split == "val")
            runs[condition].append({"seed": seed, **scores})
            log(f"{condition:<10} seed {seed}: mAP50 {100 * scores['mAP50']:.1f}  "
                f"mAP50:95 {100 * scores['mAP50_95']:.1f}  ({scores['train_s']} s)")

    summary = {
        "conditions": {name: {"mAP50": spread([r["mAP50"] for r in rows]),
                              "mAP50_95": spread([r["mAP50_95"] for r in rows]), "runs": rows}
                       for name, rows in runs.items()},
        "synthetic_images": {name: {"images": len(list((path / "images").rglob("*.png"))), "accepted": accepted}
                             for name, (path, accepted) in sets.items()},
        "scored_on": {"image": "OSBS_029" if config.split == "test" else "SOAP_061", "split": config.split,
                      "tile_size": config.test_tile_size, "gsd_m": 0.2},
        "settings": asdict(config),
        "recipe": recipe,
    }
    means = {name: summary["conditions"][name]["mAP50"]["mean"] for name in CONDITIONS}
    summary["filtered_minus_real_mAP50_points"] = round(100 * (means["filtered"] - means["real"]), 2)
    summary["filtered_minus_unfiltered_mAP50_points"] = round(100 * (means["filtered"] - means["unfiltered"]), 2)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "evaluate.json") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_table(summary: dict) -> str:
    """A markdown table: mean +- standard deviation over seeds, in mAP points."""
    seeds = len(summary["settings"]["seeds"])
    lines = [f"| training data ({100 * summary['settings']['real_fraction']:.0f}% real tiles) | synthetic images "
             f"| mAP50 (mean ± sd, {seeds} seeds) | mAP50:95 |", "|---|---|---|---|"]
    for name in CONDITIONS:
        row = summary["conditions"][name]
        count = summary["synthetic_images"].get(name, {}).get("images", 0)
        lines.append(f"| {name} | {count} | {100 * row['mAP50']['mean']:.1f} ± {100 * row['mAP50']['std']:.1f} "
                     f"| {100 * row['mAP50_95']['mean']:.1f} ± {100 * row['mAP50_95']['std']:.1f} |")
    return "\n".join(lines)

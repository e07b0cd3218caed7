"""`earthsynth evaluate`: does the synthetic data make a detector better than real data alone,
and better than copy-paste, the baseline users know?

    earthsynth evaluate --synthetic demo-out --out eval-out [--split indomain-test] [--seeds 0,1,2,3,4]

Data (earthsynth.data.sources.in_domain_areas; rows of each YELL training image of height H):
    indomain-test   the scored split by default: the last quarter of the rows, [H - H/4, H)
                    (224 trees); the 256 rows above it are a buffer in no split
    indomain-val    the eighth of the rows right above that buffer, [H - H/4 - 256 - H/8,
                    H - H/4 - 256) (99 trees): settings and early stopping are chosen on it
    test            OSBS_029: the cross-site test (another site and forest type, 61 trees)
    val             SOAP_061: the cross-site validation image (its Alive / Dead count as one class)
The detector trains on the rows above indomain-val ("indomain-train") when it stops on
indomain-val (the default), and on the rows above the test buffer when it stops on SOAP_061:
never on a test area, a buffer or the data it stops on. Validation and test are scored as tiles
of the working size, the size the detector trains on: it standardises each image, so its score
falls as the input grows (one detector, in-domain test: 19.3 mAP50 on 64 px tiles, 11.9 on
128 px, 6.1 on the whole strip). A split with no tile that fits (a 256 px tile at 0.2 m/px is
512 rows; the validation block of the smaller image is 128) is refused.

Detector: the recipe (the bundled detector's training config, or --detector-config) at the
generator's working resolution (the augment run's image size and GSD), with random flips,
90-degree turns, colour jitter and scale jitter, its learning rate constant after warm-up,
trained in rounds of `eval_every` steps through the one loop until validation mAP50 has not
improved for `patience` rounds or the budget (`max_steps`) is spent; the best round is scored
(earthsynth.augment.detector.train.train_until_best; each run's curve.json has the curve).

Conditions, each over the same seeds with the same budget and stopping rule:
    real_full            all the real training tiles, real only (the reference: more real data)
    real                 a `real_fraction` of them (the low-data regime all others start from)
    copy_paste           real + as many copy-paste images as there are filtered ones: crowns of
                         the seed's real tiles pasted onto its real tiles (augment.copy_paste)
    filtered             real + the accepted images of the augment run
    unfiltered           real + as many candidates, in candidate order, accepted or not
    copy_paste_filtered  real + the copy-paste and the filtered images
The added images are drawn `synthetic_share` of the time (the rest real tiles). The seed picks
the real subset, the copy-paste images, the initialisation and the batch order, and is shared
by the conditions, so each condition's paired difference to real (same seed) cancels most of
the seed noise. Per condition: mean, sd and 95% t-interval over the seeds, and the paired
difference to real with its 95% t-interval. evaluate.json, evaluate.png and evaluate.html
(the table and the chart: bars with their intervals) are written to --out.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import statistics
import textwrap
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from earthsynth.augment.report import load_manifest, load_run
from earthsynth.data.common import atomic_write, check_output_folder, remove_stale_temporaries
from earthsynth.errors import InputError

# in table order; `real` is the reference of the paired differences
CONDITIONS = ("real_full", "real", "copy_paste", "filtered", "unfiltered", "copy_paste_filtered")
LABELS = {"real_full": "real (100%)", "real": "real ({fraction})", "copy_paste": "real + copy-paste",
          "filtered": "real + filtered synthetic", "unfiltered": "real + unfiltered synthetic",
          "copy_paste_filtered": "real + copy-paste + filtered"}
SCORED_SPLITS = ("indomain-test", "test", "indomain-val", "val")
STOP_SPLITS = ("indomain-val", "val")
SPLIT_NAMES = {"indomain-test": "YELL in-domain test area", "indomain-val": "YELL in-domain validation block",
               "test": "OSBS_029 (cross-site test)", "val": "SOAP_061 (cross-site validation)"}


@dataclass
class EvaluateConfig:
    synthetic: str = ""  # an `earthsynth augment` output folder
    real_fraction: float = 0.25  # share of the real training tiles of every condition but real_full
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    max_steps: int = 3000  # the training budget of every run, in steps (batches of the recipe's size)
    eval_every: int = 100  # steps between two scores on the validation split
    patience: int = 6  # stop after this many scores without a better validation mAP50
    detector_config: str = ""  # training recipe (YAML); "" = the one that made the bundled detector
    split: str = "indomain-test"  # what is scored: SCORED_SPLITS
    stop_split: str = "indomain-val"  # what early stopping scores: STOP_SPLITS
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    synthetic_share: float = 0.5  # share of the training draws that are added (synthetic / copy-paste) images
    min_objects: int = 0  # leave out synthetic images with fewer conditioned objects (both sets)
    max_synthetic: int = 0  # use at most this many synthetic images (the first accepted); 0 = all


def check_settings(config: EvaluateConfig) -> None:
    """One line for a bad setting, before any work."""
    if not config.synthetic:
        raise InputError("--synthetic", "name the `earthsynth augment` output folder to evaluate")
    if not 0.0 < config.real_fraction <= 1.0:
        raise InputError("--real-fraction", f"must be in (0, 1], got {config.real_fraction}")
    if not config.seeds:
        raise InputError("--seeds", "give at least one seed")
    if len(set(config.seeds)) != len(config.seeds):
        raise InputError("--seeds", f"each seed once, got {','.join(map(str, config.seeds))}")
    for option, value in (("--steps", config.max_steps), ("--eval-every", config.eval_every),
                          ("--patience", config.patience)):
        if value < 1:
            raise InputError(option, f"must be at least 1, got {value}")
    if config.split not in SCORED_SPLITS:
        raise InputError("--split", f"must be one of {', '.join(SCORED_SPLITS)}, got {config.split!r}")
    if config.stop_split not in STOP_SPLITS:
        raise InputError("--stop-on", f"must be one of {', '.join(STOP_SPLITS)}, got {config.stop_split!r}")
    unknown = [name for name in config.conditions if name not in CONDITIONS]
    if unknown or "real" not in config.conditions:
        raise InputError("--conditions", f"choose from {', '.join(CONDITIONS)}, real included, got "
                                         f"{','.join(config.conditions)}")
    if not 0.0 <= config.synthetic_share < 1.0:  # NaN fails this too
        raise InputError("--synthetic-share", f"must be in [0, 1), got {config.synthetic_share}")


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
    if not isinstance(tree, dict) or tree.get("family") != "detector":
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


def chosen_candidates(synthetic: Path, records: list[dict], run: dict, min_objects: int = 0,
                      max_images: int = 0) -> dict[str, list[dict]]:
    """The filtered set (the accepted candidates with at least `min_objects` objects, at most
    `max_images`) and the unfiltered one (as many candidates in index order, accepted or not)."""
    accepted = [r for r in records if r["accepted"]][: run["accepted"]]
    if not accepted:
        raise InputError(synthetic, "holds no accepted images; raise max_candidates or relax the filter")
    accepted = [r for r in accepted if len(r["layout"]["labels"]) >= min_objects][: max_images or None]
    if not accepted:
        raise InputError(synthetic, f"holds no accepted image with at least {min_objects} objects")
    unfiltered = [r for r in records if len(r["layout"]["labels"]) >= min_objects][: len(accepted)]
    return {"filtered": accepted, "unfiltered": unfiltered}


def working_resolution(synthetic: Path, run: dict, recipe: dict) -> tuple[int, int]:
    """(tile size, resampling factor of the 0.1 m/px deepforest images) at which the detector
    trains: the synthetic images' size and GSD (the recipe's where run.json lacks them)."""
    from earthsynth.data.sources import DEEPFOREST_GSD

    data = recipe.get("data") or {}
    size = run.get("image_size", data.get("tile_size", 64))
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InputError(synthetic / "run.json", f'"image_size" must be a positive integer, got {size!r}')
    if run.get("gsd") is None:
        return size, int((data.get("gsd_factors") or [1])[0])
    factor = round(run["gsd"] / DEEPFOREST_GSD)
    if factor < 1 or abs(factor * DEEPFOREST_GSD - run["gsd"]) > 0.01 * run["gsd"]:
        raise InputError(synthetic / "run.json", f"the synthetic images are at {run['gsd']} m/px; the bundled real "
                                                 f"tiles come at multiples of {DEEPFOREST_GSD} m/px")
    return size, factor


def candidate_images(synthetic: Path, records: list[dict]) -> Iterable[tuple[str, np.ndarray, object]]:
    """(image id, pixels, boxes) of augment candidates; one line for an unreadable image."""
    from earthsynth.augment.report import load_candidate, record_boxes

    for record in records:
        pixels = load_candidate(synthetic, record)
        if pixels is None:
            raise InputError(synthetic / record["file"], "cannot read the candidate image")
        yield record["image_id"], pixels, record_boxes(record)


def write_set(destination: Path, images: Iterable[tuple[str, np.ndarray, object]], class_names: list[str],
              gsd: float | None) -> Path:
    """A COCO dataset of (image id, pixels, boxes) at `destination`, replacing what was there."""
    from earthsynth.data.export import DatasetWriter

    destination.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(destination.parent, destination.name)
    shutil.rmtree(destination, ignore_errors=True)
    with DatasetWriter(destination, "coco", class_names) as writer:
        for image_id, pixels, boxes in images:
            writer.add("train", image_id, pixels, boxes, gsd=gsd)
    return destination


def tile_samples(split: str, tile_size: int, factor: int, option: str) -> list[dict]:
    """The tiles of a split at the working size and resolution as sample dicts, cut once;
    one line naming `option` when none fits."""
    from earthsynth.data.sources import DEEPFOREST_GSD
    from earthsynth.data.tiles import RealTiles

    tiles = RealTiles(split, tile_size=tile_size, gsd_factors=[factor])
    if not len(tiles):
        raise InputError(option, f"no {tile_size} px tile at {factor * DEEPFOREST_GSD:g} m/px fits in {split} "
                                 f"({SPLIT_NAMES[split]}); the synthetic images are too large for it")
    return [{"image": s["image"], "boxes": s["boxes"], "image_id": s["image_id"]} for s in tiles]


def describe(split: str, samples: list[dict]) -> dict:
    return {"split": split, "what": SPLIT_NAMES[split], "tiles": len(samples),
            "objects": sum(len(s["boxes"]) for s in samples)}


def one_class(samples: list[dict], class_names: list[str]) -> bool:
    """Score class-agnostic where the split's labels are not the detector's (SOAP's Alive / Dead)."""
    return not {label for s in samples for label in s["boxes"].labels} <= set(class_names)


# ----------------------------------------------------------------------------- statistics
def t_interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean, sample sd, n and the t-interval of the mean, mean +- t(1 - (1 - confidence) / 2,
    n - 1) * sd / sqrt(n); the interval is null for a single value."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    interval = None
    if n > 1:
        half = float(t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
        interval = [mean - half, mean + half]
    return {"mean": mean, "sd": sd, "n": n, "ci95": interval, "values": values}


def paired_difference(values: list[float], reference: list[float]) -> dict:
    """t_interval of the differences value - reference, seed by seed."""
    return t_interval([v - r for v, r in zip(values, reference, strict=True)])


# ----------------------------------------------------------------------------- the runs
def run_tree(recipe: dict, config: EvaluateConfig, condition: str, seed: int, tile_size: int, factor: int,
             output_dir: Path) -> dict:
    """The detector run config of one (condition, seed), without added images."""
    tree = json.loads(json.dumps(recipe))  # a deep copy
    tree["output_dir"] = str(output_dir)
    data = tree.setdefault("data", {})
    # the in-domain test area and its buffer are never trained on; nor is the validation block
    # when it stops training
    data.update(tile_size=tile_size, gsd_factors=[factor], hflip=True, sources=["deepforest"],
                split="indomain-train" if config.stop_split == "indomain-val" else "train",
                exclude_test_area=True)
    model = tree.setdefault("model", {})
    model.update(real_fraction=1.0 if condition == "real_full" else config.real_fraction,
                 real_fraction_seed=seed, extra_data="", extra_format="coco", extra_share=0.0)
    train = tree.setdefault("train", {})
    train.update(seed=seed, max_steps=config.max_steps, lr_scheduler="constant_with_warmup",
                 checkpoint_every=10**9, keep_checkpoints=1, resume="")
    return tree


def copy_paste_set(tree: dict, count: int, destination: Path, class_names: list[str], extra_images: list) -> Path:
    """Copy-paste images made from the seed's real training tiles (and only those), with
    `extra_images` (the filtered synthetic set) after them, as a COCO dataset."""
    from earthsynth.augment.copy_paste import copy_paste_images
    from earthsynth.augment.detector.train import real_subset, real_training_tiles
    from earthsynth.config import load_config

    run_config = load_config(tree=tree)
    tiles = real_training_tiles(run_config)
    # the detector's own pick of real tiles for this seed (the same permutation)
    subset = real_subset(range(len(tiles)), run_config.model.real_fraction, run_config.model.real_fraction_seed)
    chosen = [(tiles.tiles[i].pixels, tiles.tiles[i].boxes) for i in subset]
    try:
        made = copy_paste_images(chosen, count, run_config.train.seed)
    except ValueError as err:
        raise InputError("--real-fraction", f"no copy-paste possible: {err}") from None
    gsd = tiles.tiles[0].gsd if len(tiles) else None
    images = [(f"copy_paste_{i:05d}", pixels, boxes) for i, (pixels, boxes) in enumerate(made)]
    return write_set(destination, [*images, *extra_images], class_names, gsd)


def train_and_score(tree: dict, validation: list[dict], scored: list[dict], config: EvaluateConfig,
                    class_names: list[str]) -> dict:
    """One detector trained until its mAP50 on `validation` stops improving, its best round
    scored on `scored`: the numbers of one (condition, seed)."""
    from earthsynth.augment.detector import evaluate_detector, load_detector
    from earthsynth.augment.detector.train import train_until_best

    started = time.perf_counter()
    curve = train_until_best(tree, validation, config.eval_every, config.patience, one_class(validation, class_names))
    scores = evaluate_detector(load_detector(Path(tree["output_dir"]) / "best"), scored,
                               class_agnostic=one_class(scored, class_names))
    return {"mAP50": scores["mAP50"], "mAP50_95": scores["mAP50_95"], "val_mAP50": curve["best_mAP50"],
            "best_step": curve["best_step"], "stopped_at": curve["stopped_at"],
            "train_s": round(time.perf_counter() - started, 1)}


RESULT = "result.json"  # a finished (condition, seed): its settings key and its numbers


def settings_key(config: EvaluateConfig, recipe: dict, synthetic: Path, tile_size: int, factor: int) -> str:
    """What a (condition, seed)'s numbers depend on besides the condition and the seed: the
    settings that shape every run, the recipe, the working resolution and the augment run
    (its manifest and summary, byte for byte)."""
    import hashlib

    shaping = {k: v for k, v in asdict(config).items() if k not in ("seeds", "conditions")}
    digest = hashlib.sha256(json.dumps([shaping, recipe, tile_size, factor], sort_keys=True).encode())
    for name in ("manifest.jsonl", "run.json"):
        digest.update((synthetic / name).read_bytes())
    return digest.hexdigest()


def finished_result(run_dir: Path, key: str) -> dict | None:
    """The numbers of a run finished under the same settings key, else None."""
    try:
        stored = json.loads((run_dir / RESULT).read_text())
        return stored["row"] if stored.get("settings_key") == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def run_evaluate(out: str | Path, config: EvaluateConfig, log=print) -> dict:
    """Train and score every (condition, seed); returns the summary, written to evaluate.json,
    evaluate.png and evaluate.html."""
    from earthsynth.config import load_config
    from earthsynth.data.sources import DEEPFOREST_GSD

    out = Path(out)
    check_settings(config)
    check_output_folder(out, "--out")
    recipe = detector_recipe(config)
    synthetic = Path(config.synthetic)
    records, run = finished_run(synthetic)
    chosen = chosen_candidates(synthetic, records, run, config.min_objects, config.max_synthetic)
    tile_size, factor = working_resolution(synthetic, run, recipe)
    # the recipe as the runs will use it, read (and so checked) before anything is written
    first_run = load_config(tree=run_tree(recipe, config, "real", config.seeds[0], tile_size, factor, out / "runs"))
    class_names = list(first_run.model.class_names)
    labels = sorted({label for r in records for label in r["layout"]["labels"]} - set(class_names))
    if labels:
        raise InputError(synthetic, f"the synthetic labels {labels} are not among the detector's classes "
                                    f"{class_names}; give a --detector-config with them")
    scored = tile_samples(config.split, tile_size, factor, "--split")
    validation = tile_samples(config.stop_split, tile_size, factor, "--stop-on")
    conditions = [c for c in CONDITIONS
                  if c in config.conditions and not (c == "real_full" and config.real_fraction == 1)]
    wanted = [name for name in ("filtered", "unfiltered") if name in conditions
              or (name == "filtered" and "copy_paste_filtered" in conditions)]
    fresh = not out.exists()
    try:  # written before any training: a candidate found unreadable leaves nothing
        sets = {name: write_set(out / "data" / name, candidate_images(synthetic, chosen[name]), class_names,
                                run.get("gsd")) for name in wanted}
    except InputError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise
    log(f"scoring on {SPLIT_NAMES[config.split]} ({sum(len(s['boxes']) for s in scored)} objects), stopping on "
        f"{SPLIT_NAMES[config.stop_split]}; {tile_size} px tiles at {factor * DEEPFOREST_GSD:g} m/px; budget "
        f"{config.max_steps} steps per run, scored every {config.eval_every}, patience {config.patience}")

    runs: dict[str, list[dict]] = {name: [] for name in conditions}
    extra_counts = {"real_full": 0, "real": 0, "filtered": len(chosen["filtered"]),
                    "unfiltered": len(chosen["unfiltered"]), "copy_paste": len(chosen["filtered"]),
                    "copy_paste_filtered": 2 * len(chosen["filtered"])}
    # a (condition, seed) finished by an earlier evaluate with the same settings and synthetic
    # run is read back, so an evaluation of hours resumes where it was stopped
    key = settings_key(config, recipe, synthetic, tile_size, factor)
    for seed in config.seeds:
        for condition in conditions:
            run_dir = out / "runs" / f"{condition}_seed{seed}"
            row = finished_result(run_dir, key)
            if row is not None:
                runs[condition].append(row)
                log(f"{condition:<20} seed {seed}: mAP50 {100 * row['mAP50']:.1f} (finished earlier, read back)")
                continue
            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished or other run is not resumed
            tree = run_tree(recipe, config, condition, seed, tile_size, factor, run_dir)
            extra = sets.get(condition)
            if condition in ("copy_paste", "copy_paste_filtered"):
                filtered = candidate_images(synthetic, chosen["filtered"]) if condition == "copy_paste_filtered" else []
                extra = copy_paste_set(tree, len(chosen["filtered"]), out / "data" / f"{condition}_seed{seed}",
                                       class_names, list(filtered))
            if extra is not None:
                tree["model"].update(extra_data=str(extra), extra_share=config.synthetic_share)
            row = {"seed": seed, **train_and_score(tree, validation, scored, config, class_names)}
            with atomic_write(run_dir / RESULT) as f:
                json.dump({"settings_key": key, "row": row}, f, indent=2)
            runs[condition].append(row)
            log(f"{condition:<20} seed {seed}: mAP50 {100 * row['mAP50']:.1f}  mAP50:95 {100 * row['mAP50_95']:.1f}  "
                f"(best step {row['best_step']}, stopped at {row['stopped_at']}, {row['train_s']} s)")

    reference = [r["mAP50"] for r in runs["real"]]
    summary = {
        "conditions": {
            name: {"label": condition_label(name, config.real_fraction), "extra_images": extra_counts[name],
                   "mAP50": t_interval([r["mAP50"] for r in rows]),
                   "mAP50_95": t_interval([r["mAP50_95"] for r in rows]),
                   "paired_mAP50_minus_real": None if name == "real" else
                   paired_difference([r["mAP50"] for r in rows], reference),
                   "runs": rows}
            for name, rows in runs.items()},
        "protocol": {"scored_on": describe(config.split, scored),
                     "stopped_on": describe(config.stop_split, validation),
                     "trained_on": "indomain-train" if config.stop_split == "indomain-val" else
                     "train, above the in-domain test buffer",
                     "tile_size": tile_size, "gsd_m": round(factor * DEEPFOREST_GSD, 4),
                     "budget_steps": config.max_steps, "eval_every": config.eval_every, "patience": config.patience,
                     "batch_size": first_run.train.batch_size,
                     "synthetic_share": config.synthetic_share, "seeds": config.seeds,
                     "real_fraction": config.real_fraction},
        "synthetic_images": {name: {"images": len(chosen[name]), "accepted": sum(r["accepted"] for r in chosen[name])}
                             for name in ("filtered", "unfiltered")},
        "settings": asdict(config),
        "recipe": recipe,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "evaluate.json") as f:
        json.dump(summary, f, indent=2)
    write_chart(out, summary)
    return summary


def condition_label(name: str, real_fraction: float) -> str:
    return LABELS[name].format(fraction=f"{100 * real_fraction:g}%")


# ----------------------------------------------------------------------------- table
def points(value: float) -> str:
    return f"{100 * value:.1f}"


def interval_text(stats: dict | None) -> str:
    if stats is None:
        return ""
    if stats["ci95"] is None:
        return f"{100 * stats['mean']:+.1f}"
    low, high = stats["ci95"]
    return f"{100 * stats['mean']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


TABLE_HEADER = ["training data", "added images", "mAP50 mean ± sd", "mAP50 95% interval",
                "paired difference to real, mAP50 [95% interval]", "mAP50:95 mean ± sd", "best step (mean)"]


def table_rows(summary: dict) -> list[list[str]]:
    rows = []
    for row in summary["conditions"].values():
        mAP50, mAP50_95 = row["mAP50"], row["mAP50_95"]
        interval = "" if mAP50["ci95"] is None else f"[{points(mAP50['ci95'][0])}, {points(mAP50['ci95'][1])}]"
        rows.append([row["label"], str(row["extra_images"]), f"{points(mAP50['mean'])} ± {points(mAP50['sd'])}",
                     interval, interval_text(row["paired_mAP50_minus_real"]) or "(reference)",
                     f"{points(mAP50_95['mean'])} ± {points(mAP50_95['sd'])}",
                     f"{statistics.fmean(r['best_step'] for r in row['runs']):.0f}"])
    return rows


def protocol_text(summary: dict) -> str:
    p = summary["protocol"]
    return (f"scored on {p['scored_on']['what']} ({p['scored_on']['objects']} objects), early stopping on "
            f"{p['stopped_on']['what']}; {p['tile_size']} px tiles at {p['gsd_m']:g} m/px; {len(p['seeds'])} seeds; "
            f"budget {p['budget_steps']} steps of {p['batch_size']} per run, scored every {p['eval_every']}, "
            f"patience {p['patience']}; added images drawn {100 * p['synthetic_share']:g}% of the time")


def format_table(summary: dict) -> str:
    """A markdown table (mAP in points), under a line that states the protocol."""
    lines = [protocol_text(summary), "", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- chart
CHART_WIDTH = 960
ROW_HEIGHT = 26
LABEL_WIDTH = 250
BAR_COLOUR = (0, 130, 200)
REFERENCE_COLOUR = (150, 150, 150)
GAIN_COLOUR, LOSS_COLOUR, UNSURE_COLOUR = (40, 150, 60), (200, 50, 40), (170, 170, 170)


def nice_step(span: float) -> float:
    """A tick step of 1, 2 or 5 times a power of ten giving at most about 6 ticks over `span`."""
    exponent = 10 ** math.floor(math.log10(max(span, 1e-9) / 6))
    return next(m * exponent for m in (1, 2, 5, 10) if span / (m * exponent) <= 6)


def panel(shapes: list, top: int, title: str, rows: list[tuple[str, float, list | None, tuple]],
          differences: bool) -> int:
    """Horizontal bars (value, interval whisker) of `rows` (label, value, [low, high] or None,
    colour), all in mAP points, under `title`, from y = `top`; `differences`: signed values
    and a zero line. Returns the bottom."""
    shapes.append(("text", 10, top + 16, title, 15, "start"))
    values = [v for _, value, interval, _ in rows for v in (value, *(interval or ()))] + [0.0]
    low, high = min(values), max(values)
    pad = 0.08 * (high - low or 1.0)
    low, high = (low - pad if low < 0 else 0.0), high + pad
    x0, x1 = LABEL_WIDTH, CHART_WIDTH - 60  # values are written right of the bars' area
    plot_top = top + 28

    def x(value: float) -> float:
        return x0 + (value - low) / (high - low) * (x1 - x0)

    bottom = plot_top + ROW_HEIGHT * len(rows)
    step = nice_step(high - low)
    for k in range(math.ceil(low / step), math.floor(high / step) + 1):
        shapes.append(("line", x(k * step), plot_top, x(k * step), bottom, (225, 225, 225), 1))
        shapes.append(("text", x(k * step), bottom + 14, f"{k * step:g}", 11, "middle"))
    for i, (label, value, interval, colour) in enumerate(rows):
        y = plot_top + i * ROW_HEIGHT
        shapes.append(("text", x0 - 8, y + 17, label, 12, "end"))
        shapes.append(("rect", min(x(0), x(value)), y + 5, max(x(0), x(value)), y + ROW_HEIGHT - 5, colour))
        if interval is not None:
            middle = y + ROW_HEIGHT / 2
            shapes.append(("line", x(interval[0]), middle, x(interval[1]), middle, (0, 0, 0), 2))
            for end in interval:
                shapes.append(("line", x(end), middle - 6, x(end), middle + 6, (0, 0, 0), 2))
        shapes.append(("text", x1 + 8, y + 17, f"{value:+.1f}" if differences else f"{value:.1f}", 11, "start"))
    if differences:
        shapes.append(("line", x(0), plot_top - 4, x(0), bottom, (0, 0, 0), 1))
    return bottom + 22


def chart_shapes(summary: dict) -> tuple[int, list]:
    """The chart as (height, shapes): rectangles, lines and texts (see panel), drawn alike as
    PNG and SVG. Top: mAP50 per condition with its 95% interval over seeds; bottom: the paired
    difference to real with its 95% interval (green above zero, red below, grey across)."""
    lines = textwrap.wrap(protocol_text(summary), 160)
    shapes = [("text", 10, 18 + 15 * i, line, 11, "start") for i, line in enumerate(lines)]
    conditions = summary["conditions"]
    rows = [(row["label"], 100 * row["mAP50"]["mean"], row["mAP50"]["ci95"] and [100 * v for v in row["mAP50"]["ci95"]],
             REFERENCE_COLOUR if name in ("real", "real_full") else BAR_COLOUR) for name, row in conditions.items()]
    bottom = panel(shapes, 20 + 15 * len(lines), "mAP50 (points): mean and 95% interval over seeds", rows,
                   differences=False)
    differences = []
    for row in conditions.values():
        stats = row["paired_mAP50_minus_real"]
        if stats is None:
            continue
        interval = stats["ci95"] and [100 * v for v in stats["ci95"]]
        colour = UNSURE_COLOUR if interval is None or interval[0] <= 0 <= interval[1] else \
            GAIN_COLOUR if interval[0] > 0 else LOSS_COLOUR
        differences.append((row["label"], 100 * stats["mean"], interval, colour))
    if differences:
        bottom = panel(shapes, bottom, "paired difference to real, same seed (mAP50 points): mean and 95% interval",
                       differences, differences=True)
    return bottom, shapes


def render_png(height: int, shapes: list):
    from PIL import Image, ImageDraw

    from earthsynth.augment.report import load_font

    image = Image.new("RGB", (CHART_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    anchors = {"start": "ls", "middle": "ms", "end": "rs"}
    for shape in shapes:
        if shape[0] == "rect":
            draw.rectangle(shape[1:5], fill=shape[5])
        elif shape[0] == "line":
            draw.line(shape[1:5], fill=shape[5], width=shape[6])
        else:
            _, x, y, text, size, anchor = shape
            draw.text((x, y), text, fill=(0, 0, 0), font=load_font(size), anchor=anchors[anchor])
    return image


def render_svg(height: int, shapes: list) -> str:
    def colour(rgb) -> str:
        return "#" + "".join(f"{c:02x}" for c in rgb)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height}" '
             f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>']
    for shape in shapes:
        if shape[0] == "rect":
            x0, y0, x1, y1 = shape[1:5]
            parts.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" '
                         f'fill="{colour(shape[5])}"/>')
        elif shape[0] == "line":
            x0, y0, x1, y1 = shape[1:5]
            parts.append(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" '
                         f'stroke="{colour(shape[5])}" stroke-width="{shape[6]}"/>')
        else:
            _, x, y, text, size, anchor = shape
            parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}">'
                         f'{html.escape(text)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_chart(out: Path, summary: dict) -> None:
    """evaluate.png and evaluate.html (the table and the chart as inline SVG: no script, no
    download), both from chart_shapes."""
    from earthsynth.augment.report import PAGE_STYLE, png_bytes, table

    height, shapes = chart_shapes(summary)
    with atomic_write(out / "evaluate.png", "wb") as f:
        f.write(png_bytes(render_png(height, shapes)))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>earthsynth evaluate</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n<h1>Does the synthetic data help the detector?</h1>\n"
            f"<p>{html.escape(protocol_text(summary))}</p>\n{table(TABLE_HEADER, table_rows(summary))}"
            f"{render_svg(height, shapes)}\n</body></html>\n")
    with atomic_write(out / "evaluate.html") as f:
        f.write(page)

"""`earthsynth train`, `evaluate` and `data export`: bad run configs, augment folders and options."""

from __future__ import annotations

import json

from bad_inputs.build import Bad, a_file, augment_output, case, resolve, run_config, write


# ----------------------------------------------------------------------------- train
def train(*extra, config=None, names="run.yaml", words=()):
    """`earthsynth train run.yaml EXTRA...`: the tiny smoke config, or `config(tmp)` -> its path.
    Items of `extra` may be functions of tmp."""
    def make(tmp):
        path = config(tmp) if config else run_config(tmp / "in" / "run.yaml", tmp / "run")
        return Bad(["train", str(path), *resolve(extra, tmp)], names, words)
    return make


def yaml_text(content):
    return lambda tmp: write(tmp / "in" / "run.yaml", content)


def changed(**changes):
    return lambda tmp: run_config(tmp / "in" / "run.yaml", tmp / "run", **changes)


def checkpoint_like(tmp, weights="model.bin"):
    """A folder that looks like a checkpoint but holds pickled weights."""
    return str(write(tmp / "old-run" / "step-3" / weights, b"\x80\x04pickled").parent)


TRAIN_CASES = [
    case("train-config-missing", train(config=lambda tmp: tmp / "in" / "none.yaml", names="none.yaml", words=("not found",))),
    case("train-config-malformed", train(config=yaml_text("family: smoke\ntrain: {max_steps: 3\n"), words=("not valid YAML",))),
    case("train-config-empty", train(config=yaml_text(""), words=("missing 'family'",))),
    case("train-config-is-a-list", train(config=yaml_text("- family\n- smoke\n"), words=("mapping",))),
    case("train-config-is-a-number", train(config=yaml_text("42\n"), words=("mapping",))),
    case("train-config-is-a-string", train(config=yaml_text("smoke\n"), words=("mapping",))),
    case("train-config-not-utf8", train(config=lambda tmp: write(tmp / "in" / "run.yaml", b"family: \xff\xfe\n"),
                                        words=(("not valid YAML", "cannot read"),))),
    case("train-unknown-top-key", train(config=changed(trian={}), words=("unknown key 'trian'",))),
    case("train-unknown-train-key", train("train.max_step=3", words=("unknown key 'max_step'", "did you mean 'max_steps'"))),
    case("train-family-unknown", train(config=changed(family="dalle"), names="dalle", words=("unknown model family",))),
    case("train-section-given-a-number", train(config=changed(train=3), words=("train", "mapping"))),
    case("train-section-given-a-number-by-override", train("data=3", words=("data", "mapping"))),
    case("train-override-without-value", train("max_steps", names="max_steps", words=("key=value",))),
    case("train-override-not-a-section", train("train.max_steps.x=1", names="train.max_steps.x=1", words=("not a section",))),
    case("train-max-steps-text", train("train.max_steps=many", words=("max_steps", "expected int"))),
    case("train-max-steps-float", train("train.max_steps=2.5", words=("max_steps", "expected int"))),
    case("train-hflip-not-bool", train("data.hflip=3", words=("hflip", "true or false"))),
    case("train-learning-rate-text", train("train.learning_rate=fast", words=("learning_rate", "expected a number"))),
    case("train-max-steps-negative", train("train.max_steps=-1", words=("max_steps",))),
    case("train-max-steps-0", train("train.max_steps=0", words=("max_steps",))),
    case("train-batch-size-0", train("train.batch_size=0", words=("batch_size",))),
    case("train-gradient-accumulation-0", train("train.gradient_accumulation_steps=0", words=("gradient_accumulation_steps",))),
    case("train-learning-rate-nan", train("train.learning_rate=.nan", words=("learning_rate",))),
    case("train-learning-rate-negative", train("train.learning_rate=-0.001", words=("learning_rate",))),
    case("train-learning-rate-0", train("train.learning_rate=0", words=("learning_rate",))),
    case("train-tile-size-0", train("data.tile_size=0", words=("tile_size",))),
    case("train-checkpoint-every-0", train("train.checkpoint_every=0", words=("checkpoint_every",))),
    case("train-num-workers-negative", train("train.num_workers=-1", names="num_workers", words=("num_workers",))),
    case("train-mixed-precision-unknown", train("train.mixed_precision=fp64", names="mixed_precision", words=("fp64",))),
    case("train-objective-key-in-train", train("train.snr_gamma=5", words=("moved to objective.snr_gamma",))),
    case("train-resume-latest-without-checkpoint", train("--resume", "latest", names="latest", words=("checkpoint",))),
    case("train-resume-not-a-checkpoint", train("--resume", lambda tmp: str((tmp / "in").mkdir(parents=True, exist_ok=True)
                                                                            or tmp / "in"), names="in",
                                                words=("not a checkpoint",))),
    case("train-resume-pickled-checkpoint", train("--resume", checkpoint_like, names="step-3",
                                                  words=(("safetensors", "pickle"),))),
    case("train-output-dir-is-a-file", train("--output-dir", lambda tmp: str(a_file(tmp)), names="taken.txt",
                                             words=(("not a folder", "is a file"),))),
    case("train-output-dir-under-a-file", train("--output-dir", lambda tmp: str(a_file(tmp) / "run"), names="taken.txt",
                                                words=(("not a folder", "is a file"),))),
]


# ----------------------------------------------------------------------------- evaluate
def evaluate(*extra, synthetic=None, out=None, names, words=()):
    """`earthsynth evaluate --synthetic S --out O EXTRA...`; `synthetic(tmp)` builds S (default: a
    finished augment folder), `out(tmp)` returns O (default tmp/eval, absent); items of `extra`
    may be functions of tmp."""
    def make(tmp):
        folder = synthetic(tmp) if synthetic else augment_output(tmp / "synthetic")
        target = out(tmp) if out else tmp / "eval"
        return Bad(["evaluate", "--synthetic", str(folder), "--out", str(target), *resolve(extra, tmp)], names, words)
    return make


def manifest(*lines, finished=True):
    """An augment folder whose manifest holds `lines` (text, or records written as JSON)."""
    return lambda tmp: augment_output(tmp / "synthetic", list(lines), finished)


def not_utf8_manifest(tmp):
    folder = augment_output(tmp / "synthetic")
    for name in ("manifest.jsonl", "manifest.rank0.jsonl"):
        write(folder / name, b"\xff\xfe{}\n")
    return folder


GOOD = {"index": 0, "image_id": "synth_000000", "file": "candidates/000000.png", "accepted": True,
        "layout": {"rboxes": [[24.0, 24.0, 16.0, 16.0, 0.0]], "labels": ["Tree"], "rotated": False}}
SHARD = "manifest"  # manifest.jsonl and its shard manifest.rank0.jsonl: both broken
EVALUATE_CASES = [
    case("evaluate-synthetic-missing", evaluate(synthetic=lambda tmp: tmp / "nowhere", names="nowhere",
                                                words=("not an `earthsynth augment` output folder",))),
    case("evaluate-synthetic-not-augment-output", evaluate(synthetic=lambda tmp: write(tmp / "photos" / "a.png", b"").parent,
                                                           names="photos", words=("no augment_config.yaml",))),
    case("evaluate-manifest-garbage-line", evaluate(synthetic=manifest("{{{ not json", GOOD), names=SHARD,
                                                    words=("line 1", "not valid JSON"))),
    case("evaluate-manifest-line-is-a-list", evaluate(synthetic=manifest([1, 2], GOOD), names=SHARD,
                                                      words=("expected a JSON object",))),
    case("evaluate-manifest-truncated", evaluate(synthetic=manifest(GOOD, json.dumps(GOOD | {"index": 1})[:40], GOOD | {"index": 2}),
                                                 names=SHARD, words=("line 2", "not valid JSON"))),
    case("evaluate-manifest-not-utf8", evaluate(synthetic=not_utf8_manifest, names=SHARD, words=("cannot read",))),
    case("evaluate-manifest-record-without-keys", evaluate(synthetic=manifest({"index": 0}), names=SHARD,
                                                           words=("accepted",))),
    case("evaluate-manifest-index-not-a-number", evaluate(synthetic=manifest(GOOD, GOOD | {"index": "one"}), names=SHARD,
                                                          words=("index",))),
    case("evaluate-manifest-layout-not-numbers", evaluate(synthetic=manifest(GOOD | {"layout": {"rboxes": "big", "labels": []}}),
                                                          names=SHARD, words=("layout",))),
    case("evaluate-manifest-candidate-missing", evaluate(synthetic=manifest(GOOD | {"file": "candidates/999999.png"}),
                                                         names="999999.png", words=(("not found", "missing"),))),
    case("evaluate-manifest-no-accepted", evaluate(synthetic=manifest(GOOD | {"accepted": False}), names="synthetic",
                                                   words=("no accepted images",))),
    case("evaluate-unfinished-augment-run", evaluate(synthetic=manifest(GOOD, finished=False), names="synthetic",
                                                     words=(("unfinished", "not finished", "run.json"),))),
    case("evaluate-too-few-objects", evaluate("--min-objects", "99", names="synthetic", words=("at least 99 objects",))),
    case("evaluate-real-fraction-0", evaluate("--real-fraction", "0", names="--real-fraction", words=("(0, 1]",))),
    case("evaluate-real-fraction-above-1", evaluate("--real-fraction", "2", names="--real-fraction", words=("(0, 1]",))),
    case("evaluate-real-fraction-nan", evaluate("--real-fraction", "nan", names="--real-fraction", words=("(0, 1]",))),
    case("evaluate-seeds-not-integers", evaluate("--seeds", "0,one", names="--seeds", words=("integers",))),
    case("evaluate-seeds-empty", evaluate("--seeds", ",", names="--seeds", words=("at least one seed",))),
    case("evaluate-steps-negative", evaluate("--steps", "-5", names="--steps", words=("at least 1",))),
    case("evaluate-detector-config-missing", evaluate("--detector-config", "/nonexistent/recipe.yaml", names="recipe.yaml",
                                                      words=("cannot read the detector recipe",))),
    case("evaluate-detector-config-not-a-detector", evaluate("--detector-config", lambda tmp: str(run_config(
        tmp / "in" / "recipe.yaml", tmp / "run")), names="recipe.yaml",
                                                             words=("family: detector",))),
    case("evaluate-out-is-a-file", evaluate(out=a_file, names="taken.txt", words=(("not a folder", "is a file"),))),
]



# ----------------------------------------------------------------------------- data export
def export(*extra, out=None, names, words=()):
    def make(tmp):
        target = out(tmp) if out else tmp / "ds"
        return Bad(["data", "export", "--splits", "val", *(["--out", str(target)] if out is not False else []), *extra],
                   names, words)
    return make


def exported_before(tmp):
    write(tmp / "ds" / "coco" / "kept.txt", "from an earlier export\n")
    return tmp / "ds"


EXPORT_CASES = [
    case("export-without-out", export(out=False, names="data export", words=("needs --out",))),
    case("export-format-unknown", export("--format", "cocoa", names="--format", words=("cocoa", "choose from"))),
    case("export-format-empty", export("--format", ",", names="--format", words=("nothing given",))),
    case("export-split-unknown", export("--splits", "holdout", names="--split", words=("holdout",))),
    case("export-out-not-empty", export(out=exported_before, names="coco", words=("not empty",))),
    case("export-tile-size-0", export("--tile-size", "0", names="--tile-size", words=("tile",))),
    case("export-tile-size-negative", export("--tile-size", "-256", names="--tile-size", words=("tile",))),
    case("export-min-visible-nan", export("--min-visible", "nan", names="--min-visible", words=("min",))),
    case("export-min-visible-above-1", export("--min-visible", "2", names="--min-visible", words=("min",))),
    case("export-out-is-a-file", export(out=a_file, names="taken.txt", words=(("not a folder", "is a file"),))),
    case("export-out-under-a-file", export(out=lambda tmp: a_file(tmp) / "ds", names="taken.txt",
                                           words=(("not a folder", "is a file"),))),
]

CASES = [*TRAIN_CASES, *EVALUATE_CASES, *EXPORT_CASES]

VALID = [
    ("train-smoke", lambda tmp: train()(tmp).argv),
    ("evaluate", lambda tmp: evaluate(names="")(tmp).argv),
]

"""README.md model cards for exported and bundled models, written from what the folder holds.

A card is a YAML header (license, library_name, tags, base_model when the run started from a
Hub model) and sections: what the model does, how to load it, training data and split, the
command, metrics and where they came from, intended use and limits. Everything but the
family's use and limits (below) is read from the folder: train_config.yaml, command.txt and
metrics.csv (the training log), plus benchmark result files when the caller names them.

The training loop writes one into every `final/` export; scripts/write_model_cards.py writes
the bundled ones with the same code.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

LICENSE = "apache-2.0"  # the project's licence (LICENSE, pyproject.toml)


@dataclass(frozen=True)
class FamilyFacts:
    title: str
    pipeline: str  # the class that loads the folder
    tags: tuple[str, ...]
    use: str
    limits: str


_COMMON_TAGS = ("earthsynth", "remote-sensing")
_SMALL_DATA = ("Trained from scratch on a few NEON aerial images of tree crowns (0.1 m/px, resampled to "
               "coarser GSDs), on two CPU cores: a small model for research, demos and tests, not a "
               "general-purpose generator of any landscape or sensor.")

FAMILIES: dict[str, FamilyFacts] = {
    "text2earth": FamilyFacts(
        "text2earth: text and ground sample distance to image", "Text2EarthPipeline",
        ("text-to-image", "diffusion"),
        "Generate RGB aerial tiles or tiled scenes from a caption and a ground sample distance "
        "(m/px), inpaint regions; synthetic data for experiments on resolution.",
        _SMALL_DATA),
    "crsdiff": FamilyFacts(
        "crsdiff: text, metadata and control maps to image", "CRSDiffPipeline",
        ("text-to-image", "controlnet", "diffusion"),
        "Generate RGB aerial tiles that follow control maps (edges, sketch, DEM, land cover, roads) "
        "and metadata (date, GSD, cloud cover, position) as well as a caption.",
        _SMALL_DATA),
    "aerogen": FamilyFacts(
        "aerogen: layout (boxes with classes) to image", "AeroGenPipeline",
        ("layout-to-image", "object-detection", "data-augmentation", "diffusion"),
        "Generate aerial images whose objects sit in given horizontal or rotated boxes, to "
        "augment small detection datasets (`earthsynth augment` filters what it generates).",
        _SMALL_DATA + " Whether its images help a detector is measured, not assumed: see the metrics."),
    "hsi": FamilyFacts(
        "hsi: hyperspectral denoising", "HSIDenoisePipeline",
        ("hyperspectral", "image-denoising", "diffusion"),
        "Denoise hyperspectral cubes of any band count (Gaussian, stripes, impulse noise, dead lines), "
        "keeping dtype and georeferencing through `earthsynth denoise`.",
        "Trained with synthetic noise (the kinds in train_config.yaml) on cubes from the sources "
        "listed above; real sensor noise of other kinds is not covered. The quality target (+2 dB over the best "
        "classical method) is not met: it is at or above it."),
    "ediffsr": FamilyFacts(
        "ediffsr: diffusion super-resolution", "EDiffSRPipeline",
        ("super-resolution", "image-to-image", "diffusion"),
        "Upscale low-resolution aerial images x2 or x4 (the scale the model was trained for), "
        "any band count, GeoTIFF georeferencing kept through `earthsynth upscale`.",
        _SMALL_DATA + " Its gain over bicubic is that of perfect passband reconstruction, well "
        "short of the +1.5 dB target."),
    "detector": FamilyFacts(
        "compact anchor-free detector", "CompactDetector",
        ("object-detection",),
        "The filter of `earthsynth augment` (does a generated image show the objects it was asked "
        "for?) and the downstream model of `earthsynth evaluate`.",
        "A small CenterNet-like model trained in seconds on a CPU; far below a production detector."),
    "classifier": FamilyFacts(
        "object / background crop classifier", "CropClassifier",
        ("image-classification",),
        "The semantic-consistency filter of `earthsynth augment`: does a box's crop show its class?",
        "Trained on crops of one object class against background; other classes need retraining."),
}
_LOAD_PIPELINE = """```python
import earthsynth  # lets diffusers find the earthsynth pipeline classes
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained({folder})  # -> {cls}
# or: pipe = earthsynth.{cls}.from_pretrained({folder})
```"""
_LOAD_MODEL = """```python
import earthsynth

model = earthsynth.{cls}.from_pretrained({folder})
```"""


def _other_family(folder: Path, family: str) -> FamilyFacts:
    """Facts for a family without its own (the smoke test, the hsi autoencoder stage...)."""
    index = folder / "model_index.json"
    config = index if index.is_file() else folder / "config.json"
    class_name = json.loads(config.read_text()).get("_class_name", "") if config.is_file() else ""
    return FamilyFacts(f"earthsynth {family or 'model'}", class_name or "its earthsynth class", (),
                       "A model of a training stage or a test run; see the family's documentation.",
                       "Not evaluated beyond its training loss.")


def _hub_model_id(value) -> str | None:
    """`value` when it names a Hugging Face model (owner/name) rather than a local folder."""
    if isinstance(value, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) and not Path(value).exists():
        return value
    return None


def _training_log(metrics_csv: Path) -> list[str]:
    """A few lines summing up metrics.csv (step, loss, lr, grad_norm, seconds)."""
    with open(metrics_csv, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("step")]
    if not rows:
        return ["metrics.csv holds no steps."]
    last = rows[-1]
    tail = rows[-5:]
    mean_loss = sum(float(r["loss"]) for r in tail) / len(tail)
    lines = [f"- steps logged: {len(rows)}, last step {last['step']}",
             f"- loss: first {float(rows[0]['loss']):.4f}, last {float(last['loss']):.4f}, "
             f"mean of the last {len(tail)} logged {mean_loss:.4f}"]
    if last.get("seconds"):
        lines.append(f"- training time: {float(last['seconds']):.0f} s (wall clock of the run that ended the log)")
    return lines


def _benchmark_text(path: Path) -> str:
    """A results file as the card shows it: text as written; evaluate's JSON as its mAP table."""
    if path.suffix != ".json":
        return path.read_text().strip()
    data = json.loads(path.read_text())
    if "conditions" not in data:
        return json.dumps(data, indent=1)[:2000]
    lines = ["| training data | mAP50 | mAP50:95 |", "|---|---|---|"]
    for name, result in data["conditions"].items():
        m50, m5095 = result["mAP50"], result["mAP50_95"]
        lines.append(f"| {name} | {100 * m50['mean']:.1f} ± {100 * m50['std']:.1f} "
                     f"| {100 * m5095['mean']:.1f} ± {100 * m5095['std']:.1f} |")
    return "\n".join(lines)


def model_card(folder: str | Path, benchmarks: dict[str, Path] | None = None, metrics_csv: str | Path | None = None,
               load_from: str | Path | None = None) -> str:
    """The card text for `folder` (an export or a bundled model holding train_config.yaml).

    benchmarks: {description: results file} shown as the model's measured quality.
    metrics_csv: the training log (default: the folder's own metrics.csv, if any).
    load_from: what the loading example passes to from_pretrained: a Path (default `folder`; an
        export written in a temporary folder gives its final place), or a str holding a Python
        expression, e.g. 'earthsynth.bundled_model("aerogen")'."""
    folder = Path(folder)
    config = yaml.safe_load((folder / "train_config.yaml").read_text()) or {}
    family = config.get("family", "")
    facts = FAMILIES.get(family) or _other_family(folder, family)
    model, data = config.get("model") or {}, config.get("data") or {}
    is_pipeline = (folder / "model_index.json").is_file()
    bases = [b for b in (_hub_model_id(model.get(k)) for k in ("init_from", "init_unet", "text_encoder")) if b]

    header = {"license": LICENSE, "library_name": "diffusers" if is_pipeline else "earthsynth",
              "tags": [*_COMMON_TAGS, family, *facts.tags]}
    if bases:
        header["base_model"] = bases[0] if len(bases) == 1 else bases
    out = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
           f"# {facts.title}", "",
           f"An earthsynth `{family}` model, loaded by `{facts.pipeline}`.", ""]
    template = _LOAD_PIPELINE if is_pipeline else _LOAD_MODEL
    if family not in FAMILIES:
        template = "Load it with `{cls}.from_pretrained({folder})` (the class is in earthsynth.generation)."
    out += [template.format(folder=load_from if isinstance(load_from, str) else json.dumps(Path(load_from or folder).as_posix()),
                     cls=facts.pipeline), ""]

    out += ["## Training data and split", ""]
    sources = data.get("sources")
    out.append(f"- sources: {', '.join(sources) if isinstance(sources, list) else sources or 'not recorded'}")
    out.append(f"- split: `{data.get('split', 'not recorded')}` (earthsynth's fixed split by source image: "
               "validation and test images are never trained on)")
    for key in ("tile_size", "gsd_factors", "scenes", "bands"):
        if key in data:
            out.append(f"- {key}: {data[key]}")
    starts = {k: model[k] for k in ("init_from", "init_unet") if model.get(k)}
    for key, value in starts.items():
        out.append(f"- started from (`model.{key}`): {value}")
    out += ["", "The whole run configuration is in `train_config.yaml`.", ""]

    out += ["## Command", ""]
    command_file = folder / "command.txt"
    command = command_file.read_text().strip() if command_file.is_file() else ""
    out += (["```bash", command, "```"] if command else ["Not recorded (the run was started from Python)."]) + [""]

    out += ["## Metrics", ""]
    metrics_csv = Path(metrics_csv) if metrics_csv else folder / "metrics.csv"
    if metrics_csv.is_file():
        out += ["Training log (`metrics.csv`; the loss is the family's training loss, not a quality measure):", ""]
        out += _training_log(metrics_csv) + [""]
    else:
        out += ["No training log was found.", ""]
    for description, path in (benchmarks or {}).items():
        out += [f"{description} (`{Path(path).as_posix()}`):", "", "```", _benchmark_text(Path(path)), "```", ""]
    if not benchmarks:
        out += ["No benchmark has been run on this model; the benchmarks/ scripts measure one.", ""]

    out += ["## Intended use", "", facts.use, "", "## Limits", "", facts.limits, ""]
    return "\n".join(out)


def write_model_card(folder: str | Path, benchmarks: dict[str, Path] | None = None,
                     metrics_csv: str | Path | None = None, load_from: str | Path | None = None) -> Path:
    """Write `folder`/README.md (see model_card) and return its path."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(folder, benchmarks, metrics_csv, load_from))
    return path


def read_card_header(path: str | Path) -> dict:
    """The YAML header of a card (between its first two '---' lines)."""
    text = Path(path).read_text()
    if not text.startswith("---\n"):
        raise ValueError(f"{path}: no YAML header")
    header, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(header)

"""The augment report: one figure (report.png) and one self-contained page (report.html).

Both are built from the output folder of `earthsynth augment`: the manifest records (one per
candidate, accepted or not), the candidate images under candidates/ and the run summary
(run.json). The figure shows accepted and rejected samples with their layout boxes, objects per
image and per class real vs accepted, the filter's pass rates for real tiles and candidates and
the timing; the page adds the run settings, the thresholds and a table of the candidates.
"accepted" is what the written datasets hold; "passed" the candidates that passed every check
(the accepted ones and those the set did not need, see jobs.augment.accept_quota). Only PIL, numpy and cv2 are used, so nothing is
downloaded and no plotting library is needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from earthsynth.augment.filter import BOUNDS, CHECKS
from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, one_line
from earthsynth.data.jsonl import read_jsonl
from earthsynth.errors import InputError

GRID_SAMPLES = 16  # samples per grid in the figure
GRID_COLUMNS = 8
CELL = 192  # thumbnail size in the figure: 64 px tiles upscaled x3
TABLE_CELL = 128  # thumbnail size in the page's candidate table
MAX_CLASSES = 12  # the class chart keeps the most frequent classes
MAX_TABLE_ROWS = 200
MARGIN = 20
GAP = 8
KEY_SCORES = ("recall", "precision", "matched_iou", "class_agreement", "duplicate_similarity", "std",
              "saturated_fraction", "edge_energy")
# distinct colours for class outlines and the chart (cycled beyond 12 classes)
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]
REAL_COLOUR = (120, 120, 120)
SYNTH_COLOUR = (0, 130, 200)
PLACEHOLDER_GREY = 128


# ----------------------------------------------------------------------------- reading
def load_manifest(path: str | os.PathLike, allow_cut_last_line: bool = False) -> list[dict]:
    """The records of a manifest (manifest.jsonl, or a process's manifest.rank<r>.jsonl), sorted
    by "index"; every line is checked by `record_problem`, an InputError names the file and line."""
    records = []
    for number, record in read_jsonl(path, allow_cut_last_line=allow_cut_last_line):
        problem = record_problem(record)
        if problem:
            raise InputError(path, f"line {number}: {problem}")
        records.append(record)
    return sorted(records, key=lambda r: r["index"])


def record_problem(record: dict) -> str | None:
    """What is wrong with a manifest record, or None: it needs an integer "index", a boolean
    "accepted", a "layout" of finite boxes with a class name each, an "image_id" that is a plain
    name (it names the files written from it) and a "file" inside the output folder."""
    index = record.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        return 'missing or non-integer "index"'
    if not isinstance(record.get("accepted"), bool):
        return 'missing or non-boolean "accepted"'
    layout = record.get("layout")
    labels = layout.get("labels") if isinstance(layout, dict) else None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        return 'bad "layout" (it needs "labels", a list of class names)'
    try:
        boxes = record_boxes(record)
    except (TypeError, ValueError) as err:
        return f'bad "layout" ({err})'
    if not np.isfinite(boxes.rboxes).all():
        return 'bad "layout" (box values must be finite numbers)'
    image_id, file = record.get("image_id"), record.get("file")
    if not isinstance(image_id, str) or not image_id or image_id in (".", "..") or "/" in image_id or "\\" in image_id:
        return 'missing "image_id", or not a plain name'
    if not isinstance(file, str) or not file or PurePosixPath(file).is_absolute() or ".." in PurePosixPath(file).parts:
        return 'missing "file", or not a path inside the output folder'
    return None


RUN_COUNTS = ("candidates", "accepted", "num_images")  # what readers of run.json rely on


def load_run(path: str | os.PathLike) -> dict:
    """run.json, the summary an augment run writes last (so it marks a finished run), checked:
    a JSON object with integer counts and a number or null "gsd"."""
    path = Path(path)
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise InputError(path, f"not readable JSON ({one_line(err)})") from None
    if not isinstance(run, dict):
        raise InputError(path, f"expected a JSON object, got {type(run).__name__}")
    for key in RUN_COUNTS:
        if not isinstance(run.get(key), int) or isinstance(run[key], bool) or run[key] < 0:
            raise InputError(path, f'missing or bad "{key}" (a count)')
    gsd = run.get("gsd")
    if gsd is not None and (not isinstance(gsd, (int, float)) or isinstance(gsd, bool) or not gsd > 0):
        raise InputError(path, f'"gsd" must be a positive number or null, got {gsd!r}')
    return run


def record_boxes(record: dict) -> Boxes:
    """The layout of a manifest record as Boxes (empty when it has none)."""
    layout = record.get("layout") or {}
    rboxes = np.asarray(layout.get("rboxes", []), dtype=np.float64).reshape(-1, 5)
    return Boxes(rboxes, list(layout.get("labels", [])), rotated=bool(layout.get("rotated", False)))


def load_candidate(out_dir: Path, record: dict) -> np.ndarray | None:
    """The candidate image (H, W, 3) uint8, or None when the file is missing or unreadable."""
    file = record.get("file")
    if not file:
        return None
    try:
        with Image.open(out_dir / file) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- numbers
def pass_rates(records: list[dict]) -> dict[str, tuple[int, int]]:
    """Per check, "passed" (every check) and "accepted" (written): (candidates passing,
    candidates that have the check). A record without "passed" passed if it was accepted."""
    rates = {}
    for name in CHECKS:
        have = [r["checks"][name] for r in records if name in (r.get("checks") or {})]
        rates[name] = (sum(bool(v) for v in have), len(have))
    rates["passed"] = (sum(bool(r.get("passed", r.get("accepted"))) for r in records), len(records))
    rates["accepted"] = (sum(bool(r.get("accepted")) for r in records), len(records))
    return rates


def real_rates(run: dict) -> dict[str, tuple[int, int]]:
    """Per check: (real tiles passing, real tiles judged) from run.json (empty when not recorded)."""
    real = (run.get("pass_rates") or {}).get("real") or {}
    return {name: (int(real[name][0]), int(real[name][1])) for name in CHECKS if name in real}


def histogram_rows(run: dict) -> list[tuple[str, float, float]]:
    """(objects in an image, share of real images, share of accepted images) for every count
    either set has, from run.json's objects_histogram of "real" and "synthetic"."""
    hists = [list((run.get(name) or {}).get("objects_histogram") or []) for name in ("real", "synthetic")]
    totals = [sum(h) for h in hists]
    size = max(len(h) for h in hists)
    return [(str(k), *(h[k] / t if t and k < len(h) else 0.0 for h, t in zip(hists, totals))) for k in range(size)]


def check_thresholds(run: dict, check: str) -> str:
    """The thresholds of one check as run.json records them, "(calibrated)" after those that were."""
    thresholds = run.get("thresholds") or {}
    calibrated = set((run.get("calibration") or {}).get("calibrated") or [])
    parts = [f"{name} {thresholds[name]:g}{' (calibrated)' if name in calibrated else ''}"
             for name, (of, _, _) in BOUNDS.items() if of == check and isinstance(thresholds.get(name), int | float)]
    return ", ".join(parts) or "not recorded"


def class_rates(records: list[dict], run: dict) -> list[tuple[str, float, float]]:
    """(class, real objects per image, synthetic-accepted objects per image) for the most
    frequent classes (at most MAX_CLASSES, by real + synthetic rate)."""
    real = run.get("real") or {}
    real_counts = real.get("class_counts") or {}
    real_images = real.get("images") or 0
    accepted = [r for r in records if r.get("accepted")]
    synth_counts: dict[str, int] = {}
    for record in accepted:
        for label, count in record_boxes(record).class_counts().items():
            synth_counts[label] = synth_counts.get(label, 0) + count
    rows = []
    for name in set(real_counts) | set(synth_counts):
        real_rate = real_counts.get(name, 0) / real_images if real_images else 0.0
        synth_rate = synth_counts.get(name, 0) / len(accepted) if accepted else 0.0
        rows.append((name, real_rate, synth_rate))
    rows.sort(key=lambda row: (-(row[1] + row[2]), row[0]))
    return rows[:MAX_CLASSES]


def class_colours(records: list[dict], run: dict) -> dict[str, tuple[int, int, int]]:
    """One colour per class name, the same in every thumbnail of the figure and the page."""
    names = set((run.get("real") or {}).get("class_counts") or {})
    for record in records:
        names.update((record.get("layout") or {}).get("labels", []))
    return palette_colours(names)


def palette_colours(names) -> dict[str, tuple[int, int, int]]:
    """One PALETTE colour per distinct name, in sorted order (the same names, the same colours)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(names)))}


def percent(passed: int, total: int) -> str:
    return f"{100 * passed / total:.0f}% ({passed}/{total})" if total else "n/a"


def timing_text(run: dict) -> str:
    """The timing line: total, per stage, generation throughput."""
    timing = run.get("timing") or {}
    parts = [f"{label} {timing[key]:.1f} s" for key, label in
             (("total_s", "total"), ("generate_s", "generate"), ("filter_s", "filter"), ("write_s", "write"))
             if isinstance(timing.get(key), int | float)]
    if isinstance(timing.get("images_per_s"), int | float):
        parts.append(f"{timing['images_per_s']:.2f} images/s")
    return "timing: " + (" | ".join(parts) if parts else "not recorded")


def score_text(scores: dict) -> str:
    """The key scores of a record, short: "recall 0.33, precision 1.00, ..."."""
    parts = [f"{name} {scores[name]:.2f}" for name in KEY_SCORES if isinstance(scores.get(name), int | float)]
    if scores.get("duplicate_of"):
        parts.append(f"duplicate_of {scores['duplicate_of']}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- drawing
def load_font(size: int) -> ImageFont.ImageFont:
    """PIL's bundled default font (scalable on Pillow >= 10.1, the fixed bitmap one before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def fit_text(text: str, font, width: float) -> str:
    """`text` cut short with "..." so it fits in `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def thumbnail(out_dir: Path, record: dict, size: int, colours: dict, fallback_size: int) -> Image.Image:
    """The candidate scaled to fit `size` px (nearest when enlarging) with its layout boxes.

    A missing image becomes a grey placeholder of the run's image size, boxes still drawn.
    """
    pixels = load_candidate(out_dir, record)
    missing = pixels is None
    if missing:
        pixels = np.full((fallback_size, fallback_size, 3), PLACEHOLDER_GREY, dtype=np.uint8)
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    image = Image.fromarray(cv2.resize(np.ascontiguousarray(pixels), (new_w, new_h), interpolation=interpolation))
    draw = ImageDraw.Draw(image)
    draw_box_outlines(draw, record_boxes(record), new_w / width, new_h / height, colours, max(1, size // 96))
    if missing:
        draw.text((4, 4), "image missing", fill=(255, 255, 255), font=load_font(max(10, size // 12)))
    return image


def draw_box_outlines(draw: ImageDraw.ImageDraw, boxes: Boxes, scale_x: float, scale_y: float, colours: dict,
                      width: int, label_size: int | None = None) -> None:
    """Each rotated box's outline on `draw`, its corners scaled from image to drawing pixels,
    in its class colour; with `label_size`, the class name above the box's top corner."""
    font = load_font(label_size) if label_size else None
    for quad, label in zip(boxes.corners(), boxes.labels):
        colour = colours.get(label, PALETTE[0])
        points = [(float(x * scale_x), float(y * scale_y)) for x, y in quad]
        draw.line(points + points[:1], fill=colour, width=width)
        if font is not None:
            top = min(points, key=lambda p: p[1])
            draw.text((top[0] + 2, top[1] - label_size - 2), label, fill=colour, font=font)


def draw_grid(canvas: Image.Image, top: int, title: str, records: list[dict], out_dir: Path,
              colours: dict, fallback_size: int, with_reason: bool) -> int:
    """Up to GRID_SAMPLES thumbnails under a title, each with its index (and first rejection
    reason) written under it. Returns the y just below the grid."""
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = load_font(20), load_font(12)
    draw.text((MARGIN, top), title, fill=(0, 0, 0), font=title_font)
    top += 30
    if not records:
        draw.text((MARGIN, top), "none", fill=(90, 90, 90), font=label_font)
        return top + 24
    label_h = 18
    for k, record in enumerate(records[:GRID_SAMPLES]):
        x = MARGIN + (k % GRID_COLUMNS) * (CELL + GAP)
        y = top + (k // GRID_COLUMNS) * (CELL + label_h + GAP)
        canvas.paste(thumbnail(out_dir, record, CELL, colours, fallback_size), (x, y))
        label = f"#{record['index']}"
        reasons = record.get("reasons") or []
        if with_reason and reasons:
            label += f" {reasons[0]}"
        draw.text((x, y + CELL + 2), fit_text(label, label_font, CELL), fill=(0, 0, 0), font=label_font)
    rows = math.ceil(min(len(records), GRID_SAMPLES) / GRID_COLUMNS)
    return top + rows * (CELL + label_h + GAP)


def draw_grouped_bars(canvas: Image.Image, box: tuple[int, int, int, int], rows: list[tuple[str, float, float]],
                      real_images: int, synth_images: int, title: str, y_label: str, x_label: str,
                      value_format: str = "{:.2f}") -> None:
    """Grouped vertical bars, one group per row: real (grey) vs synthetic accepted, their values
    above them where they fit."""
    x0, y0, x1, y1 = box
    draw = ImageDraw.Draw(canvas)
    title_font, font = load_font(16), load_font(12)
    draw.text((x0, y0), title, fill=(0, 0, 0), font=title_font)
    # legend under the title
    legend_y = y0 + 24
    lx = x0
    for colour, text in ((REAL_COLOUR, f"real ({real_images} images)"),
                         (SYNTH_COLOUR, f"synthetic accepted ({synth_images} images)")):
        draw.rectangle((lx, legend_y + 2, lx + 10, legend_y + 12), fill=colour)
        draw.text((lx + 14, legend_y), text, fill=(0, 0, 0), font=font)
        lx += 24 + int(font.getlength(text))
    # plot area: room for the y label and ticks on the left, class names and x label below
    px0, py0, px1, py1 = x0 + 70, y0 + 60, x1 - 10, y1 - 44
    if not rows:
        draw.text((px0, (py0 + py1) // 2), "nothing to show", fill=(90, 90, 90), font=font)
        return
    top_value = max(max(r[1], r[2]) for r in rows)
    y_max = top_value * 1.15 if top_value > 0 else 1.0
    draw.line((px0, py0, px0, py1), fill=(0, 0, 0))
    draw.line((px0, py1, px1, py1), fill=(0, 0, 0))
    for fraction in (0.0, 0.5, 1.0):
        value = y_max * fraction
        y = py1 - fraction * (py1 - py0)
        draw.line((px0 - 4, y, px0, y), fill=(0, 0, 0))
        text = value_format.format(value)
        draw.text((px0 - 6 - font.getlength(text), y - 7), text, fill=(0, 0, 0), font=font)
    # the y axis label, written on its own image and turned upright
    label = y_label
    label_image = Image.new("RGB", (int(font.getlength(label)) + 4, 16), (255, 255, 255))
    ImageDraw.Draw(label_image).text((2, 1), label, fill=(0, 0, 0), font=font)
    label_image = label_image.rotate(90, expand=True)
    canvas.paste(label_image, (x0 + 2, (py0 + py1 - label_image.height) // 2))
    draw.text(((px0 + px1) / 2 - font.getlength(x_label) / 2, y1 - 16), x_label, fill=(0, 0, 0), font=font)
    group = (px1 - px0) / len(rows)
    bar = group * 0.35
    # the values above the bars where every one fits (else the axis alone: half of them looks random)
    labelled = all(font.getlength(value_format.format(v)) <= bar + 4 for row in rows for v in row[1:])
    for k, (name, real_rate, synth_rate) in enumerate(rows):
        gx = px0 + k * group + group * 0.15
        for j, (value, colour) in enumerate(((real_rate, REAL_COLOUR), (synth_rate, SYNTH_COLOUR))):
            bx = gx + j * bar
            by = py1 - value / y_max * (py1 - py0)
            if value > 0:
                draw.rectangle((bx, by, bx + bar - 2, py1), fill=colour)
            if labelled:
                draw.text((bx, by - 15), value_format.format(value), fill=(0, 0, 0), font=font)
        name_text = fit_text(name, font, group - 4)
        draw.text((px0 + k * group + (group - font.getlength(name_text)) / 2, py1 + 4), name_text,
                  fill=(0, 0, 0), font=font)


def draw_pass_rates(canvas: Image.Image, box: tuple[int, int, int, int], rates: dict[str, tuple[int, int]],
                    real: dict[str, tuple[int, int]]) -> None:
    """Horizontal bars: the fraction of real tiles (grey, where recorded) and of candidates
    passing each check, then the candidates passing all and accepted."""
    x0, y0, x1, _ = box
    draw = ImageDraw.Draw(canvas)
    title_font, font, small = load_font(16), load_font(14), load_font(11)
    draw.text((x0, y0), "pass rates: real tiles (grey), candidates", fill=(0, 0, 0), font=title_font)
    label_w, text_w = 80, 120
    bar_x0, bar_x1 = x0 + label_w, x1 - text_w
    for k, name in enumerate(rates):
        y = y0 + 34 + k * 40
        draw.text((x0, y + 8), name, fill=(0, 0, 0), font=font)
        bars = ([(real[name], REAL_COLOUR)] if name in real else []) + [
            (rates[name], (60, 160, 75) if name == "accepted" else SYNTH_COLOUR)]
        height = 34 // len(bars)
        for j, ((passed, total), colour) in enumerate(bars):
            top = y + j * height
            draw.rectangle((bar_x0, top, bar_x1, top + height - 2), outline=(160, 160, 160), fill=(240, 240, 240))
            if total:
                draw.rectangle((bar_x0, top, bar_x0 + (bar_x1 - bar_x0) * passed / total, top + height - 2), fill=colour)
            draw.text((bar_x1 + 6, top + (height - 14) // 2), percent(passed, total), fill=(0, 0, 0), font=small)


def render_figure(out_dir: Path, records: list[dict], run: dict) -> Image.Image:
    """The whole report figure: accepted grid, rejected grid, class chart and pass rates side
    by side, timing line."""
    colours = class_colours(records, run)
    fallback_size = int(run.get("image_size") or 64)
    accepted = [r for r in records if r.get("accepted")]
    rejected = [r for r in records if not r.get("accepted")]
    width = 2 * MARGIN + GRID_COLUMNS * CELL + (GRID_COLUMNS - 1) * GAP
    # the grids' heights are known in advance, so the canvas is made once at its final size
    grid_h = [30 + (math.ceil(min(len(g), GRID_SAMPLES) / GRID_COLUMNS) * (CELL + 18 + GAP) if g else 24)
              for g in (accepted, rejected)]
    chart_h = 340
    height = MARGIN + 60 + grid_h[0] + 10 + grid_h[1] + 10 + chart_h + 40 + MARGIN
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    rates = pass_rates(records)
    passed, total = rates["passed"]
    draw.text((MARGIN, MARGIN), f"earthsynth augment report: {total} candidates, {passed} passed the filter, "
              f"{percent(*rates['accepted'])} accepted", fill=(0, 0, 0), font=load_font(24))
    settings = f"model {run.get('model', '?')}   seed {run.get('seed', '?')}   images wanted {run.get('num_images', '?')}"
    draw.text((MARGIN, MARGIN + 32), fit_text(settings, load_font(14), width - 2 * MARGIN), fill=(60, 60, 60),
              font=load_font(14))
    # the class legend, right-aligned on the settings line
    legend_font = load_font(12)
    lx = width - MARGIN
    for name in reversed(list(colours)[:MAX_CLASSES]):
        lx -= int(legend_font.getlength(name)) + 22
        draw.rectangle((lx, MARGIN + 34, lx + 10, MARGIN + 44), outline=colours[name], width=2)
        draw.text((lx + 14, MARGIN + 32), name, fill=(0, 0, 0), font=legend_font)
    y = MARGIN + 60
    y = draw_grid(canvas, y, f"accepted ({len(accepted)})", accepted, out_dir, colours, fallback_size, False) + 10
    y = draw_grid(canvas, y, f"rejected ({len(rejected)})", rejected, out_dir, colours, fallback_size, True) + 10
    real_images = int((run.get("real") or {}).get("images") or 0)
    third = (width - 2 * MARGIN) // 3
    lefts = [MARGIN + k * third for k in range(3)]
    draw_grouped_bars(canvas, (lefts[0], y, lefts[1] - GAP, y + chart_h), histogram_rows(run), real_images,
                      len(accepted), "objects per image: share of images", "share of images", "objects in the image",
                      "{:.0%}")
    draw_grouped_bars(canvas, (lefts[1], y, lefts[2] - GAP, y + chart_h), class_rates(records, run), real_images,
                      len(accepted), "class counts: objects per image", "objects per image", "class")
    draw_pass_rates(canvas, (lefts[2], y, width - MARGIN, y + chart_h), rates, real_rates(run))
    draw.text((MARGIN, y + chart_h + 10), timing_text(run), fill=(0, 0, 0), font=load_font(16))
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


# ----------------------------------------------------------------------------- html
PAGE_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; }
tr.accepted td.verdict { color: #197a2f; font-weight: bold; }
tr.rejected td.verdict { color: #b02020; }
img.figure { max-width: 100%; border: 1px solid #ccc; }
"""


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of plain-text cells (all escaped)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>\n"


def render_html(out_dir: Path, records: list[dict], run: dict, figure_uri: str) -> str:
    """The report page: settings, summary, class histogram, the figure, the candidate table."""
    rates = pass_rates(records)
    passed, total = rates["accepted"]
    parts = ["<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">",
             "<title>earthsynth augment report</title>", f"<style>{PAGE_STYLE}</style></head><body>",
             "<h1>earthsynth augment report</h1>"]

    # run settings: every top-level scalar or list of run.json, plus the thresholds
    skipped = ("real", "synthetic", "timing", "thresholds", "calibration", "pass_rates")
    settings = [[key, value if isinstance(value, str) else json.dumps(value)]
                for key, value in run.items() if key not in skipped]
    settings += [[f"thresholds.{key}", json.dumps(value)] for key, value in (run.get("thresholds") or {}).items()]
    parts += ["<h2>Run settings</h2>", table(["setting", "value"], settings)]

    summary = [["candidates", str(total)], ["passed the filter", str(rates["passed"][0])],
               ["accepted", str(passed)], ["rejected", str(total - passed)], ["acceptance rate", percent(passed, total)]]
    summary.append(["timing", timing_text(run).removeprefix("timing: ")])
    parts += ["<h2>Summary</h2>", table(["", ""], summary)]

    real_pass = real_rates(run)
    calibration = run.get("calibration") or {}
    share = calibration.get("real_pass_share")
    checks = [[name, check_thresholds(run, name), (calibration.get("tiles") or {}).get(name, "not recorded"),
               percent(*real_pass[name]) if name in real_pass else "n/a", percent(*rates[name])] for name in CHECKS]
    checks.append(["all (passed)", "", "", "", percent(*rates["passed"])])
    parts += ["<h2>Filter checks: real tiles and candidates</h2>",
              f"<p>Thresholds marked calibrated were set so that {html.escape(f'{share:.0%}' if share else '?')} "
              "of the real tiles named pass that check; the rest were fixed in the settings.</p>",
              table(["check", "thresholds", "real tiles", "real tiles passing", "candidates passing"], checks)]

    real = run.get("real") or {}
    synthetic = run.get("synthetic") or {}
    means = [["mean", f"{real.get('objects_per_image', 0):.2f}", f"{synthetic.get('objects_per_image', 0):.2f}"]]
    hist = [[k, f"{real_share:.1%}", f"{synth_share:.1%}"] for k, real_share, synth_share in histogram_rows(run)]
    parts += ["<h2>Objects per image</h2>",
              f"<p>real: {html.escape(str(real.get('images', 0)))} images; accepted: {passed} images.</p>",
              table(["objects in the image", "real", "accepted"], means + hist)]

    classes = [[name, f"{real_rate:.3f}", f"{synth_rate:.3f}"] for name, real_rate, synth_rate in class_rates(records, run)]
    parts += ["<h2>Classes: objects per image</h2>",
              f"<p>real: {html.escape(str(real.get('images', 0)))} images; synthetic accepted: {passed} images"
              f"{f' (the {MAX_CLASSES} most frequent classes)' if len(classes) == MAX_CLASSES else ''}.</p>",
              table(["class", "real", "synthetic accepted"], classes)]

    parts += ["<h2>Figure</h2>", f"<p><a href=\"report.png\"><img class=\"figure\" src=\"{figure_uri}\" "
              "alt=\"accepted and rejected samples, class counts, pass rates, timing\"></a></p>"]

    colours = class_colours(records, run)
    fallback_size = int(run.get("image_size") or 64)
    shown = records[:MAX_TABLE_ROWS]
    parts.append("<h2>Candidates</h2>")
    if len(records) > len(shown):
        parts.append(f"<p>The first {len(shown)} of {len(records)} candidates by index.</p>")
    rows = []
    for record in shown:
        verdict = "yes" if record.get("accepted") else "no"
        reasons = "<br>".join(html.escape(str(r)) for r in record.get("reasons") or [])
        image = thumbnail(out_dir, record, TABLE_CELL, colours, fallback_size)
        rows.append(f"<tr class=\"{'accepted' if record.get('accepted') else 'rejected'}\">"
                    f"<td><img src=\"{data_uri(image)}\" width=\"{image.width}\" height=\"{image.height}\" "
                    f"alt=\"candidate {record['index']}\"></td>"
                    f"<td class=\"num\">{record['index']}</td>"
                    f"<td>{html.escape(str(record.get('origin', '')))}</td>"
                    f"<td class=\"verdict\">{verdict}</td><td>{reasons}</td>"
                    f"<td>{html.escape(score_text(record.get('scores') or {}))}</td>"
                    f"<td>{html.escape(str(record.get('prompt', '')))}</td></tr>\n")
    header = "".join(f"<th>{h}</th>" for h in ("image", "index", "origin", "accepted", "reasons", "scores", "prompt"))
    parts.append(f"<table><tr>{header}</tr>\n{''.join(rows)}</table>\n")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: str | os.PathLike, records: list[dict], run: dict,
                 target: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write report.png and report.html (each atomically) into `target` (default OUT) and
    return their paths.

    `records` are the manifest records (see load_manifest), `run` the run summary (run.json).
    Missing candidate images become grey placeholders; missing run keys are shown as unknown.
    """
    out_dir = Path(out_dir)
    target = out_dir if target is None else Path(target)
    records = sorted(records, key=lambda r: r["index"])
    figure = png_bytes(render_figure(out_dir, records, run))
    png_path, html_path = target / "report.png", target / "report.html"
    with atomic_write(png_path, "wb") as f:
        f.write(figure)
    page = render_html(out_dir, records, run, "data:image/png;base64," + base64.b64encode(figure).decode("ascii"))
    with atomic_write(html_path, "w") as f:
        f.write(page)
    return png_path, html_path

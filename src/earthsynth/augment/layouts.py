"""Object layouts for layout-to-image augmentation: fit the statistics of a real labelled
dataset, then sample new, diverse layouts (boxes + classes) for a layout-conditioned diffusion
model to paint.

A layout is either
- augmented: a real layout rescaled to the requested size, flipped, turned by quarter turns,
  shifted a little and with each box jittered; or
- sampled: drawn from the fitted per-class statistics - the number of objects per image, the
  classes by co-occurrence, each box's size / aspect / angle (a jittered resample of real boxes,
  like a kernel density estimate), and its centre from a coarse density map of real centres.
  Boxes lie fully inside the image and overlap already placed boxes by at most `max_overlap`.

Sizes are normalised by the image size (sqrt of box area over sqrt of image area), so a sampler
fitted on 64 px tiles gives the same relative layouts at any requested size.
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from earthsynth.boxes import Boxes, normalize_angle, rbox_to_corners
from earthsynth.data.common import atomic_write
from earthsynth.data.jsonl import read_jsonl
from earthsynth.errors import InputError

DENSITY_BINS = 8  # the density map of box centres is DENSITY_BINS x DENSITY_BINS cells
MAX_SHAPE_SAMPLES = 20000  # real (size, aspect, angle) triples kept per class
PLACEMENT_ATTEMPTS = 40  # tries to place one box before it is given up
SAMPLER_FORMAT = "earthsynth-layout-sampler"
SAMPLER_VERSION = 1

Record = tuple[str, int, int, Boxes]  # (image_id, width, height, boxes) of one real image


@dataclass
class LayoutRecord:
    """One layout: boxes in pixels of a width x height image, and where it came from:
    "sampled", "augmented:<real image id>:<ops>" or "real:<image id>"."""

    width: int
    height: int
    boxes: Boxes
    origin: str = "sampled"


@dataclass
class ClassStats:
    """The fitted statistics of one class."""

    objects: int  # boxes of this class in the real data
    count_hist: list[int]  # count_hist[k] = real images with exactly k boxes of this class
    sizes: np.ndarray  # sqrt(box area) / sqrt(image area), one per real box
    log_aspects: np.ndarray  # log(w / h), same boxes
    angles: np.ndarray  # degrees, same boxes (all 0 for horizontal data)
    density: np.ndarray  # (DENSITY_BINS, DENSITY_BINS) int: real centres per cell, row = y
    size_bandwidth: float  # jitter of log size when resampling
    aspect_bandwidth: float  # jitter of log aspect
    angle_bandwidth: float  # jitter of the angle, degrees (0 for horizontal data)

    @property
    def images_with(self) -> int:
        return int(sum(self.count_hist[1:]))

    def to_dict(self) -> dict:
        return {
            "objects": self.objects, "count_hist": list(self.count_hist),
            "sizes": self.sizes.tolist(), "log_aspects": self.log_aspects.tolist(), "angles": self.angles.tolist(),
            "density": self.density.tolist(), "size_bandwidth": self.size_bandwidth,
            "aspect_bandwidth": self.aspect_bandwidth, "angle_bandwidth": self.angle_bandwidth,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassStats:
        return cls(
            objects=int(d["objects"]), count_hist=[int(v) for v in d["count_hist"]],
            sizes=np.asarray(d["sizes"], dtype=np.float64), log_aspects=np.asarray(d["log_aspects"], dtype=np.float64),
            angles=np.asarray(d["angles"], dtype=np.float64),
            density=np.asarray(d["density"], dtype=np.int64).reshape(DENSITY_BINS, DENSITY_BINS),
            size_bandwidth=float(d["size_bandwidth"]), aspect_bandwidth=float(d["aspect_bandwidth"]),
            angle_bandwidth=float(d["angle_bandwidth"]),
        )


# ----------------------------------------------------------------------------- geometry helpers
def _bandwidth(values: np.ndarray, low: float, high: float) -> float:
    """Silverman's rule of thumb, kept within [low, high] (few or identical values give 0)."""
    if len(values) < 2:
        return low
    q75, q25 = np.percentile(values, [75, 25])
    spread = min(np.std(values), (q75 - q25) / 1.34) or np.std(values)
    return float(np.clip(0.9 * spread * len(values) ** -0.2, low, high))


def _inside(boxes: Boxes, width: float, height: float, eps: float = 1e-6) -> np.ndarray:
    """(N,) bool: every corner of the box lies in the image."""
    corners = boxes.corners()
    return ((corners[..., 0] >= -eps) & (corners[..., 0] <= width + eps)
            & (corners[..., 1] >= -eps) & (corners[..., 1] <= height + eps)).all(axis=1)


def _half_extents(w: float, h: float, angle: float) -> tuple[float, float]:
    """Half width and half height of the horizontal box enclosing a rotated one."""
    a = math.radians(angle)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return (w * c + h * s) / 2, (w * s + h * c) / 2


def _intersections(row: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Intersection areas of one rotated box (5,) with each of (M, 5)."""
    if len(rows) == 0:
        return np.zeros(0)
    if row[4] == 0 and not rows[:, 4].any():  # all horizontal: exact and vectorised
        ix = np.minimum(row[0] + row[2] / 2, rows[:, 0] + rows[:, 2] / 2) - np.maximum(row[0] - row[2] / 2, rows[:, 0] - rows[:, 2] / 2)
        iy = np.minimum(row[1] + row[3] / 2, rows[:, 1] + rows[:, 3] / 2) - np.maximum(row[1] - row[3] / 2, rows[:, 1] - rows[:, 3] / 2)
        return np.clip(ix, 0, None) * np.clip(iy, 0, None)
    out = np.zeros(len(rows))
    hx, hy = _half_extents(row[2], row[3], row[4])
    quad = rbox_to_corners(row[None])[0].astype(np.float32)
    for j, other in enumerate(rows):
        ox, oy = _half_extents(other[2], other[3], other[4])
        if abs(row[0] - other[0]) >= hx + ox or abs(row[1] - other[1]) >= hy + oy:
            continue  # enclosing boxes apart: no intersection, skip the polygon clip
        other_quad = rbox_to_corners(other[None])[0].astype(np.float32)
        area, _ = cv2.intersectConvexConvex(quad, other_quad)
        out[j] = max(float(area), 0.0)
    return out


def _max_cover(row: np.ndarray, rows: np.ndarray) -> float:
    """Largest overlap of a box with any of `rows`, as intersection over the smaller area
    (never below the IoU, so bounding it bounds both)."""
    if len(rows) == 0:
        return 0.0
    inter = _intersections(row, rows)
    smaller = np.minimum(row[2] * row[3], rows[:, 2] * rows[:, 3])
    return float(np.max(inter / np.maximum(smaller, 1e-12)))


def pairwise_overlaps(boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, cover) matrices (N, N) of a layout's boxes, diagonals 0; cover[i, j] is the
    intersection over the smaller of the two areas."""
    n = len(boxes)
    iou, cover = np.zeros((n, n)), np.zeros((n, n))
    areas = boxes.areas()
    for i in range(n):
        inter = _intersections(boxes.rboxes[i], boxes.rboxes[i + 1:])
        j = np.arange(i + 1, n)
        iou[i, j] = inter / np.maximum(areas[i] + areas[j] - inter, 1e-12)
        cover[i, j] = inter / np.maximum(np.minimum(areas[i], areas[j]), 1e-12)
    return iou + iou.T, cover + cover.T


def _rot90(boxes: Boxes, width: float, height: float) -> Boxes:
    """Turn the layout of a width x height image by 90 degrees clockwise (the image becomes
    height x width): a point (x, y) goes to (height - y, x)."""
    rboxes = boxes.rboxes.copy()
    rboxes[:, 0] = height - boxes.rboxes[:, 1]
    rboxes[:, 1] = boxes.rboxes[:, 0]
    if boxes.rotated:
        rboxes[:, 4] = normalize_angle(boxes.rboxes[:, 4] + 90.0)  # the width axis turns with the image
    else:
        rboxes[:, 2], rboxes[:, 3] = boxes.rboxes[:, 3], boxes.rboxes[:, 2]  # stay horizontal: swap sides
    return Boxes(rboxes, list(boxes.labels), boxes.rotated, boxes.difficult.copy())


def _check_record(record, index: int) -> Record:
    try:
        image_id, width, height, boxes = record
    except (TypeError, ValueError):
        raise InputError("layouts", f"record {index}: expected (image_id, width, height, boxes)") from None
    if not isinstance(boxes, Boxes):
        raise InputError("layouts", f"record {index} ({image_id}): boxes must be earthsynth.boxes.Boxes, got {type(boxes).__name__}")
    if int(width) <= 0 or int(height) <= 0:
        raise InputError("layouts", f"record {index} ({image_id}): image size {width}x{height} is not positive")
    return str(image_id), int(width), int(height), boxes


# ----------------------------------------------------------------------------- the sampler
class LayoutSampler:
    """Per-class layout statistics of a real dataset, and a sampler of new layouts from them.

    Build it with `LayoutSampler.fit(records)`; `sample(...)` draws layouts; `save` / `load`
    keep it as JSON (the real layouts are kept too: augmented layouts start from them).
    """

    def __init__(self, classes: list[str], stats: dict[str, ClassStats], objects_per_image: list[int],
                 cooccurrence: np.ndarray, rotated: bool, records: list[Record]):
        self.classes = list(classes)
        self.stats = stats
        self.objects_per_image = [int(v) for v in objects_per_image]  # [k] = images with k boxes
        self.cooccurrence = np.asarray(cooccurrence, dtype=np.int64).reshape(len(classes), len(classes))
        self.rotated = bool(rotated)
        self.records = records

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, records: Sequence[Record], rotated: bool | None = None) -> LayoutSampler:
        """Fit the statistics of real images: `records` are (image_id, width, height, boxes).

        rotated: whether angles are meaningful; None detects it (any rotated Boxes or nonzero
        angle). With rotated=False rotated boxes are replaced by their enclosing horizontal boxes.
        """
        records = [_check_record(r, i) for i, r in enumerate(records)]
        if not records:
            raise InputError("layouts", "no real records to fit the layout statistics on")
        if rotated is None:
            rotated = any((b.rotated and len(b) > 0) or bool(np.any(b.rboxes[:, 4] != 0)) for _, _, _, b in records)
        if not rotated:  # horizontal statistics: enclosing boxes, angle 0
            records = [(i, w, h, Boxes.from_xyxy(b.xyxy(), b.labels, b.difficult)) for i, w, h, b in records]
        else:
            records = [(i, w, h, Boxes(b.rboxes, b.labels, True, b.difficult)) for i, w, h, b in records]
        classes = sorted({label for _, _, _, b in records for label in b.labels})
        index = {name: k for k, name in enumerate(classes)}

        totals = np.array([len(b) for _, _, _, b in records])
        objects_per_image = np.bincount(totals).tolist()
        counts = np.zeros((len(records), len(classes)), dtype=np.int64)  # per image, per class
        shapes: dict[str, list[np.ndarray]] = {name: [] for name in classes}
        density = {name: np.zeros((DENSITY_BINS, DENSITY_BINS), dtype=np.int64) for name in classes}
        for r, (_, width, height, boxes) in enumerate(records):
            labels = np.array([index[label] for label in boxes.labels], dtype=np.int64)
            counts[r] = np.bincount(labels, minlength=len(classes))
            side = math.sqrt(width * height)
            w = np.maximum(boxes.rboxes[:, 2], 1e-6)
            h = np.maximum(boxes.rboxes[:, 3], 1e-6)
            rows = np.stack([np.sqrt(w * h) / side, np.log(w / h), boxes.rboxes[:, 4] if rotated else 0 * w], axis=1)
            gx = np.clip((boxes.rboxes[:, 0] / width * DENSITY_BINS).astype(int), 0, DENSITY_BINS - 1)
            gy = np.clip((boxes.rboxes[:, 1] / height * DENSITY_BINS).astype(int), 0, DENSITY_BINS - 1)
            for k, label in enumerate(boxes.labels):
                shapes[label].append(rows[k])
                density[label][gy[k], gx[k]] += 1

        present = (counts > 0).astype(np.int64)
        cooccurrence = present.T @ present  # [i, j] = images holding both classes; [i, i] = images with i
        subsample = np.random.default_rng(0)  # fixed: fitting is deterministic
        stats = {}
        for k, name in enumerate(classes):
            table = np.array(shapes[name])
            if len(table) > MAX_SHAPE_SAMPLES:
                table = table[np.sort(subsample.choice(len(table), MAX_SHAPE_SAMPLES, replace=False))]
            stats[name] = ClassStats(
                objects=int(counts[:, k].sum()), count_hist=np.bincount(counts[:, k]).tolist(),
                sizes=table[:, 0].copy(), log_aspects=table[:, 1].copy(), angles=table[:, 2].copy(),
                density=density[name],
                size_bandwidth=_bandwidth(np.log(table[:, 0]), 0.02, 0.25),
                aspect_bandwidth=_bandwidth(table[:, 1], 0.02, 0.25),
                angle_bandwidth=_bandwidth(table[:, 2], 0.25, 2.0) if rotated else 0.0,
            )
        return cls(classes, stats, objects_per_image, cooccurrence, bool(rotated), records)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, rng: np.random.Generator, width: int, height: int,
               per_class: dict[str, int] | None = None, max_objects: int = 30,
               max_overlap: float = 0.3, augmented_fraction: float = 0.5) -> list[LayoutRecord]:
        """`n` new layouts of a width x height image.

        round(n * augmented_fraction) of them are augmented real layouts, the rest are drawn
        from the statistics (in random order). per_class: the wanted NUMBER OF OBJECTS of a
        class over all n layouts (e.g. {"Dead": 100} to rebalance a rare class); classes not
        named keep their natural frequency. A layout never has more than `max_objects` boxes.
        max_overlap bounds the overlap of a placed box with earlier ones (intersection over
        the smaller area, which also bounds the IoU); augmented layouts keep the real overlaps.
        The result depends only on the fitted statistics, the arguments and the rng state.
        """
        if n < 0 or width <= 0 or height <= 0 or max_objects < 0:
            raise ValueError(f"need n >= 0, a positive size and max_objects >= 0, got n={n}, {width}x{height}, max_objects={max_objects}")
        if not 0.0 <= max_overlap <= 1.0 or not 0.0 <= augmented_fraction <= 1.0:
            raise ValueError(f"max_overlap and augmented_fraction must be in [0, 1], got {max_overlap}, {augmented_fraction}")
        targets = dict(per_class or {})
        for name, count in targets.items():
            if name not in self.stats:
                raise InputError("per_class", f"unknown class {name!r} (known: {', '.join(self.classes) or 'none'})")
            if int(count) != count or count < 0:
                raise InputError("per_class", f"class {name!r}: the number of objects must be a whole number >= 0, got {count}")
        if n == 0:
            return []

        n_augmented = int(round(n * augmented_fraction))
        augmented = rng.permutation(np.arange(n) < n_augmented)
        # spread each target over the layouts at random; what a layout cannot hold moves on
        allocation = {name: rng.multinomial(int(count), np.full(n, 1.0 / n)) for name, count in targets.items()}
        deficit = dict.fromkeys(targets, 0)
        layouts = []
        for i in range(n):
            quota = {name: int(allocation[name][i]) + deficit[name] for name in targets}
            if augmented[i]:
                layout = self._augmented(rng, width, height, quota, max_objects, max_overlap)
            else:
                layout = self._sampled(rng, width, height, quota, max_objects, max_overlap)
            got = layout.boxes.class_counts()
            for name in targets:
                deficit[name] = quota[name] - got.get(name, 0)
            layouts.append(layout)
        return layouts

    def _draw_counts(self, rng: np.random.Generator) -> dict[str, int]:
        """Objects per class of one natural layout: the total from the real objects-per-image
        distribution, the classes by co-occurrence with a first class drawn by frequency."""
        total = int(rng.choice(len(self.objects_per_image), p=np.array(self.objects_per_image) / sum(self.objects_per_image)))
        if total == 0 or not self.classes:
            return {}
        objects = np.array([self.stats[name].objects for name in self.classes], dtype=np.float64)
        first = int(rng.choice(len(self.classes), p=objects / objects.sum()))
        together = self.cooccurrence[first] / max(self.cooccurrence[first, first], 1)
        present = [first] + [j for j in range(len(self.classes)) if j != first and rng.random() < together[j]]
        if len(present) > total:
            present = [first] + sorted(rng.choice(present[1:], total - 1, replace=False).tolist())
        # the objects left over go to the present classes by their mean count where present
        weights = np.array([self.stats[self.classes[j]].objects / max(self.stats[self.classes[j]].images_with, 1) for j in present])
        extra = rng.multinomial(total - len(present), weights / weights.sum())
        return {self.classes[j]: 1 + int(e) for j, e in zip(present, extra)}

    def _draw_shape(self, rng: np.random.Generator, name: str, width: int, height: int) -> tuple[float, float, float]:
        """(w, h, angle) of one box: a random real box of the class, jittered (a KDE draw)."""
        st = self.stats[name]
        k = int(rng.integers(len(st.sizes)))
        size = min(st.sizes[k] * math.exp(rng.normal(0.0, st.size_bandwidth)), 1.0)
        log_aspect = st.log_aspects[k] + rng.normal(0.0, st.aspect_bandwidth)
        angle = float(normalize_angle(st.angles[k] + rng.normal(0.0, st.angle_bandwidth))) if self.rotated else 0.0
        side = size * math.sqrt(width * height)
        return side * math.exp(log_aspect / 2), side * math.exp(-log_aspect / 2), angle

    def _draw_centre(self, rng: np.random.Generator, name: str, width: int, height: int) -> tuple[float, float]:
        """A centre from the class's density map; half a count per cell keeps every cell possible."""
        weights = self.stats[name].density.astype(np.float64).ravel() + 0.5
        cell = int(rng.choice(len(weights), p=weights / weights.sum()))
        gy, gx = divmod(cell, DENSITY_BINS)
        return (gx + rng.random()) / DENSITY_BINS * width, (gy + rng.random()) / DENSITY_BINS * height

    def _place(self, rng: np.random.Generator, names: list[str], width: int, height: int,
               placed: np.ndarray, max_overlap: float) -> tuple[np.ndarray, list[str]]:
        """Place boxes of the given classes among the `placed` rows (M, 5), largest first.
        A box is moved inside the image if it sticks out, and redrawn where it overlaps earlier
        boxes (new centre, and a new shape after half the attempts); it is dropped when no
        attempt fits. Returns the new rows and their labels."""
        shapes = [(self._draw_shape(rng, name, width, height), name) for name in names]
        shapes.sort(key=lambda item: -item[0][0] * item[0][1])
        rows, labels = [], []
        for (w, h, angle), name in shapes:
            for attempt in range(PLACEMENT_ATTEMPTS):
                if attempt == PLACEMENT_ATTEMPTS // 2:
                    w, h, angle = self._draw_shape(rng, name, width, height)
                cx, cy = self._draw_centre(rng, name, width, height)
                hx, hy = _half_extents(w, h, angle)
                if 2 * hx > width or 2 * hy > height:
                    w, h, angle = self._draw_shape(rng, name, width, height)
                    continue
                # slide into the image rather than reject: keeps large boxes as likely as in the data
                row = np.array([min(max(cx, hx), width - hx), min(max(cy, hy), height - hy), w, h, angle])
                others = np.concatenate([placed, np.array(rows).reshape(-1, 5)])
                if _max_cover(row, others) <= max_overlap:
                    rows.append(row)
                    labels.append(name)
                    break
        return np.array(rows).reshape(-1, 5), labels

    def _sampled(self, rng, width, height, quota, max_objects, max_overlap) -> LayoutRecord:
        counts = {name: c for name, c in self._draw_counts(rng).items() if name not in quota}
        # targeted classes first: they are what the caller asked for
        wanted = [name for name, c in quota.items() for _ in range(min(c, max_objects))][:max_objects]
        natural = [name for name, c in counts.items() for _ in range(c)]
        names = wanted + natural[:max_objects - len(wanted)]
        rows, labels = self._place(rng, names, width, height, np.zeros((0, 5)), max_overlap)
        return LayoutRecord(width, height, Boxes(rows, labels, self.rotated), "sampled")

    def _augmented(self, rng, width, height, quota, max_objects, max_overlap) -> LayoutRecord:
        image_id, w0, h0, boxes = self.records[int(rng.integers(len(self.records)))]
        turns = int(rng.integers(4))  # quarter turns clockwise
        # rescale first so that the turned layout has the requested size
        w1, h1 = (width, height) if turns % 2 == 0 else (height, width)
        boxes = boxes.scale(w1 / w0, h1 / h0)
        ops = []
        if rng.random() < 0.5:
            boxes, ops = boxes.hflip(w1), ops + ["hflip"]
        if rng.random() < 0.5:
            boxes, ops = boxes.vflip(h1), ops + ["vflip"]
        for _ in range(turns):
            boxes = _rot90(boxes, w1, h1)
            w1, h1 = h1, w1
        if turns:
            ops.append(f"rot{90 * turns}")
        dx, dy = rng.uniform(-0.1, 0.1) * width, rng.uniform(-0.1, 0.1) * height
        ops.append(f"shift{dx:+.0f},{dy:+.0f}")
        # boxes pushed over the edge are cut like tiles cut real boxes; the cut must stay inside
        boxes, _ = boxes.translate(dx, dy).clip(0, 0, width, height, min_visible=0.5)
        boxes = boxes.select(_inside(boxes, width, height))
        boxes = self._jitter(rng, boxes, width, height)
        ops.append("jitter")

        # meet the per-class quotas: drop surplus boxes of a targeted class, add missing ones
        keep = np.ones(len(boxes), dtype=bool)
        for name, want in quota.items():
            idx = np.flatnonzero(np.array(boxes.labels) == name)
            if len(idx) > want:
                keep[rng.choice(idx, len(idx) - want, replace=False)] = False
        if not keep.all():
            ops.append(f"drop{int((~keep).sum())}")
            boxes = boxes.select(keep)
        if len(boxes) > max_objects:
            boxes = boxes.select(np.sort(rng.choice(len(boxes), max_objects, replace=False)))
        have = boxes.class_counts()
        missing = [name for name, want in quota.items() for _ in range(max(want - have.get(name, 0), 0))]
        missing = missing[:max_objects - len(boxes)]
        if missing:
            rows, labels = self._place(rng, missing, width, height, boxes.rboxes, max_overlap)
            if len(rows):
                boxes = boxes.concat(Boxes(rows, labels, self.rotated))
                ops.append(f"add{len(rows)}")
        boxes = Boxes(boxes.rboxes, boxes.labels, self.rotated)  # layouts carry no difficult flags
        return LayoutRecord(width, height, boxes, f"augmented:{image_id}:{'+'.join(ops)}")

    def _jitter(self, rng: np.random.Generator, boxes: Boxes, width: int, height: int) -> Boxes:
        """Move each box by ~3 % of its size, resize by ~5 %, turn by ~2 degrees (rotated data);
        a box the jitter pushes out of the image keeps its place."""
        n = len(boxes)
        side = np.sqrt(boxes.areas())[:, None]
        moved = boxes.rboxes.copy()
        moved[:, :2] += rng.normal(0.0, 0.03, (n, 2)) * side
        moved[:, 2:4] *= np.exp(rng.normal(0.0, 0.05, (n, 2)))
        if self.rotated:
            moved[:, 4] = normalize_angle(moved[:, 4] + rng.normal(0.0, 2.0, n))
        jittered = Boxes(moved, list(boxes.labels), boxes.rotated, boxes.difficult.copy())
        ok = _inside(jittered, width, height)
        rboxes = np.where(ok[:, None], moved, boxes.rboxes)
        return Boxes(rboxes, list(boxes.labels), boxes.rotated, boxes.difficult.copy())

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """JSON-ready statistics and real layouts; floats round-trip exactly through json."""
        return {
            "format": SAMPLER_FORMAT, "version": SAMPLER_VERSION, "rotated": self.rotated,
            "classes": list(self.classes), "objects_per_image": list(self.objects_per_image),
            "cooccurrence": self.cooccurrence.tolist(),
            "class_stats": {name: self.stats[name].to_dict() for name in self.classes},
            "records": [{"image_id": i, "width": w, "height": h, "rboxes": b.rboxes.tolist(), "labels": list(b.labels)}
                        for i, w, h, b in self.records],
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | os.PathLike | None = "layout sampler") -> LayoutSampler:
        if not isinstance(d, dict) or d.get("format") != SAMPLER_FORMAT:
            raise InputError(source, f"not a layout sampler (expected format {SAMPLER_FORMAT!r})")
        if d.get("version") != SAMPLER_VERSION:
            raise InputError(source, f"layout sampler version {d.get('version')!r} is not supported (expected {SAMPLER_VERSION})")
        try:
            rotated = bool(d["rotated"])
            classes = [str(c) for c in d["classes"]]
            stats = {name: ClassStats.from_dict(d["class_stats"][name]) for name in classes}
            records = [(str(r["image_id"]), int(r["width"]), int(r["height"]),
                        Boxes(np.asarray(r["rboxes"], dtype=np.float64).reshape(-1, 5), r["labels"], rotated))
                       for r in d["records"]]
            return cls(classes, stats, d["objects_per_image"], np.asarray(d["cooccurrence"]), rotated, records)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(source, f"malformed layout sampler: {type(err).__name__}: {err}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the sampler as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LayoutSampler:
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise InputError(path, "layout sampler file not found") from None
        except json.JSONDecodeError as err:
            raise InputError(path, f"not valid JSON: {err.msg} at line {err.lineno}") from None
        return cls.from_dict(d, source=path)

    # ------------------------------------------------------------------ reporting
    def describe(self) -> str:
        """A short table of the fitted statistics, one row per class."""
        images = sum(self.objects_per_image)
        objects = sum(k * c for k, c in enumerate(self.objects_per_image))
        sides = [math.sqrt(w * h) for _, w, h, _ in self.records]
        side = float(np.median(sides))
        lines = [
            f"{images} images, {objects} objects, {'rotated' if self.rotated else 'horizontal'} boxes, "
            f"{objects / images:.2f} objects/image (max {len(self.objects_per_image) - 1}, "
            f"{self.objects_per_image[0]} images empty); sizes are sqrt(area) / image side, px at {side:.0f} px",
            f"{'class':<16} {'objects':>7} {'images':>6} {'per img':>7} {'size p10':>8} {'median':>7} {'p90':>6} "
            f"{'px':>6} {'w/h':>5} {'|angle|':>7}",
        ]
        for name in self.classes:
            st = self.stats[name]
            p10, p50, p90 = np.percentile(st.sizes, [10, 50, 90])
            lines.append(
                f"{name[:16]:<16} {st.objects:>7} {st.images_with:>6} {st.objects / images:>7.2f} {p10:>8.3f} "
                f"{p50:>7.3f} {p90:>6.3f} {p50 * side:>6.1f} {math.exp(np.median(st.log_aspects)):>5.2f} "
                f"{np.mean(np.abs(st.angles)):>7.1f}")
        if len(self.classes) > 1:
            lines.append("images holding both classes: " + "; ".join(
                f"{a}+{b} {self.cooccurrence[i, j]}" for i, a in enumerate(self.classes)
                for j, b in enumerate(self.classes) if j > i))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- layouts
def real_layout_records(dataset) -> list[Record]:
    """(image_id, width, height, boxes) of every sample of a dataset such as RealTiles."""
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]
        height, width = sample["image"].shape[-2:]
        boxes = sample.get("boxes")
        records.append((str(sample.get("image_id", i)), int(width), int(height), boxes if boxes is not None else Boxes()))
    return records


def real_layouts(records: Sequence[Record]) -> list[LayoutRecord]:
    """Real records as layouts (origin "real:<image id>"), e.g. to compare with sampled ones."""
    return [LayoutRecord(int(w), int(h), b, f"real:{i}") for i, w, h, b in records]


def layout_statistics(layouts: Sequence[LayoutRecord | Record]) -> dict:
    """Per-class object counts, mean objects per image and normalised sizes (sqrt(area) /
    sqrt(image area)) of layouts or real records, to compare real and synthetic sets."""
    layouts = [x if isinstance(x, LayoutRecord) else real_layouts([x])[0] for x in layouts]
    sizes: dict[str, list[float]] = {}
    for layout in layouts:
        side = math.sqrt(layout.width * layout.height)
        for label, area in zip(layout.boxes.labels, layout.boxes.areas()):
            sizes.setdefault(label, []).append(math.sqrt(area) / side)
    every = [s for values in sizes.values() for s in values]
    images = len(layouts)
    return {
        "images": images,
        "objects": len(every),
        "mean_objects_per_image": len(every) / images if images else 0.0,
        "mean_size": float(np.mean(every)) if every else 0.0,
        "median_size": float(np.median(every)) if every else 0.0,
        "classes": {name: {"objects": len(values), "objects_per_image": len(values) / images,
                           "mean_size": float(np.mean(values)), "median_size": float(np.median(values))}
                    for name, values in sorted(sizes.items())},
    }


def objects_histogram(layouts: Sequence[LayoutRecord | Record | Boxes]) -> list[int]:
    """[k] = layouts (or real records, or Boxes) with exactly k objects."""
    counts = [len(x) if isinstance(x, Boxes) else len(x.boxes if isinstance(x, LayoutRecord) else x[3])
              for x in layouts]
    return np.bincount(np.asarray(counts, dtype=np.int64), minlength=1).tolist()


QUOTA_BINS = 20  # object-count bins of an accepted set's quota: each 5% of the images or more, but the last


def count_bins(histogram: Sequence[int], bins: int = QUOTA_BINS) -> list[int]:
    """The first object count of each bin of `histogram` ([k] = images with k objects):
    contiguous counts, a bin closed once it holds 1 / `bins` of the images (a last one with
    less joins the one before). Sparse data (0 to 10 trees) keeps its common counts apart
    ([0, 1, 2, 3, 4, 5, 6]: 6 to 10 together), dense data (0 to 100 cars) gets at most `bins`
    ranges, each with images enough to come by."""
    total = sum(histogram)
    starts, held = [0], 0
    for k, count in enumerate(histogram[:-1]):
        held += count
        if held * bins >= total:
            starts.append(k + 1)
            held = 0
    if len(starts) > 1 and (held + histogram[-1]) * bins < total:
        starts.pop()
    return starts


def count_targets(masses: Sequence[int], n: int) -> list[int]:
    """`masses` (images per bin) scaled to sum to `n` images, largest remainders rounding up
    (ties to the earlier bin); all in the first bin when there is nothing to scale."""
    total = sum(masses)
    if total == 0:
        return [n] + [0] * (len(masses) - 1)
    exact = np.asarray(masses, dtype=np.float64) * n / total
    targets = np.floor(exact).astype(int)
    order = sorted(range(len(exact)), key=lambda k: (-(exact[k] - targets[k]), k))
    targets[order[:n - int(targets.sum())]] += 1
    return targets.tolist()


class CountQuota:
    """Takes images while the bin of their object count holds fewer than its target: an accepted
    set with the objects-per-image distribution of a histogram (`matching`), however much more
    often the filter passes some counts (empty layouts pass most often), or just the first n
    images (`first`)."""

    def __init__(self, starts: Sequence[int], targets: Sequence[int]):
        self.starts = [int(k) for k in starts]  # first object count of each bin (count_bins)
        self.targets = [int(t) for t in targets]
        self.taken = [0] * len(self.targets)

    @classmethod
    def matching(cls, histogram: Sequence[int], n: int, share: int = 1) -> CountQuota:
        """n images distributed as `histogram` over count_bins; `share`: processes splitting
        the work, each taking 1 / share of every target (rounded up)."""
        starts = count_bins(histogram)
        masses = [sum(histogram[a:b]) for a, b in zip(starts, [*starts[1:], len(histogram)])]
        return cls(starts, [math.ceil(t / share) for t in count_targets(masses, n)])

    @classmethod
    def first(cls, n: int) -> CountQuota:
        return cls([0], [n])

    def bin(self, objects: int) -> int:
        return bisect.bisect_right(self.starts, objects) - 1

    def wants(self, objects: int) -> bool:
        k = self.bin(objects)
        return self.taken[k] < self.targets[k]

    def take(self, objects: int) -> bool:
        if not self.wants(objects):
            return False
        self.taken[self.bin(objects)] += 1
        return True

    def why_not(self, objects: int) -> str:
        """The reason `take(objects)` said no, in words."""
        k = self.bin(objects)
        if len(self.starts) == 1:
            return f"not needed: the set holds its {self.targets[0]} images"
        last = self.starts[k + 1] - 1 if k + 1 < len(self.starts) else None
        counts = (f"{self.starts[k]}" if last == self.starts[k] else
                  f"{self.starts[k]}-{last}" if last is not None else f"{self.starts[k]} or more")
        return f"not needed: the set holds its {self.targets[k]} images with {counts} objects"

    @property
    def total(self) -> int:
        return sum(self.taken)

    @property
    def wanted(self) -> int:
        return sum(self.targets)

    def full(self) -> bool:
        return self.taken == self.targets


def save_layouts(path: str | os.PathLike, layouts: Sequence[LayoutRecord]) -> None:
    """Write layouts as JSONL, one per line: width, height, rotated, rboxes (cx, cy, w, h,
    angle in pixels), labels, origin. Atomic: a failed write leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        for layout in layouts:
            f.write(json.dumps({
                "width": int(layout.width), "height": int(layout.height), "rotated": bool(layout.boxes.rotated),
                "rboxes": layout.boxes.rboxes.tolist(), "labels": list(layout.boxes.labels), "origin": layout.origin,
            }) + "\n")


def load_layouts(path: str | os.PathLike) -> list[LayoutRecord]:
    """Read a JSONL file of layouts; a malformed line raises an InputError naming file and line."""
    layouts = []
    for number, d in read_jsonl(path):
        where = f"line {number}"
        missing = [key for key in ("width", "height", "rboxes", "labels") if key not in d]
        if missing:
            raise InputError(path, f"{where}: missing {', '.join(missing)}")
        width, height = d["width"], d["height"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
            raise InputError(path, f"{where}: width and height must be positive integers, got {width!r}, {height!r}")
        try:
            rboxes = np.asarray(d["rboxes"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(path, f"{where}: rboxes must be a list of [cx, cy, w, h, angle]") from None
        if rboxes.size and (rboxes.ndim != 2 or rboxes.shape[1] != 5):
            raise InputError(path, f"{where}: rboxes must be a list of [cx, cy, w, h, angle]")
        labels = d["labels"]
        if not isinstance(labels, list) or len(labels) != len(rboxes.reshape(-1, 5)):
            raise InputError(path, f"{where}: {len(rboxes.reshape(-1, 5))} boxes but labels is not a list of as many")
        boxes = Boxes(rboxes.reshape(-1, 5), labels, bool(d.get("rotated", bool(rboxes.size and rboxes[:, 4].any()))))
        boxes, _ = boxes.validate(width, height, source=path, where=[f"{where} box {j}" for j in range(len(boxes))])
        layouts.append(LayoutRecord(width, height, boxes, str(d.get("origin", "sampled"))))
    return layouts

"""The filter: a generated image passes only if it passes every check.

1. layout: the real-trained compact detector finds the objects the image was conditioned on
   (recall at IoU >= tau, and at least one of them: an image is not confirmed by a detector
   that sees nothing) without many extras (precision); an empty layout passes only if the
   detector finds nothing, so "nothing to find, nothing found" is no free pass;
2. semantic: the real-trained crop classifier agrees with each object's class;
3. quality: finite, not saturated, not blank, not noise;
4. duplicate: no near-duplicate of a real training tile or of an image already passed.

Every threshold left empty (None) in FilterConfig is calibrated on real tiles by `calibrate`:
set so that `real_pass_share` of them pass its check. Every score and every reason goes into
the manifest, so thresholds can be audited and re-tuned without generating again.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, replace

import numpy as np

from earthsynth.augment.metrics import match_layout
from earthsynth.augment.quality import (
    DuplicateIndex,
    QualityThresholds,
    image_quality,
    quality_reasons,
)
from earthsynth.boxes import Boxes

CHECKS = ("quality", "layout", "semantic", "duplicate")  # in pipeline order
MODEL_CHECKS = ("layout", "semantic")  # judged by the detector and classifier trained on real tiles
# each threshold: (its check, the score it bounds, which side passes: "min" score >= t,
# "max" score <= t, "below" score < t)
BOUNDS = {
    "min_recall": ("layout", "recall", "min"),
    "min_precision": ("layout", "precision", "min"),
    "min_class_agreement": ("semantic", "class_agreement", "min"),
    "max_saturated_fraction": ("quality", "saturated_fraction", "max"),
    "min_std": ("quality", "std", "min"),
    "min_edge_energy": ("quality", "edge_energy", "min"),
    "max_edge_energy": ("quality", "edge_energy", "max"),
    "duplicate_similarity": ("duplicate", "duplicate_similarity", "below"),
}


@dataclass
class FilterConfig:
    enabled: bool = True  # false: scores are still computed and written, every image is kept
    iou_threshold: float = 0.5  # tau: a conditioned object counts as found at this IoU
    detector_score: float = 0.3  # detections below this score are ignored
    # a threshold left null is calibrated so that this share of real tiles pass its check (a
    # check with several thresholds splits the rest between them); a number fixes it
    real_pass_share: float = 0.9
    min_recall: float | None = None  # fraction of the conditioned objects the detector must find
    min_precision: float | None = None  # fraction of detections that must match a conditioned object
    min_class_agreement: float | None = None  # fraction of objects the crop classifier must agree with
    max_saturated_fraction: float | None = None  # see quality.QualityThresholds
    min_std: float | None = None
    min_edge_energy: float | None = None
    max_edge_energy: float | None = None
    duplicate_similarity: float | None = None  # at and above: a near-duplicate


def score_images(images, layouts: list[Boxes], detector, classifier, config: FilterConfig) -> list[dict]:
    """Per image (B, 3, H, W) in [0, 1]: the quality scores, the layout match of the detections
    and the crop classifier's agreement ("objects" is the layout's size). Duplicates are scored
    by the caller, against its own index."""
    import torch

    with torch.no_grad():
        quality = image_quality(images)
        detections = detector.detect(images, score_threshold=config.detector_score)
        class_probs = classifier.classify(images, layouts)
    class_names = classifier.class_names_with_background
    scores = []
    for i, boxes in enumerate(layouts):
        found, found_scores = detections[i]
        match = match_layout(boxes, found, found_scores, iou_threshold=config.iou_threshold)
        if len(boxes):
            predicted = [class_names[k] for k in class_probs[i].argmax(1)]
            agreement = float(np.mean([p == label for p, label in zip(predicted, boxes.labels)]))
        else:
            agreement = 1.0  # nothing to disagree with
        scores.append({name: float(value) for name, value in quality[i].items()}
                      | {"recall": match["recall"], "precision": match["precision"],
                         "matched_iou": match["matched_iou_mean"], "detections": len(found), "objects": len(boxes),
                         "class_agreement": agreement})
    return scores


def layout_reasons(scores: dict, config: FilterConfig) -> list[str]:
    objects, detections = int(scores["objects"]), int(scores["detections"])
    if objects == 0:
        return [f"layout: {detections} detections on an empty layout"] if detections else []
    reasons = []
    if round(scores["recall"] * objects) == 0:
        reasons.append(f"layout: none of the {objects} conditioned objects found")
    elif scores["recall"] < config.min_recall:
        reasons.append(f"layout: recall {scores['recall']:.2f} < {config.min_recall:.2f}")
    if scores["precision"] < config.min_precision:
        reasons.append(f"layout: precision {scores['precision']:.2f} < {config.min_precision:.2f} ({detections} detections)")
    return reasons


def semantic_reasons(scores: dict, config: FilterConfig) -> list[str]:
    agreement = scores["class_agreement"]
    if agreement >= config.min_class_agreement:
        return []
    return [f"semantic: classifier agrees on {agreement:.2f} < {config.min_class_agreement:.2f} of objects"]


def quality_check(scores: dict, config: FilterConfig) -> list[str]:
    thresholds = QualityThresholds(**{name: getattr(config, name) for name in asdict(QualityThresholds())})
    quality = {name: scores[name] for name in ("finite", "saturated_fraction", "std", "edge_energy")}
    return [f"quality: {reason}" for reason in quality_reasons(quality, thresholds)]


def duplicate_reasons(scores: dict, config: FilterConfig) -> list[str]:
    if scores["duplicate_similarity"] < config.duplicate_similarity:
        return []
    return [f"duplicate of {scores['duplicate_of']} ({scores['duplicate_similarity']:.2f})"]


CHECK_REASONS = {"quality": quality_check, "layout": layout_reasons, "semantic": semantic_reasons,
                 "duplicate": duplicate_reasons}


def unset_thresholds(config: FilterConfig) -> list[str]:
    return [name for name in BOUNDS if getattr(config, name) is None]


class SampleFilter:
    """Scores and judges batches of generated images against their layouts; every threshold
    of `config` must be set (`calibrate` sets the empty ones)."""

    def __init__(self, config: FilterConfig, detector, classifier, duplicates: DuplicateIndex | None = None):
        unset = unset_thresholds(config)
        if unset:
            raise ValueError(f"filter thresholds not set: {', '.join(unset)} (calibrate them first)")
        self.config = config
        self.detector = detector
        self.classifier = classifier
        self.duplicates = duplicates or DuplicateIndex(config.duplicate_similarity)

    def add_reference(self, key: str, pixels: np.ndarray) -> None:
        """A real training image that generated images must not copy."""
        self.duplicates.add(key, pixels)

    def __call__(self, images, layouts: list[Boxes], keys: list[str], own: list[str] | None = None) -> list[dict]:
        """images (B, 3, H, W) in [0, 1] -> per image {"passed", "reasons", "checks", "scores"}.
        Images that pass join the duplicate index, so later ones may not copy them. own: per
        image, the reference it was made from and is no duplicate of (an inpainted real tile)."""
        results = []
        for i, (scores, key) in enumerate(zip(score_images(images, layouts, self.detector, self.classifier,
                                                          self.config), keys)):
            duplicate_of, similarity = self.duplicates.nearest(images[i], exclude=None if own is None else own[i])
            scores.update(duplicate_similarity=similarity, duplicate_of=duplicate_of)
            verdicts = {check: CHECK_REASONS[check](scores, self.config) for check in CHECKS}
            passed = not any(verdicts.values()) or not self.config.enabled
            if passed:
                self.duplicates.add(key, images[i])
            results.append({"passed": passed, "reasons": [r for check in CHECKS for r in verdicts[check]],
                            "checks": {check: not verdicts[check] for check in CHECKS}, "scores": scores})
        return results


# ----------------------------------------------------------------------------- calibration
def threshold_at(values, rest: float, side: str) -> float:
    """The threshold that `values` pass on `side` (see BOUNDS) but for at most a `rest` share,
    rounded outwards to 4 decimals (a rounded threshold never turns a passing value away)."""
    values = np.asarray(values, dtype=np.float64)
    if side == "min":
        return math.floor(float(np.quantile(values, rest, method="lower")) * 1e4) / 1e4
    value = float(np.quantile(values, 1 - rest, method="higher"))
    if side == "max":
        return math.ceil(value * 1e4) / 1e4
    return math.floor(value * 1e4) / 1e4 + 1e-4  # "below": strictly above the value


def calibrate(config: FilterConfig, model_scores: list[dict], image_scores: list[dict]) -> tuple[FilterConfig, list[str]]:
    """`config` with every empty threshold set so that `real_pass_share` of the real tiles pass
    its check, and the names of the thresholds set. The layout and semantic thresholds come from
    `model_scores` (real tiles the detector and classifier were not trained on), the quality
    and duplicate ones from `image_scores` (real tiles of the kind the generator imitates, each
    with "duplicate_similarity" to its nearest other real tile). A check with k thresholds
    leaves each a (1 - share) / k rest, so at least the share passes the whole check."""
    per_check = Counter(check for check, _, _ in BOUNDS.values())
    rest = {check: (1 - config.real_pass_share) / count for check, count in per_check.items()}
    values = {}
    for name in unset_thresholds(config):
        check, score, side = BOUNDS[name]
        rows = model_scores if check in MODEL_CHECKS else image_scores
        if not rows:
            raise ValueError(f"no real tiles to calibrate {name} on")
        values[name] = threshold_at([row[score] for row in rows], rest[check], side)
    return replace(config, **values), sorted(values)


def real_pass_rates(config: FilterConfig, model_scores: list[dict], image_scores: list[dict]) -> dict[str, list[int]]:
    """Per check: [real tiles passing it, real tiles judged], each check on its own tiles."""
    rates = {}
    for check in CHECKS:
        rows = model_scores if check in MODEL_CHECKS else image_scores
        rates[check] = [sum(not CHECK_REASONS[check](row, config) for row in rows), len(rows)]
    return rates


def real_tile_scores(config: FilterConfig, detector, classifier, model_tiles: list[tuple[np.ndarray, Boxes]],
                     image_tiles: list[tuple[str, np.ndarray]], duplicates: DuplicateIndex,
                     batch_size: int = 64) -> tuple[list[dict], list[dict]]:
    """The scores `calibrate` and `real_pass_rates` take: `model_tiles` ((H, W, 3) uint8 pixels
    and their boxes) scored by the detector and classifier; `image_tiles` ((key, pixels) under
    which each is stored in `duplicates`) scored for quality and against their nearest other
    stored image."""
    import torch

    from earthsynth.data.schema import image_to_tensor

    model_scores = []
    for start in range(0, len(model_tiles), batch_size):
        chunk = model_tiles[start:start + batch_size]
        images = torch.stack([image_to_tensor(pixels) for pixels, _ in chunk])
        model_scores += score_images(images, [boxes for _, boxes in chunk], detector, classifier, config)
    if not image_tiles:
        return model_scores, []
    qualities = image_quality(np.stack([pixels for _, pixels in image_tiles]))
    nearest = duplicates.nearest_others([key for key, _ in image_tiles])
    image_scores = [{**quality, "duplicate_similarity": similarity, "duplicate_of": other}
                    for quality, (other, similarity) in zip(qualities, nearest)]
    return model_scores, image_scores

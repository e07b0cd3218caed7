"""The filter: a generated image is kept only if it passes every check.

1. layout: the real-trained compact detector finds the objects the image was conditioned on
   (recall at IoU >= tau) without many extras (precision);
2. semantic: the real-trained crop classifier agrees with each object's class;
3. quality: finite, not saturated, not blank, and no near-duplicate of a real training tile
   or of an image already accepted.
Every score and every reason goes into the manifest, so thresholds can be audited and
re-tuned without generating again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from earthsynth.augment.metrics import match_layout
from earthsynth.augment.quality import (
    DuplicateIndex,
    QualityThresholds,
    image_quality,
    quality_reasons,
)
from earthsynth.boxes import Boxes


@dataclass
class FilterConfig:
    enabled: bool = True  # false: scores are still computed and written, every image is kept
    iou_threshold: float = 0.5  # tau: a conditioned object counts as found at this IoU
    min_recall: float = 0.5  # fraction of the conditioned objects the detector must find
    min_precision: float = 0.5  # fraction of detections that must match a conditioned object
    detector_score: float = 0.3  # detections below this score are ignored
    min_class_agreement: float = 0.5  # fraction of objects the crop classifier must agree with
    max_saturated_fraction: float = QualityThresholds.max_saturated_fraction
    min_std: float = QualityThresholds.min_std
    min_edge_energy: float = QualityThresholds.min_edge_energy
    max_edge_energy: float = QualityThresholds.max_edge_energy
    duplicate_similarity: float = QualityThresholds.duplicate_similarity


class SampleFilter:
    """Scores and judges batches of generated images against their layouts."""

    def __init__(self, config: FilterConfig, detector, classifier, duplicates: DuplicateIndex | None = None):
        self.config = config
        self.detector = detector
        self.classifier = classifier
        self.duplicates = duplicates or DuplicateIndex(config.duplicate_similarity)
        self.quality_thresholds = QualityThresholds(**{
            name: getattr(config, name) for name in asdict(QualityThresholds()) if hasattr(config, name)})

    def add_reference(self, key: str, pixels: np.ndarray) -> None:
        """A real training image that generated images must not copy."""
        self.duplicates.add(key, pixels)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, layouts: list[Boxes], keys: list[str]) -> list[dict]:
        """images (B, 3, H, W) in [0, 1] -> per image {"accepted", "reasons", "checks", "scores"}.
        Accepted images join the duplicate index, so later ones may not copy them."""
        cfg = self.config
        quality = image_quality(images)
        detections = self.detector.detect(images, score_threshold=cfg.detector_score)
        class_probs = self.classifier.classify(images, layouts)
        class_names = self.classifier.class_names_with_background
        results = []
        for i, (boxes, key) in enumerate(zip(layouts, keys)):
            reasons = []
            scores = {name: float(value) for name, value in quality[i].items()}
            quality_problems = quality_reasons(quality[i], self.quality_thresholds)
            reasons += [f"quality: {r}" for r in quality_problems]

            found, found_scores = detections[i]
            match = match_layout(boxes, found, found_scores, iou_threshold=cfg.iou_threshold)
            scores.update(recall=match["recall"], precision=match["precision"], matched_iou=match["matched_iou_mean"],
                          detections=len(found))
            layout_ok = match["recall"] >= cfg.min_recall and match["precision"] >= cfg.min_precision
            if match["recall"] < cfg.min_recall:
                reasons.append(f"layout: recall {match['recall']:.2f} < {cfg.min_recall:.2f}")
            if match["precision"] < cfg.min_precision:
                reasons.append(f"layout: precision {match['precision']:.2f} < {cfg.min_precision:.2f} "
                               f"({len(found)} detections)")

            if len(boxes):
                predicted = [class_names[k] for k in class_probs[i].argmax(1)]
                agreement = float(np.mean([p == label for p, label in zip(predicted, boxes.labels)]))
            else:
                agreement = 1.0  # nothing to disagree with
            scores["class_agreement"] = agreement
            semantic_ok = agreement >= cfg.min_class_agreement
            if not semantic_ok:
                reasons.append(f"semantic: classifier agrees on {agreement:.2f} < {cfg.min_class_agreement:.2f} of objects")

            pixels = images[i]
            duplicate, duplicate_of, similarity = self.duplicates.is_duplicate(pixels)
            scores.update(duplicate_similarity=float(similarity), duplicate_of=duplicate_of)
            if duplicate:
                reasons.append(f"duplicate of {duplicate_of} ({similarity:.2f})")

            checks = {"quality": not quality_problems, "layout": layout_ok, "semantic": semantic_ok,
                      "duplicate": not duplicate}
            accepted = all(checks.values()) or not cfg.enabled
            if accepted:
                self.duplicates.add(key, pixels)
            results.append({"accepted": accepted, "reasons": reasons, "checks": checks, "scores": scores})
        return results

"""Detection metrics: COCO mAP (pycocotools) and the layout match the filter uses.

- `detection_map`: COCO-style mAP@0.5 and mAP@[0.5:0.95] over a set of images, with
  horizontal box IoU (rotated boxes count as their enclosing horizontal boxes). Values are
  fractions in [0, 1], not percent.
- `match_layout`: how well one image's detections reproduce the layout it was conditioned
  on: greedy one-to-one matching by score, class-aware, with polygon IoU for rotated boxes.
- `box_iou`: the IoU matrix of two sets of boxes (horizontal or rotated).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from earthsynth.boxes import Boxes, polygon_area


# ----------------------------------------------------------------------------- IoU
def horizontal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = width.clip(min=0) * height.clip(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _cross(o: np.ndarray, a: np.ndarray, p: np.ndarray) -> float:
    """z of (a - o) x (p - o): which side of the line o -> a the point p lies on."""
    return float((a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0]))


def convex_intersection(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of polygon `subject` (K, 2) inside convex polygon `clip`."""
    # orientation of the clip polygon (shoelace sign), so "inside" works for either order
    x, y = clip[:, 0], clip[:, 1]
    orientation = 1.0 if np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)) >= 0 else -1.0
    polygon = [np.asarray(p, dtype=np.float64) for p in subject]
    for i in range(len(clip)):
        if not polygon:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        sides = [orientation * _cross(a, b, p) for p in polygon]
        clipped = []
        for j, p in enumerate(polygon):
            q, side_p, side_q = polygon[j - 1], sides[j], sides[j - 1]
            if (side_p >= 0) != (side_q >= 0):  # the edge q -> p crosses the clip line
                clipped.append(q + (side_q / (side_q - side_p)) * (p - q))
            if side_p >= 0:
                clipped.append(p)
        polygon = clipped
    return np.array(polygon, dtype=np.float64).reshape(-1, 2)


def is_rotated(boxes: Boxes) -> bool:
    """Whether orientation matters: the boxes say so or any angle is not 0."""
    return bool(boxes.rotated or np.any(boxes.rboxes[:, 4] != 0))


def box_iou(a: Boxes, b: Boxes) -> np.ndarray:
    """(len(a), len(b)) IoU; on the box polygons when either set is rotated, else horizontal."""
    xyxy_a, xyxy_b = a.xyxy(), b.xyxy()
    ious = horizontal_iou(xyxy_a, xyxy_b)
    if not (is_rotated(a) or is_rotated(b)):
        return ious
    corners_a, corners_b = a.corners(), b.corners()
    areas_a, areas_b = a.areas(), b.areas()
    rotated_ious = np.zeros_like(ious)
    # only pairs whose enclosing boxes overlap can overlap
    for i, j in zip(*np.nonzero(ious > 0)):
        inter = polygon_area(convex_intersection(corners_a[i], corners_b[j]))
        union = areas_a[i] + areas_b[j] - inter
        rotated_ious[i, j] = inter / union if union > 0 else 0.0
    return rotated_ious


# ----------------------------------------------------------------------------- layout match
def match_layout(target: Boxes, predicted: Boxes, scores=None, iou_threshold: float = 0.5) -> dict[str, float]:
    """Greedy one-to-one matching of `predicted` (best score first) to `target` boxes of the
    same class with IoU >= `iou_threshold` (polygon IoU when either set is rotated).

    Returns {"recall": matched / targets, "precision": matched / predictions,
    "matched_iou_mean": mean IoU of the matched pairs}. With no targets recall is 1, with no
    predictions precision is 1 (nothing was missed / nothing was wrong); with no match the
    mean IoU is 0.
    """
    scores = np.ones(len(predicted)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted boxes but {len(scores)} scores")
    ious = box_iou(target, predicted)
    same_class = np.array(target.labels, dtype=object)[:, None] == np.array(predicted.labels, dtype=object)[None, :]
    ious = np.where(same_class.reshape(ious.shape), ious, 0.0)
    taken = np.zeros(len(target), dtype=bool)
    matched = []
    for p in np.argsort(-scores, kind="stable"):
        if not len(target):
            break
        candidates = np.where(taken, -1.0, ious[:, p])
        t = int(np.argmax(candidates))
        if candidates[t] >= iou_threshold:
            taken[t] = True
            matched.append(candidates[t])
    return {
        "recall": len(matched) / len(target) if len(target) else 1.0,
        "precision": len(matched) / len(predicted) if len(predicted) else 1.0,
        "matched_iou_mean": float(np.mean(matched)) if matched else 0.0,
    }


# ----------------------------------------------------------------------------- COCO mAP
def detection_map(ground_truth: Sequence[tuple[str, Boxes, int, int]], predictions: Sequence[tuple[Boxes, np.ndarray]],
                  class_names: Sequence[str]) -> dict:
    """COCO mAP with pycocotools over a set of images.

    ground_truth: per image (image_id, boxes, width, height); predictions: per image, in the
    same order, (boxes, scores). IoU is horizontal (from Boxes.xyxy()). Boxes flagged
    difficult are "crowd" regions: detections on them are neither right nor wrong.
    Returns {"mAP50", "mAP50_95", "per_class_AP50": {class: AP}} as fractions in [0, 1],
    averaged over the classes that have ground truth (a class without any is NaN);
    all NaN when there is no ground truth at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(predictions)} predictions")
    category = {name: i + 1 for i, name in enumerate(class_names)}
    images, gt_annotations, detections = [], [], []
    for index, ((_image_id, boxes, width, height), (predicted, scores)) in enumerate(zip(ground_truth, predictions)):
        images.append({"id": index + 1, "width": int(width), "height": int(height)})
        for box, label, difficult in zip(boxes.xyxy(), boxes.labels, boxes.difficult):
            gt_annotations.append(_annotation(len(gt_annotations) + 1, index + 1, box, _category(category, label),
                                              iscrowd=int(difficult)))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(predicted):
            raise ValueError(f"image {index}: {len(predicted)} predicted boxes but {len(scores)} scores")
        for box, label, score in zip(predicted.xyxy(), predicted.labels, scores):
            detections.append(_annotation(len(detections) + 1, index + 1, box, _category(category, label),
                                          score=float(score)))

    nan = float("nan")
    per_class = {name: nan for name in class_names}
    classes_with_gt = {a["category_id"] for a in gt_annotations if not a["iscrowd"]}
    if not classes_with_gt:
        return {"mAP50": nan, "mAP50_95": nan, "per_class_AP50": per_class}
    if not detections:
        per_class.update({name: 0.0 for name, c in category.items() if c in classes_with_gt})
        return {"mAP50": 0.0, "mAP50_95": 0.0, "per_class_AP50": per_class}

    categories = [{"id": c, "name": name} for name, c in category.items()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_annotations, "categories": categories}
        coco_dt.dataset = {"images": images, "annotations": detections, "categories": categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        most_per_image = max(np.bincount([d["image_id"] for d in detections]))
        evaluator.params.maxDets = [1, 10, max(100, int(most_per_image))]
        evaluator.evaluate()
        evaluator.accumulate()
    # precision: (IoU thresholds, recall points, classes, area ranges, max dets); -1 = no ground truth
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[iou_50, :, k]
        if category_id in classes_with_gt and np.all(values > -1):
            per_class[class_names[category_id - 1]] = float(values.mean())
    valid = precision > -1
    return {
        "mAP50": float(precision[iou_50][valid[iou_50]].mean()),
        "mAP50_95": float(precision[valid].mean()),
        "per_class_AP50": per_class,
    }


def _category(category: dict[str, int], label: str) -> int:
    if label not in category:
        raise ValueError(f"class {label!r} is not among {list(category)}")
    return category[label]


def _annotation(annotation_id: int, image_id: int, xyxy, category_id: int, iscrowd: int = 0,
                score: float | None = None) -> dict:
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    annotation = {"id": annotation_id, "image_id": image_id, "category_id": category_id,
                  "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": iscrowd}
    if score is not None:
        annotation["score"] = score
    return annotation

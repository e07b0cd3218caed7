"""Horizontal and rotated boxes, their conversions, clipping to tiles and rasterising.

Conventions, used everywhere in earthsynth:
- pixel coordinates, x to the right, y down, origin at the top-left corner of the image;
- a rotated box is (cx, cy, w, h, angle): the width axis points along (cos a, sin a), so a
  positive angle (degrees) turns the box clockwise on screen. This is OpenCV's
  `minAreaRect` / `boxPoints` convention, so both round-trip without sign flips;
- corners are ordered top-left, top-right, bottom-right, bottom-left of the unrotated box
  (clockwise on screen), as DOTA writes them;
- an HBox is a rotated box with angle 0; `Boxes.rotated` records whether the source
  carried orientation, so writers know whether to emit polygons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from earthsynth.errors import InputError


class HBox(NamedTuple):
    """One horizontal box in pixels (corner coordinates)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = "object"


class RBox(NamedTuple):
    """One rotated box in pixels: centre, size, angle in degrees (clockwise on screen)."""

    cx: float
    cy: float
    w: float
    h: float
    angle: float
    label: str = "object"


# ----------------------------------------------------------------------------- conversions
def xyxy_to_rbox(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) x0 y0 x1 y1 -> (N, 5) cx cy w h angle(=0)."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2
    cy = (xyxy[:, 1] + xyxy[:, 3]) / 2
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    return np.stack([cx, cy, w, h, np.zeros_like(cx)], axis=1)


def rbox_to_corners(rboxes: np.ndarray) -> np.ndarray:
    """(N, 5) cx cy w h angle -> (N, 4, 2) corners tl, tr, br, bl."""
    rboxes = np.asarray(rboxes, dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h, angle = rboxes.T
    a = np.deg2rad(angle)
    cos, sin = np.cos(a), np.sin(a)
    local = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])  # (4, 2)
    dx = local[None, :, 0] * w[:, None]
    dy = local[None, :, 1] * h[:, None]
    x = cx[:, None] + dx * cos[:, None] - dy * sin[:, None]
    y = cy[:, None] + dx * sin[:, None] + dy * cos[:, None]
    return np.stack([x, y], axis=2)


def corners_to_rbox(corners: np.ndarray) -> np.ndarray:
    """(N, 4, 2) quadrilaterals -> (N, 5) minimum-area rotated boxes.

    DOTA quads are not always exact rectangles; the minimum-area rectangle is the usual
    reduction. Of its two equivalent forms (w, h, a) and (h, w, a + 90) the one whose width
    axis follows the first edge (corner 0 -> corner 1) is returned, so that
    `corners_to_rbox(rbox_to_corners(b))` gives `b` back. Angles are in [-90, 90).
    """
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    out = np.zeros((len(corners), 5))
    for i, quad in enumerate(corners):
        (cx, cy), (w, h), angle = cv2.minAreaRect(quad.astype(np.float32))
        first_edge = quad[1] - quad[0]
        a = np.deg2rad(angle)
        along_width = abs(first_edge @ np.array([np.cos(a), np.sin(a)]))
        along_height = abs(first_edge @ np.array([-np.sin(a), np.cos(a)]))
        if along_height > along_width:
            w, h, angle = h, w, angle + 90.0
        out[i] = cx, cy, w, h, angle
    out[:, 4] = normalize_angle(out[:, 4])
    return out


def corners_to_xyxy(corners: np.ndarray) -> np.ndarray:
    """(N, 4, 2) -> (N, 4) enclosing horizontal boxes."""
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def rbox_to_xyxy(rboxes: np.ndarray) -> np.ndarray:
    """(N, 5) -> (N, 4) enclosing horizontal boxes (exact for angle 0)."""
    return corners_to_xyxy(rbox_to_corners(rboxes))


def normalize_angle(angle: np.ndarray) -> np.ndarray:
    """Angles in degrees to [-90, 90): a rectangle turned by 180 degrees is the same one."""
    return (np.asarray(angle, dtype=np.float64) + 90.0) % 180.0 - 90.0


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a simple polygon (K, 2)."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def clip_polygon_to_window(points: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon (K, 2) to the rectangle [x0, x1] x [y0, y1]."""
    poly = [tuple(p) for p in np.asarray(points, dtype=np.float64)]
    # each edge: (coordinate index, limit, keep if value >= limit when sign = 1 else <=)
    for axis, limit, sign in ((0, x0, 1), (0, x1, -1), (1, y0, 1), (1, y1, -1)):
        if not poly:
            break
        inside = [sign * (p[axis] - limit) >= 0 for p in poly]
        clipped = []
        for i, p in enumerate(poly):
            q = poly[i - 1]
            if inside[i] != inside[i - 1]:  # the edge q -> p crosses the limit
                t = (limit - q[axis]) / (p[axis] - q[axis])
                clipped.append((q[0] + t * (p[0] - q[0]), q[1] + t * (p[1] - q[1])))
            if inside[i]:
                clipped.append(p)
        poly = clipped
    return np.array(poly, dtype=np.float64).reshape(-1, 2)


# ----------------------------------------------------------------------------- container
@dataclass
class Boxes:
    """The boxes of one image: (N, 5) rotated boxes in pixels plus a class label each.

    `rotated` says whether the orientation is meaningful (DOTA, YOLO-OBB) or all angles are
    0 by construction (VOC, COCO bbox, YOLO). `difficult` is DOTA's / VOC's flag.
    """

    rboxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    labels: list[str] = field(default_factory=list)
    rotated: bool = False
    difficult: np.ndarray | None = None

    def __post_init__(self):
        self.rboxes = np.asarray(self.rboxes, dtype=np.float64).reshape(-1, 5)
        self.labels = [str(label) for label in self.labels]
        if len(self.labels) != len(self.rboxes):
            raise ValueError(f"{len(self.rboxes)} boxes but {len(self.labels)} labels")
        if self.difficult is None:
            self.difficult = np.zeros(len(self.rboxes), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)

    # constructors
    @classmethod
    def from_xyxy(cls, xyxy, labels: Sequence[str], difficult=None) -> Boxes:
        return cls(xyxy_to_rbox(xyxy), list(labels), rotated=False, difficult=difficult)

    @classmethod
    def from_corners(cls, corners, labels: Sequence[str], difficult=None) -> Boxes:
        return cls(corners_to_rbox(corners), list(labels), rotated=True, difficult=difficult)

    @classmethod
    def from_list(cls, items: Sequence[HBox | RBox]) -> Boxes:
        """From a list of HBox / RBox (mixed lists are rotated boxes)."""
        rows, labels, rotated = [], [], False
        for item in items:
            if isinstance(item, RBox):
                rows.append(list(item[:5]))
                rotated = True
            elif isinstance(item, HBox):
                rows.append(xyxy_to_rbox(np.array(item[:4]))[0].tolist())
            else:
                raise TypeError(f"expected HBox or RBox, got {type(item).__name__}")
            labels.append(item.label)
        return cls(np.array(rows).reshape(-1, 5), labels, rotated=rotated)

    # views
    def __len__(self) -> int:
        return len(self.rboxes)

    def xyxy(self) -> np.ndarray:
        return rbox_to_xyxy(self.rboxes)

    def corners(self) -> np.ndarray:
        return rbox_to_corners(self.rboxes)

    def areas(self) -> np.ndarray:
        return self.rboxes[:, 2] * self.rboxes[:, 3]

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def to_list(self) -> list[HBox | RBox]:
        if self.rotated:
            return [RBox(*map(float, row), label) for row, label in zip(self.rboxes, self.labels)]
        return [HBox(*map(float, row), label) for row, label in zip(self.xyxy(), self.labels)]

    def select(self, keep) -> Boxes:
        keep = np.asarray(keep)
        return Boxes(self.rboxes[keep], [self.labels[i] for i in np.arange(len(self))[keep]],
                     self.rotated, self.difficult[keep])

    def concat(self, other: Boxes) -> Boxes:
        return Boxes(np.concatenate([self.rboxes, other.rboxes]), self.labels + other.labels,
                     self.rotated or other.rotated,
                     np.concatenate([self.difficult, other.difficult]))

    # geometry
    def translate(self, dx: float, dy: float) -> Boxes:
        rboxes = self.rboxes.copy()
        rboxes[:, 0] += dx
        rboxes[:, 1] += dy
        return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy())

    def scale(self, sx: float, sy: float | None = None) -> Boxes:
        """Resize with the image. Anisotropic scaling of a rotated box is done on its corners."""
        sy = sx if sy is None else sy
        if sx == sy or not self.rotated:
            rboxes = self.rboxes.copy()
            rboxes[:, [0, 2]] *= sx
            rboxes[:, [1, 3]] *= sy
            return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy())
        corners = self.corners() * np.array([sx, sy])
        return Boxes(corners_to_rbox(corners), list(self.labels), True, self.difficult.copy())

    def hflip(self, width: float) -> Boxes:
        rboxes = self.rboxes.copy()
        rboxes[:, 0] = width - rboxes[:, 0]
        rboxes[:, 4] = normalize_angle(-rboxes[:, 4])
        return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy())

    def vflip(self, height: float) -> Boxes:
        rboxes = self.rboxes.copy()
        rboxes[:, 1] = height - rboxes[:, 1]
        rboxes[:, 4] = normalize_angle(-rboxes[:, 4])
        return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy())

    def transpose(self) -> Boxes:
        """The boxes of the image mirrored on its main diagonal (x <-> y)."""
        rboxes = self.rboxes[:, [1, 0, 3, 2, 4]].copy()
        rboxes[:, 4] = normalize_angle(-rboxes[:, 4])
        return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy())

    def clip(self, x0: float, y0: float, x1: float, y1: float, min_visible: float = 0.5) -> tuple[Boxes, np.ndarray]:
        """Cut the boxes to the window [x0, x1] x [y0, y1] and move them into its coordinates.

        A box cut by the window edge is clipped; it is kept only if at least `min_visible`
        of its area stays inside. Horizontal boxes are clipped exactly; a rotated box keeps
        its angle and becomes the tightest box of that angle around its visible part.
        Returns the kept boxes and the indices they came from.
        """
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        kept_rows, kept_index = [], []
        corners = self.corners()
        # only boxes whose corners reach into the window need the (slow) polygon clip
        reaches = ((corners[..., 0].max(1) > x0) & (corners[..., 0].min(1) < x1)
                   & (corners[..., 1].max(1) > y0) & (corners[..., 1].min(1) < y1))
        for i in np.flatnonzero(reaches):
            box, quad = self.rboxes[i], corners[i]
            area = box[2] * box[3]
            visible = clip_polygon_to_window(quad, x0, y0, x1, y1)
            visible_area = polygon_area(visible)
            if area <= 0 or visible_area <= 0 or visible_area / area < min_visible - 1e-9:
                continue
            if box[4] == 0 and not self.rotated:
                lo, hi = visible.min(axis=0), visible.max(axis=0)
                kept_rows.append([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, hi[0] - lo[0], hi[1] - lo[1], 0.0])
            else:
                # project the visible polygon on the box's own axes
                a = np.deg2rad(box[4])
                u = np.array([np.cos(a), np.sin(a)])
                v = np.array([-np.sin(a), np.cos(a)])
                pu, pv = visible @ u, visible @ v
                cu, cv_ = (pu.min() + pu.max()) / 2, (pv.min() + pv.max()) / 2
                centre = cu * u + cv_ * v
                kept_rows.append([centre[0], centre[1], pu.max() - pu.min(), pv.max() - pv.min(), box[4]])
            kept_index.append(i)
        index = np.array(kept_index, dtype=np.int64)
        clipped = Boxes(np.array(kept_rows).reshape(-1, 5), [self.labels[i] for i in index],
                        self.rotated, self.difficult[index])
        return clipped.translate(-x0, -y0), index

    def masks(self, height: int, width: int) -> np.ndarray:
        """(N, H, W) uint8 masks: 1 where the pixel centre lies inside the rotated box."""
        out = np.zeros((len(self), height, width), dtype=np.uint8)
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        for mask, (cx, cy, w, h, angle) in zip(out, self.rboxes):
            a = np.deg2rad(angle)
            du, dv = xs - cx, ys - cy
            # coordinates of each pixel centre along the box's width and height axes
            u = du * np.cos(a) + dv * np.sin(a)
            v = -du * np.sin(a) + dv * np.cos(a)
            mask[(np.abs(u) <= w / 2) & (np.abs(v) <= h / 2)] = 1
        return out

    def validate(self, width: float | None = None, height: float | None = None, source=None,
                 where: Sequence[str] | None = None, tolerance: float = 1.0) -> tuple[Boxes, int]:
        """Check every box; raise an InputError naming `source` (the file) and `where[i]` (the
        place in it, e.g. "line 7" or "object 3") for a degenerate box or one outside the image.

        Without an image size only size and finiteness are checked. A horizontal box that
        overruns the image by at most `tolerance` pixels is clipped to it (annotators often
        put the far edge on pixel W instead of W - 1); a rotated box keeps its shape.
        Returns the (possibly clipped) boxes and how many were clipped.
        """
        where = where if where is not None else [f"box {i}" for i in range(len(self))]
        rboxes = self.rboxes.copy()
        clipped = 0
        for i, (box, (x0, y0, x1, y1)) in enumerate(zip(rboxes, self.xyxy())):
            place = f"{where[i]} ({self.labels[i]})"
            if not np.all(np.isfinite(box)):
                raise InputError(source, f"{place}: box has a non-finite coordinate")
            if box[2] <= 0 or box[3] <= 0:
                raise InputError(source, f"{place}: box has zero or negative size")
            if width is None or height is None:
                continue
            at = f"[{x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}]"
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise InputError(source, f"{place}: box at {at} lies outside the {width}x{height} image")
            if x0 < -tolerance or y0 < -tolerance or x1 > width + tolerance or y1 > height + tolerance:
                raise InputError(source, f"{place}: box at {at} extends outside the {width}x{height} image")
            overruns = x0 < 0 or y0 < 0 or x1 > width or y1 > height
            if overruns and box[4] == 0 and not self.rotated:
                cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
                rboxes[i] = [(cx0 + cx1) / 2, (cy0 + cy1) / 2, cx1 - cx0, cy1 - cy0, 0.0]
                clipped += 1
        return Boxes(rboxes, list(self.labels), self.rotated, self.difficult.copy()), clipped

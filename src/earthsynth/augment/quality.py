"""Image-quality checks for generated images: broken, blank, blown-out or duplicated ones.

`image_quality` scores a batch; `quality_reasons` turns scores into human-readable
rejection reasons against `QualityThresholds`; `DuplicateIndex` finds near-duplicates of
earlier generated images or of the real training tiles.

Images are (B, 3, H, W) float in [0, 1] (tensor or array) or (B, H, W, 3) uint8 arrays;
the dtype tells which (float = channels first, uint8 = channels last, as in the rest of
earthsynth: tensors are CHW floats, pixels are HWC uint8).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

# a channel value within half a uint8 step of 0 or 1 counts as clipped
CLIP_TOLERANCE = 0.5 / 255


def to_float_chw(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float or (B, H, W, 3) uint8 -> (B, 3, H, W) float64 array (values kept,
    NaN included, so the checks can see them)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = (images if images.dtype == torch.uint8 else images.double()).numpy()
    images = np.asarray(images)
    if images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3), got {images.shape}")
        return images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [0, 1], got {images.shape}")
    return images.astype(np.float64)


def edge_energy(gray: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of an (H, W) [0, 1] image, in intensity per pixel
    (the Sobel kernels are divided by 8, so a ramp rising by g per pixel gives g)."""
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
    return float(np.sqrt(gx ** 2 + gy ** 2).mean())


def image_quality(images: np.ndarray | torch.Tensor) -> list[dict]:
    """Per image: {"finite", "saturated_fraction", "std", "edge_energy"}.

    finite: no NaN or inf anywhere (the other scores are computed with them set to 0).
    saturated_fraction: the fraction of pixels whose every channel is clipped, i.e. at 0 or
        at 1 (within half a uint8 step): pure black, pure white and fully clipped colours
        such as (1, 0, 0), the usual signs of a diverged or over-guided sample.
    std: the standard deviation over all pixels and channels (a flat image has ~0).
    edge_energy: the mean Sobel gradient magnitude of each channel, averaged over the
        channels, in intensity per pixel: ~0 for blank or smooth images, high for pure noise.
        (Per channel, not on the grey image: averaging independent colour noise into grey
        would hide most of it.)
    """
    array = to_float_chw(images)
    scores = []
    for image in array:
        finite = bool(np.isfinite(image).all())
        image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
        clipped = (image <= CLIP_TOLERANCE) | (image >= 1 - CLIP_TOLERANCE)
        scores.append({
            "finite": finite,
            "saturated_fraction": float(clipped.all(axis=0).mean()),
            "std": float(image.std()),
            "edge_energy": float(np.mean([edge_energy(channel) for channel in np.clip(image, 0, 1)])),
        })
    return scores


@dataclass
class QualityThresholds:
    """Limits of `quality_reasons`, chosen by hand on the real deepforest tiles (64 px, 0.2 m/px);
    `earthsynth augment` calibrates its own on real tiles each run (filter.calibrate).

    max_saturated_fraction: reject above this fraction of fully clipped pixels (real tiles:
        at most ~0.001; a few dark shadows or bright snags are fine, a blown-out image is not).
    min_std: reject flatter images (real tiles: std >= ~0.05, a blank image ~0).
    min_edge_energy: reject images with less texture (real tiles: >= ~0.03, smooth or blank
        images ~0).
    max_edge_energy: reject images busier than this (real tiles: <= ~0.09; uniform noise,
        grey or colour, ~0.16; clipped Gaussian noise of std 0.5 ~0.2): a sample that stayed
        noise. Faint noise over a real-looking image is not caught by this.
    duplicate_similarity: cosine similarity of DuplicateIndex signatures at and above which
        two images are near-duplicates (distinct real tiles: at most ~0.8; a copy with noise,
        a 1-2 px shift or JPEG: at least ~0.95).
    """

    max_saturated_fraction: float = 0.2
    min_std: float = 0.02
    min_edge_energy: float = 0.008
    max_edge_energy: float = 0.12
    duplicate_similarity: float = 0.95


def quality_reasons(scores: dict, thresholds: QualityThresholds | None = None) -> list[str]:
    """Why an image fails, in words ([] = it passes). `scores` is one dict of
    `image_quality`, optionally with "duplicate_of" and "duplicate_similarity" (from
    DuplicateIndex.is_duplicate) added."""
    t = thresholds or QualityThresholds()
    reasons = []
    if not scores["finite"]:
        reasons.append("contains NaN or infinite values")
    if scores["saturated_fraction"] > t.max_saturated_fraction:
        # two decimals: a calibrated limit may be 0, which a few clipped pixels pass over
        reasons.append(f"{scores['saturated_fraction']:.2%} of pixels clipped to black, white or a pure colour "
                       f"(limit {t.max_saturated_fraction:.2%})")
    if scores["std"] < t.min_std:
        reasons.append(f"flat image: pixel standard deviation {scores['std']:.4f} < {t.min_std}")
    if scores["edge_energy"] < t.min_edge_energy:
        reasons.append(f"no detail: edge energy {scores['edge_energy']:.4f} < {t.min_edge_energy}")
    if scores["edge_energy"] > t.max_edge_energy:
        reasons.append(f"noise-like: edge energy {scores['edge_energy']:.3f} > {t.max_edge_energy}")
    similarity = scores.get("duplicate_similarity")
    if similarity is not None and similarity >= t.duplicate_similarity:
        reasons.append(f"near-duplicate of {scores.get('duplicate_of')} (similarity {similarity:.3f} "
                       f">= {t.duplicate_similarity})")
    return reasons


# ----------------------------------------------------------------------------- duplicates
SIGNATURE_SIZE = 16


def signature(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A small robust fingerprint of one image ((3, H, W) float or (H, W, 3) uint8): the
    image area-averaged to 16 x 16 in colour, mean-centred (over all values, so the colour
    balance stays) and L2-normalised. Cosine similarity of two signatures = their dot
    product. Averaging to 16 x 16 (4 x 4 pixel cells at 64 px) makes it insensitive to
    noise, JPEG and shifts of a pixel or two, yet distinct windows of the same forest differ."""
    array = to_float_chw(image[None])[0]
    array = np.nan_to_num(np.clip(array, 0, 1)).transpose(1, 2, 0).astype(np.float32)
    small = cv2.resize(array, (SIGNATURE_SIZE, SIGNATURE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
    vector = (small - small.mean()).ravel()
    norm = np.linalg.norm(vector)
    # a flat image has no pattern to compare: a zero signature, similar to nothing
    return vector / norm if norm > 1e-6 else np.zeros_like(vector)


class DuplicateIndex:
    """Near-duplicate lookup over stored images (by `signature`, cosine similarity).

    Flips and rotations are not matched: a flipped copy is a different training image.
    """

    def __init__(self, threshold: float = QualityThresholds.duplicate_similarity):
        self.threshold = threshold
        self.keys: list[str] = []
        self._rows: list[np.ndarray] = []
        self._matrix = np.zeros((0, 3 * SIGNATURE_SIZE ** 2))  # the rows stacked, rebuilt when rows were added

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, image) -> None:
        """Store one image ((3, H, W) float or (H, W, 3) uint8) under `key`."""
        self.keys.append(str(key))
        self._rows.append(signature(image))

    def _stacked(self) -> np.ndarray:
        if len(self._matrix) != len(self._rows):
            self._matrix = np.stack(self._rows)
        return self._matrix

    def nearest(self, image, exclude: str | None = None) -> tuple[str | None, float]:
        """The most similar stored key (other than `exclude`) and its cosine similarity in
        [-1, 1]; (None, -1.0) when there is none."""
        if not self.keys:
            return None, -1.0
        similarities = self._stacked() @ signature(image)
        if exclude is not None:
            similarities[[k for k, key in enumerate(self.keys) if key == exclude]] = -np.inf
        best = int(np.argmax(similarities))
        if similarities[best] == -np.inf:
            return None, -1.0
        return self.keys[best], float(similarities[best])

    def nearest_others(self, keys: list[str]) -> list[tuple[str | None, float]]:
        """For stored images (by key): the most similar other stored image, as `nearest` gives
        it ((None, -1.0) when there is none): how close real tiles come to one another."""
        matrix = self._stacked()
        rows = {key: k for k, key in enumerate(self.keys)}
        picked = [rows[key] for key in keys]
        similarities = matrix[picked] @ matrix.T
        similarities[np.arange(len(picked)), picked] = -np.inf
        if not similarities.size:
            return [(None, -1.0)] * len(picked)
        best = similarities.argmax(axis=1)
        return [(self.keys[b], float(s[b])) if s[b] > -np.inf else (None, -1.0) for b, s in zip(best, similarities)]

    def is_duplicate(self, image) -> tuple[bool, str | None, float]:
        """(similarity >= threshold, nearest key, similarity)."""
        key, similarity = self.nearest(image)
        return similarity >= self.threshold, key, similarity

"""Full-reference image quality metrics for restored images (super-resolution, denoising).

Images are (C, H, W) or (B, C, H, W) float tensors in [0, 1]; every metric averages over the
batch. SSIM is the usual one (Wang et al. 2004): an 11-tap Gaussian window of sigma 1.5,
K1 = 0.01, K2 = 0.03, computed per band and averaged.

The hyperspectral metrics (band_psnr, band_ssim, sam_degrees, ergas) take one cube
(bands, H, W), a numpy array or a tensor, and compute in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _batch(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    return x[None] if x.ndim == 3 else x


def psnr(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images), per image then averaged."""
    estimate, truth = _batch(estimate), _batch(truth)
    mse = ((estimate - truth) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


def ssim_index(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (11x11 Gaussian window, sigma 1.5) of each image in a (B, C, H, W) batch, as a
    differentiable tensor in the inputs' dtype: the autoencoder's loss uses it, `ssim` reports it."""
    channels = truth.shape[1]
    x = torch.arange(11, dtype=truth.dtype, device=truth.device) - 5
    gauss = torch.exp(-(x**2) / (2 * 1.5**2))
    gauss = gauss / gauss.sum()
    window = (gauss[:, None] * gauss[None, :]).expand(channels, 1, 11, 11)

    def blur(image):
        return F.conv2d(image, window, groups=channels)  # "valid": no padding artefacts

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(estimate), blur(truth)
    var_x = blur(estimate * estimate) - mu_x**2
    var_y = blur(truth * truth) - mu_y**2
    cov = blur(estimate * truth) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> float:
    return float(ssim_index(_batch(estimate), _batch(truth), data_range).mean())


def high_frequency_energy(image: torch.Tensor) -> float:
    """Mean squared Laplacian response: how much fine detail an image holds."""
    image = _batch(image)
    channels = image.shape[1]
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float64).expand(channels, 1, 3, 3)
    return float(F.conv2d(image, kernel, groups=channels).pow(2).mean())


def sharpness_ratio(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """High-frequency energy of the estimate over that of the truth: 1 is as sharp as the
    truth, below 1 blurrier (bicubic), above 1 noisier or over-sharpened."""
    return high_frequency_energy(estimate) / high_frequency_energy(truth)


# ----------------------------------------------------------------------------- hyperspectral cubes
PSNR_CAP = 100.0  # dB for a band restored without error, so that means over bands stay finite


def _cubes(estimate, truth) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (bands, H, W) arrays or tensors of one shape -> float64 CPU tensors."""
    estimate = torch.as_tensor(estimate).detach().cpu().double()
    truth = torch.as_tensor(truth).detach().cpu().double()
    if truth.ndim != 3 or estimate.shape != truth.shape:
        raise ValueError(f"expected two (bands, H, W) cubes of one shape, got {tuple(estimate.shape)} and {tuple(truth.shape)}")
    return estimate, truth


def _cube_range(truth: torch.Tensor, data_range: float | None) -> float:
    data_range = float(truth.max()) if data_range is None else float(data_range)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range} (the truth cube's maximum when not given)")
    return data_range


def band_psnr(estimate, truth, data_range: float | None = None) -> float:
    """Mean over bands of each band's PSNR in dB.

    data_range defaults to the truth cube's maximum (reflectance cubes are non-negative, so this
    is the span from 0 to the brightest value). Each band's PSNR is capped at PSNR_CAP (100 dB),
    which is what a band with no error gets instead of inf.
    """
    estimate, truth = _cubes(estimate, truth)
    data_range = _cube_range(truth, data_range)
    mse = ((estimate - truth) ** 2).flatten(1).mean(1)
    cap = torch.full_like(mse, PSNR_CAP)
    per_band = torch.where(mse > 0, 10 * torch.log10(data_range**2 / mse.clamp_min(1e-300)), cap)
    return float(per_band.clamp(max=PSNR_CAP).mean())


def band_ssim(estimate, truth, data_range: float | None = None) -> float:
    """Mean over bands of the SSIM (`ssim` with the bands as channels; H and W at least 11).

    data_range defaults to the truth cube's maximum, as in band_psnr.
    """
    estimate, truth = _cubes(estimate, truth)
    return ssim(estimate, truth, data_range=_cube_range(truth, data_range))


def sam_degrees(estimate, truth) -> float:
    """Mean spectral angle in degrees between the estimated and true spectrum of each pixel.

    Pixels where either spectrum is (near) zero have no angle and are skipped; nan when no
    pixel is left. The angle ignores the spectra's scale: 2 * truth is at 0 degrees.
    """
    estimate, truth = _cubes(estimate, truth)
    estimate, truth = estimate.flatten(1), truth.flatten(1)  # (bands, pixels)
    dot = (estimate * truth).sum(0)
    norms = estimate.norm(dim=0) * truth.norm(dim=0)
    valid = (estimate.norm(dim=0) > 1e-12) & (truth.norm(dim=0) > 1e-12)
    if not valid.any():
        return math.nan
    cosine = (dot[valid] / norms[valid]).clamp(-1.0, 1.0)
    return float(torch.rad2deg(torch.arccos(cosine)).mean())


def ergas(estimate, truth, ratio: float = 1.0) -> float:
    """ERGAS, the relative global error: 100 * ratio * sqrt(mean over bands of RMSE_b^2 / mean_b^2).

    mean_b is the truth band's mean; ratio is the high / low resolution pixel size ratio (1 for
    denoising). Bands whose truth mean is (near) zero have no relative error and are skipped;
    nan when no band is left.
    """
    estimate, truth = _cubes(estimate, truth)
    mse = ((estimate - truth) ** 2).flatten(1).mean(1)
    mean = truth.flatten(1).mean(1)
    valid = mean.abs() > 1e-12
    if not valid.any():
        return math.nan
    return float(100.0 * ratio * torch.sqrt((mse[valid] / mean[valid] ** 2).mean()))


def edge_f1(predicted: np.ndarray, reference: np.ndarray, tolerance: float = 2.0) -> float:
    """F1 of two binary edge maps (H, W), an edge pixel counting as matched when the other
    map has an edge within `tolerance` pixels (precision over the predicted edges, recall
    over the reference edges). Two empty maps agree perfectly (1.0)."""
    import cv2

    predicted, reference = np.asarray(predicted) > 0, np.asarray(reference) > 0
    if not predicted.any() and not reference.any():
        return 1.0
    if not predicted.any() or not reference.any():
        return 0.0

    def distance_to(edges):  # distance of every pixel to the nearest edge pixel
        return cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)

    precision = float((distance_to(reference)[predicted] <= tolerance).mean())
    recall = float((distance_to(predicted)[reference] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def seam_score(image: np.ndarray, seam_columns, seam_rows) -> float:
    """Mean absolute step across the given tile borders over the mean step everywhere else,
    for an (H, W, C) or (H, W) image. A border at column x is the step between columns x - 1
    and x. Near 1: the borders cannot be told from the rest; well above 1: visible seams."""
    image = np.asarray(image, dtype=np.float64)
    image = image[..., None] if image.ndim == 2 else image
    across_columns = np.abs(np.diff(image, axis=1)).mean(axis=(0, 2))  # step between x - 1 and x, at index x - 1
    across_rows = np.abs(np.diff(image, axis=0)).mean(axis=(1, 2))
    columns = np.zeros(across_columns.shape, bool)
    rows = np.zeros(across_rows.shape, bool)
    columns[[x - 1 for x in seam_columns if 0 < x < image.shape[1]]] = True
    rows[[y - 1 for y in seam_rows if 0 < y < image.shape[0]]] = True
    seams = np.concatenate([across_columns[columns], across_rows[rows]])
    rest = np.concatenate([across_columns[~columns], across_rows[~rows]])
    if not len(seams) or not len(rest):
        raise ValueError("need at least one seam and one non-seam position")
    return float(seams.mean() / max(rest.mean(), 1e-12))

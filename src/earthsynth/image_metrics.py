"""Full-reference image quality metrics for restored images (super-resolution, denoising).

Images are (C, H, W) or (B, C, H, W) float tensors in [0, 1]; every metric averages over the
batch. SSIM is the usual one (Wang et al. 2004): an 11-tap Gaussian window of sigma 1.5,
K1 = 0.01, K2 = 0.03, computed per band and averaged.
"""

from __future__ import annotations

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


def ssim(estimate: torch.Tensor, truth: torch.Tensor, data_range: float = 1.0) -> float:
    estimate, truth = _batch(estimate), _batch(truth)
    channels = truth.shape[1]
    x = torch.arange(11, dtype=torch.float64) - 5
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
    return float(index.mean())


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

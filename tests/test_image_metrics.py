"""PSNR, SSIM and the sharpness ratio against values that can be worked out by hand."""

import math

import torch
import torch.nn.functional as F

from earthsynth.image_metrics import psnr, sharpness_ratio, ssim


def test_psnr_of_a_known_error():
    truth = torch.zeros(3, 8, 8)
    assert math.isinf(psnr(truth, truth))
    assert abs(psnr(truth + 0.1, truth) - 20.0) < 1e-5  # mse 0.01 -> 20 dB


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    torch.manual_seed(0)
    truth = torch.rand(2, 3, 32, 32)
    assert abs(ssim(truth, truth) - 1.0) < 1e-12
    slight = ssim((truth + 0.02 * torch.randn_like(truth)).clamp(0, 1), truth)
    heavy = ssim((truth + 0.2 * torch.randn_like(truth)).clamp(0, 1), truth)
    assert 1.0 > slight > heavy > 0.0


def test_blur_lowers_the_sharpness_ratio():
    torch.manual_seed(0)
    truth = torch.rand(1, 3, 32, 32)
    blurred = F.avg_pool2d(F.pad(truth, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert abs(sharpness_ratio(truth, truth) - 1.0) < 1e-12
    assert sharpness_ratio(blurred, truth) < 0.5

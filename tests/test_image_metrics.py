"""PSNR, SSIM and the sharpness ratio against values that can be worked out by hand."""

import math

import numpy as np
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


def test_edge_f1_with_tolerance():
    from earthsynth.image_metrics import edge_f1

    reference = np.zeros((32, 32), bool)
    reference[:, 10] = True
    shifted = np.zeros_like(reference)
    shifted[:, 12] = True
    far = np.zeros_like(reference)
    far[:, 25] = True
    assert edge_f1(reference, reference) == 1.0
    assert edge_f1(shifted, reference, tolerance=2) == 1.0
    assert edge_f1(shifted, reference, tolerance=1) == 0.0
    assert edge_f1(far, reference, tolerance=2) == 0.0
    half = reference.copy()
    half[16:] = False  # precision 1, recall 0.5
    assert abs(edge_f1(half, reference, tolerance=0.5) - 2 * 0.5 / 1.5) < 1e-6
    assert edge_f1(np.zeros_like(reference), np.zeros_like(reference)) == 1.0


def test_seam_score_sees_a_step_at_a_tile_border():
    from earthsynth.image_metrics import seam_score

    rng = np.random.default_rng(0)
    smooth = rng.normal(0, 0.01, (64, 64, 3)).cumsum(axis=1)
    assert 0.7 < seam_score(smooth, [32], [32]) < 1.3
    stepped = smooth.copy()
    stepped[:, 32:] += 0.5
    assert seam_score(stepped, [32], [32]) > 5

"""Hyperspectral quality metrics against hand-worked values, and the classical denoising baselines."""

import math
import sys

import numpy as np
import pytest
import torch

from earthsynth.generation.hsi.classical import (
    CLASSICAL_METHODS,
    bm4d_denoise,
    estimate_band_sigmas,
    estimate_noise_sigma,
    gaussian_filter,
    median_filter,
    median_pca,
    pca_truncation,
    robust_pca,
    subspace_bm3d,
    tune,
)
from earthsynth.image_metrics import PSNR_CAP, band_psnr, band_ssim, ergas, psnr, sam_degrees


def smooth_fields(count, size, rng):
    """`count` smooth positive (size, size) maps: a few low-frequency cosines each."""
    y, x = np.mgrid[0:size, 0:size] / size
    fields = []
    for _ in range(count):
        field = np.zeros((size, size))
        for _ in range(3):
            fy, fx, phase = rng.uniform(0.3, 2.0), rng.uniform(0.3, 2.0), rng.uniform(0, 2 * np.pi)
            field += np.cos(2 * np.pi * (fy * y + fx * x) + phase)
        fields.append(0.2 + 0.8 * (field - field.min()) / (field.max() - field.min()))
    return np.stack(fields)


def low_rank_cube(bands=32, size=32, seed=0):
    """3 random spectra mixed under smooth abundances: a rank-3 cube (bands, size, size) in ~[0, 1]."""
    rng = np.random.default_rng(seed)
    spectra = rng.uniform(0.1, 0.9, (3, bands))
    abundances = smooth_fields(3, size, rng) / 3  # not summing to one: the centred cube keeps rank 3
    return np.einsum("kb,khw->bhw", spectra, abundances).astype(np.float32)


def gaussian_noise(cube, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return (cube + sigma * rng.standard_normal(cube.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- metrics
def test_identical_cubes_score_perfectly():
    truth = low_rank_cube(bands=4, size=16)
    assert band_psnr(truth, truth) == PSNR_CAP
    assert sam_degrees(truth, truth) < 1e-5
    assert ergas(truth, truth) == 0.0
    assert abs(band_ssim(truth, truth) - 1.0) < 1e-12


def test_band_psnr_of_known_offsets():
    truth = np.full((2, 8, 8), 0.5, dtype=np.float32)
    truth[:, 0, 0] = 1.0  # data range 1
    offsets = np.array([0.1, 0.01], dtype=np.float32)[:, None, None]
    # band 0: mse 0.01 -> 20 dB, band 1: mse 1e-4 -> 40 dB; the mean of the bands, not of the mse
    assert abs(band_psnr(truth + offsets, truth) - 30.0) < 1e-4
    assert abs(psnr(torch.tensor(truth + offsets), torch.tensor(truth)) - 10 * math.log10(2 / 0.0101)) < 1e-4
    assert abs(band_psnr(truth + offsets, truth, data_range=2.0) - (30.0 + 20 * math.log10(2))) < 1e-4
    # a perfect band counts as the cap, so the mean stays finite
    half = truth + np.array([0.1, 0.0], dtype=np.float32)[:, None, None]
    assert abs(band_psnr(half, truth) - (20.0 + PSNR_CAP) / 2) < 1e-4
    # numpy and torch inputs agree
    assert band_psnr(torch.tensor(truth + offsets), torch.tensor(truth)) == band_psnr(truth + offsets, truth)


def test_sam_is_the_angle_between_spectra_and_ignores_scale():
    truth = np.zeros((2, 4, 4), dtype=np.float32)
    truth[0] = 1.0  # spectrum (1, 0)
    estimate = np.ones((2, 4, 4), dtype=np.float32)  # spectrum (1, 1): 45 degrees away
    assert abs(sam_degrees(estimate, truth) - 45.0) < 1e-6
    estimate[:, 0, 0] = 0.0  # a zero spectrum has no angle: skipped, not counted as 90 degrees
    assert abs(sam_degrees(estimate, truth) - 45.0) < 1e-6
    assert math.isnan(sam_degrees(np.zeros_like(truth), truth))

    cube = low_rank_cube(bands=8, size=16)
    assert sam_degrees(2.0 * cube, cube) < 1e-5  # scale-invariant
    assert ergas(2.0 * cube, cube) > 50.0  # but a scaled spectrum is a large error
    assert sam_degrees(gaussian_noise(cube, 0.05), cube) > 1.0


def test_ergas_by_hand():
    # constant bands c_b, estimate 2 c_b: RMSE_b = c_b, so every band's relative error is 1
    truth = np.stack([np.full((4, 4), value, dtype=np.float32) for value in (0.2, 0.5, 0.8)])
    assert abs(ergas(2 * truth, truth) - 100.0) < 1e-4
    assert abs(ergas(2 * truth, truth, ratio=0.25) - 25.0) < 1e-4
    # offset 0.1 on band 0 only: sqrt(mean(0.01 / 0.04, 0, 0)) = sqrt(1/12)
    estimate = truth.copy()
    estimate[0] += 0.1
    assert abs(ergas(estimate, truth) - 100 * math.sqrt(0.25 / 3)) < 1e-4
    # a band of zero mean is skipped rather than dividing by zero
    truth[2] = 0.0
    estimate = truth.copy()
    estimate[0] += 0.1
    assert abs(ergas(estimate, truth) - 100 * math.sqrt(0.25 / 2)) < 1e-4


def test_band_ssim_falls_with_noise_and_metrics_refuse_mismatched_shapes():
    cube = low_rank_cube(bands=4, size=32)
    slight, heavy = gaussian_noise(cube, 0.01), gaussian_noise(cube, 0.1)
    assert 1.0 > band_ssim(slight, cube) > band_ssim(heavy, cube)
    with pytest.raises(ValueError, match="one shape"):
        band_psnr(cube[:3], cube)
    with pytest.raises(ValueError, match="bands, H, W"):
        sam_degrees(cube[0], cube[0])


# ----------------------------------------------------------------------------- classical denoisers
def test_pca_truncation_at_full_rank_returns_the_input():
    noisy = gaussian_noise(low_rank_cube(bands=8, size=16), 0.05)
    for rank in (8, 20):
        restored = pca_truncation(noisy, rank=rank)
        assert restored.dtype == np.float32 and restored.shape == noisy.shape
        assert np.abs(restored - noisy).max() < 1e-5
    with pytest.raises(ValueError, match="rank"):
        pca_truncation(noisy, rank=0)


def test_pca_truncation_removes_noise_from_a_low_rank_cube():
    clean = low_rank_cube()
    noisy = gaussian_noise(clean, 0.05)
    before = band_psnr(noisy, clean)
    after = band_psnr(pca_truncation(noisy, rank=3), clean)
    assert after > before + 5.0, (before, after)
    assert band_psnr(pca_truncation(noisy, rank=1), clean) < after  # too low a rank loses signal


def test_median_beats_gaussian_on_impulses():
    clean = low_rank_cube(bands=8, size=32)
    rng = np.random.default_rng(2)
    noisy = clean.copy()
    hit = rng.random(clean.shape) < 0.1
    noisy[hit] = np.where(rng.random(hit.sum()) < 0.5, 0.0, clean.max())
    median, gaussian = median_filter(noisy, size=3), gaussian_filter(noisy, sigma=1.0)
    assert median.dtype == np.float32 and gaussian.shape == clean.shape
    assert band_psnr(median, clean) > band_psnr(gaussian, clean) + 3.0
    assert band_psnr(median, clean) > band_psnr(noisy, clean) + 5.0
    # and median + pca does at least about as well as the median alone
    assert band_psnr(median_pca(noisy, size=3, rank=3), clean) > band_psnr(median, clean) - 0.5


def test_spatial_filters_do_not_mix_bands():
    cube = np.zeros((3, 9, 9), dtype=np.float32)
    cube[1, 4, 4] = 1.0
    for restored in (gaussian_filter(cube, sigma=1.0), median_filter(cube, size=3)):
        assert np.all(restored[0] == 0) and np.all(restored[2] == 0)
    assert gaussian_filter(cube, sigma=1.0)[1, 4, 5] > 0  # blurs within the band


def test_tune_returns_the_best_grid_value():
    clean = [low_rank_cube(bands=16, size=16, seed=s) for s in (0, 1)]
    noisy = [gaussian_noise(c, 0.02, seed=10 + i) for i, c in enumerate(clean)]
    params, score = tune("pca", noisy, clean)
    scores = {rank: np.mean([band_psnr(pca_truncation(n, rank=rank), c) for n, c in zip(noisy, clean)])
              for rank in CLASSICAL_METHODS["pca"][1]["rank"]}
    assert params == {"rank": max(scores, key=scores.get)} == {"rank": 3}
    assert abs(score - scores[3]) < 1e-9
    # an error metric is minimised
    params, score = tune("gaussian", noisy, clean, metric=sam_degrees, higher_is_better=False)
    sams = {s: np.mean([sam_degrees(gaussian_filter(n, s), c) for n, c in zip(noisy, clean)])
            for s in CLASSICAL_METHODS["gaussian"][1]["sigma"]}
    assert params == {"sigma": min(sams, key=sams.get)} and abs(score - min(sams.values())) < 1e-9
    with pytest.raises(ValueError, match="known: gaussian"):
        tune("wiener", noisy, clean)


def test_noise_sigma_estimate_on_a_smooth_cube():
    clean = low_rank_cube(bands=8, size=32)
    assert abs(estimate_noise_sigma(gaussian_noise(clean, 0.05)) - 0.05) < 0.01
    assert estimate_noise_sigma(clean) < 0.005
    # impulses barely move the robust estimate
    spiky = gaussian_noise(clean, 0.05)
    spiky[np.random.default_rng(3).random(clean.shape) < 0.05] = 0.0
    assert abs(estimate_noise_sigma(spiky) - 0.05) < 0.015


def test_bm4d_denoises():
    pytest.importorskip("bm4d")
    clean = low_rank_cube(bands=8, size=16)
    noisy = gaussian_noise(clean, 0.05)
    restored = bm4d_denoise(noisy)
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    assert band_psnr(restored, clean) > band_psnr(noisy, clean) + 3.0


def test_bm4d_whitening_helps_when_the_noise_varies_across_bands():
    pytest.importorskip("bm4d")
    clean = low_rank_cube(bands=8, size=16)
    sigmas = np.linspace(0.01, 0.1, 8, dtype=np.float32)[:, None, None]
    noisy = (clean + sigmas * np.random.default_rng(4).standard_normal(clean.shape)).astype(np.float32)
    assert np.allclose(estimate_band_sigmas(noisy), sigmas.ravel(), rtol=0.3, atol=0.005)
    plain, whitened = bm4d_denoise(noisy), bm4d_denoise(noisy, whiten=True)
    assert band_psnr(whitened, clean) > band_psnr(plain, clean) + 0.5


def test_bm4d_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm4d", None)  # makes `import bm4d` fail
    with pytest.raises(ImportError, match="pip install bm4d"):
        bm4d_denoise(np.zeros((2, 8, 8), dtype=np.float32))


def test_subspace_bm3d_beats_the_subspace_projection_alone():
    pytest.importorskip("bm3d")
    clean = low_rank_cube(bands=16, size=32)
    noisy = gaussian_noise(clean, 0.05)
    restored = subspace_bm3d(noisy, rank=3)
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    # BM3D on the eigen-images removes the noise left inside the subspace
    assert band_psnr(restored, clean) > band_psnr(robust_pca(noisy, rank=3), clean) + 2.0


def test_subspace_bm3d_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    with pytest.raises(ImportError, match="pip install bm3d"):
        subspace_bm3d(np.zeros((4, 8, 8), dtype=np.float32))

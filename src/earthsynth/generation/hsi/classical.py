"""Classical hyperspectral denoisers, the baselines the hsi benchmark compares against.

Each takes a cube (bands, H, W) float32 numpy array and returns a denoised cube of the same
shape, float32. CLASSICAL_METHODS names them with a parameter grid, and `tune` picks the grid
values on validation cubes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import scipy.ndimage
import torch

from earthsynth.generation.hsi.lowrank import robust_fits, robust_projection
from earthsynth.image_metrics import band_psnr


def _as_cube(cube) -> np.ndarray:
    cube = np.asarray(cube, dtype=np.float32)
    if cube.ndim != 3:
        raise ValueError(f"cube must be (bands, H, W), got shape {cube.shape}")
    return cube


def gaussian_filter(cube: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Blur each band with a 2-D Gaussian of `sigma` pixels (no blur across bands)."""
    cube = _as_cube(cube)
    return scipy.ndimage.gaussian_filter(cube, sigma=(0.0, sigma, sigma)).astype(np.float32)


def median_filter(cube: np.ndarray, size: int = 3) -> np.ndarray:
    """A size x size median of each band (no mixing across bands): removes impulses and dead pixels."""
    cube = _as_cube(cube)
    return scipy.ndimage.median_filter(cube, size=(1, size, size)).astype(np.float32)


def pca_truncation(cube: np.ndarray, rank: int = 6) -> np.ndarray:
    """Keep the `rank` leading principal components of the spectra.

    Spectra of real scenes lie close to a low-dimensional subspace (a few materials mixed),
    while noise spreads over all bands: subtract the mean spectrum, take the SVD of the
    (pixels x bands) matrix, keep `rank` components and add the mean back. A rank at or above
    the band count returns the input.
    """
    cube = _as_cube(cube)
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    bands, height, width = cube.shape
    spectra = cube.reshape(bands, -1).T.astype(np.float64)  # (pixels, bands)
    mean = spectra.mean(0)
    centred = spectra - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:rank]  # (rank, bands) leading right singular vectors
    restored = centred @ basis.T @ basis + mean
    return restored.T.reshape(bands, height, width).astype(np.float32)


def robust_pca(cube: np.ndarray, rank: int = 6, threshold: float = 3.0, whiten: bool = True) -> np.ndarray:
    """Noise-whitened, outlier-rejecting low-rank fit (earthsynth.generation.hsi.lowrank.
    robust_projection): each band scaled by its estimated noise std, then the subspace refitted
    ten times with the values beyond `threshold` robust deviations from the fit replaced by it.
    Plain PCA with the two fixes for band-varying noise and sparse errors (impulses, dead
    pixels, stripes); the hsi refiner starts from the same estimate."""
    cube = _as_cube(cube)
    estimate, _outliers = robust_projection(torch.from_numpy(cube)[None], rank, threshold=threshold, whiten=whiten)
    return estimate[0].numpy()


def median_pca(cube: np.ndarray, size: int = 3, rank: int = 6) -> np.ndarray:
    """Median filter then PCA truncation: the median removes impulses and dead pixels, which
    would otherwise pull the principal components, then the low rank removes Gaussian noise."""
    return pca_truncation(median_filter(cube, size), rank)


def estimate_band_sigmas(cube: np.ndarray) -> np.ndarray:
    """A robust estimate of each band's Gaussian noise std from its spatial detail -> (bands,)
    float64 (what BM4D's whitening uses; the low-rank methods estimate the noise across bands
    instead, earthsynth.generation.hsi.lowrank.spectral_noise_sigmas).

    The median absolute deviation of a horizontal second difference x[i-1] - 2 x[i] + x[i+1]
    (a high-pass that cancels smooth gradients; divided by sqrt(6), since it holds 1 + 4 + 1
    times the noise variance) over 0.6745. The medians ignore edges, impulses and dead pixels.
    """
    cube = _as_cube(cube).astype(np.float64)
    if cube.shape[2] < 3:
        raise ValueError(f"need at least 3 columns to estimate the noise, got {cube.shape[2]}")
    diffs = cube[:, :, :-2] - 2 * cube[:, :, 1:-1] + cube[:, :, 2:]
    diffs = diffs.reshape(cube.shape[0], -1) / np.sqrt(6.0)
    return np.median(np.abs(diffs - np.median(diffs, axis=1, keepdims=True)), axis=1) / 0.6745


def estimate_noise_sigma(cube: np.ndarray) -> float:
    """A robust estimate of a cube's Gaussian noise std: the median over bands of estimate_band_sigmas."""
    return float(np.median(estimate_band_sigmas(cube)))


def bm4d_denoise(cube: np.ndarray, sigma: float | None = None, whiten: bool = False) -> np.ndarray:
    """BM4D (collaborative filtering of similar 3-D blocks) with the `bm4d` package.

    sigma is the Gaussian noise std; None estimates it with estimate_noise_sigma. BM4D assumes
    one noise level for the whole cube; with whiten=True each band is first scaled so that its
    own estimated noise std (estimate_band_sigmas) equals the median one, and scaled back
    after (sigma, when given, is then the std after that scaling). That helps where the noise
    varies across bands, as the hsi noise simulator's does. Slow: 1.4 to 4 s for a 32x32x31
    cube on one CPU. The package is the optional `bench` extra
    (pip install "earthsynth[bench]"); its licence allows non-commercial use only.
    """
    try:
        import bm4d
    except ImportError:
        raise ImportError("bm4d_denoise needs the bm4d package: pip install bm4d") from None
    cube = _as_cube(cube)
    weights = np.ones((cube.shape[0], 1, 1))
    if whiten:
        band_sigmas = estimate_band_sigmas(cube)
        level = float(np.median(band_sigmas))
        if level > 0:  # (a noiseless cube has nothing to whiten)
            weights = (level / np.maximum(band_sigmas, 1e-3 * level))[:, None, None]
    if sigma is None:
        sigma = estimate_noise_sigma(cube * weights)
    if not sigma > 0:
        return cube.copy()  # nothing to remove (a noiseless or constant cube)
    restored = bm4d.bm4d(np.transpose(cube * weights, (1, 2, 0)), sigma)  # bm4d wants (H, W, bands)
    return np.ascontiguousarray(np.transpose(restored, (2, 0, 1)) / weights, dtype=np.float32)


def subspace_bm3d(cube: np.ndarray, rank: int = 4, sigma_factor: float = 1.0) -> np.ndarray:
    """Subspace denoising with BM3D on the eigen-images, after FastHyDe (Zhuang and
    Bioucas-Dias, 2018): the robust low-rank fit of robust_pca gives a `rank`-dimensional
    subspace in the noise-whitened space, where every eigen-image (the cube's coordinates in
    it) carries noise of std 1; each is then denoised by BM3D at sigma `sigma_factor` and the
    cube rebuilt from them. The `bm3d` package is the optional `bench` extra; its licence
    allows non-commercial use only.
    """
    try:
        import bm3d
    except ImportError:
        raise ImportError("subspace_bm3d needs the bm3d package: pip install bm3d") from None
    cube = _as_cube(cube)
    fit = robust_fits(torch.from_numpy(cube)[None], [rank])[0]
    if fit is None:  # as many components as bands: nothing to project
        return cube.copy()
    eigenimages = fit.coefficients[0].numpy()
    denoised = np.stack([bm3d.bm3d(image, sigma_psd=sigma_factor) for image in eigenimages])
    return fit.estimate(torch.from_numpy(denoised)[None])[0].numpy().astype(np.float32)


CLASSICAL_METHODS: dict[str, tuple[Callable[..., np.ndarray], dict[str, list]]] = {
    "gaussian": (gaussian_filter, {"sigma": [0.5, 0.8, 1.2, 1.8]}),
    "median": (median_filter, {"size": [3, 5]}),
    "pca": (pca_truncation, {"rank": [2, 3, 4, 6, 8, 12]}),
    "median+pca": (median_pca, {"size": [3, 5], "rank": [3, 4, 6, 8, 12]}),
    "robust-pca": (robust_pca, {"rank": [3, 4, 6, 8, 12], "threshold": [2.5, 3.0, 4.0], "whiten": [False, True]}),
    "bm4d": (bm4d_denoise, {"sigma": [None], "whiten": [False, True]}),
    "subspace-bm3d": (subspace_bm3d, {"rank": [3, 4, 6], "sigma_factor": [0.8, 1.0]}),
}


def tune(method_name: str, noisy_cubes: Sequence[np.ndarray], clean_cubes: Sequence[np.ndarray],
         metric: Callable = band_psnr, higher_is_better: bool = True) -> tuple[dict, float]:
    """Grid-search a classical method's parameters (its CLASSICAL_METHODS grid) -> (best
    parameters, their mean metric over the cubes). See grid_search."""
    if method_name not in CLASSICAL_METHODS:
        raise ValueError(f"unknown method {method_name!r}; known: {', '.join(CLASSICAL_METHODS)}")
    method, grid = CLASSICAL_METHODS[method_name]
    return grid_search(method, grid, noisy_cubes, clean_cubes, metric, higher_is_better)


def grid_search(method: Callable, grid: dict[str, list], noisy_cubes: Sequence, clean_cubes: Sequence,
                metric: Callable = band_psnr, higher_is_better: bool = True) -> tuple[dict, float]:
    """method(noisy, **params) over every point of `grid` -> (best parameters, their mean
    metric over the cubes).

    Give VALIDATION cubes only: the benchmark tunes on val and reports on test cubes the
    tuning never saw. metric(estimate, truth) -> float; set higher_is_better=False for an
    error (sam_degrees, ergas). Ties keep the first grid point.
    """
    if len(noisy_cubes) != len(clean_cubes) or not noisy_cubes:
        raise ValueError(f"need as many noisy as clean cubes, at least one; got {len(noisy_cubes)} and {len(clean_cubes)}")
    names = list(grid)
    best_params, best_score = None, None
    for values in itertools.product(*(grid[name] for name in names)):
        params = dict(zip(names, values))
        score = float(np.mean([metric(method(noisy, **params), clean) for noisy, clean in zip(noisy_cubes, clean_cubes)]))
        better = best_score is None or (score > best_score if higher_is_better else score < best_score)
        if better:
            best_params, best_score = params, score
    return best_params, best_score

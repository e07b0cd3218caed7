"""Low-rank models of hyperspectral cubes, in torch and batched: the spectral prior that the
hsi refiner builds on and that the classical baselines (earthsynth.generation.hsi.classical)
call, so the network and the baseline it is compared with share one implementation.

Spectra of a scene are mixtures of a few materials, so they lie near a low-dimensional
subspace while noise spreads over every band. Plain PCA truncation has two weaknesses on
real sensor noise: bands with strong noise pull the principal components as much as clean
ones, and sparse errors (impulses, dead pixels, stripes) are large enough to tilt the
subspace and survive the projection. `robust_projection` deals with both: it whitens each
band by its own noise level (estimated from the data) and refits the subspace a few times,
each time replacing the values that sit far from the current fit by the fit itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAD_TO_STD = 0.6745  # the median absolute deviation of a standard normal


def spectral_noise_sigmas(cube: torch.Tensor) -> torch.Tensor:
    """A robust estimate of each band's noise std: (N, B, H, W) -> (N, B) float64.

    Each band is predicted from all the others by least squares over the pixels (the signal
    is a mixture of a few spectra, so the other bands predict it; the noise of one band is
    independent of the others', so they cannot), and the std of what is left is the median
    absolute deviation over 0.6745 (sparse impulses and dead pixels hardly move a median).
    It does not depend on the image's texture, unlike spatial differences. All B regressions
    at once: with R the (B, B) Gram matrix of the centred spectra, band i's residuals are row
    i of R^-1 X divided by (R^-1)_ii.
    """
    n, bands = cube.shape[:2]
    if bands < 3:
        raise ValueError(f"need at least 3 bands to estimate the noise of each from the others, got {bands}")
    spectra = cube.reshape(n, bands, -1).double()
    centred = spectra - spectra.mean(-1, keepdim=True)
    gram = centred @ centred.transpose(1, 2)
    ridge = 1e-9 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)[:, None, None]
    inverse = torch.linalg.inv(gram + ridge * torch.eye(bands, dtype=gram.dtype, device=gram.device))
    residuals = (inverse @ centred) / inverse.diagonal(dim1=1, dim2=2)[..., None]
    centre = residuals.median(dim=-1, keepdim=True).values
    return (residuals - centre).abs().median(dim=-1).values / MAD_TO_STD


def median3x3(cube: torch.Tensor) -> torch.Tensor:
    """(N, B, H, W) -> each band's 3x3 median (edges replicated)."""
    n, bands, height, width = cube.shape
    padded = torch.nn.functional.pad(cube.reshape(n * bands, 1, height, width), (1, 1, 1, 1), mode="replicate")
    patches = torch.nn.functional.unfold(padded, 3)  # (N*B, 9, H*W)
    return patches.median(dim=1).values.reshape(n, bands, height, width)


def robust_projection(cube: torch.Tensor, rank: int, iterations: int = 10, threshold: float = 3.0,
                      whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, B, H, W) -> (low-rank estimate, outlier mask), both (N, B, H, W).

    1. whiten (optional): divide each band by its estimated noise std (spectral_noise_sigmas),
       so every band carries the same noise and a noisy band cannot steer the subspace;
    2. `iterations` times: fit the mean spectrum and the `rank` leading principal components
       to the working copy, then mark as outliers the values whose residual to that fit
       exceeds `threshold` times the band's robust residual spread (MAD), and replace them
       in the working copy by the fit (the original values are kept everywhere else);
    3. return the last fit, un-whitened, and the last outlier mask.
    A rank at or above the band count returns the cube and an empty mask.
    """
    return robust_projections(cube, [rank], iterations, threshold, whiten)[0]


@dataclass
class RobustFit:
    """A robust low-rank fit of (N, B, H, W) cubes, in the whitened space it was fitted in:
    whitened spectra are cube / scale, and the fit is basis @ coefficients + mean there."""

    basis: torch.Tensor  # (N, B, rank) orthonormal columns, leading component last
    coefficients: torch.Tensor  # (N, rank, H, W) the eigen-images: the working copy projected on basis
    mean: torch.Tensor  # (N, B, 1) whitened mean spectrum
    scale: torch.Tensor  # (N, B, 1) each band's noise std (ones without whitening)
    outliers: torch.Tensor  # (N, B, H, W) bool, where values were replaced by the fit

    def estimate(self, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """The fit (or the fit with other eigen-images) on the cube's scale: (N, B, H, W) float64."""
        coefficients = self.coefficients if coefficients is None else coefficients
        n, rank, height, width = coefficients.shape
        whitened = self.basis @ coefficients.reshape(n, rank, -1).to(self.basis.dtype) + self.mean
        return (whitened * self.scale).reshape(n, -1, height, width)

    def project(self, cube: torch.Tensor) -> torch.Tensor:
        """Another (N, B, H, W) cube (the clean one, in training) -> its eigen-images (N, rank, H, W)."""
        n, bands, height, width = cube.shape
        whitened = cube.reshape(n, bands, -1).to(self.basis.dtype) / self.scale - self.mean
        return (self.basis.transpose(1, 2) @ whitened).reshape(n, -1, height, width)


def robust_projections(cube: torch.Tensor, ranks: list[int], iterations: int = 10, threshold: float = 3.0,
                       whiten: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """robust_projection at each of `ranks`, sharing the work that does not depend on the
    rank (the noise estimate and the median start) -> one (estimate, outlier mask) per rank.
    A rank at or above the band count returns the cube and an empty mask."""
    return [(cube.clone(), torch.zeros_like(cube, dtype=torch.bool)) if fit is None
            else (fit.estimate().to(cube.dtype), fit.outliers)
            for fit in robust_fits(cube, ranks, iterations, threshold, whiten)]


@dataclass
class FitStart:
    """What every robust fit of one batch of cubes starts from, whatever the rank: the
    whitened spectra, the whitening scale and their 3x3-median start (see robust_fits)."""

    observed: torch.Tensor  # (N, B, H*W) float64, cube / scale
    scale: torch.Tensor  # (N, B, 1) each band's noise std (ones without whitening)
    median_start: torch.Tensor  # (N, B, H*W) each whitened band's 3x3 median


def fit_start(cube: torch.Tensor, whiten: bool = True) -> FitStart:
    n, bands, height, width = cube.shape
    spectra = cube.reshape(n, bands, -1).double()
    scale = torch.ones(n, bands, 1, dtype=spectra.dtype, device=spectra.device)
    if whiten:
        sigmas = spectral_noise_sigmas(cube)
        level = sigmas.median(dim=1, keepdim=True).values
        # a noiseless band would get an infinite weight: floor at 1% of the typical level
        floor = torch.maximum(level * 1e-2, torch.full_like(level, 1e-9))
        scale = torch.maximum(sigmas, floor)[..., None]
    observed = spectra / scale
    # the first subspace comes from a 3x3 median of every band, which impulses and dead
    # pixels do not reach; spatial filtering keeps spectra inside the span of the materials
    median_start = median3x3(observed.reshape(n, bands, height, width)).reshape(n, bands, -1)
    return FitStart(observed, scale, median_start)


def robust_fits(cube: torch.Tensor, ranks: list[int], iterations: int = 10, threshold: float = 3.0,
                whiten: bool = True, known_outliers: torch.Tensor | None = None,
                start: FitStart | None = None) -> list[RobustFit | None]:
    """The robust fit (see robust_projection) at each of `ranks`; None for a rank at or above
    the band count (nothing to fit). known_outliers (N, B, H, W) bool, optional: values
    flagged beforehand (by the hsi refiner's learned detector), treated as outliers in every
    iteration on top of those the threshold finds. start: fit_start(cube, whiten), when the
    caller fits the same cube more than once (it is then not recomputed)."""
    if min(ranks) < 1 or iterations < 1:
        raise ValueError(f"rank and iterations must be at least 1, got {min(ranks)} and {iterations}")
    n, bands, height, width = cube.shape
    if min(ranks) >= bands:  # nothing to fit (and too few bands to estimate the noise)
        return [None for _ in ranks]
    start = start if start is not None else fit_start(cube, whiten)
    observed, scale, median_start = start.observed, start.scale, start.median_start
    prior = None if known_outliers is None else known_outliers.reshape(n, bands, -1)
    results = []
    for rank in ranks:
        if rank >= bands:
            results.append(None)
            continue
        subspace_source = median_start
        working = observed if prior is None else torch.where(prior, median_start, observed)
        for _ in range(iterations):
            mean = subspace_source.mean(-1, keepdim=True)
            centred = subspace_source - mean
            _, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
            basis = vectors[..., -rank:]
            coefficients = basis.transpose(1, 2) @ (working - mean)
            fit = basis @ coefficients + mean
            residual = (observed - fit).abs()
            spread = residual.median(dim=-1, keepdim=True).values / MAD_TO_STD
            outliers = residual > threshold * spread.clamp_min(1e-12)
            if prior is not None:
                outliers = outliers | prior
            working = torch.where(outliers, fit, observed)
            subspace_source = working
        results.append(RobustFit(basis, coefficients.reshape(n, rank, height, width), mean, scale,
                                 outliers.reshape(n, bands, height, width)))
    return results

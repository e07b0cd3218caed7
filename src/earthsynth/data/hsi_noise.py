"""Simulated hyperspectral sensor noise: band-varying Gaussian noise, stripes, dead lines, impulses.

Real imaging spectrometers are noisy in ways that differ from band to band: the random noise
level follows the sensor's response (weak at the ends of the spectrum), push-broom detectors
leave column stripes and dead columns in some bands, and transmission errors leave
salt-and-pepper pixels. `add_noise` draws one such degradation per cube, for training and
benchmarking hyperspectral denoisers.

Cubes are (bands, H, W) or (N, bands, H, W) float tensors with the clean signal roughly in
[0, 1]. Every cube of a batch gets its own draw: the random parameters are drawn per cube and
per band in one go (no Python loop over cubes or bands), so a batch costs a few tensor
operations. Random numbers are drawn on the generator's device (the cube's device when no
generator is given, from torch's global RNG) and moved to the cube's device, so a seeded CPU
generator gives the same noise for a CPU or a CUDA cube.
"""

from __future__ import annotations

import math

import torch

NOISE_KINDS = ("gaussian", "stripes", "deadlines", "impulse", "mixture")

LIGHT_SIGMA = 0.01  # the weak Gaussian noise under stripes, dead lines and impulses (times strength)
CONTROL_POINTS = 5  # random values interpolated into the smooth per-band sigma profile
MAX_DEAD_LINES = 4  # dead columns / rows per affected band: 1 to this many


def add_noise(cube: torch.Tensor, kind: str, generator: torch.Generator | None = None,
              strength: float = 1.0) -> tuple[torch.Tensor, dict]:
    """cube (bands, H, W) or (N, bands, H, W) float -> (noisy cube of the same shape and dtype, params).

    kind is one of NOISE_KINDS:
      "gaussian"  zero-mean Gaussian noise, its sigma a smooth random profile over the bands
                  between sigma_min ~ U(0.005, 0.02) and sigma_max ~ U(0.04, 0.10);
      "stripes"   in 20-50% of the bands, 5-15% of the columns get an offset ~ U(-0.15, 0.15)
                  over a random vertical segment of 30-100% of the height;
      "deadlines" in 10-30% of the bands, 1-4 whole or partial columns (a quarter of them rows)
                  and 0.2-1% of the pixels are set to 0;
      "impulse"   in 20-50% of the bands, a fraction U(0.02, 0.15) of the pixels is set to 0
                  or to the clean cube's maximum (half each);
      "mixture"   all four together (Gaussian, stripes, impulses, then dead lines).
    The single kinds other than "gaussian" add light Gaussian noise (sigma 0.01) everywhere.
    `strength` scales the amplitudes and rates (sigmas, offsets, pixel fractions, clipped to
    [0, 1]); the numbers of affected bands and lines do not change with it. Dead pixels are
    exactly 0, whatever the other noise.

    params (JSON-serialisable) holds "kind" and "strength", plus for one cube what was drawn
    (per-band "sigmas", the striped / dead / impulse "bands", the dead "lines"...; for
    "mixture" one dict per component under its name) and for a batch one such dict per cube
    in params["cubes"]. With a seeded generator the result is reproducible.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; known kinds: {', '.join(NOISE_KINDS)}")
    if not torch.is_tensor(cube) or not cube.is_floating_point():
        raise ValueError(f"cube must be a floating-point tensor, got {type(cube).__name__} {getattr(cube, 'dtype', '')}")
    if cube.ndim not in (3, 4):
        raise ValueError(f"cube must be (bands, H, W) or (N, bands, H, W), got shape {tuple(cube.shape)}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    single = cube.ndim == 3
    batch = cube[None] if single else cube
    n, bands, height, width = batch.shape
    if bands < 2 or height < 4 or width < 4:
        raise ValueError(f"need at least 2 bands and 4x4 pixels, got {bands} bands of {height}x{width}")

    # work in float32 (float64 stays float64), cast back at the end
    work_dtype = torch.float64 if batch.dtype == torch.float64 else torch.float32
    x = batch.detach().to(work_dtype).clone()
    rng = _Draw(generator, x.device)
    clean_max = batch.detach().to(work_dtype).flatten(1).amax(1)  # (N,) the impulse "salt" value

    if kind == "mixture":
        parts = {
            "gaussian": _gaussian(x, rng, strength),
            "stripes": _stripes(x, rng, strength, light=False),
            "impulse": _impulse(x, rng, strength, clean_max, light=False),
            "deadlines": _deadlines(x, rng, strength, light=False),  # last: dead pixels stay 0
        }
        per_cube = [{name: part[i] for name, part in parts.items()} for i in range(n)]
    elif kind == "gaussian":
        per_cube = _gaussian(x, rng, strength)
    elif kind == "stripes":
        per_cube = _stripes(x, rng, strength, light=True)
    elif kind == "deadlines":
        per_cube = _deadlines(x, rng, strength, light=True)
    else:
        per_cube = _impulse(x, rng, strength, clean_max, light=True)

    noisy = x.to(cube.dtype)
    params = {"kind": kind, "strength": float(strength)}
    if single:
        return noisy[0], {**params, **per_cube[0]}
    return noisy, {**params, "cubes": per_cube}


class _Draw:
    """Random numbers from one generator (or the global RNG), delivered on the cube's device."""

    def __init__(self, generator: torch.Generator | None, device: torch.device):
        self.generator = generator
        self.source = generator.device if generator is not None else device
        self.device = device

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.source).to(self.device)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.source).to(self.device)

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * self.rand(*shape)


def _pick_bands(rng: _Draw, n: int, bands: int, low: float, high: float) -> torch.Tensor:
    """(K, 2) (cube, band) pairs: in each cube a random fraction U(low, high) of its bands, at least one."""
    counts = (rng.uniform(low, high, n) * bands).round().clamp(1, bands)
    chosen = _rank(rng.rand(n, bands)) < counts[:, None]
    return chosen.nonzero()


def _rank(scores: torch.Tensor) -> torch.Tensor:
    """The rank of each value along the last axis: a random permutation for random scores."""
    return scores.argsort(-1).argsort(-1)


def _group(owner: list[int], n: int, values: list) -> list[list]:
    """Split values into one list per owner 0..n-1 (a cube, or a band of a cube)."""
    groups = [[] for _ in range(n)]
    for i, value in zip(owner, values):
        groups[i].append(value)
    return groups


def _light_noise(x: torch.Tensor, rng: _Draw, strength: float) -> None:
    x += (LIGHT_SIGMA * strength) * rng.randn(*x.shape).to(x.dtype)


def _gaussian(x: torch.Tensor, rng: _Draw, strength: float) -> list[dict]:
    """Add Gaussian noise with a smooth random sigma profile over the bands (per cube)."""
    n, bands = x.shape[:2]
    sigma_min = rng.uniform(0.005, 0.02, n).double() * strength
    sigma_max = rng.uniform(0.04, 0.10, n).double() * strength
    # a handful of random control values stretched to [0, 1], smoothly interpolated over the bands
    points = min(CONTROL_POINTS, bands)
    control = rng.rand(n, points).double()
    low, high = control.amin(1, keepdim=True), control.amax(1, keepdim=True)
    control = (control - low) / (high - low).clamp_min(1e-12)
    position = torch.linspace(0, points - 1, bands, dtype=torch.float64, device=x.device)
    left = position.floor().long().clamp(max=points - 2)
    t = position - left
    t = t * t * (3 - 2 * t)  # smoothstep: no kinks at the control points
    profile = control[:, left] * (1 - t) + control[:, left + 1] * t  # (N, bands) in [0, 1]
    sigmas = sigma_min[:, None] + (sigma_max - sigma_min)[:, None] * profile
    x += rng.randn(*x.shape).to(x.dtype) * sigmas[:, :, None, None].to(x.dtype)
    return [{"sigmas": row, "sigma_min": lo, "sigma_max": hi}
            for row, lo, hi in zip(sigmas.tolist(), sigma_min.tolist(), sigma_max.tolist())]


def _stripes(x: torch.Tensor, rng: _Draw, strength: float, light: bool) -> list[dict]:
    """Column stripes: offsets over random vertical segments of 5-15% of the columns of some bands."""
    n, bands, height, width = x.shape
    pairs = _pick_bands(rng, n, bands, 0.2, 0.5)
    k = len(pairs)
    counts = (rng.uniform(0.05, 0.15, k) * width).round().clamp(1, width)
    striped = _rank(rng.rand(k, width)) < counts[:, None]  # (K, W) which columns
    offsets = rng.uniform(-0.15, 0.15, k, width) * strength
    length = (rng.uniform(0.3, 1.0, k, width) * height).round().clamp(1, height)
    start = (rng.rand(k, width) * (height - length + 1)).floor()
    rows = torch.arange(height, device=x.device)[None, :, None]
    segment = (rows >= start[:, None, :]) & (rows < (start + length)[:, None, :])  # (K, H, W)
    cube_i, band_i = pairs[:, 0], pairs[:, 1]
    x[cube_i, band_i] += (segment & striped[:, None, :]).to(x.dtype) * offsets[:, None, :].to(x.dtype)
    if light:
        _light_noise(x, rng, strength)

    # per striped band: its columns, and each column's offset and rows [start, stop)
    hits = striped.nonzero()  # (M, 2) (pair, column), ordered by pair
    pair_of, column = hits[:, 0].tolist(), hits[:, 1]
    columns = _group(pair_of, k, column.tolist())
    offsets = _group(pair_of, k, offsets[hits[:, 0], column].tolist())
    starts = _group(pair_of, k, start[hits[:, 0], column].long().tolist())
    stops = _group(pair_of, k, (start + length)[hits[:, 0], column].long().tolist())
    cube_of = cube_i.tolist()
    by = {name: _group(cube_of, n, values) for name, values in
          (("bands", band_i.tolist()), ("columns", columns), ("offsets", offsets), ("starts", starts), ("stops", stops))}
    return [{"bands": by["bands"][i], "columns": by["columns"][i],
             "column_counts": [len(cols) for cols in by["columns"][i]],
             "offsets": by["offsets"][i], "starts": by["starts"][i], "stops": by["stops"][i],
             "light_sigma": LIGHT_SIGMA * strength if light else 0.0}
            for i in range(n)]


def _deadlines(x: torch.Tensor, rng: _Draw, strength: float, light: bool) -> list[dict]:
    """Dead lines and pixels: 1-4 whole or partial columns / rows and 0.2-1% of the pixels set to 0."""
    n, bands, height, width = x.shape
    if light:
        _light_noise(x, rng, strength)  # first, so that the dead pixels stay exactly 0
    pairs = _pick_bands(rng, n, bands, 0.1, 0.3)
    k = len(pairs)
    slots = MAX_DEAD_LINES
    active = torch.arange(slots, device=x.device) < (rng.rand(k) * slots).floor()[:, None] + 1  # (K, slots)
    is_row = rng.rand(k, slots) < 0.25  # mostly columns (the push-broom detector), sometimes rows
    across = torch.where(is_row, height, width).double()  # how many lines of this orientation
    along = torch.where(is_row, width, height).double()  # the length of a whole line
    index = (rng.rand(k, slots) * across).floor()
    whole = rng.rand(k, slots) < 0.5
    length = torch.where(whole, along, (rng.uniform(0.3, 1.0, k, slots) * along).round().clamp_min(1))
    start = (rng.rand(k, slots) * (along - length + 1)).floor()
    stop = start + length

    rows = torch.arange(height, device=x.device)[None, None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, None, :]
    index4, start4, stop4 = index[..., None, None], start[..., None, None], stop[..., None, None]
    column_line = (cols == index4) & (rows >= start4) & (rows < stop4)
    row_line = (rows == index4) & (cols >= start4) & (cols < stop4)
    line_mask = (active[..., None, None] & torch.where(is_row[..., None, None], row_line, column_line)).any(1)
    rates = (rng.uniform(0.002, 0.01, k) * strength).clamp(0, 1)
    pixel_mask = rng.rand(k, height, width) < rates[:, None, None]
    cube_i, band_i = pairs[:, 0], pairs[:, 1]
    x[cube_i, band_i] = x[cube_i, band_i].masked_fill(line_mask | pixel_mask, 0.0)

    cube_of, band_list = cube_i.tolist(), band_i.tolist()
    lines = []
    for band, act, row, idx, a, b in zip(band_list, active.tolist(), is_row.tolist(), index.tolist(),
                                        start.tolist(), stop.tolist()):
        lines.append([{"band": band, "axis": "row" if row[j] else "column", "index": int(idx[j]),
                       "start": int(a[j]), "stop": int(b[j])} for j in range(slots) if act[j]])
    by_band, by_lines = _group(cube_of, n, band_list), _group(cube_of, n, lines)
    by_rate = _group(cube_of, n, rates.tolist())
    by_count = _group(cube_of, n, pixel_mask.flatten(1).sum(1).tolist())
    return [{"bands": b, "lines": [line for band_lines in ls for line in band_lines],
             "dead_pixel_rates": r, "dead_pixel_counts": c,
             "light_sigma": LIGHT_SIGMA * strength if light else 0.0}
            for b, ls, r, c in zip(by_band, by_lines, by_rate, by_count)]


def _impulse(x: torch.Tensor, rng: _Draw, strength: float, clean_max: torch.Tensor, light: bool) -> list[dict]:
    """Salt and pepper: a fraction U(0.02, 0.15) of the pixels of some bands set to 0 or the cube's max."""
    n, bands, height, width = x.shape
    if light:
        _light_noise(x, rng, strength)  # first, so that the impulses keep their exact values
    pairs = _pick_bands(rng, n, bands, 0.2, 0.5)
    k = len(pairs)
    fractions = (rng.uniform(0.02, 0.15, k) * strength).clamp(0, 1)
    hit = rng.rand(k, height, width) < fractions[:, None, None]
    salt = rng.rand(k, height, width) < 0.5
    cube_i, band_i = pairs[:, 0], pairs[:, 1]
    high = clean_max[cube_i][:, None, None].expand(k, height, width)
    impulses = torch.where(salt, high, torch.zeros_like(high))
    x[cube_i, band_i] = torch.where(hit, impulses, x[cube_i, band_i])

    cube_of = cube_i.tolist()
    by_band = _group(cube_of, n, band_i.tolist())
    by_fraction = _group(cube_of, n, fractions.tolist())
    by_count = _group(cube_of, n, hit.flatten(1).sum(1).tolist())
    return [{"bands": b, "fractions": f, "pixel_counts": c, "salt_value": v,
             "light_sigma": LIGHT_SIGMA * strength if light else 0.0}
            for b, f, c, v in zip(by_band, by_fraction, by_count, clean_max.tolist())]

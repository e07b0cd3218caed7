"""The hyperspectral noise simulator: each kind does what its params say it did."""

import json

import pytest
import torch

from earthsynth.data.hsi_noise import NOISE_KINDS, add_noise


def clean_cube(bands=6, size=16, seed=0, dtype=torch.float32):
    """A strictly positive cube in [0.2, 0.8]: no clean pixel is 0 or at a dead / impulse value by chance."""
    g = torch.Generator().manual_seed(seed)
    return (0.2 + 0.6 * torch.rand(bands, size, size, generator=g)).to(dtype)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_kind_changes_the_cube_and_keeps_shape_and_dtype(kind, dtype):
    cube = clean_cube(dtype=dtype)
    noisy, params = add_noise(cube, kind, seeded(0))
    assert noisy.shape == cube.shape and noisy.dtype == dtype
    assert (noisy - cube).abs().mean() > 1e-3
    assert torch.equal(cube, clean_cube(dtype=dtype))  # the input is left alone
    assert params["kind"] == kind and params["strength"] == 1.0
    json.dumps(params)  # JSON-serialisable


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_smallest_cube_works(kind):
    cube = clean_cube(bands=2, size=4)
    noisy, _ = add_noise(cube, kind, seeded(3))
    assert noisy.shape == (2, 4, 4) and torch.isfinite(noisy).all()


def test_same_seed_same_noise_other_seed_other_noise():
    cube = clean_cube()
    first, params_first = add_noise(cube, "mixture", seeded(7))
    again, params_again = add_noise(cube, "mixture", seeded(7))
    other, _ = add_noise(cube, "mixture", seeded(8))
    assert torch.equal(first, again) and params_first == params_again
    assert not torch.equal(first, other)


def test_global_rng_without_generator():
    cube = clean_cube()
    torch.manual_seed(5)
    first, _ = add_noise(cube, "gaussian")
    torch.manual_seed(5)
    again, _ = add_noise(cube, "gaussian")
    assert torch.equal(first, again)


def test_gaussian_std_follows_the_recorded_per_band_sigmas():
    cube = clean_cube(bands=4, size=64)
    noisy, params = add_noise(cube, "gaussian", seeded(1))
    sigmas = torch.tensor(params["sigmas"])
    assert len(sigmas) == 4
    assert 0.005 <= params["sigma_min"] <= 0.02 and 0.04 <= params["sigma_max"] <= 0.10
    assert abs(sigmas.min() - params["sigma_min"]) < 1e-6 and abs(sigmas.max() - params["sigma_max"]) < 1e-6
    empirical = (noisy - cube).double().flatten(1).std(1)
    assert torch.allclose(empirical, sigmas.double(), rtol=0.05)
    assert (noisy - cube).double().mean().abs() < 0.005


def test_gaussian_profile_is_smooth_over_many_bands():
    _, params = add_noise(clean_cube(bands=64, size=4), "gaussian", seeded(2))
    sigmas = torch.tensor(params["sigmas"])
    span = sigmas.max() - sigmas.min()
    # a handful of control points over 64 bands: neighbouring bands differ by a small part of the span
    assert (sigmas[1:] - sigmas[:-1]).abs().max() < 0.2 * span


def test_strength_scales_the_noise():
    cube = clean_cube(bands=4, size=32)
    silent, params = add_noise(cube, "gaussian", seeded(4), strength=0.0)
    assert torch.equal(silent, cube) and max(params["sigmas"]) == 0.0
    _, weak = add_noise(cube, "gaussian", seeded(4), strength=1.0)
    _, strong = add_noise(cube, "gaussian", seeded(4), strength=2.0)
    assert torch.allclose(torch.tensor(strong["sigmas"]), 2 * torch.tensor(weak["sigmas"]))
    _, impulse = add_noise(cube, "impulse", seeded(4), strength=20.0)
    assert max(impulse["fractions"]) <= 1.0  # rates are clipped


def test_stripes_only_in_the_recorded_columns():
    bands, size = 16, 64
    cube = clean_cube(bands=bands, size=size)
    noisy, params = add_noise(cube, "stripes", seeded(5))
    assert 0.2 * bands - 1 <= len(params["bands"]) <= 0.5 * bands + 1
    residual = (noisy - cube).double()
    column_means = residual.mean(1)  # (bands, W): light noise averages to ~0.01 / 8 per column
    striped = torch.zeros(bands, size, dtype=torch.bool)
    for i, band in enumerate(params["bands"]):
        columns, count = params["columns"][i], params["column_counts"][i]
        assert len(columns) == count and 0.05 * size - 1 <= count <= 0.15 * size + 1
        striped[band, columns] = True
        for column, offset, start, stop in zip(columns, params["offsets"][i], params["starts"][i], params["stops"][i]):
            assert abs(offset) <= 0.15 and 0.3 * size - 1 <= stop - start <= size
            inside = residual[band, start:stop, column]
            outside = torch.cat([residual[band, :start, column], residual[band, stop:, column]])
            assert abs(inside.mean() - offset) < 0.01  # the offset over exactly the recorded rows
            assert len(outside) == 0 or outside.abs().max() < 0.05
    assert column_means[~striped].abs().max() < 0.006
    assert column_means[striped].abs().max() > 0.02  # the stripes are there
    unstriped_bands = [b for b in range(bands) if b not in params["bands"]]
    assert abs(residual[unstriped_bands].std() - 0.01) < 0.001  # only the light noise


def test_deadlines_are_zero_and_only_in_the_recorded_bands():
    bands, size = 20, 32
    cube = clean_cube(bands=bands, size=size)
    noisy, params = add_noise(cube, "deadlines", seeded(6))
    assert 1 <= len(params["bands"]) <= 0.3 * bands + 1
    zero_bands = torch.nonzero((noisy == 0).flatten(1).any(1)).flatten().tolist()
    assert zero_bands == sorted(params["bands"])
    per_band = {band: 0 for band in params["bands"]}
    for line in params["lines"]:
        per_band[line["band"]] += 1
        assert line["start"] < line["stop"]
        band = noisy[line["band"]]
        segment = band[line["start"]:line["stop"], line["index"]] if line["axis"] == "column" else band[line["index"], line["start"]:line["stop"]]
        assert (segment == 0).all(), line
    assert all(1 <= count <= 4 for count in per_band.values())
    # zeros beyond the lines are the dead pixels, about the recorded rate
    for band, rate in zip(params["bands"], params["dead_pixel_rates"]):
        assert 0.002 <= rate <= 0.01
        assert (noisy[band] == 0).sum() >= sum(1 for line in params["lines"] if line["band"] == band)


def test_impulse_fraction_matches_the_recorded_one():
    bands, size = 10, 64
    cube = clean_cube(bands=bands, size=size)
    noisy, params = add_noise(cube, "impulse", seeded(7))
    top = params["salt_value"]
    assert abs(top - float(cube.max())) < 1e-6
    hit = (noisy == 0) | (noisy == top)
    for band, fraction, count in zip(params["bands"], params["fractions"], params["pixel_counts"]):
        assert 0.02 <= fraction <= 0.15
        assert int(hit[band].sum()) == count
        assert abs(count / size**2 - fraction) < 0.03
        salt, pepper = int((noisy[band] == top).sum()), int((noisy[band] == 0).sum())
        assert abs(salt - pepper) < 0.25 * count + 20
    others = [b for b in range(bands) if b not in params["bands"]]
    assert not hit[others].any()


def test_mixture_records_all_four_and_keeps_dead_lines_at_zero():
    noisy, params = add_noise(clean_cube(bands=12, size=32), "mixture", seeded(8))
    assert set(params) == {"kind", "strength", "gaussian", "stripes", "deadlines", "impulse"}
    assert len(params["gaussian"]["sigmas"]) == 12
    for line in params["deadlines"]["lines"]:
        if line["axis"] == "column":
            assert (noisy[line["band"], line["start"]:line["stop"], line["index"]] == 0).all()


def test_batch_gets_one_draw_per_cube():
    batch = torch.stack([clean_cube(seed=0), clean_cube(seed=0), clean_cube(seed=0)])
    noisy, params = add_noise(batch, "mixture", seeded(9))
    assert noisy.shape == batch.shape
    assert len(params["cubes"]) == 3 and params["kind"] == "mixture"
    assert set(params["cubes"][0]) == {"gaussian", "stripes", "deadlines", "impulse"}
    assert params["cubes"][0]["gaussian"]["sigmas"] != params["cubes"][1]["gaussian"]["sigmas"]
    assert not torch.equal(noisy[0], noisy[1])
    # each cube's recorded impulses are in that cube
    for i, cube_params in enumerate(params["cubes"]):
        for band in cube_params["impulse"]["bands"]:
            if band not in cube_params["deadlines"]["bands"]:
                assert ((noisy[i, band] == 0) | (noisy[i, band] == batch[i].max())).any()
    json.dumps(params)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="gaussian, stripes"):
        add_noise(clean_cube(), "speckle")
    with pytest.raises(ValueError, match="at least 2 bands"):
        add_noise(clean_cube(bands=1), "gaussian")
    with pytest.raises(ValueError, match="4x4"):
        add_noise(torch.rand(3, 3, 8), "gaussian")
    with pytest.raises(ValueError, match="bands, H, W"):
        add_noise(torch.rand(8, 8), "gaussian")
    with pytest.raises(ValueError, match="floating"):
        add_noise(torch.ones(3, 8, 8, dtype=torch.int32), "gaussian")
    with pytest.raises(ValueError, match="strength"):
        add_noise(clean_cube(), "gaussian", strength=-1.0)

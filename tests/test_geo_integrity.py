"""GeoTIFF and ENVI outputs keep what GIS tools need (issue 24): nodata is a pixel whose every
band says so (the real OSBS_029 declares 255, and its saturated sand is no hole), holes are kept
out of the model input and written back, valid values never become the nodata value; the
GeoTIFF profile and the ENVI header survive `earthsynth denoise` (upscale: test_upscale.py);
`--rank` is checked before any work. Outputs are read back with rasterio, as a GIS tool would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import WktVersion

import earthsynth.jobs.denoise as denoise_job
from earthsynth.cli import main
from earthsynth.data.geotiff import (
    fill_nodata,
    mark_nodata,
    nodata_pixels,
    read_geotiff,
    write_geotiff,
)
from earthsynth.data.hsi import parse_envi_header, read_cube
from earthsynth.data.sources import deepforest_dir

ORIGIN = Affine(0.1, 0.0, 404000.0, 0.0, -0.1, 3285000.0)


def rich_geotiff(path: Path, data: np.ndarray, nodata=None, **options) -> None:
    """A GeoTIFF written by rasterio itself with everything a GIS profile holds: compression,
    predictor, 16x16 tiles, band descriptions, units, scales / offsets, band and dataset tags
    (GDAL's statistics among them)."""
    count = data.shape[0]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=count, dtype=data.dtype,
                   crs="EPSG:32617", transform=ORIGIN, nodata=nodata, compress="deflate", predictor=2,
                   tiled=True, blockxsize=16, blockysize=16, **options)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(SITE="OSBS", ACQUISITION_DATE="2018-06-01")
        for i in range(count):
            dst.set_band_description(i + 1, f"band {i} ({450 + 50 * i} nm)")
            dst.update_tags(i + 1, wavelength=str(450 + 50 * i), wavelength_units="Nanometers", STATISTICS_MEAN="1")
        dst.units = ["DN"] * count
        dst.scales, dst.offsets = [0.5] * count, [1.0] * count


def assert_profile_kept(out: Path, src: Path, scale: int = 1) -> None:
    """`out` has `src`'s GeoTIFF profile (pixel size divided by `scale`); stale statistics are dropped."""
    with rasterio.open(src) as a, rasterio.open(out) as b:
        assert (b.crs, b.dtypes, b.nodata, b.count) == (a.crs, a.dtypes, a.nodata, a.count)
        np.testing.assert_allclose(tuple(b.transform), tuple(a.transform * Affine.scale(1 / scale)))
        assert b.compression == a.compression and b.block_shapes == a.block_shapes and b.profile["tiled"]
        assert b.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == a.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        assert (b.descriptions, b.units, b.scales, b.offsets) == (a.descriptions, a.units, a.scales, a.offsets)
        assert b.tags() == a.tags()
        for i in range(1, a.count + 1):
            assert b.tags(i) == {k: v for k, v in a.tags(i).items() if k != "STATISTICS_MEAN"}


# ----------------------------------------------------------------------------- the nodata rule
def test_nodata_is_a_pixel_whose_every_band_says_so(tmp_path):
    data = np.full((3, 6, 6), 100, np.uint8)
    data[:, 0, 0] = 255  # a hole
    data[0, 1, 1] = 255  # one band happens to equal the nodata value: valid
    rich_geotiff(tmp_path / "a.tif", data, nodata=255)
    mask = read_geotiff(tmp_path / "a.tif").nodata_mask
    assert mask[0, 0] and mask.sum() == 1
    with rasterio.open(tmp_path / "a.tif") as src:  # GDAL's own dataset mask agrees
        np.testing.assert_array_equal(src.dataset_mask() == 0, mask)
    assert read_geotiff(tmp_path / "a.tif", window=(1, 1, 4, 4)).nodata_mask is None

    floats = data.astype(np.float32)
    floats[:, 5, 5], floats[1, 2, 2] = np.nan, np.nan
    assert nodata_pixels(floats, float("nan")).sum() == 1 and nodata_pixels(floats, 255.0).sum() == 1
    assert nodata_pixels(data, -9999) is None and nodata_pixels(data, None) is None  # not a uint8 value

    # an internal mask (no nodata value) is read, and written back as one
    with rasterio.open(tmp_path / "masked.tif", "w", driver="GTiff", width=6, height=6, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=ORIGIN) as dst:
        dst.write(data)
        dst.write_mask(np.where(np.eye(6, dtype=bool), 0, 255).astype(np.uint8))
    raster = read_geotiff(tmp_path / "masked.tif")
    np.testing.assert_array_equal(raster.nodata_mask, np.eye(6, dtype=bool))
    write_geotiff(tmp_path / "copy.tif", raster)
    with rasterio.open(tmp_path / "copy.tif") as copy:
        np.testing.assert_array_equal(copy.dataset_mask() == 0, np.eye(6, dtype=bool))


def test_holes_are_filled_from_valid_neighbours_and_written_back():
    data = np.array([[[10, 20, 255], [30, 40, 255], [255, 255, 255]]], np.uint8)
    mask = (data == 255).all(0)
    filled = fill_nodata(data, mask)
    assert filled.dtype == np.uint8 and filled[0, 0, 2] == 20 and filled[0, 2, 0] == 30 and filled[0, 2, 2] == 40
    assert (fill_nodata(data, np.ones((3, 3), bool)) == data).all()  # nothing valid: nothing to take

    out = np.array([[[255, 0, 7], [255, 3, 9], [1, 2, 4]]], np.uint8)  # a model output; 255 in valid pixels too
    marked = mark_nodata(out, mask, 255)
    assert (marked[:, mask] == 255).all() and (marked[:, ~mask] != 255).all()
    assert marked[0, 0, 0] == 254 and marked[0, 1, 0] == 254  # one step down from the top of uint8
    assert mark_nodata(out, None, 0)[0, 0, 1] == 1  # one step up from 0
    floats = mark_nodata(np.array([[[-9999.0, 5.0]]], np.float32), None, -9999)
    assert floats[0, 0, 0] != -9999 and floats[0, 0, 0] == pytest.approx(-9999)
    assert (mark_nodata(out, mask, None) == out).all()  # no value: nothing to mark


# ----------------------------------------------------------------------------- denoise
def test_real_osbs_029_saturated_sand_is_no_hole_and_holes_stay_out_of_the_model(tmp_path, monkeypatch):
    """OSBS_029 declares nodata 255: 2126 pixels have a band at 255 (saturated white sand), 461
    have all three. Only those are holes; a window of it goes through denoise --method
    robust-pca with its holes filled from their neighbours, and comes back with the same holes
    and no other value at 255."""
    path = deepforest_dir() / "OSBS_029.tif"
    if not path.exists():
        pytest.skip("deepforest data not installed")
    full = read_geotiff(path)
    assert full.nodata == 255 and full.nodata_mask.sum() == 461 and (full.data == 255).any(0).sum() == 2126

    window = read_geotiff(path, window=(288, 208, 336, 256))  # the 48x48 px with the most saturated sand
    holes = window.nodata_mask
    saturated = (window.data == 255).any(0) & ~holes
    assert holes.sum() == 67 and saturated.sum() == 225
    write_geotiff(tmp_path / "sand.tif", window)

    seen = []
    original = denoise_job.robust_low_rank
    monkeypatch.setattr(denoise_job, "robust_low_rank", lambda data, *a: seen.append(data) or original(data, *a))
    assert main(["denoise", str(tmp_path / "sand.tif"), "--out", str(tmp_path / "out.tif"),
                 "--method", "robust-pca"]) == 0
    fed = seen[0]  # the cube the fit saw: no 255 holes, the nearest valid pixel's values instead
    assert not (fed[:, holes] == 255).all(0).any()
    np.testing.assert_array_equal(fed, fill_nodata(window.data, holes).astype(np.float32))

    with rasterio.open(tmp_path / "out.tif") as out:
        denoised, valid = out.read(), out.dataset_mask() > 0
        assert out.nodata == 255 and out.compression == rasterio.enums.Compression.lzw  # as the input
    np.testing.assert_array_equal(~valid, holes)
    assert (denoised[:, holes] == 255).all() and not (denoised[:, ~holes] == 255).any()
    assert np.abs(denoised[:, ~holes].astype(int) - window.data[:, ~holes]).mean() < 8  # denoised, not changed


def test_denoise_keeps_the_geotiff_profile_nodata_and_wavelengths(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.random((6, 24, 24)) * 1000 + 500).astype(np.uint16)
    data[:, :4, :4] = 0  # a hole
    data[2, 10, 10] = 0  # one band at the nodata value: valid
    rich_geotiff(tmp_path / "in.tif", data, nodata=0)
    args = ["--method", "robust-pca"]
    assert main(["denoise", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif"), *args]) == 0
    assert_profile_kept(tmp_path / "out.tif", tmp_path / "in.tif")
    with rasterio.open(tmp_path / "out.tif") as out:
        denoised = out.read()
    assert (denoised[:, :4, :4] == 0).all() and (denoised.reshape(6, -1).astype(bool).sum(0) > 0).sum() == 24 * 24 - 16
    assert (denoised[:, 4:, :] != 0).all() and (denoised[:, :, 4:] != 0).all()

    # as ENVI: a GIS tool finds the grid, the nodata value, band names and wavelengths (from the band tags)
    assert main(["denoise", str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.hdr"), *args]) == 0
    with rasterio.open(tmp_path / "out.img") as envi:
        assert envi.crs.to_epsg() == 32617 and envi.nodata == 0
        np.testing.assert_allclose(tuple(envi.transform), tuple(ORIGIN))
        assert envi.descriptions[1].startswith("band 1 (500 nm)")
        assert float(envi.tags(2)["wavelength"]) == pytest.approx(0.5) and envi.tags(2)["wavelength_units"] == "Micrometers"
        assert (envi.read()[:, :4, :4] == 0).all()
    np.testing.assert_allclose(read_cube(tmp_path / "out.hdr").wavelengths, np.arange(450, 750, 50) / 1000)


def test_denoise_envi_to_envi_keeps_its_header(tmp_path):
    """map info, coordinate system string, data ignore value, reflectance scale factor,
    wavelengths (nm in, micrometres out: with their units), fwhm and band names survive."""
    rng = np.random.default_rng(1)
    data = (rng.random((5, 12, 12)) * 3000 + 100).astype("<i2")
    data[:, 0, :] = -9999
    (tmp_path / "in.img").write_bytes(data.tobytes())
    crs = rasterio.crs.CRS.from_epsg(32617).to_wkt(version=WktVersion.WKT1_ESRI)
    (tmp_path / "in.hdr").write_text(
        "ENVI\nsamples = 12\nlines = 12\nbands = 5\nheader offset = 0\nfile type = ENVI Standard\n"
        "data type = 2\ninterleave = bsq\nbyte order = 0\n"
        "map info = {UTM, 1, 1, 404000, 3285000, 2, 2, 17, North, WGS-84}\n"
        f"coordinate system string = {{{crs}}}\n"
        "data ignore value = -9999\nreflectance scale factor = 10000\nwavelength units = Nanometers\n"
        "wavelength = {450, 550, 650, 750, 850}\nfwhm = {10, 10, 12, 12, 15}\nband names = {a, b, c, d, e}\n")
    assert main(["denoise", str(tmp_path / "in.hdr"), "--out", str(tmp_path / "out.hdr"),
                 "--method", "robust-pca", "--rank", "2"]) == 0
    header = parse_envi_header(tmp_path / "out.hdr")
    assert header["map info"] == ["UTM", "1", "1", "404000", "3285000", "2", "2", "17", "North", "WGS-84"]
    assert header["reflectance scale factor"] == "10000" and header["data ignore value"] == "-9999"
    assert header["wavelength units"] == "Micrometers" and header["wavelength"][0] == "0.45"
    assert header["fwhm"] == ["0.01", "0.01", "0.012", "0.012", "0.015"] and header["band names"][4] == "e"
    with rasterio.open(tmp_path / "out.img") as envi:
        assert envi.crs.to_epsg() == 32617 and envi.nodata == -9999 and envi.res == (2, 2)
        assert (envi.transform.c, envi.transform.f) == (404000, 3285000)
        denoised = envi.read()
    assert (denoised[:, 0, :] == -9999).all() and (denoised[:, 1:, :] > -1000).all()  # the holes stayed out of the fit


# ----------------------------------------------------------------------------- --rank
def test_denoise_rank_is_checked_before_any_work(tmp_path, capsys):
    np.save(tmp_path / "five.npy", np.random.default_rng(0).random((5, 8, 8)).astype(np.float32))
    out = tmp_path / "out.npy"
    cases = [(["--method", "robust-pca", "--rank", "5"], "--rank 5 is not below the cube's 5 bands; use at most 4"),
             (["--method", "robust-pca", "--rank", "50"], "--rank 50"),
             (["--method", "robust-pca", "--rank", "0"], "at least 1"),
             (["--rank", "2"], "--rank applies to --method robust-pca only")]
    for extra, words in cases:
        assert main(["denoise", str(tmp_path / "five.npy"), "--out", str(out), *extra]) == 1, extra
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "five.npy" in err and words in err, err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["five.npy"]
    assert main(["denoise", str(tmp_path / "five.npy"), "--out", str(out), "--method", "robust-pca", "--rank", "4"]) == 0

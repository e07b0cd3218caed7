"""Hyperspectral readers: ENVI (bsq/bil/bip, byte orders, offsets), .mat, .npy, GeoTIFF,
the real earthlib spectral library, and bad input."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from earthsynth.data.hsi import (
    Cube,
    parse_envi_header,
    read_cube,
    read_envi,
    read_mat,
    read_npy,
    read_spectral_library,
    read_tiff_cube,
    write_envi,
)
from earthsynth.errors import InputError
from tests_support import assert_input_error

B, ROWS, COLS = 6, 5, 7


def make_cube() -> np.ndarray:
    """(bands, rows, cols) with every value distinct, so a wrong axis order shows."""
    return np.arange(B * ROWS * COLS, dtype=np.float32).reshape(B, ROWS, COLS) / 10.0


def write_raw_envi(folder: Path, data_bhw: np.ndarray, interleave: str, dtype: str = "<f4",
                   code: int = 4, offset: int = 0, extra: str = "", name: str = "cube.img") -> Path:
    """An ENVI pair written with numpy directly, independent of write_envi."""
    bands, rows, cols = data_bhw.shape
    order = {"bsq": (0, 1, 2), "bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    payload = np.ascontiguousarray(data_bhw.transpose(order)).astype(dtype).tobytes()
    (folder / name).write_bytes(b"\0" * offset + payload)
    byte_order = 1 if dtype.startswith(">") else 0
    header = (f"ENVI\nsamples = {cols}\nlines = {rows}\nbands = {bands}\nheader offset = {offset}\n"
              f"file type = ENVI Standard\ndata type = {code}\ninterleave = {interleave}\n"
              f"byte order = {byte_order}\n{extra}")
    hdr = folder / (Path(name).stem + ".hdr")
    hdr.write_text(header)
    return hdr


# ----------------------------------------------------------------------------- ENVI
def test_envi_write_read_round_trip(tmp_path):
    cube = Cube(make_cube(), wavelengths=np.linspace(0.4, 2.5, B), band_names=[f"b{i}" for i in range(B)])
    hdr = write_envi(tmp_path / "scene.img", cube)
    assert hdr == tmp_path / "scene.hdr"
    for path in (hdr, tmp_path / "scene.img"):
        read = read_envi(path)
        np.testing.assert_array_equal(read.data, cube.data)
        np.testing.assert_allclose(read.wavelengths, cube.wavelengths)
        assert read.band_names == cube.band_names and read.data.dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.hdr", "scene.img"]


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
def test_envi_interleaves(tmp_path, interleave):
    hdr = write_raw_envi(tmp_path, make_cube(), interleave)
    np.testing.assert_array_equal(read_envi(hdr).data, make_cube())


def test_envi_big_endian_int16_offset_and_nanometres(tmp_path):
    data = (make_cube() * 10).astype(np.int16)
    wavelengths = "wavelength units = Nanometers\nwavelength = {\n 400, 500, 600,\n 700, 800, 900 }\n"
    hdr = write_raw_envi(tmp_path, data, "bil", dtype=">i2", code=2, offset=128, extra=wavelengths)
    cube = read_cube(hdr)
    np.testing.assert_array_equal(cube.data, data.astype(np.float32))
    np.testing.assert_allclose(cube.wavelengths, [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


@pytest.mark.parametrize("code, dtype", [(1, "u1"), (3, "<i4"), (5, "<f8"), (12, "<u2")])
def test_envi_data_types(tmp_path, code, dtype):
    data = make_cube().astype(dtype)
    hdr = write_raw_envi(tmp_path, data, "bsq", dtype=dtype, code=code)
    np.testing.assert_array_equal(read_envi(hdr).data, data.astype(np.float32))


def test_envi_header_beside_data_with_its_full_name(tmp_path):
    hdr = write_raw_envi(tmp_path, make_cube(), "bip", name="x.dat")
    hdr.rename(tmp_path / "x.dat.hdr")  # the `name.ext.hdr` form, as earthlib ships its library
    np.testing.assert_array_equal(read_cube(tmp_path / "x.dat").data, make_cube())
    np.testing.assert_array_equal(read_cube(tmp_path / "x.dat.hdr").data, make_cube())


def test_earthlib_spectral_library():
    spec = importlib.util.find_spec("earthlib")
    if spec is None:
        pytest.skip("earthlib not installed")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    spectra, wavelengths, names = read_spectral_library(folder / "spectra.sli")
    assert spectra.shape == (7261, 180) and spectra.dtype == np.float32
    assert len(wavelengths) == 180 and len(names) == 7261
    assert wavelengths[0] == pytest.approx(0.40) and wavelengths[-1] == pytest.approx(2.45)
    assert np.all(np.diff(wavelengths) > 0)
    np.testing.assert_array_equal(spectra, np.fromfile(folder / "spectra.sli", "<f4").reshape(-1, 180))
    assert names[0] == "FS15R_FS4275"
    header = parse_envi_header(folder / "spectra.sli.hdr")
    assert header["file type"] == "ENVI Spectral Library" and header["samples"] == "180"
    for reader in (read_envi, read_cube):
        with pytest.raises(InputError) as err:
            reader(folder / "spectra.sli")
        assert_input_error(err, folder / "spectra.sli", "read_spectral_library")


def test_envi_truncated_file(tmp_path):
    hdr = write_raw_envi(tmp_path, make_cube(), "bsq")
    data_path = tmp_path / "cube.img"
    data_path.write_bytes(data_path.read_bytes()[:-10])
    with pytest.raises(InputError) as err:
        read_envi(hdr)
    assert_input_error(err, data_path, "truncated", f"{B * ROWS * COLS * 4 - 10} bytes", f"= {B * ROWS * COLS * 4}")


@pytest.mark.parametrize("header, words", [
    ("samples = 7\nlines = 5\n", ["not an ENVI header"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = 6\ndata type = 6\n", ["data type 6 is not supported"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = six\ndata type = 4\n", ["'bands' is 'six'"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = 6\ndata type = 4\ninterleave = bsx\n", ["interleave 'bsx'"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = 6\ndata type = 4\nwavelength = {1, 2}\n", ["'wavelength' lists 2 values for 6 bands"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = 6\ndata type = 4\nband names = {a,\n b\n", ["no closing brace"]),
    ("ENVI\nsamples = 7\nlines = 5\nbands = 6\ndata type = 4\nband names = {a,\n b}\n", ["'band names' lists 2 names for 6 bands"]),
])
def test_envi_bad_headers(tmp_path, header, words):
    (tmp_path / "cube.img").write_bytes(make_cube().astype("<f4").tobytes())
    (tmp_path / "cube.hdr").write_text(header)
    with pytest.raises(InputError) as err:
        read_envi(tmp_path / "cube.hdr")
    assert_input_error(err, tmp_path / "cube.hdr", *words)


def test_envi_missing_files(tmp_path):
    (tmp_path / "lonely.hdr").write_text("ENVI\n")
    with pytest.raises(InputError) as err:
        read_envi(tmp_path / "lonely.hdr")
    assert_input_error(err, tmp_path / "lonely.hdr", "no data file")
    (tmp_path / "raw.img").write_bytes(b"\0" * 8)
    with pytest.raises(InputError) as err:
        read_envi(tmp_path / "raw.img")
    assert_input_error(err, tmp_path / "raw.img", "no ENVI header")


def test_envi_failed_write_leaves_nothing(tmp_path):
    cube = Cube(make_cube(), band_names=["red, green"] + [f"b{i}" for i in range(B - 1)])
    with pytest.raises(InputError) as err:
        write_envi(tmp_path / "x.img", cube)
    assert_input_error(err, tmp_path / "x.hdr", "comma")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- NaN and band count
def test_nan_and_band_count_are_refused(tmp_path):
    data = make_cube()
    data[2, 0, :3] = np.nan
    data[4, 1, 1] = np.inf
    hdr = write_envi(tmp_path / "nan.img", Cube(data))
    with pytest.raises(InputError) as err:
        read_cube(hdr)
    assert_input_error(err, tmp_path / "nan.img", "band 2 has 3 NaN/inf values", "and 1 other band)", "allow_nan=True")
    assert np.isnan(read_cube(hdr, allow_nan=True).data[2, 0, 0])

    np.save(tmp_path / "nan.npy", data)
    with pytest.raises(InputError) as err:
        read_cube(tmp_path / "nan.npy")
    assert_input_error(err, tmp_path / "nan.npy", "band 2 has 3")

    with pytest.raises(InputError) as err:
        read_cube(hdr, allow_nan=True, expected_bands=200)
    assert_input_error(err, tmp_path / "nan.img", f"has {B} bands, expected 200")


# ----------------------------------------------------------------------------- .mat
def test_mat_hwb_is_transposed(tmp_path):
    hwb = make_cube().transpose(1, 2, 0)  # as Indian Pines & co. are stored
    scipy.io.savemat(tmp_path / "scene.mat", {"small": np.ones((2, 2, 2)), "indian_pines": hwb, "gt": np.ones((ROWS, COLS))})
    cube = read_cube(tmp_path / "scene.mat", expected_bands=B)
    np.testing.assert_array_equal(cube.data, make_cube())
    assert cube.metadata["key"] == "indian_pines"
    assert read_mat(tmp_path / "scene.mat", key="small").data.shape == (2, 2, 2)
    with pytest.raises(InputError) as err:
        read_mat(tmp_path / "scene.mat", key="gt")
    assert_input_error(err, tmp_path / "scene.mat", "'gt'", "not a 3-D numeric cube")


def test_mat_band_first_and_errors(tmp_path):
    scipy.io.savemat(tmp_path / "bhw.mat", {"cube": make_cube()})
    np.testing.assert_array_equal(read_mat(tmp_path / "bhw.mat", layout="BHW").data, make_cube())
    scipy.io.savemat(tmp_path / "flat.mat", {"gt": np.ones((ROWS, COLS))})
    with pytest.raises(InputError) as err:
        read_mat(tmp_path / "flat.mat")
    assert_input_error(err, tmp_path / "flat.mat", "no 3-D numeric array")
    (tmp_path / "bad.mat").write_bytes((tmp_path / "bhw.mat").read_bytes()[:200])
    with pytest.raises(InputError) as err:
        read_mat(tmp_path / "bad.mat")
    assert_input_error(err, tmp_path / "bad.mat", "cannot read as a MATLAB file")


@pytest.mark.skipif(importlib.util.find_spec("h5py") is not None, reason="h5py installed: v7.3 files are read")
def test_mat_v73_without_h5py(tmp_path):
    # a v7.3 MAT header: 116 text bytes, 8 subsystem bytes, version 0x0200, endian 'IM'
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    (tmp_path / "v73.mat").write_bytes(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM" + b"\0" * 384)
    with pytest.raises(InputError) as err:
        read_cube(tmp_path / "v73.mat")
    assert_input_error(err, tmp_path / "v73.mat", "v7.3", "h5py")


# ----------------------------------------------------------------------------- .npy
def test_npy_layouts(tmp_path):
    np.save(tmp_path / "bhw.npy", make_cube())
    np.testing.assert_array_equal(read_npy(tmp_path / "bhw.npy").data, make_cube())
    square = np.random.default_rng(0).random((8, 8, 30)).astype(np.float32)  # (H, W, bands) by the rule
    np.save(tmp_path / "hwb.npy", square)
    cube = read_cube(tmp_path / "hwb.npy")
    assert cube.data.shape == (30, 8, 8) and cube.metadata["layout"] == "HWB"
    assert read_npy(tmp_path / "hwb.npy", layout="BHW").data.shape == (8, 8, 30)
    np.save(tmp_path / "band_first.npy", make_cube().transpose(1, 2, 0))
    np.testing.assert_array_equal(read_npy(tmp_path / "band_first.npy", layout="HWB").data, make_cube())


def test_npy_errors(tmp_path):
    np.save(tmp_path / "flat.npy", np.ones((4, 4)))
    with pytest.raises(InputError) as err:
        read_npy(tmp_path / "flat.npy")
    assert_input_error(err, tmp_path / "flat.npy", "expected a 3-D array")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as err:
        read_npy(tmp_path / "objects.npy")
    assert_input_error(err, tmp_path / "objects.npy", "cannot read as .npy")
    np.save(tmp_path / "cut.npy", make_cube())
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-20])
    with pytest.raises(InputError) as err:
        read_npy(tmp_path / "cut.npy")
    assert_input_error(err, tmp_path / "cut.npy", "cannot read as .npy")
    with pytest.raises(InputError) as err:
        read_cube(tmp_path / "cube.xyz")
    assert_input_error(err, tmp_path / "cube.xyz", "unknown cube format")


# ----------------------------------------------------------------------------- GeoTIFF
def test_geotiff_cube(tmp_path):
    import rasterio
    from affine import Affine

    transform = Affine(1.0, 0.0, 400000.0, 0.0, -1.0, 3300000.0)
    with rasterio.open(tmp_path / "cube.tif", "w", driver="GTiff", width=COLS, height=ROWS, count=B,
                       dtype="float32", crs="EPSG:32617", transform=transform) as dst:
        dst.write(make_cube())
    cube = read_cube(tmp_path / "cube.tif", expected_bands=B)
    np.testing.assert_array_equal(cube.data, make_cube())
    assert cube.metadata["crs"] == "EPSG:32617"
    assert cube.metadata["transform"] == tuple(transform)[:6]
    (tmp_path / "cut.tif").write_bytes((tmp_path / "cube.tif").read_bytes()[:300])
    with pytest.raises(InputError) as err:
        read_tiff_cube(tmp_path / "cut.tif")
    assert_input_error(err, tmp_path / "cut.tif", "truncated, corrupt")


def test_real_deepforest_geotiff():
    spec = importlib.util.find_spec("deepforest")
    if spec is None:
        pytest.skip("deepforest data not installed")
    cube = read_cube(Path(spec.submodule_search_locations[0]) / "data" / "OSBS_029.tif", expected_bands=3)
    assert cube.data.shape == (3, 400, 400) and cube.metadata["crs"] == "EPSG:32617"
    assert cube.metadata["transform"][0] == pytest.approx(0.1)  # NEON RGB: 0.1 m pixels


def test_geotiff_wavelengths_from_band_tags_or_descriptions(tmp_path):
    from earthsynth.data.geotiff import Raster, write_geotiff

    data = make_cube()
    tagged = [{"wavelength": str(400 + 100 * i), "wavelength_units": "Nanometers", "fwhm": "10"} for i in range(B)]
    write_geotiff(tmp_path / "tags.tif", Raster(data, band_tags=tagged))
    cube = read_cube(tmp_path / "tags.tif")
    np.testing.assert_allclose(cube.wavelengths, np.arange(400, 1000, 100) / 1000)
    np.testing.assert_allclose(cube.fwhm, [0.01] * B)
    described = [f"B{i} ({0.4 + 0.1 * i:.1f} Micrometers)" for i in range(B - 1)] + ["B5 905 nm"]
    write_geotiff(tmp_path / "names.tif", Raster(data, band_names=described))
    np.testing.assert_allclose(read_cube(tmp_path / "names.tif").wavelengths, [0.4, 0.5, 0.6, 0.7, 0.8, 0.905])
    write_geotiff(tmp_path / "partly.tif", Raster(data, band_names=described[:-1] + ["B5"]))
    assert read_cube(tmp_path / "partly.tif").wavelengths is None  # every band or none


def test_envi_keeps_a_geotiff_grid_nodata_and_the_envi_header(tmp_path):
    """write_envi gives a GeoTIFF cube's CRS and (rotated) transform GDAL's map info and
    coordinate system string, its nodata as data ignore value; an ENVI cube's header keys come
    back as they were. rasterio reads it all back."""
    import rasterio
    from affine import Affine

    from earthsynth.data.geotiff import Raster, write_geotiff

    data = make_cube()
    data[:, 0, 0] = -1
    transform = Affine.translation(400000, 3300000) * Affine.rotation(15) * Affine.scale(2, -2)
    write_geotiff(tmp_path / "grid.tif", Raster(data, crs="EPSG:32617", transform=tuple(transform)[:6], nodata=-1))
    cube = read_cube(tmp_path / "grid.tif")
    assert cube.metadata["nodata_mask"].sum() == 1
    write_envi(tmp_path / "grid.hdr", cube)
    with rasterio.open(tmp_path / "grid.img") as envi:
        assert envi.crs.to_epsg() == 32617 and envi.nodata == -1
        np.testing.assert_allclose(tuple(envi.transform), tuple(transform), atol=1e-6)

    again = read_envi(tmp_path / "grid.hdr")
    assert again.metadata["nodata"] == -1 and again.metadata["nodata_mask"].sum() == 1
    again.metadata["envi"]["reflectance scale factor"] = "10000"
    write_envi(tmp_path / "copy.hdr", again)
    copied = parse_envi_header(tmp_path / "copy.hdr")
    for key in ("map info", "coordinate system string", "reflectance scale factor", "data ignore value"):
        assert copied[key] == again.metadata["envi"][key], key


def test_nan_nodata_pixels_are_holes_not_bad_values(tmp_path):
    from earthsynth.data.geotiff import Raster, write_geotiff

    data = make_cube()
    data[:, 1, 1] = np.nan  # a hole
    write_geotiff(tmp_path / "holes.tif", Raster(data, nodata=float("nan")))
    assert read_cube(tmp_path / "holes.tif").metadata["nodata_mask"].sum() == 1
    data[2, 3, 3] = np.nan  # one band only: a bad value
    write_geotiff(tmp_path / "bad.tif", Raster(data, nodata=float("nan")))
    with pytest.raises(InputError) as err:
        read_cube(tmp_path / "bad.tif")
    assert_input_error(err, tmp_path / "bad.tif", "band 2 has 1 NaN/inf values")

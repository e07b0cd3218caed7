"""`earthsynth app`: the Gradio demo served on a free local port and called through
gradio_client, one endpoint per tab; bad uploads give one readable line and the app keeps
serving; Stop ends a running job's child process; tabs without a model say so; a session's
uploads and outputs go when it ends, and everything the app wrote when it stops."""

import os
import socket
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

gr = pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from PIL import Image  # noqa: E402

from earthsynth.app import augment, hyperspectral, launch_app  # noqa: E402
from earthsynth.app.common import AppContext  # noqa: E402
from earthsynth.app.ui import build_app  # noqa: E402
from earthsynth.boxes import Boxes  # noqa: E402
from earthsynth.cli import main  # noqa: E402
from earthsynth.data.export import DatasetWriter  # noqa: E402
from earthsynth.data.geotiff import Raster, read_geotiff, write_geotiff  # noqa: E402
from earthsynth.data.hsi import Cube, read_cube, write_envi  # noqa: E402
from earthsynth.generation.ediffsr import EDiffSRPipeline, MeanRevertingScheduler  # noqa: E402
from test_hsi import tiny_pipeline  # noqa: E402
from test_upscale import tiny_eanet  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # pandas 3 notices about gradio's own calls
    "ignore:.*future.no_silent_downcasting.*", "ignore:The copy keyword is deprecated")

HEADERS = ["class", "cx", "cy", "w", "h", "angle"]
MAX_UPLOAD = 1024 * 1024  # the test app's upload limit, in bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows):
    """A Dataframe value as the API takes it."""
    return {"headers": HEADERS, "data": rows}


def tiny_models(folder: Path) -> Path:
    """--model-dir with tiny untrained hsi, x4 ediffsr, text2earth and crsdiff pipelines (aerogen
    stays the bundled one)."""
    tiny_pipeline().save_pretrained(folder / "hsi")
    EDiffSRPipeline(eanet=tiny_eanet(), scheduler=MeanRevertingScheduler(num_train_timesteps=20)).save_pretrained(
        folder / "ediffsr")
    for family in ("text2earth", "crsdiff"):
        tiny_metadata_pipeline(family).save_pretrained(folder / family)
    return folder


def tiny_metadata_pipeline(family: str):
    """An untrained text2earth or crsdiff pipeline: stride 8, 64 px tiles."""
    from earthsynth.config import load_config
    from earthsynth.registry import get_family

    overrides = ["model.block_out_channels=[16,32,32,32]", "model.attention_head_dim=8"]
    if family == "crsdiff":
        from earthsynth.generation.crsdiff.train import make_pipeline

        overrides.append("model.adapter_hidden=8")
    else:
        from earthsynth.generation.text2earth.train import make_pipeline
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{family}.yaml", overrides)
    return make_pipeline(get_family(family).build(config))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    models = tiny_models(tmp_path_factory.mktemp("models"))
    port = free_port()
    demo, ctx = launch_app("127.0.0.1", port, model_dir=models, max_file_size=MAX_UPLOAD, block=False)
    client = session_client(f"http://127.0.0.1:{port}/", tmp_path_factory.mktemp("downloads"))
    yield client, ctx
    demo.close()
    ctx.remove_all()


def session_client(url: str, downloads: Path) -> Client:
    """A client (one browser session) that keeps what it downloads in `downloads` (by default
    gradio_client uses gradio's cache folder, where the app's own files are counted)."""
    return Client(url, verbose=False, download_files=str(downloads))


def assert_app_error(call, *words):
    """The call fails with one readable line holding `words`, no traceback, no temp folder."""
    with pytest.raises(AppError) as err:
        call()
    message = str(err.value)
    assert "Traceback" not in message and "\n" not in message.strip()
    assert "earthsynth-app-" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def still_serving(client):
    _, note = client.predict(table([["Tree", 32, 32, 10, 10, 0]]), api_name="/layout_preview")
    assert note.startswith("1 box on")


def test_app_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--model-dir"):
        assert flag in out


# ----------------------------------------------------------------------------- layout
def test_layout_tab_generates_an_image_with_its_boxes(app):
    client, _ = app
    rows = [["Tree", 18, 20, 16, 14, 0], ["Tree", 44, 42, 20, 18, 30], ["", "", "", "", "", ""]]
    preview, note = client.predict(table(rows), api_name="/layout_preview")
    assert np.asarray(Image.open(preview)).shape == (256, 256, 3) and note.startswith("2 boxes")

    annotated, plain, layout = client.predict(table(rows), "", 2, 4.0, 2.0, 0, api_name="/layout_generate")
    assert np.asarray(Image.open(plain)).shape == (64, 64, 3)
    annotated = np.asarray(Image.open(annotated))
    assert annotated.shape == (256, 256, 3)
    assert len(layout["boxes"]) == 2 and layout["boxes"][1] == dict(zip(HEADERS, ["Tree", 44, 42, 20, 18, 30]))
    assert "2 trees" in layout["prompt"]  # the empty prompt became a caption of the boxes
    # the boxes are drawn: the outline colour of the class is on the enlarged image
    outline = np.all(annotated == augment_palette_colour(), axis=-1)
    assert outline.sum() > 100

    new_rows, prompt, _, _, next_draw = client.predict(5, api_name="/layout_random")
    assert next_draw == 6 and new_rows["headers"] == HEADERS and "m/px" in prompt
    again, _, _, _, _ = client.predict(5, api_name="/layout_random")
    assert again == new_rows  # a draw number is one layout


def augment_palette_colour():
    from earthsynth.augment.report import PALETTE

    return PALETTE[0]


def test_layout_tab_bad_tables_are_one_line(app):
    client, _ = app
    assert_app_error(lambda: client.predict(table([["Tree", "abc", 20, 10, 10, 0]]), "x", 2, 4.0, 0.0, 0,
                                            api_name="/layout_generate"), "box row 1", "cx", "not a number")
    assert_app_error(lambda: client.predict(table([["Tree", 60, 20, 30, 10, 0]]), "x", 2, 4.0, 0.0, 0,
                                            api_name="/layout_generate"), "outside the 64x64 image")
    _, note = client.predict(table([["Tree", 60, 20, 30, 10, 0]]), api_name="/layout_preview")
    assert "outside the canvas" in note
    still_serving(client)


# ----------------------------------------------------------------------------- hyperspectral
def test_hyperspectral_example_with_noise_is_denoised_and_scored(app):
    client, _ = app
    status, before, after, spectrum, downloads, x, y = client.predict(
        hyperspectral.EXAMPLE, [], "stripes", 1.0, 1, 0.5, 0, "", "auto", api_name="/hsi_denoise")
    assert "PSNR" in status and "| input |" in status and "| denoised |" in status
    assert np.asarray(Image.open(before)).shape == np.asarray(Image.open(after)).shape == (256, 256, 3)
    assert (x, y) == (32, 32)
    assert [Path(d).suffix for d in downloads] == [".npy"]
    denoised = read_cube(downloads[0], layout="BHW").data
    assert denoised.shape == (64, 64, 64) and np.isfinite(denoised).all()
    assert {row[2] for row in spectrum["data"]} == {"input", "denoised", "clean"}

    # the spectrum at a pixel is that pixel's: the clean curve is the example cube there
    spectrum = client.predict(3, 5, api_name="/hsi_spectrum")
    clean, wavelengths = hyperspectral.example_cube()
    curve = [row for row in spectrum["data"] if row[2] == "clean"]
    np.testing.assert_allclose([row[1] for row in curve], clean[:, 5, 3], rtol=1e-5)
    np.testing.assert_allclose([row[0] for row in curve], wavelengths, rtol=1e-6)
    assert_app_error(lambda: client.predict(99, 5, api_name="/hsi_spectrum"), "outside the 64 x 64 cube")


def test_hyperspectral_envi_upload_comes_back_as_envi(app, tmp_path):
    client, _ = app
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 0.5, (12, 20, 24)).astype(np.float32)
    header = write_envi(tmp_path / "scene.hdr", Cube(data, wavelengths=np.linspace(0.45, 0.95, 12)))
    status, _, after, _, downloads, x, y = client.predict(
        hyperspectral.UPLOAD, [handle_file(header), handle_file(tmp_path / "scene.img")], "none", 1.0, 1, 0.5, 0,
        "", "auto", api_name="/hsi_denoise")
    assert "PSNR" not in status  # no clean reference for an upload without added noise
    assert sorted(Path(d).name for d in downloads) == ["scene_denoised.hdr", "scene_denoised.img"]
    for download in downloads:  # the client keeps each download in a folder of its own
        (tmp_path / "back").mkdir(exist_ok=True)
        (tmp_path / "back" / Path(download).name).write_bytes(Path(download).read_bytes())
    returned = read_cube(tmp_path / "back" / "scene_denoised.hdr")
    assert returned.data.shape == (12, 20, 24)
    np.testing.assert_allclose(returned.wavelengths, np.linspace(0.45, 0.95, 12))
    assert (x, y) == (12, 10)


def test_hyperspectral_nan_cube_is_refused_and_the_app_goes_on(app, tmp_path):
    client, _ = app
    cube = np.ones((8, 16, 16), dtype=np.float32)
    cube[2, 3, 4] = np.nan
    np.save(tmp_path / "holes.npy", cube)
    assert_app_error(lambda: client.predict(hyperspectral.UPLOAD, [handle_file(tmp_path / "holes.npy")], "none",
                                            1.0, 1, 0.5, 0, "", "BHW", api_name="/hsi_denoise"),
                     "holes.npy", "NaN")
    still_serving(client)


# ----------------------------------------------------------------------------- super-resolution
def test_super_resolution_keeps_a_geotiff_georeferenced(app, tmp_path):
    client, _ = app
    data = np.random.default_rng(1).integers(0, 4000, (3, 16, 16)).astype(np.uint16)
    write_geotiff(tmp_path / "scene.tif", Raster(data=data, crs="EPSG:32617",
                                                 transform=(0.4, 0.0, 404000.0, 0.0, -0.4, 3285000.0)))
    status, before, after, result = client.predict(handle_file(tmp_path / "scene.tif"), "x4", 1, 0,
                                                   api_name="/sr_upscale")
    assert Path(result).name == "scene_x4.tif"
    out = read_geotiff(result)
    assert out.data.shape == (3, 64, 64) and out.data.dtype == np.uint16
    assert "32617" in str(out.crs) and out.transform[0] == pytest.approx(0.1) and out.transform[2] == 404000.0
    assert np.asarray(Image.open(after)).shape == (64, 64, 3) and "georeferencing kept" in status


def test_super_resolution_bad_and_oversize_uploads(app, tmp_path):
    client, _ = app
    (tmp_path / "notes.png").write_text("not an image at all")
    assert_app_error(lambda: client.predict(handle_file(tmp_path / "notes.png"), "x4", 1, 0,
                                            api_name="/sr_upscale"), "notes.png")
    (tmp_path / "big.png").write_bytes(b"\0" * (2 * MAX_UPLOAD))
    with pytest.raises(Exception) as err:  # refused at upload, before any handler runs
        client.predict(handle_file(tmp_path / "big.png"), "x4", 1, 0, api_name="/sr_upscale")
    assert "413" in str(err.value) or "size" in str(err.value).lower()
    still_serving(client)


# ----------------------------------------------------------------------------- augment
def test_augment_bundled_dataset_gives_a_coco_zip(app, tmp_path):
    from pycocotools.coco import COCO

    client, _ = app
    status, accepted, rejected, archive = client.predict(augment.BUNDLED, None, "voc", 2, ["coco", "yolo"], 4, 0,
                                                         api_name="/augment_run")
    assert "2 of 2 wanted images" in status
    assert len(accepted) == 2 and all("passed every check" in item["caption"] for item in accepted)
    assert rejected and all(":" in item["caption"] and "passed" not in item["caption"] for item in rejected)
    assert np.asarray(Image.open(accepted[0]["image"])).shape == (192, 192, 3)
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path)
    assert "synthetic-dataset/manifest.jsonl" in names and "synthetic-dataset/yolo/data.yaml" in names
    assert not any("/candidates/" in name for name in names)
    coco = COCO(str(tmp_path / "synthetic-dataset" / "coco" / "annotations" / "instances_train.json"))
    assert len(coco.getImgIds()) == 2
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["Tree"]


def test_augment_damaged_zip_is_one_line(app, tmp_path):
    client, _ = app
    dataset = voc_zip(tmp_path)
    (tmp_path / "cut.zip").write_bytes(dataset.read_bytes()[: dataset.stat().st_size // 2])
    assert_app_error(lambda: client.predict(augment.UPLOAD, handle_file(tmp_path / "cut.zip"), "voc", 1, ["coco"],
                                            2, 0, api_name="/augment_run"), "cut.zip", "not a readable zip")
    still_serving(client)


def voc_zip(folder: Path) -> Path:
    """A one-image VOC dataset (128 px, two trees) zipped inside a top-level folder."""
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3)).astype(np.uint8)
    with DatasetWriter(folder / "trees", "voc", ["Tree"]) as writer:
        writer.add("train", "plot_1", pixels, Boxes.from_xyxy([[10, 10, 40, 40], [60, 70, 100, 110]], ["Tree"] * 2))
    archive = folder / "trees.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((folder / "trees").rglob("*")):
            zf.write(path, path.relative_to(folder))
    return archive


def test_unpacked_zip_root_is_the_dataset_folder(tmp_path):
    root = augment.unpack_dataset(voc_zip(tmp_path), tmp_path / "unpacked")
    assert root == tmp_path / "unpacked" / "trees" and (root / "Annotations" / "plot_1.xml").is_file()


def test_stop_ends_the_running_job(app, tmp_path):
    client, _ = app
    job = client.submit(augment.UPLOAD, handle_file(voc_zip(tmp_path)), "voc", 64, ["coco"], 20, 0,
                        api_name="/augment_run")
    me = psutil.Process()
    deadline = time.monotonic() + 60
    while not me.children() and time.monotonic() < deadline:
        time.sleep(0.2)
    children = me.children()
    assert children, "the augment job never started"
    time.sleep(1.0)
    job.cancel()
    gone, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:  # never leave a runaway job behind a failed test
        child.kill()
    assert not alive, "Stop left the job running"
    still_serving(client)


# ----------------------------------------------------------------------------- text to image
PROMPT = "NEON airborne RGB orthophoto, dense vegetation"
UTM_GRID = (0.5, 0.0, 404000.0, 0.0, -0.5, 3285000.0)  # 0.5 m pixels near Gainesville, Florida


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 gradients with some noise, so edge maps are not empty."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    return np.clip(ramp + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def text_to_image(client, mode="single image", width=64, height=48, image=None, mask=None, gsd=0.2, unknown=False):
    return client.predict(PROMPT, gsd, unknown, width, height, mode, image, mask, 2, 4.0, 0, 0,
                          api_name="/text2image_generate")


def test_text_to_image_single_tiled_and_inpainted(app, tmp_path):
    client, _ = app
    status, image, download = text_to_image(client)
    assert np.asarray(Image.open(image)).shape == (48, 64, 3)
    assert Path(download).suffix == ".png" and np.asarray(Image.open(download)).shape == (48, 64, 3)
    assert "64 x 48 px" in status and "0.2 m/px" in status

    status, image, _ = text_to_image(client, "tiled scene", 136, 80, gsd=None, unknown=True)
    assert np.asarray(Image.open(image)).shape == (80, 136, 3)
    assert "tiles of 64 px overlapping by 16 px" in status and "GSD unknown" in status

    # a 70 x 50 GeoTIFF is cut to 64 x 48; outside the mask its pixels are kept, and its grid and GSD
    pixels = photo(50, 70)
    write_geotiff(tmp_path / "scene.tif", Raster(data=pixels.transpose(2, 0, 1), crs="EPSG:32617",
                                                 transform=UTM_GRID))
    mask = np.zeros((50, 70), dtype=np.uint8)
    mask[10:30, 20:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    status, image, download = text_to_image(client, "inpaint", 8, 8, handle_file(tmp_path / "scene.tif"),
                                            handle_file(tmp_path / "mask.png"), gsd=None, unknown=True)
    out = np.asarray(Image.open(image))
    assert out.shape == (48, 64, 3)
    kept = mask[:48, :64] == 0
    assert np.abs(out[kept].astype(int) - pixels[:48, :64][kept]).max() <= 1
    assert "cut from its top-left corner to 64 x 48 px" in status and "0.5 m/px read from the GeoTIFF" in status
    written = read_geotiff(download)
    assert Path(download).suffix == ".tif" and written.data.shape == (3, 48, 64)
    assert "32617" in str(written.crs) and written.transform == pytest.approx(UTM_GRID)


def test_text_to_image_bad_sizes_are_one_line(app, tmp_path):
    client, _ = app
    assert_app_error(lambda: text_to_image(client, width=60), "width", "60 px", "multiple of 8")
    assert np.asarray(Image.open(text_to_image(client)[1])).shape == (48, 64, 3)
    assert_app_error(lambda: text_to_image(client, width=512, height=512), "at most 256 px", "tiled scene")
    Image.fromarray(photo(40, 40)).save(tmp_path / "small.png")
    Image.fromarray(np.full((48, 64), 255, dtype=np.uint8)).save(tmp_path / "mask.png")
    assert_app_error(lambda: text_to_image(client, "inpaint", image=handle_file(tmp_path / "small.png"),
                                           mask=handle_file(tmp_path / "mask.png")), "mask.png", "image's size")
    status, image, _ = text_to_image(client, width=32, height=32)
    assert np.asarray(Image.open(image)).shape == (32, 32, 3)


# ----------------------------------------------------------------------------- control
def control(client, reference=None, maps=("canny",), dem=None, gsd="", date="", cloud="", lat="", lon=""):
    return client.predict(PROMPT, reference, list(maps), dem, gsd, date, cloud, lat, lon, 1.0, 2, 4.0, 0,
                          api_name="/control_generate")


def test_control_geotiff_reference_gives_maps_metadata_and_a_georeferenced_image(app, tmp_path):
    client, _ = app
    write_geotiff(tmp_path / "scene.tif", Raster(data=photo(50, 70).transpose(2, 0, 1), crs="EPSG:32617",
                                                 transform=UTM_GRID,
                                                 tags={"ACQUISITION_DATE": "2021-06-15", "CLOUD_COVER": "5"}))
    elevation = (np.linspace(100, 300, 40)[None, :] + np.linspace(0, 50, 30)[:, None]).astype(np.float32)
    write_geotiff(tmp_path / "dem.tif", Raster(data=elevation[None], crs="EPSG:32617",  # 1 m pixels, same place
                                               transform=(1.0, 0.0, 404000.0, 0.0, -1.0, 3285000.0)))
    status, gallery, image, download = control(client, handle_file(tmp_path / "scene.tif"),
                                               ["canny", "content", "landcover"], handle_file(tmp_path / "dem.tif"))
    assert np.asarray(Image.open(image)).shape == (48, 64, 3)
    assert [item["caption"] for item in gallery] == ["reference, 64 x 48 px", "canny edges",
                                                     "content (shuffled colours)", "land cover", "DEM (stretched)"]
    assert all(np.asarray(Image.open(item["image"])).shape == (48, 64, 3) for item in gallery)
    assert "cut from its top-left corner to 64 x 48 px" in status
    for fact in ("gsd 0.5 m/px", "year 2021", "month 6", "day 15", "cloud_cover 5 %", "lat 29.69", "lon -81.99"):
        assert fact in status, f"{fact!r} not in {status!r}"
    written = read_geotiff(download)
    assert Path(download).name == "scene_crsdiff.tif" and written.data.shape == (3, 48, 64)
    assert "32617" in str(written.crs) and written.transform == pytest.approx(UTM_GRID)


def test_control_bad_metadata_is_one_line_and_the_next_request_works(app, tmp_path):
    client, _ = app
    Image.fromarray(photo(64, 64)).save(tmp_path / "ref.png")
    reference = handle_file(tmp_path / "ref.png")
    assert_app_error(lambda: control(client, reference, date="2021-13"), "month", "13", "out of range")
    assert_app_error(lambda: control(client, None, ["sketch"]), "reference", "upload one")
    assert_app_error(lambda: control(client, reference, lat="north"), "lat", "not a number")
    status, gallery, image, download = control(client, reference, ["sketch"], gsd="0.3", date="2021-07", lat="45",
                                               lon="7")
    assert np.asarray(Image.open(image)).shape == (64, 64, 3) and Path(download).suffix == ".png"
    assert [item["caption"] for item in gallery] == ["reference, 64 x 64 px", "sketch"]
    assert "gsd 0.3 m/px" in status and "month 7" in status and "cut from" not in status
    # no reference: prompt and metadata only, at the model's tile size
    _, gallery, image, _ = control(client, None, [], gsd="10")
    assert np.asarray(Image.open(image)).shape == (64, 64, 3) and gallery == []


# ----------------------------------------------------------------------------- missing models
def test_tabs_without_a_model_say_how_to_get_one(monkeypatch, tmp_path):
    import earthsynth.jobs.load as load
    from earthsynth.errors import InputError

    real = load.bundled_checkpoint

    def only_aerogen(name):  # as on a machine where hsi, ediffsr, text2earth and crsdiff have not been trained
        if name in ("hsi", "ediffsr", "text2earth", "crsdiff"):
            raise InputError(f"assets/{name}", "bundled checkpoint missing")
        return real(name)

    monkeypatch.setattr(load, "bundled_checkpoint", only_aerogen)
    ctx = AppContext(tmp_path)  # a --model-dir without hsi/, ediffsr/, text2earth/ or crsdiff/
    try:
        demo = build_app(ctx)
    finally:
        ctx.remove_all()
    texts = [c.get("props", {}).get("value") or "" for c in demo.config["components"]]
    texts = [t if isinstance(t, str) else "" for t in texts]
    hsi = next(t for t in texts if "hsi model" in t)
    assert "Not available yet" in hsi and "earthsynth train configs/hsi" in hsi and "--model-dir" in hsi
    assert any("Not available yet" in t and "ediffsr" in t for t in texts)
    for family in ("text2earth", "crsdiff"):
        text = next(t for t in texts if f"No {family} model" in t)
        assert "Not available yet" in text and f"earthsynth train configs/{family}.yaml" in text
        assert "--model-dir DIR" in text and f"DIR/{family}" in text
    endpoints = {d.get("api_name") for d in demo.config["dependencies"]}
    assert "layout_generate" in endpoints and "augment_run" in endpoints
    assert not endpoints & {"hsi_denoise", "sr_upscale", "text2image_generate", "control_generate"}


def test_demo_noise_follows_the_cube_units_and_envi_uploads_open_by_their_header(tmp_path):
    reflectance = np.full((8, 16, 16), 0.3, dtype=np.float32)
    digital = reflectance * 10000  # the same scene in digital numbers
    noisy_r = hyperspectral.with_noise(reflectance, "gaussian", 1.0, seed=0)
    noisy_d = hyperspectral.with_noise(digital, "gaussian", 1.0, seed=0)
    # the simulator's amplitudes are for reflectance: digital numbers (brought to 0-1 by their
    # 99.9th percentile, 3000 here) get the same noise at their own scale
    assert 0.005 < np.std(noisy_r - reflectance) < 0.2
    np.testing.assert_allclose((noisy_d - digital) / 3000, noisy_r - reflectance, atol=1e-4)
    files = [tmp_path / "scene.img", tmp_path / "scene.hdr"]
    assert hyperspectral.pick_cube_file(files) == tmp_path / "scene.hdr"
    with pytest.raises(Exception, match="give one cube file"):
        hyperspectral.pick_cube_file([tmp_path / "a.npy", tmp_path / "b.npy"])


# ----------------------------------------------------------------------------- leftovers
def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def wait_until(condition, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_an_ended_session_leaves_nothing_behind(app, tmp_path):
    """A browser session's uploads and outputs (gradio's copies included) are the user's alone
    while it lasts and are removed when it ends; a job it still runs is stopped."""
    client, ctx = app
    root = ctx.work_root
    before = files_under(root)
    session = session_client(client.src, tmp_path / "downloads")
    # uploads no other test makes: an image and its mask to inpaint
    Image.fromarray(photo(48, 64, seed=24)).save(tmp_path / "mine.png")
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[8:24, 8:40] = 255
    Image.fromarray(mask).save(tmp_path / "mine_mask.png")
    text_to_image(session, "inpaint", image=handle_file(tmp_path / "mine.png"),
                  mask=handle_file(tmp_path / "mine_mask.png"))
    session.predict(table([["Tree", 20, 20, 12, 12, 0]]), "", 1, 4.0, 0.0, 0, api_name="/layout_generate")
    session.predict(table([["Tree", 40, 40, 8, 8, 0]]), api_name="/layout_preview")
    folder = ctx.sessions / session.session_hash
    written = files_under(root) - before
    uploads = {p for p in written if p.parent.parent == root}  # gradio's copies, <cache>/<hash>/<name>
    assert {p.name for p in uploads} == {"mine.png", "mine_mask.png"}
    outputs = {p.relative_to(folder).parts[0].split("-")[0] for p in written if folder in p.parents}
    assert outputs == {"t2i", "layout", "previews"}, written
    assert {p.name for p in written if folder in p.parents} >= {"view.png", "text2earth_inpaint_seed0.png",
                                                                "layout.png", "aerogen_seed0.png"}
    # gradio keeps no copy of an output of its own: they are the session's files, served in place
    assert all(folder in p.parents or p in uploads or (p.parent == root and p.stat().st_size == 0)
               for p in written), written
    # others cannot read any of it: the app's folder and every folder made for the session are 0700
    assert mode(root) == mode(ctx.sessions) == mode(folder) == 0o700
    assert all(mode(p) == 0o700 for p in folder.iterdir() if p.is_dir())

    # a job still running when the session ends is stopped and writes nothing back
    session.submit(augment.UPLOAD, handle_file(voc_zip(tmp_path)), "voc", 64, ["coco"], 20, 0, api_name="/augment_run")
    me = psutil.Process()
    assert wait_until(lambda: me.children()), "the augment job never started"
    children = me.children()
    session.close()  # what closing the page does: the session's heartbeat ends
    _, alive = psutil.wait_procs(children, timeout=30)
    for child in alive:  # never leave a runaway job behind a failed test
        child.kill()
    assert not alive, "the ended session's job is still running"
    assert wait_until(lambda: not folder.exists() and not any(p.parent.exists() for p in uploads)), \
        "the session's files are still there"
    left = files_under(root) - before
    # gradio's File input leaves an empty temporary file at each call (none of the upload is in
    # it), removed when the app stops; nothing else of the session remains
    assert all(p.parent == root and p.name.startswith("tmp") and p.stat().st_size == 0 for p in left), left
    still_serving(client)


def test_stopping_the_app_removes_everything_it_wrote(tmp_path, monkeypatch):
    """Stopping the app removes its whole folder (gradio's cache with the uploads, every
    session's outputs) with sessions still open, and gives gradio back its cache folder."""
    gradio_folder = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_folder))
    port = free_port()
    demo, ctx = launch_app("127.0.0.1", port, model_dir=tmp_path, max_file_size=MAX_UPLOAD, block=False)
    try:
        assert ctx.work_root.parent == gradio_folder and os.environ["GRADIO_TEMP_DIR"] == str(ctx.work_root)
        client = session_client(f"http://127.0.0.1:{port}/", tmp_path / "downloads")
        client.predict(table([["Tree", 30, 30, 10, 10, 0]]), api_name="/layout_preview")
        (tmp_path / "notes.png").write_text("not an image")  # uploaded, then refused
        assert_app_error(lambda: client.predict(handle_file(tmp_path / "notes.png"), "x4", 1, 0,
                                                api_name="/sr_upscale"), "notes.png")
        assert any(p.name == "notes.png" for p in files_under(ctx.work_root))
        assert files_under(ctx.sessions)
    finally:
        demo.close()
        ctx.remove_all()
    assert not list(gradio_folder.iterdir())
    assert os.environ["GRADIO_TEMP_DIR"] == str(gradio_folder)


def test_an_upload_two_sessions_read_goes_with_the_last(tmp_path, monkeypatch):
    """gradio keeps one copy of identical uploads: it stays while a session whose job read it
    is open."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    ctx = AppContext()
    try:
        upload = ctx.work_root / "ab12" / "scene.tif"  # as gradio keeps it: <cache>/<content hash>/<name>
        upload.parent.mkdir()
        upload.write_bytes(b"same content")
        first, second = SimpleNamespace(session_hash="first"), SimpleNamespace(session_hash="second")
        for request in (first, second):
            (copy,) = ctx.copy_uploads(str(upload), ctx.job_folder(request, "sr"))
            assert copy.read_bytes() == b"same content"
        ctx.close_session(first)
        assert upload.exists() and not ctx.session_path(first).exists() and ctx.session_path(second).exists()
        ctx.close_session(second)
        assert not upload.parent.exists() and not ctx.session_path(second).exists()
    finally:
        ctx.remove_all()
    assert not list(tmp_path.iterdir())

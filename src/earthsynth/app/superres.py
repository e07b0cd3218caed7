"""The Super-resolution tab (ediffsr): a PNG / JPEG / GeoTIFF x2 or x4, with `earthsynth
upscale`'s file function (a GeoTIFF stays a GeoTIFF with its CRS and a finer pixel size)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np

from earthsynth.app.common import JOBS, AppContext, not_available, readable, save_png, wait_for
from earthsynth.app.jobs import ChildJob
from earthsynth.data.geotiff import PLAIN_IMAGE_SUFFIXES, read_geotiff, to_uint8_rgb
from earthsynth.errors import InputError
from earthsynth.generation.ediffsr.pipeline import DEFAULT_STEPS

INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PREVIEW_MAX = 1024  # larger outputs are shown shrunk (the download keeps every pixel)

UNAVAILABLE = not_available(
    "No ediffsr model was found (the bundled one is missing from this install), so super-resolution "
    "is not available: train one with `earthsynth train configs/ediffsr.yaml`.",
    "Then start the app with `earthsynth app --model-dir DIR`, where `DIR/ediffsr` is the exported "
    "pipeline (`runs/ediffsr/final`).")


def model_scale(folder: Path) -> int | None:
    """The scale the ediffsr model in `folder` was trained for (None when unreadable)."""
    try:
        return int(json.loads((folder / "eanet" / "config.json").read_text())["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def preview(path: Path, enlarge: int = 1) -> np.ndarray:
    """An image or raster as (H, W, 3) uint8 for display: its first three bands (or its one
    band as grey), stretched unless it is 8-bit already; enlarged `enlarge` times (nearest,
    so that before and after show at one size) or shrunk to PREVIEW_MAX pixels."""
    raster = read_geotiff(path)
    data = raster.data
    bands = (0, 1, 2) if data.shape[0] >= 3 else (0, 0, 0)
    pixels = to_uint8_rgb(data, bands, nodata=raster.nodata)
    if enlarge > 1 and max(pixels.shape[:2]) * enlarge <= PREVIEW_MAX:
        return pixels.repeat(enlarge, axis=0).repeat(enlarge, axis=1)
    step = max(1, -(-max(pixels.shape[:2]) // PREVIEW_MAX))
    return pixels[::step, ::step]


class SuperResolutionTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def upscale(self, file, scale: str, steps: float, seed: float, request: gr.Request = None,
                progress=gr.Progress()):  # noqa: B008 (how gradio marks the progress bar)
        """Generator (so Stop can end the child job): yields the status while the job runs,
        then (status, before, after, the upscaled file)."""
        folder = self.ctx.job_folder(request, "sr")
        uploads = self.ctx.copy_uploads(file, folder)
        if not uploads:
            raise InputError("upload", "no image uploaded (PNG, JPEG or GeoTIFF)")
        src = uploads[0]
        if src.suffix.lower() not in INPUT_SUFFIXES:
            raise InputError(src, "upload a PNG, JPEG or GeoTIFF (.png, .jpg, .tif)")
        factor = int(str(scale).lstrip("x"))
        before = save_png(preview(src, factor), folder / "before.png")  # a file that is not an image stops here, with the reader's message
        plain = src.suffix.lower() in PLAIN_IMAGE_SUFFIXES
        out = folder / "out" / f"{src.stem}_x{factor}{src.suffix.lower() if plain else '.tif'}"
        out.parent.mkdir()
        job = ChildJob("upscale", {"src": str(src), "out": str(out), "model_dir": str(self.ctx.model_folder("ediffsr")),
                                   "steps": int(steps), "scale": factor, "seed": int(seed)}, folder)
        header = read_geotiff(src)
        size = f"{header.width} x {header.height} px"
        try:
            for _ in wait_for(job, progress, lambda s: ((int(s), None), f"upscaling {size} x{factor}: {s:.0f} s")):
                yield f"Upscaling {size} x{factor}...", gr.skip(), gr.skip(), gr.skip()
        finally:
            job.stop()
        written = Path(job.result())
        after = save_png(preview(written), folder / "after.png")
        raster = read_geotiff(written)
        status = (f"x{factor}: {raster.width} x {raster.height} px, {raster.data.shape[0]} bands "
                  f"{raster.data.dtype}, in {job.elapsed:.0f} s")
        if raster.crs:
            status += f"; {raster.crs}, pixel size {abs(raster.transform[0]):.4g} (georeferencing kept)"
        yield status, before, after, str(written)


def build(ctx: AppContext) -> None:
    if not ctx.available("ediffsr"):
        gr.Markdown(UNAVAILABLE, elem_id="sr-unavailable")
        return
    tab = SuperResolutionTab(ctx)
    trained = model_scale(ctx.model_folder("ediffsr"))
    with gr.Row():
        with gr.Column():
            file = gr.File(label="PNG, JPEG or GeoTIFF (any band count)", file_types=list(INPUT_SUFFIXES),
                           elem_id="sr-file")
            scale = gr.Radio(["x2", "x4"], value=f"x{trained or 4}", label="scale",
                             info=f"this model is trained for x{trained}" if trained else None)
            steps = gr.Slider(1, 50, value=DEFAULT_STEPS, step=1, label="steps", elem_id="sr-steps")
            seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Row():
                run = gr.Button("Upscale", variant="primary", elem_id="sr-run")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            status = gr.Markdown(elem_id="sr-status")
            result = gr.File(label="upscaled file", interactive=False)
    with gr.Row():
        before = gr.Image(label="before", format="png", interactive=False)
        after = gr.Image(label="after", format="png", interactive=False, elem_id="sr-after")
    event = run.click(readable(tab.upscale), [file, scale, steps, seed], [status, before, after, result],
                      api_name="sr_upscale", concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])

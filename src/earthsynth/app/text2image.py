"""The Text to image tab (text2earth): a prompt and a ground sample distance -> one image, a
scene larger than the model's tiles (overlapping tiles denoised together), or the masked
part of an uploaded image drawn again."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from earthsynth.app.common import JOBS, AppContext, not_available, readable, save_png
from earthsynth.data.common import format_number
from earthsynth.data.geotiff import read_geotiff
from earthsynth.errors import InputError

SINGLE, SCENE, INPAINT = "single image", "tiled scene", "inpaint"
MODES = (SINGLE, SCENE, INPAINT)
MAX_SIZE = 512  # pixels a side
# one pass over the whole image: its attention grows with the square of the pixel count
# (a 512 px image is ~15 times slower per step than 256 px on a CPU); larger is the tiled mode's job
SINGLE_MAX = 256
OVERLAP = 16  # pixels shared by neighbouring tiles
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_PROMPT = "NEON airborne RGB orthophoto, Yellowstone National Park, dense vegetation"

UNAVAILABLE = not_available(
    "No text2earth model is bundled yet, so text to image is not available yet: train one with "
    "`earthsynth train configs/text2earth.yaml`.",
    "Then start the app with `earthsynth app --model-dir DIR`, where `DIR/text2earth` is the exported "
    "pipeline (`runs/text2earth/final`).")


def model_tile_size(folder: Path) -> int:
    """The image size the text2earth UNet was trained at (its tile size), from its config."""
    config = folder / "unet" / "config.json"
    try:
        return int(json.loads(config.read_text())["sample_size"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(config, f"cannot read the text2earth image size ({err})") from None


def size_of(name: str, value, stride: int, largest: int) -> int:
    """A width or height from the form: a multiple of `stride` up to `largest`, else InputError."""
    if value is None or not math.isfinite(float(value)):
        raise InputError(name, "is empty")
    size = int(value)
    if size != value or size % stride or not stride <= size <= largest:
        raise InputError(name, f"{format_number(float(value))} px: choose a multiple of {stride} "
                               f"from {stride} to {largest}")
    return size


def gsd_of(value, unknown: bool) -> float | None:
    if unknown:
        return None
    if value is None:
        raise InputError("GSD", "is empty: type the metres per pixel or tick 'unknown'")
    return float(value)  # the pipeline checks it is positive


def crop_note(before: tuple[int, int], after: tuple[int, int], stride: int) -> str:
    if before == after:
        return ""
    return (f"; the upload ({before[1]} x {before[0]} px) was cut from its top-left corner to "
            f"{after[1]} x {after[0]} px (multiples of {stride}, at most {MAX_SIZE} px a side)")


class Text2ImageTab:
    """Handlers of the tab; the pipeline loads on first use."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.tile = model_tile_size(ctx.model_folder("text2earth"))

    def pipeline(self):
        from earthsynth.jobs.load import load_pipeline

        return self.ctx.cached("text2earth", lambda: load_pipeline("text2earth", self.ctx.model_folder("text2earth")))

    def inpaint_inputs(self, image, mask, stride: int, folder: Path):
        """The uploaded image (H, W, 3) uint8 and its mask (H, W) bool, cut from the top-left
        to multiples of `stride` (at most MAX_SIZE), and the image's Raster (for its grid)."""
        paths = []
        for what, upload in (("image", image), ("mask", mask)):
            (folder / what).mkdir()
            copies = self.ctx.copy_uploads(upload, folder / what)
            if not copies:
                raise InputError(what, f"inpainting needs an uploaded {what} (PNG, JPEG or GeoTIFF)")
            if copies[0].suffix.lower() not in INPUT_SUFFIXES:
                raise InputError(copies[0], "upload a PNG, JPEG or GeoTIFF (.png, .jpg, .tif)")
            paths.append(copies[0])
        picture, drawn = read_geotiff(paths[0]), read_geotiff(paths[1])
        if (drawn.height, drawn.width) != (picture.height, picture.width):
            raise InputError(paths[1], f"is {drawn.width}x{drawn.height} px, the image {paths[0].name} is "
                                       f"{picture.width}x{picture.height} px: the mask must have the image's size")
        height = min(picture.height // stride * stride, MAX_SIZE)
        width = min(picture.width // stride * stride, MAX_SIZE)
        if not (height and width):
            raise InputError(paths[0], f"is {picture.width}x{picture.height} px, smaller than {stride}x{stride}")
        from earthsynth.jobs.generate import rgb_of

        rgb = rgb_of(picture)[:height, :width]
        band = drawn.data[0, :height, :width].astype(np.float32)
        band = np.nan_to_num(band, nan=0.0)
        mask_bool = band > band.max() / 2 if band.max() > 0 else np.zeros(band.shape, dtype=bool)
        if not mask_bool.any():
            raise InputError(paths[1], "marks nothing to draw again (white = draw again, black = keep)")
        return rgb, mask_bool, picture, (picture.height, picture.width)

    def generate(self, prompt: str, gsd, gsd_unknown: bool, width, height, mode: str, image, mask, steps, guidance,
                 gsd_guidance, seed, request: gr.Request = None):
        """-> (status, the image, its file: PNG, or a GeoTIFF on the grid of a georeferenced
        inpainted upload)."""
        from earthsynth.jobs.generate import Job, Request, georeferenced, write_generated

        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("prompt", f"is empty: describe the image, e.g. {DEFAULT_PROMPT!r}")
        if mode not in MODES:
            raise InputError("mode", f"choose one of {', '.join(MODES)}")
        gsd = gsd_of(gsd, gsd_unknown)
        folder = self.ctx.job_folder(request, "t2i")
        pipe = self.pipeline()
        stride = pipe.unet.stride
        kwargs, tile, note, grid = {}, None, "", None
        if mode == INPAINT:
            rgb, keep_out, raster, before = self.inpaint_inputs(image, mask, stride, folder)
            height, width = keep_out.shape
            if gsd is None and raster.gsd is not None:  # a GeoTIFF knows its own
                gsd = raster.gsd
                note += f"; GSD {format_number(gsd)} m/px read from the GeoTIFF"
            kwargs = dict(image=rgb, mask_image=keep_out.astype(np.uint8))
            tile = self.tile if max(height, width) > self.tile else None
            note = crop_note(before, (height, width), stride) + note
            note += f"; {keep_out.mean():.0%} of the pixels drawn again"
            grid = raster if georeferenced(raster) else None
        else:
            width = size_of("width", width, stride, MAX_SIZE)
            height = size_of("height", height, stride, MAX_SIZE)
            if mode == SINGLE and max(width, height) > SINGLE_MAX:
                raise InputError("size", f"{width} x {height} px is too large for one pass (at most {SINGLE_MAX} px "
                                         f"a side): choose '{SCENE}'")
            if mode == SCENE:
                tile = self.tile
        if tile is not None:
            note += f"; tiles of {tile} px overlapping by {OVERLAP} px"
        started = time.monotonic()
        try:
            result = pipe(prompt, gsd=gsd, height=height, width=width, num_inference_steps=int(steps),
                          guidance_scale=float(guidance), gsd_guidance_scale=float(gsd_guidance or 0) or None,
                          generator=torch.Generator().manual_seed(int(seed)), output_type="np", tile=tile,
                          overlap=OVERLAP, **kwargs)
        except ValueError as err:  # the pipeline's checks: a GSD <= 0, a negative guidance...
            raise InputError("text2earth", str(err)) from None
        pixels = (result.images[0] * 255).round().astype(np.uint8)
        name = f"text2earth_{mode.split()[-1]}_seed{int(seed)}"
        out = folder / "out" / (f"{name}.tif" if grid is not None else f"{name}.png")
        out.parent.mkdir()
        job = Job({}, gsd=gsd, crs=grid.crs if grid is not None else None,
                  transform=grid.transform if grid is not None else None)
        write_generated(out, pixels, "text2earth", Request("app", None, prompt, out), job, int(seed))
        status = (f"**{width} x {height} px**, {mode}, GSD "
                  f"{'unknown' if gsd is None else format_number(gsd) + ' m/px'}, seed {int(seed)}, "
                  f"{time.monotonic() - started:.1f} s{note}")
        if grid is not None:
            status += f"; {grid.crs} kept in the GeoTIFF"
        return status, save_png(pixels, folder / "view.png"), str(out)


# ----------------------------------------------------------------------------- the tab
def build(ctx: AppContext) -> None:
    """The tab's components and events (inside an open gr.Tab)."""
    if not ctx.available("text2earth"):
        gr.Markdown(UNAVAILABLE, elem_id="t2i-unavailable")
        return
    tab = Text2ImageTab(ctx)
    gr.Markdown(f"A prompt and a ground sample distance (metres per pixel) -> an image. The model draws "
                f"{tab.tile} px tiles: a tiled scene denoises overlapping tiles together, up to {MAX_SIZE} px; "
                f"inpainting draws the white (nonzero) part of a mask again and keeps the rest of the image.")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="prompt", elem_id="t2i-prompt")
            with gr.Row():
                gsd = gr.Number(value=0.2, label="GSD (m/px)", minimum=0, elem_id="t2i-gsd")
                gsd_unknown = gr.Checkbox(value=False, label="GSD unknown (an inpainted GeoTIFF gives its own)")
            mode = gr.Radio(list(MODES), value=SINGLE, label="mode",
                            info=f"single image: up to {SINGLE_MAX} px; tiled scene: {tab.tile} px tiles, "
                                 f"overlap {OVERLAP}; inpaint: the uploaded image's size", elem_id="t2i-mode")
            with gr.Row():
                width = gr.Slider(8, MAX_SIZE, value=tab.tile, step=8, label="width (px)", elem_id="t2i-width")
                height = gr.Slider(8, MAX_SIZE, value=tab.tile, step=8, label="height (px)", elem_id="t2i-height")
            with gr.Group(visible=False) as inpaint:
                with gr.Row():
                    image = gr.File(label="image (PNG, JPEG or GeoTIFF)", file_types=list(INPUT_SUFFIXES),
                                    elem_id="t2i-image")
                    mask = gr.File(label="mask, same size (white = draw again)", file_types=list(INPUT_SUFFIXES),
                                   elem_id="t2i-mask")
                gr.Markdown(f"Cut from the top-left to multiples of 8 px, at most {MAX_SIZE} px a side.")
            with gr.Row():
                steps = gr.Slider(1, 50, value=20, step=1, label="steps", elem_id="t2i-steps")
                guidance = gr.Slider(0, 10, value=4.0, step=0.5, label="guidance")
                gsd_guidance = gr.Slider(0, 10, value=0, step=0.5, label="GSD guidance (0: off)")
                seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            status = gr.Markdown(elem_id="t2i-status")
            output = gr.Image(label="generated", type="numpy", format="png", interactive=False, elem_id="t2i-output")
            download = gr.File(label="download", interactive=False)
    mode.change(lambda choice: (gr.update(visible=choice == INPAINT),) + (gr.update(interactive=choice != INPAINT),) * 2,
                mode, [inpaint, width, height], api_visibility="private", concurrency_limit=None,
                show_progress="hidden")
    event = run.click(readable(tab.generate), [prompt, gsd, gsd_unknown, width, height, mode, image, mask, steps,
                                               guidance, gsd_guidance, seed], [status, output, download],
                      api_name="text2image_generate", concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])


"""The Control tab (crsdiff): a prompt, metadata and control maps derived from a reference
image (edges, sketch, colours, land cover) and an optional DEM -> an image on the
reference's pixels, a GeoTIFF on its grid when the reference is georeferenced. The request
goes through `earthsynth generate crsdiff`'s own reading and checks."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

import gradio as gr
import numpy as np

from earthsynth.app.common import JOBS, AppContext, not_available, readable, save_png
from earthsynth.conditioning.control import LANDCOVER_CLASSES
from earthsynth.data.common import format_number
from earthsynth.data.geotiff import raster_metadata, read_geotiff
from earthsynth.errors import InputError

MAX_SIZE = 256  # pixels a side: crsdiff denoises the whole image at once (no tiles)
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
REFERENCE_MAPS = ("canny", "sketch", "content", "landcover")  # as earthsynth.jobs.generate's
MAP_TITLES = {"canny": "canny edges", "sketch": "sketch", "content": "content (shuffled colours)",
              "landcover": "land cover", "dem": "DEM (stretched)"}
# land-cover classes in the gallery; a class not named here is grey
LANDCOVER_COLOURS = {"water": (40, 90, 200), "vegetation": (40, 160, 60), "bright open ground": (225, 200, 140),
                     "dark bare ground": (120, 80, 50)}
DEFAULT_PROMPT = "NEON airborne RGB orthophoto, dense vegetation"
METADATA_TEXT = ("Blank fields are unknown, or read from a GeoTIFF reference (GSD and position from its grid, "
                 "date and cloud cover from its tags); a typed value wins.")

UNAVAILABLE = not_available(
    "No crsdiff model is bundled yet, so control is not available yet: train one with "
    "`earthsynth train configs/crsdiff.yaml`.",
    "Then start the app with `earthsynth app --model-dir DIR`, where `DIR/crsdiff` is the exported "
    "pipeline (`runs/crsdiff/final`).")


def date_fields(text) -> dict[str, str]:
    """'2021-06-15', '2021-06' or '2021' -> the year / month / day request fields ({} if blank).
    The ranges (month 1-12...) are the pipeline's to check."""
    text = str(text or "").strip()
    if not text:
        return {}
    match = re.fullmatch(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?", text)
    if not match:
        raise InputError("date", f"{text!r} is not YYYY-MM-DD, YYYY-MM or YYYY")
    year, month, day = match.groups()
    if day is not None and 1 <= int(month) <= 12:
        try:
            dt.date(int(year), int(month), int(day))
        except ValueError as err:
            raise InputError("date", f"{text} is not a date ({err})") from None
    return {key: value for key, value in (("year", year), ("month", month), ("day", day)) if value is not None}


def one_upload(ctx: AppContext, upload, folder: Path, what: str) -> Path | None:
    """The uploaded file copied into `folder` (a folder per input: two uploads may share a name)."""
    folder.mkdir()
    copies = ctx.copy_uploads(upload, folder)
    if not copies:
        return None
    if copies[0].suffix.lower() not in INPUT_SUFFIXES:
        raise InputError(copies[0], f"the {what} must be a PNG, JPEG or GeoTIFF (.png, .jpg, .tif)")
    return copies[0]


def map_picture(name: str, value) -> np.ndarray:
    """A control map (C, H, W) in [0, 1] -> (H, W, 3) uint8 to look at."""
    values = np.nan_to_num(np.asarray(value, dtype=np.float32), nan=0.0)
    if name == "landcover":
        colours = np.array([LANDCOVER_COLOURS.get(c, (128, 128, 128)) for c in LANDCOVER_CLASSES], dtype=np.uint8)
        picture = colours[values.argmax(0).clip(0, len(colours) - 1)]
        picture[values.max(0) <= 0] = 0  # no class
        return picture
    rgb = values.transpose(1, 2, 0) if values.shape[0] == 3 else np.repeat(values[0][..., None], 3, axis=-1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def describe_metadata(metadata: dict) -> str:
    units = {"gsd": " m/px", "cloud_cover": " %"}
    return ", ".join(f"{key} {format_number(float(value))}{units.get(key, '')}" for key, value in metadata.items())


class ControlTab:
    """Handlers of the tab; the pipeline loads on first use."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def pipeline(self):
        from earthsynth.jobs.load import load_pipeline

        return self.ctx.cached("crsdiff", lambda: load_pipeline("crsdiff", self.ctx.model_folder("crsdiff")))

    def generate(self, prompt: str, reference, maps, dem, gsd, date, cloud_cover, lat, lon, scale, steps, guidance,
                 seed, request: gr.Request = None):
        """-> (status, gallery of the reference and the maps used, the image, its file)."""
        from earthsynth.jobs.generate import (
            generate_images,
            georeferenced,
            input_error,
            make_job,
            parse_request,
            rgb_of,
            write_generated,
        )

        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("prompt", f"is empty: describe the image, e.g. {DEFAULT_PROMPT!r}")
        maps = [name for name in (maps or []) if name in REFERENCE_MAPS]
        folder = self.ctx.job_folder(request, "control")
        source = one_upload(self.ctx, reference, folder / "reference", "reference")
        if maps and source is None:
            raise InputError("reference", f"the maps ({', '.join(maps)}) are derived from a reference image: "
                                          "upload one, or untick them")
        dem_path = one_upload(self.ctx, dem, folder / "dem", "DEM")

        fields = {"prompt": prompt, "steps": int(steps), "guidance": float(guidance), "seed": int(seed)}
        for key, text in (("gsd", gsd), ("cloud_cover", cloud_cover), ("lat", lat), ("lon", lon)):
            if str(text or "").strip():
                fields[key] = str(text).strip()  # parse_request says what is not a number
        fields.update(date_fields(date))
        pipe = self.pipeline()
        stride = pipe.unet.stride
        raster, note, name = None, "", "crsdiff.png"
        if source is not None:
            raster = read_geotiff(source)  # a file that is not an image stops here, with the reader's message
            height = min(raster.height // stride * stride, MAX_SIZE)
            width = min(raster.width // stride * stride, MAX_SIZE)
            if height and width:  # else cropped_reference says it is too small
                fields.update(height=height, width=width)
                if (height, width) != (raster.height, raster.width):
                    note = (f"; the reference ({raster.width} x {raster.height} px) was cut from its top-left corner "
                            f"to {width} x {height} px (multiples of {stride}, at most {MAX_SIZE} px a side)")
            fields.update(reference=source, maps=maps)
            if georeferenced(raster):
                name = f"{source.stem}_crsdiff.tif"
        if dem_path is not None:
            fields["dem"] = dem_path
        names = maps + (["dem"] if dem_path is not None else [])
        fields["scale"] = {n: float(scale) for n in names}
        out = folder / "out" / name
        out.parent.mkdir()
        try:
            job_request = parse_request("crsdiff", {**fields, "out": str(out)}, "control", None)
        except ValueError as err:
            raise input_error("control", None, err) from None

        started = time.monotonic()
        with job_request.errors_named():  # the pipeline's checks (month 13, a DEM off the reference...)
            job = make_job(pipe, "crsdiff", job_request)
            pixels = generate_images(pipe, "crsdiff", job_request, job)[0]
        elapsed = time.monotonic() - started
        write_generated(out, pixels, "crsdiff", job_request, job, job_request.seed)

        height, width = pixels.shape[:2]
        gallery = []
        (folder / "maps").mkdir()
        if raster is not None:
            gallery.append((save_png(rgb_of(raster)[:height, :width], folder / "maps" / "reference.png"),
                            f"reference, {width} x {height} px"))
        for map_name, value in job.kwargs["controls"].items():
            gallery.append((save_png(map_picture(map_name, value), folder / "maps" / f"{map_name}.png"),
                            MAP_TITLES.get(map_name, map_name)))
        metadata = job.kwargs["metadata"]
        status = (f"**{width} x {height} px** from {', '.join(names) or 'no control maps'}"
                  f"{f' (control scale {format_number(float(scale))})' if names else ''}; "
                  f"metadata: {describe_metadata(metadata) or 'none (unknown)'}"
                  f"{' (from the GeoTIFF unless typed)' if raster is not None and raster_metadata(raster) else ''}; "
                  f"seed {int(seed)}, {elapsed:.1f} s{note}")
        if job.crs is not None:
            status += f"; {job.crs} kept in the GeoTIFF"
        return status, gallery, save_png(pixels, folder / "view.png"), str(out)


# ----------------------------------------------------------------------------- the tab
def build(ctx: AppContext) -> None:
    """The tab's components and events (inside an open gr.Tab)."""
    if not ctx.available("crsdiff"):
        gr.Markdown(UNAVAILABLE, elem_id="control-unavailable")
        return
    tab = ControlTab(ctx)
    gr.Markdown("A prompt, metadata and control maps -> an image. The maps are derived from a reference image "
                f"(cut from its top-left corner to multiples of 8 px, at most {MAX_SIZE} px a side), whose size the "
                "image takes; a DEM is placed on a georeferenced reference by its grid, else stretched over the "
                "image. Without a reference the image is the model's tile size.")
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(value=DEFAULT_PROMPT, label="prompt", elem_id="control-prompt")
            with gr.Row():
                reference = gr.File(label="reference image (PNG, JPEG or GeoTIFF)", file_types=list(INPUT_SUFFIXES),
                                    elem_id="control-reference")
                dem = gr.File(label="DEM (optional; GeoTIFF)", file_types=list(INPUT_SUFFIXES), elem_id="control-dem")
            maps = gr.CheckboxGroup(list(REFERENCE_MAPS), value=["canny"], label="maps derived from the reference",
                                    elem_id="control-maps")
            gr.Markdown(METADATA_TEXT)
            with gr.Row():
                gsd = gr.Textbox(label="GSD (m/px)", placeholder="e.g. 0.5", min_width=100)
                date = gr.Textbox(label="date", placeholder="YYYY-MM-DD, YYYY-MM or YYYY", min_width=100,
                                  elem_id="control-date")
                cloud_cover = gr.Textbox(label="cloud cover (%)", placeholder="0-100", min_width=100)
                lat = gr.Textbox(label="latitude", placeholder="-90..90", min_width=100)
                lon = gr.Textbox(label="longitude", placeholder="-180..180", min_width=100)
            with gr.Row():
                scale = gr.Slider(0, 2, value=1.0, step=0.05, label="control scale (every map)")
                steps = gr.Slider(1, 50, value=20, step=1, label="steps", elem_id="control-steps")
                guidance = gr.Slider(0, 10, value=4.0, step=0.5, label="guidance")
                seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="control-generate")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            status = gr.Markdown(elem_id="control-status")
            output = gr.Image(label="generated", type="numpy", format="png", interactive=False,
                              elem_id="control-output")
            download = gr.File(label="download (a GeoTIFF keeps the reference's grid)", interactive=False)
    gallery = gr.Gallery(label="reference and the maps used", columns=6, height="auto", format="png",
                         elem_id="control-maps-used")
    event = run.click(readable(tab.generate), [prompt, reference, maps, dem, gsd, date, cloud_cover, lat, lon, scale,
                                               steps, guidance, seed], [status, gallery, output, download],
                      api_name="control_generate", concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])

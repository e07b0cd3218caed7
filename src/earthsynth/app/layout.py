"""The Layout tab (aerogen): boxes typed in a table -> an image with those objects."""

from __future__ import annotations

import json
import math

import gradio as gr
import numpy as np
import torch
from PIL import Image

from earthsynth.app.common import JOBS, AppContext, draw_boxes, readable, save_png
from earthsynth.boxes import Boxes
from earthsynth.data.captions import make_caption
from earthsynth.errors import InputError

HEADERS = ["class", "cx", "cy", "w", "h", "angle"]
# two crowns of the bundled dataset's sizes on the 64 px canvas of the bundled model
DEFAULT_ROWS = [["Tree", 18, 20, 16, 14, 0], ["Tree", 44, 42, 20, 18, 30]]
SCENE = "NEON airborne RGB orthophoto, Yellowstone National Park"  # the bundled tiles' description
ZOOM = 4  # the 64 px images are shown 4 times larger


def default_prompt(boxes: Boxes) -> str:
    """A caption in the format the bundled model was trained on."""
    return make_caption(SCENE, 0.2, boxes.class_counts(), "dense vegetation")


# ----------------------------------------------------------------------------- handlers
def boxes_from_rows(rows) -> Boxes:
    """Table rows [class, cx, cy, w, h, angle] -> Boxes; blank rows are skipped. A cell
    that is not a number is an InputError naming its row and column."""
    labels, values = [], []
    for number, row in enumerate(rows or [], start=1):
        cells = ["" if cell is None else str(cell).strip() for cell in row]
        cells += [""] * (len(HEADERS) - len(cells))
        if not any(cells) or all(cell in ("", "nan") for cell in cells):
            continue
        if not cells[0]:
            raise InputError(f"box row {number}", "the class is empty")
        numbers = []
        for header, cell in zip(HEADERS[1:], cells[1:]):
            if cell == "" and header == "angle":
                cell = "0"
            try:
                value = float(cell)
            except ValueError:
                raise InputError(f"box row {number}", f"{header} {cell!r} is not a number") from None
            if not math.isfinite(value):
                raise InputError(f"box row {number}", f"{header} is not a number")
            numbers.append(value)
        if numbers[2] <= 0 or numbers[3] <= 0:
            raise InputError(f"box row {number}", "w and h must be positive")
        labels.append(cells[0])
        values.append(numbers)
    return Boxes(np.array(values, dtype=np.float64).reshape(-1, 5), labels, rotated=True)


def rows_from_boxes(boxes: Boxes) -> list[list]:
    return [[label, *(round(float(v), 1) for v in rbox)] for rbox, label in zip(boxes.rboxes, boxes.labels)]


class LayoutTab:
    """Handlers of the tab; the aerogen pipeline and the layout sampler load on first use."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        # the image size the UNet was trained at, read from its config without loading it
        config = ctx.model_folder("aerogen") / "unet" / "config.json"
        try:
            self.size = int(json.loads(config.read_text())["sample_size"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(config, f"cannot read the aerogen image size ({err})") from None

    def pipeline(self):
        from earthsynth.jobs.load import load_pipeline

        return self.ctx.cached("aerogen", lambda: load_pipeline("aerogen", self.ctx.model_folder("aerogen")))

    def sampler(self):
        """The layout sampler fitted on the bundled training tiles (as `earthsynth augment --demo`)."""
        from earthsynth.augment.layouts import LayoutSampler
        from earthsynth.jobs.augment import demo_tiles

        size = self.size

        def fit():
            tiles = demo_tiles(size)
            return LayoutSampler.fit([(t.image_id, size, size, t.boxes) for t in tiles]), tiles

        return self.ctx.cached("layout_sampler", fit)

    def preview(self, rows, request: gr.Request = None) -> tuple[str, str]:
        """The boxes drawn on a blank canvas (a PNG of the session), and what is wrong with
        the table (if anything)."""
        picture, note = self.preview_picture(rows)
        return self.ctx.preview_file(request, picture), note

    def preview_picture(self, rows) -> tuple[Image.Image, str]:
        """The boxes drawn on a blank canvas, and the note under it."""
        size = self.size
        canvas = np.full((size, size, 3), 235, dtype=np.uint8)
        try:
            boxes = boxes_from_rows(rows)
        except InputError as err:
            return draw_boxes(canvas, Boxes(), ZOOM), f"**Check the table:** {err}"
        outside = [i + 1 for i, quad in enumerate(boxes.corners())
                   if quad.min() < -1 or quad[:, 0].max() > size + 1 or quad[:, 1].max() > size + 1]
        note = f"{len(boxes)} box{'es' * (len(boxes) != 1)} on the {size} x {size} px canvas"
        if outside:
            note += f"; **rows {', '.join(map(str, outside))} reach outside the canvas**"
        return draw_boxes(canvas, boxes, ZOOM), note

    def random_layout(self, draw: float, request: gr.Request = None):
        """Layout number `draw` sampled from the bundled dataset's statistics, with a caption
        for it; returns (rows, prompt, preview, note, next draw number)."""
        sampler, tiles = self.sampler()
        size = self.size
        rng = np.random.default_rng(int(draw))
        layout = sampler.sample(1, rng, size, size, max_objects=30)[0]
        tile = tiles[int(rng.integers(len(tiles)))]
        prompt = make_caption(tile.description, tile.gsd, layout.boxes.class_counts(), tile.land_cover)
        rows = rows_from_boxes(layout.boxes) or [["", "", "", "", "", ""]]
        image, note = self.preview(rows, request)
        return rows, prompt, image, note, int(draw) + 1

    def generate(self, rows, prompt: str, steps: float, guidance: float, layout_guidance: float, seed: float,
                 request: gr.Request = None):
        """-> (image with its boxes, enlarged; the image itself; the layout as JSON)."""
        boxes = boxes_from_rows(rows)
        pipe = self.pipeline()
        size = self.size
        prompt = (prompt or "").strip() or default_prompt(boxes)
        try:
            result = pipe(prompt, boxes=boxes, height=size, width=size, num_inference_steps=int(steps),
                          guidance_scale=float(guidance), layout_guidance_scale=float(layout_guidance) or None,
                          generator=torch.Generator().manual_seed(int(seed)), output_type="np")
        except ValueError as err:  # the pipeline's checks: a box outside the image, too many boxes...
            raise InputError("layout", str(err)) from None
        pixels = (result.images[0] * 255).round().astype(np.uint8)
        layout = {"prompt": prompt, "seed": int(seed), "size": [size, size],
                  "boxes": [dict(zip(HEADERS, row)) for row in rows_from_boxes(boxes)]}
        folder = self.ctx.job_folder(request, "layout")
        return (save_png(draw_boxes(pixels, boxes, ZOOM), folder / "layout.png"),
                save_png(pixels, folder / f"aerogen_seed{int(seed)}.png"), layout)


# ----------------------------------------------------------------------------- the tab
def build(ctx: AppContext) -> None:
    """The tab's components and events (inside an open gr.Tab)."""
    if not ctx.available("aerogen"):
        gr.Markdown("### Not available yet\n\nNo aerogen model: train one with "
                    "`earthsynth train configs/aerogen.yaml` and start the app with `--model-dir DIR` "
                    "(DIR/aerogen holding the exported folder).")
        return
    tab = LayoutTab(ctx)
    start = boxes_from_rows(DEFAULT_ROWS)
    start_preview, start_note = tab.preview_picture(DEFAULT_ROWS)  # the app's, not a session's
    gr.Markdown(f"Type boxes in pixels of the {tab.size} x {tab.size} px image (0.2 m/px): centre, width, height and "
                "angle in degrees clockwise. Or sample a layout from the bundled dataset's statistics.")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(value=DEFAULT_ROWS, headers=HEADERS, datatype=["str"] + ["number"] * 5,
                                 type="array", row_count=len(DEFAULT_ROWS), column_count=len(HEADERS),
                                 interactive=True, label="boxes", elem_id="layout-table")
            with gr.Row():
                sample = gr.Button("Random layout from the dataset", elem_id="layout-random")
                draw = gr.Number(value=0, precision=0, label="layout draw", minimum=0, scale=0, min_width=120)
            prompt = gr.Textbox(value=default_prompt(start), label="prompt (empty: a caption made from the boxes)",
                                elem_id="layout-prompt")
            with gr.Row():
                steps = gr.Slider(1, 50, value=20, step=1, label="steps", elem_id="layout-steps")
                guidance = gr.Slider(0, 10, value=4.0, step=0.5, label="guidance")
                layout_guidance = gr.Slider(0, 5, value=2.0, step=0.5, label="layout guidance (0: off)")
                seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="layout-generate")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            preview = gr.Image(value=start_preview, label="layout preview", type="pil", format="png", interactive=False,
                               elem_id="layout-preview")
            note = gr.Markdown(start_note)
    with gr.Row():
        annotated = gr.Image(label="generated, with its boxes", type="pil", format="png", interactive=False,
                             elem_id="layout-output", scale=3)
        with gr.Column(scale=2):
            plain = gr.Image(label=f"generated ({tab.size} x {tab.size} px)", type="pil", format="png",
                             interactive=False, height=160)
            with gr.Accordion("layout (JSON)", open=False):
                layout = gr.JSON(label="layout")

    table.change(readable(tab.preview), table, [preview, note], api_name="layout_preview",
                 show_progress="hidden", concurrency_limit=None)
    sample.click(readable(tab.random_layout), draw, [table, prompt, preview, note, draw], api_name="layout_random")
    event = run.click(readable(tab.generate), [table, prompt, steps, guidance, layout_guidance, seed],
                      [annotated, plain, layout], api_name="layout_generate",
                      concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])

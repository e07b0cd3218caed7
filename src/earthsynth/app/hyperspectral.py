"""The Hyperspectral tab (hsi): a cube, optionally with simulated noise -> the denoised cube,
false-colour views and the spectrum at a clicked pixel, scored against the clean cube when
there is one (the bundled example, or an upload with noise added here)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch

from earthsynth.app.common import JOBS, AppContext, not_available, readable, save_png, wait_for
from earthsynth.app.jobs import ChildJob
from earthsynth.data.hsi import read_cube
from earthsynth.data.hsi_noise import NOISE_KINDS, add_noise
from earthsynth.errors import InputError
from earthsynth.image_metrics import band_psnr, sam_degrees

EXAMPLE = "bundled example (synthetic 64-band cube, 64 x 64 px)"
UPLOAD = "upload a cube"
EXAMPLE_BANDS = 64
VIEW_SIZE = 256  # small cubes are enlarged (nearest) to about this many pixels for display
FALSE_COLOUR_UM = (0.86, 0.65, 0.55)  # near infrared, red, green: vegetation shows red

UNAVAILABLE = not_available(
    "The bundled hsi model is still being trained, so denoising is not available yet: train it with "
    "`earthsynth train configs/hsi_autoencoder.yaml`, then `configs/hsi.yaml` (and optionally `configs/hsi_finetune.yaml`).",
    "Then start the app with `earthsynth app --model-dir DIR`, where `DIR/hsi` is the exported pipeline "
    "(`runs/hsi/final`, or `runs/hsi-finetune/final` after the optional third stage).")


# ----------------------------------------------------------------------------- cube helpers
def example_cube() -> tuple[np.ndarray, np.ndarray]:
    """The first held-out synthetic cube (earthlib spectra never used in training, under the
    layout of the test scene), resampled to 64 bands, and its wavelengths in micrometres."""
    from earthsynth.data.hsi_scenes import SyntheticCubes, resample_bands, spectral_library

    cube = resample_bands(SyntheticCubes("test", 64)[0]["cube"], EXAMPLE_BANDS)
    library = spectral_library().wavelengths
    # resample_bands interpolates over the band index: band i sits at this fractional index
    wavelengths = np.interp(np.linspace(0, len(library) - 1, EXAMPLE_BANDS), np.arange(len(library)), library)
    return cube.numpy().astype(np.float32), wavelengths


def with_noise(data: np.ndarray, kind: str, strength: float, seed: int) -> np.ndarray:
    """`data` (bands, H, W) with simulated noise of `kind` (earthsynth.data.hsi_noise)."""
    # the simulator's amplitudes are for reflectance in about [0, 1]: other units (digital
    # numbers, radiance) are brought to that range for it and back
    scale = max(1.0, float(np.percentile(np.abs(data), 99.9)))
    noisy, _ = add_noise(torch.from_numpy(data / scale).float(), kind, torch.Generator().manual_seed(seed),
                         strength)
    return noisy.numpy() * scale


def false_colour_bands(bands: int, wavelengths: np.ndarray | None) -> list[int]:
    """Near infrared, red, green when the wavelengths are known; else three spread bands."""
    if wavelengths is not None and wavelengths.min() <= 0.55 and wavelengths.max() >= 0.86:
        return [int(np.abs(wavelengths - w).argmin()) for w in FALSE_COLOUR_UM]
    return [round(bands * f) for f in (0.75, 0.5, 0.25)]


def false_colour(data: np.ndarray, bands: list[int], limits: np.ndarray, zoom: int) -> np.ndarray:
    """(bands, H, W) -> (zoom H, zoom W, 3) uint8, each band stretched between `limits`."""
    rgb = np.stack([(data[b] - low) / max(high - low, 1e-12) for b, (low, high) in zip(bands, limits)], axis=-1)
    pixels = (np.clip(np.nan_to_num(rgb), 0, 1) * 255).round().astype(np.uint8)
    return pixels.repeat(zoom, axis=0).repeat(zoom, axis=1)


def stretch_limits(data: np.ndarray, bands: list[int]) -> np.ndarray:
    """The 2-98 percentiles of the shown bands (the same for before and after)."""
    return np.array([np.percentile(data[b], [2, 98]) for b in bands])


def output_name(src: Path) -> str:
    """The denoised file's name, in the input's format (ENVI data files -> .hdr)."""
    suffix = src.suffix.lower()
    if suffix not in (".npy", ".mat", ".tif", ".tiff", ".hdr"):
        suffix = ".hdr"
    return f"{src.stem}_denoised{suffix}"


def pick_cube_file(files: list[Path]) -> Path:
    """The file to read among the uploads: the ENVI header when there is one."""
    headers = [f for f in files if f.suffix.lower() == ".hdr"]
    if len(headers) == 1:
        return headers[0]
    if len(files) == 1:
        return files[0]
    names = ", ".join(f.name for f in files)
    raise InputError("upload", f"give one cube file, or an ENVI .hdr with its data file (got {names})")


# ----------------------------------------------------------------------------- handlers
class HyperspectralTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def prepare(self, folder: Path, source: str, files, key: str, layout: str):
        """-> (cube file for the job, its reader options, the cube's data, the clean cube or
        None, wavelengths or None)."""
        if source == EXAMPLE:
            clean, wavelengths = self.ctx.cached("hsi_example", example_cube)
            return None, {}, clean, clean, wavelengths
        uploads = self.ctx.copy_uploads(files, folder)
        if not uploads:
            raise InputError("upload", "no cube uploaded (ENVI .hdr + data file, .mat, .npy or GeoTIFF)")
        src = pick_cube_file(uploads)
        options = {}
        if key and key.strip():
            options["key"] = key.strip()
        if layout in ("BHW", "HWB"):
            options["layout"] = layout
        from earthsynth.jobs.denoise import read_input

        cube = read_input(src, **options)  # the checks `earthsynth denoise` makes: NaN, bands, size
        return src, options, cube.data, None, cube.wavelengths

    def denoise(self, source: str, files, noise: str, noise_strength: float, steps: float, strength: float,
                seed: float, key: str, layout: str, request: gr.Request = None, progress=gr.Progress()):  # noqa: B008 (how gradio marks the progress bar)
        """Generator (so Stop can end the child job): yields the status while the job runs,
        then (status, before, after, spectrum, downloads, run state, x, y)."""
        waiting = (gr.skip(),) * 7
        folder = self.ctx.job_folder(request, "hsi")
        progress(0, desc="reading the cube")
        src, options, data, clean, wavelengths = self.prepare(folder, source, files, key, layout)
        if noise != "none":
            if clean is None:
                clean = data
            data = with_noise(clean, noise, float(noise_strength), int(seed))
        if src is None or noise != "none":  # the job reads the cube to denoise from a file
            stem = "example" if src is None else src.stem
            src, options = folder / (f"{stem}_noisy.npy" if noise != "none" else f"{stem}.npy"), {"layout": "BHW"}
            np.save(src, data.astype(np.float32))
        out = folder / "out" / output_name(src)
        out.parent.mkdir()
        job = ChildJob("denoise", {"src": str(src), "out": str(out), "model_dir": str(self.ctx.model_folder("hsi")),
                                   "steps": int(steps), "strength": float(strength), "seed": int(seed), **options},
                       folder)
        shape = "{} bands x {} x {} px".format(*data.shape)
        try:
            for _ in wait_for(job, progress, lambda s: ((int(s), None), f"denoising {shape}: {s:.0f} s")):
                yield f"Denoising {shape}...", *waiting
        finally:
            job.stop()
        written = Path(job.result())
        denoised = read_cube(written, **({"layout": "BHW"} if written.suffix == ".npy" else {})).data

        # what the spectrum handler reads later, one pixel at a time (memory-mapped)
        np.save(folder / "view_input.npy", data.astype(np.float32))
        np.save(folder / "view_denoised.npy", denoised.astype(np.float32))
        if clean is not None:
            np.save(folder / "view_clean.npy", clean.astype(np.float32))
        if wavelengths is not None:
            np.save(folder / "view_wavelengths.npy", wavelengths)
        zoom = max(1, VIEW_SIZE // max(data.shape[1:]))
        bands = false_colour_bands(data.shape[0], wavelengths)
        limits = stretch_limits(data if clean is None else clean, bands)
        before = save_png(false_colour(data, bands, limits, zoom), folder / "before.png")
        after = save_png(false_colour(denoised, bands, limits, zoom), folder / "after.png")
        status = f"Denoised {shape} in {job.elapsed:.0f} s."
        if clean is not None:
            status += ("\n\n| against the clean cube | PSNR (dB) | SAM (degrees) |\n|---|---|---|\n"
                       f"| input | {band_psnr(data, clean):.2f} | {sam_degrees(data, clean):.2f} |\n"
                       f"| denoised | {band_psnr(denoised, clean):.2f} | {sam_degrees(denoised, clean):.2f} |")
        x, y = data.shape[2] // 2, data.shape[1] // 2
        run = {"folder": str(folder), "zoom": zoom}
        downloads = sorted(str(p) for p in out.parent.iterdir())
        yield status, before, after, self.spectrum(run, x, y), downloads, run, x, y

    def spectrum(self, run: dict | None, x: float, y: float) -> pd.DataFrame:
        """The spectra at pixel (x, y) of the last run: input, denoised and clean (if known)."""
        folder = Path(run["folder"]) if run else None
        if folder is None or not (folder / "view_input.npy").exists():  # none yet, or a new run under way
            raise InputError("spectrum", "denoise a cube first")
        cubes = {name: np.load(folder / f"view_{name}.npy", mmap_mode="r")
                 for name in ("input", "denoised", "clean") if (folder / f"view_{name}.npy").exists()}
        bands, height, width = cubes["input"].shape
        if x is None or y is None:
            raise InputError("spectrum", "give the pixel's x and y (or click a view)")
        x, y = int(x), int(y)
        if not (0 <= x < width and 0 <= y < height):
            raise InputError("spectrum", f"pixel ({x}, {y}) is outside the {width} x {height} cube")
        wavelengths_file = folder / "view_wavelengths.npy"
        axis = np.load(wavelengths_file) if wavelengths_file.exists() else np.arange(bands)
        frames = [pd.DataFrame({"x": axis, "value": np.asarray(cube[:, y, x], dtype=np.float64), "cube": name})
                  for name, cube in cubes.items()]
        return pd.concat(frames, ignore_index=True)

    def clicked(self, run: dict | None, event: gr.SelectData):
        """A click on a view -> the pixel under it (the views may be enlarged)."""
        zoom = (run or {}).get("zoom", 1)
        return event.index[0] // zoom, event.index[1] // zoom


# ----------------------------------------------------------------------------- the tab
def build(ctx: AppContext) -> None:
    if not ctx.available("hsi"):
        gr.Markdown(UNAVAILABLE, elem_id="hsi-unavailable")
        return
    tab = HyperspectralTab(ctx)
    with gr.Row():
        with gr.Column():
            source = gr.Radio([EXAMPLE, UPLOAD], value=EXAMPLE, label="cube", elem_id="hsi-source")
            files = gr.File(file_count="multiple", label="ENVI .hdr + data file, .mat, .npy or GeoTIFF",
                            elem_id="hsi-files", visible=False)
            noise = gr.Dropdown(["none", *NOISE_KINDS], value="mixture", label="noise to add for the demo",
                                info="none: denoise the cube as it is")
            noise_strength = gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="noise strength")
        with gr.Column():
            steps = gr.Slider(1, 20, value=4, step=1, label="denoising steps", elem_id="hsi-steps")
            strength = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="strength (how far towards pure noise)")
            seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Accordion("reading options", open=False):
                key = gr.Textbox(label=".mat variable (empty: the largest 3-D array)")
                layout = gr.Radio(["auto", "BHW", "HWB"], value="auto", label=".mat / .npy axis order")
            with gr.Row():
                run = gr.Button("Denoise", variant="primary", elem_id="hsi-denoise")
                stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown(elem_id="hsi-status")
    with gr.Row():
        before = gr.Image(label="input (false colour; click for the spectrum)", format="png", interactive=False,
                          elem_id="hsi-before")
        after = gr.Image(label="denoised (click for the spectrum)", format="png", interactive=False,
                         elem_id="hsi-after")
    with gr.Row():
        with gr.Column(scale=3):
            plot = gr.LinePlot(x="x", y="value", color="cube", x_title="wavelength (um) or band",
                               y_title="value", label="spectrum", elem_id="hsi-spectrum")
        with gr.Column(scale=1):
            x = gr.Number(precision=0, label="pixel x", minimum=0)
            y = gr.Number(precision=0, label="pixel y", minimum=0)
            downloads = gr.File(file_count="multiple", label="denoised cube", interactive=False)
    run_state = gr.State(None)

    source.change(lambda choice: gr.update(visible=choice == UPLOAD), source, files, api_visibility="private",
                  concurrency_limit=None, show_progress="hidden")
    event = run.click(readable(tab.denoise),
                      [source, files, noise, noise_strength, steps, strength, seed, key, layout],
                      [status, before, after, plot, downloads, run_state, x, y], api_name="hsi_denoise",
                      concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])
    spectrum = readable(tab.spectrum)
    for view in (before, after):
        view.select(tab.clicked, run_state, [x, y], api_visibility="private", concurrency_limit=None).then(
            spectrum, [run_state, x, y], plot, api_visibility="private", concurrency_limit=None)
    x.submit(spectrum, [run_state, x, y], plot, api_name="hsi_spectrum", concurrency_limit=None)
    y.submit(spectrum, [run_state, x, y], plot, api_visibility="private", concurrency_limit=None)

"""The Augment tab: `earthsynth augment` on the bundled dataset or an uploaded zipped one,
with progress, the accepted and rejected samples and their reasons, and the synthetic
dataset as a zip."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gradio as gr

from earthsynth.app.common import JOBS, AppContext, not_available, readable, wait_for
from earthsynth.app.jobs import ChildJob
from earthsynth.augment.report import class_colours, load_manifest, pass_rates, percent, thumbnail
from earthsynth.data.export import EXPORT_FORMATS
from earthsynth.errors import InputError
from earthsynth.jobs.augment import INPUT_FORMATS

BUNDLED = "bundled trees (450 tiles of 64 px, 0.2 m/px)"
UPLOAD = "upload a zipped dataset"
MAX_UNZIPPED = 2 * 1024**3  # bytes: a zip that would unpack to more is refused (zip bombs)
GALLERY_MAX = 24  # samples shown per gallery (all of them are in the zip)
THUMBNAIL = 192
# what goes into the zip: the datasets and the record of how they were made (candidates/,
# every generated image, is left out)
ZIP_FILES = ("manifest.jsonl", "run.json", "report.html", "report.png", "augment_config.yaml", "sampler.json",
             "layouts.jsonl")


def unpack_dataset(archive: Path, folder: Path) -> Path:
    """The uploaded zip unpacked into `folder`; returns the dataset's root (the single
    top-level folder when the zip holds one). A damaged zip is an InputError."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX")]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise InputError(archive, f"unpacks to more than {MAX_UNZIPPED // 1024**3} GB")
            # extract() drops absolute paths and '..' parts, so nothing lands outside `folder`
            for member in members:
                zf.extract(member, folder)
    except InputError:
        raise
    except Exception as err:  # BadZipFile, EOFError, zlib.error, CRC mismatches: a damaged archive
        raise InputError(archive, f"is not a readable zip archive ({' '.join(str(err).split())})") from None
    entries = [p for p in folder.iterdir() if p.name != "__MACOSX"]
    if not entries:
        raise InputError(archive, "is empty")
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


def manifest_counts(out: Path) -> tuple[int, int]:
    """(candidates judged, accepted) so far, read from the job's manifest shard."""
    candidates = accepted = 0
    shard = out / "manifest.rank0.jsonl"
    if shard.exists():
        for line in shard.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # the line being written
                continue
            candidates += 1
            accepted += bool(record.get("accepted"))
    return candidates, accepted


def zip_dataset(out: Path, formats: list[str], archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for fmt in formats:
            for path in sorted((out / fmt).rglob("*")):
                if path.is_file():
                    zf.write(path, f"synthetic-dataset/{path.relative_to(out)}")
        for name in ZIP_FILES:
            if (out / name).exists():
                zf.write(out / name, f"synthetic-dataset/{name}")
    return archive


class AugmentTab:
    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def galleries(self, out: Path, folder: Path, summary: dict):
        """(accepted, rejected) galleries: thumbnails with boxes, each with its caption."""
        records = load_manifest(out / "manifest.jsonl")
        colours = class_colours(records, summary)
        size = summary.get("image_size", 64)
        kept = [r for r in records if r["accepted"]][: summary["accepted"]]
        rejected = [r for r in records if not r["accepted"]]
        (folder / "gallery").mkdir()
        galleries = []
        for group in (kept, rejected):
            items = []
            for record in group[:GALLERY_MAX]:
                path = folder / "gallery" / f"{record['image_id']}.png"
                thumbnail(out, record, THUMBNAIL, colours, size).save(path)
                objects = len(record["layout"]["labels"])
                reasons = "; ".join(record["reasons"]) if not record["accepted"] else "passed every check"
                items.append((str(path), f"{record['image_id']}, {objects} object{'s' * (objects != 1)}: {reasons}"))
            galleries.append(items)
        return galleries, pass_rates(records)

    def run(self, source: str, archive, fmt: str, num_images: float, formats: list[str], steps: float, seed: float,
            request: gr.Request = None, progress=gr.Progress()):  # noqa: B008 (how gradio marks the progress bar)
        """Generator (so Stop can end the child job): yields the status while the job runs,
        then (status, accepted gallery, rejected gallery, the dataset zip)."""
        folder = self.ctx.job_folder(request, "augment")
        wanted = int(num_images)
        formats = [f for f in (formats or []) if f in EXPORT_FORMATS]
        if not formats:
            raise InputError("output formats", f"choose at least one of {', '.join(EXPORT_FORMATS)}")
        data, data_format = None, None
        if source == UPLOAD:
            uploads = self.ctx.copy_uploads(archive, folder)
            if not uploads:
                raise InputError("upload", "no zip uploaded")
            if fmt not in INPUT_FORMATS:
                raise InputError("dataset format", f"choose one of {', '.join(INPUT_FORMATS)}")
            data, data_format = str(unpack_dataset(uploads[0], folder / "dataset")), fmt
        settings = {"num_images": wanted, "steps": int(steps), "seed": int(seed), "out_formats": formats,
                    "model": self.ctx.override("aerogen")}
        out = folder / "out"
        job = ChildJob("augment", {"out": str(out), "settings": settings, "data": data, "fmt": data_format}, folder)

        def describe(elapsed: float):
            candidates, accepted = manifest_counts(out)
            if not candidates:
                return None, f"reading the data and loading the models: {elapsed:.0f} s"
            return (min(accepted, wanted), wanted), f"{accepted} accepted of {candidates} candidates"

        try:
            for _ in wait_for(job, progress, describe):
                yield "Generating and filtering...", gr.skip(), gr.skip(), gr.skip()
        finally:
            job.stop()
        summary = job.result()
        (accepted, rejected), rates = self.galleries(out, folder, summary)
        archive_path = zip_dataset(out, formats, folder / "synthetic-dataset.zip")
        status = (f"**{summary['accepted']} of {summary['wanted']} wanted images** passed the filter "
                  f"({summary['candidates']} candidates, {summary['timing']['total_s']} s); "
                  f"objects per image: real {summary['real']['objects_per_image']:.2f}, "
                  f"synthetic {summary['synthetic']['objects_per_image']:.2f}.\n\n"
                  + " | ".join(f"{name} {percent(*rates[name])}" for name in rates))
        if summary["accepted"] < summary["wanted"]:
            status += ("\n\nFewer images passed than wanted: ask for more (later candidates are tried) "
                       "or use more steps.")
        yield status, accepted, rejected, str(archive_path)


def build(ctx: AppContext) -> None:
    if not ctx.available("aerogen"):
        gr.Markdown(not_available("No aerogen model.", "Train one with `earthsynth train configs/aerogen.yaml`."))
        return
    tab = AugmentTab(ctx)
    gr.Markdown("Real labelled tiles -> layout sampler -> aerogen -> filter (detector, classifier, quality, "
                "duplicates) -> a synthetic labelled dataset, as `earthsynth augment` makes it. An uploaded "
                "dataset is cut into 128 px windows shown to the model at 64 px (0.1 m data at 0.2 m/px).")
    with gr.Row():
        with gr.Column():
            source = gr.Radio([BUNDLED, UPLOAD], value=BUNDLED, label="real dataset", elem_id="augment-source")
            with gr.Group(visible=False) as upload:
                archive = gr.File(label="zipped dataset (images with their annotations)", file_types=[".zip"])
                fmt = gr.Dropdown(list(INPUT_FORMATS), value="voc", label="its format")
        with gr.Column():
            num_images = gr.Slider(1, 64, value=8, step=1, label="images wanted (accepted by the filter)",
                                   elem_id="augment-count")
            formats = gr.CheckboxGroup(list(EXPORT_FORMATS), value=["coco"], label="output formats")
            steps = gr.Slider(1, 50, value=20, step=1, label="steps", elem_id="augment-steps")
            seed = gr.Number(value=0, precision=0, label="seed", minimum=0)
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="augment-run")
                stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown(elem_id="augment-status")
    download = gr.File(label="synthetic dataset (zip)", interactive=False)
    accepted = gr.Gallery(label="accepted", columns=6, height="auto", format="png", elem_id="augment-accepted")
    rejected = gr.Gallery(label="rejected, with the reasons", columns=6, height="auto", format="png")
    source.change(lambda choice: gr.update(visible=choice == UPLOAD), source, upload, api_visibility="private",
                  concurrency_limit=None, show_progress="hidden")
    event = run.click(readable(tab.run), [source, archive, fmt, num_images, formats, steps, seed],
                      [status, accepted, rejected, download], api_name="augment_run",
                      concurrency_id=JOBS)
    stop.click(None, None, None, cancels=[event])

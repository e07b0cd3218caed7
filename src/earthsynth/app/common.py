"""What the tabs of the demo share: the model folders, per-session folders, readable errors,
waiting on a child job, and drawing boxes."""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from earthsynth.augment.report import draw_box_outlines, palette_colours
from earthsynth.boxes import Boxes
from earthsynth.data.common import atomic_write, one_line
from earthsynth.errors import InputError

POLL_S = 0.5  # how often a running job reports progress (and can be stopped)
WORK_PREFIX = "earthsynth-app-"
# the events that run a model share this concurrency group: with the queue's limit of 1, one
# model job runs at a time in the whole app (a CPU has no room for two), the rest wait in line
JOBS = "model-jobs"


class AppContext:
    """The state of one app instance: where the models are, the per-session folders, and the
    models kept in memory between requests."""

    def __init__(self, model_dir: str | os.PathLike | None = None):
        self.model_dir = Path(model_dir) if model_dir else None
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise InputError(self.model_dir, "--model-dir is not a folder")
        # one private folder (0700) holds everything the app writes: gradio's cache (uploads and
        # the files it serves) and sessions/<session>/, the outputs of each browser session
        base = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()).absolute()
        base.mkdir(parents=True, exist_ok=True)
        self.work_root = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=base))
        self.sessions = self.work_root / "sessions"
        self.sessions.mkdir(mode=0o700)
        # gradio reads its cache folder from the environment (each Blocks, the server, each upload)
        self.previous_temp_dir = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(self.work_root)
        self.closed = False
        # gradio's copy of an upload -> the sessions whose jobs read it; it goes with the last
        self.uploads: dict[Path, set[str]] = {}
        self.uploads_lock = threading.Lock()
        self.lock = threading.Lock()  # loading a model once, even with two requests at a time
        self.cache: dict[str, object] = {}

    # ------------------------------------------------------------------ models
    def model_folder(self, family: str) -> Path:
        """--model-dir/<family> when it exists, else the bundled checkpoint (InputError if none)."""
        from earthsynth.jobs.load import bundled_checkpoint

        custom = self.override(family)
        return Path(custom) if custom else bundled_checkpoint(family)

    def override(self, family: str) -> str:
        """--model-dir/<family> when it exists, else "" (the bundled checkpoint)."""
        if self.model_dir is not None and (self.model_dir / family).is_dir():
            return str(self.model_dir / family)
        return ""

    def available(self, family: str) -> bool:
        try:
            self.model_folder(family)
        except InputError:
            return False
        return True

    def cached(self, key: str, load: Callable[[], object]):
        """`load()` once per app; later calls get the same object."""
        with self.lock:
            if key not in self.cache:
                self.cache[key] = load()
            return self.cache[key]

    # ------------------------------------------------------------------ session folders
    def session_path(self, request: gr.Request | None) -> Path:
        # the session hash comes from the client: keep only harmless characters
        session = getattr(request, "session_hash", None) or "no-session"
        session = re.sub(r"[^A-Za-z0-9_-]", "", session)[:64] or "no-session"
        return self.sessions / session

    def session_folder(self, request: gr.Request | None) -> Path:
        folder = self.session_path(request)
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    def job_folder(self, request: gr.Request | None, tab: str) -> Path:
        """A new empty folder for one run of `tab`; the session's earlier runs of that tab
        are deleted (only the latest outputs of each tab are kept)."""
        session = self.session_folder(request)
        for old in session.glob(f"{tab}-*"):
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{tab}-", dir=session))

    def preview_file(self, request: gr.Request | None, picture: Image.Image) -> str:
        """`picture` as a PNG in the session's folder, named by its content: previews of a
        table typed quickly run in parallel, and none deletes another's file."""
        data = io.BytesIO()
        picture.save(data, format="PNG")
        folder = self.session_folder(request) / "previews"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{hashlib.sha256(data.getvalue()).hexdigest()[:32]}.png"
        with atomic_write(path, "wb") as f:
            f.write(data.getvalue())
        return str(path)

    def copy_uploads(self, paths, folder: Path) -> list[Path]:
        """Uploaded files (gradio keeps each in a folder of its own) copied side by side into
        `folder`, in a session's folder, under their own names, so that an ENVI header finds
        its data file. The uploads now belong to that session too: they go when it ends."""
        if paths is None:
            return []
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        session = Path(folder).relative_to(self.sessions).parts[0]
        copies = []
        for path in paths:
            target = folder / Path(path).name
            shutil.copyfile(path, target)
            copies.append(target)
            with self.uploads_lock:
                self.uploads.setdefault(Path(path), set()).add(session)
        return copies

    def close_session(self, request: gr.Request | None) -> None:
        """The page was closed: its jobs stop, its outputs go, and so do the uploads its jobs
        read (unless the job of another open session read the same file)."""
        from earthsynth.app.jobs import stop_all

        # never create it here: pages close while the app shuts down, after remove_all, and a
        # folder made then would outlive the app
        if not getattr(request, "session_hash", None):
            return
        folder = self.session_path(request)
        stop_all(under=folder)
        shutil.rmtree(folder, ignore_errors=True)
        with self.uploads_lock:
            for upload, sessions in list(self.uploads.items()):
                sessions.discard(folder.name)
                if not sessions:
                    del self.uploads[upload]
                    self.remove_upload(upload)

    def remove_upload(self, upload: Path) -> None:
        """An upload and its folder in gradio's cache (the folder is named by its content)."""
        if upload.parent.parent != self.work_root:  # gradio's uploads are <cache>/<hash>/<name>
            return
        upload.unlink(missing_ok=True)
        try:
            upload.parent.rmdir()
        except OSError:  # not empty: gradio keeps another file of that content there
            pass

    def remove_all(self) -> None:
        """The app is closing: stop the jobs still running, remove every file it wrote
        (gradio's cache with it), and give gradio back its cache folder."""
        from earthsynth.app.jobs import stop_all

        if self.closed:  # once: called when the server stops and again at exit
            return
        self.closed = True
        stop_all()
        shutil.rmtree(self.work_root, ignore_errors=True)
        if os.environ.get("GRADIO_TEMP_DIR") == str(self.work_root):
            if self.previous_temp_dir is None:
                del os.environ["GRADIO_TEMP_DIR"]
            else:
                os.environ["GRADIO_TEMP_DIR"] = self.previous_temp_dir


# ----------------------------------------------------------------------------- errors
def readable(fn: Callable) -> Callable:
    """`fn` with its errors turned into gr.Error messages (one line, never a traceback).

    InputError is the user's to fix and is shown as it is, with the session folder cut
    from file names; anything else is a bug: its traceback goes to the server log and the
    page gets one line.
    """

    def message(err: Exception) -> gr.Error:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, InputError):
            return gr.Error(hide_folders(str(err)), print_exception=False)
        traceback.print_exc()
        return gr.Error(f"unexpected error: {one_line(err)}", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise message(err) from None
        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise message(err) from None
    return wrapper


def hide_folders(text: str) -> str:
    """Error text without the app's temporary folders (WORK_PREFIX.../sessions/<session>/<run>/):
    '/tmp/earthsynth-app-x/sessions/s1/hsi-y/cube.npy: ...' -> 'cube.npy: ...'."""
    return re.sub(rf"[^\s'\"]*{WORK_PREFIX}[^/\s]*/sessions/[^/\s]+/[^/\s]+/", "", text)


# ----------------------------------------------------------------------------- outputs
def save_png(picture: np.ndarray | Image.Image, path: Path) -> str:
    """`picture` ((H, W, 3) uint8 or a PIL image) as a PNG at `path`, in a session's folder,
    for gradio to serve (an array returned to gradio would be cached by gradio outside every
    session, and outlive it)."""
    (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).save(path, format="PNG")
    return str(path)


# ----------------------------------------------------------------------------- jobs
def wait_for(job, progress: gr.Progress, describe: Callable[[float], tuple]) -> Iterator[None]:
    """Yield every POLL_S seconds while `job` (a ChildJob) runs, updating the progress bar
    with describe(elapsed seconds) -> (progress, text). The caller yields after each step:
    that is where Stop closes the handler (and its `finally` ends the job)."""
    while job.running:
        value, text = describe(job.elapsed)
        progress(value, desc=text)
        yield
        time.sleep(POLL_S)


def log(message: str) -> None:
    print(f"earthsynth app: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- drawing
def draw_boxes(pixels: np.ndarray, boxes: Boxes, zoom: int = 4, names: bool = True) -> Image.Image:
    """(H, W, 3) uint8 enlarged `zoom` times (nearest, pixels stay visible) with its rotated
    boxes drawn, one colour per class."""
    image = Image.fromarray(pixels).resize((pixels.shape[1] * zoom, pixels.shape[0] * zoom), Image.NEAREST)
    draw_box_outlines(ImageDraw.Draw(image), boxes, zoom, zoom, palette_colours(boxes.labels), max(1, zoom // 2),
                      label_size=max(10, 3 * zoom) if names else None)
    return image


def not_available(what: str, how: str) -> str:
    """The text of a tab whose model or family is not there yet."""
    return f"### Not available yet\n\n{what}\n\n{how}"

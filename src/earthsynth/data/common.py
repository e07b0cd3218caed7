"""Helpers the readers and writers share: atomic outputs, image sizes, labels.

Atomic outputs, one family: `atomic_write` (a file opened for writing), `atomic_path` (a file
name for a writer that wants a path) and `atomic_directory` (a whole folder). Each writes
beside its target and moves the result into place only when the block succeeds, and removes
what it wrote on any error, so a reader never sees a half-written output. A killed process
cannot clean up: `remove_stale_temporaries` lets the next run in that place remove what it left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from earthsynth.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator[IO]:
    """Open a temporary file next to `path`; it replaces `path` only if the block succeeds.

    The temporary file sits in the same directory so that `os.replace` is an atomic rename;
    on any error it is removed, so no half-written file is ever left behind.
    """
    if "b" not in mode:
        open_kw.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), **open_kw) as f:
        yield f


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name next to `path` for a writer that wants a path (GDAL, h5py...);
    the file replaces `path` only if the block succeeds, and is removed on any error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def new_hidden_folder(target: str | os.PathLike) -> Path:
    """A new empty folder `.<name>.<8 random characters>` beside `target` (its parents made),
    to build `target` in and rename when complete. Made with os.mkdir, so it gets the user's
    umask like any folder they make, not tempfile.mkdtemp's 0700 (which the rename would
    carry over to the output: others of the group could not read it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        folder = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `directory`; on success it replaces `directory` (and what was
    there), on any error it is removed."""
    directory = Path(directory)
    tmp = new_hidden_folder(directory)
    try:
        yield tmp
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# what the atomic helpers name their temporaries: ".<target>.<8 hex>" (a folder,
# new_hidden_folder; mkdtemp's 8 characters before it), or ".<target>.<8 hex>.tmp" (a file,
# atomic_path); a DatasetWriter inside an atomic_directory nests them ("..coco.0f3a9b1c.77d2e0aa")
TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.(?:[a-z0-9_]{8}|[0-9a-f]{8}\.tmp)")


def remove_stale_temporaries(folder: str | os.PathLike, targets: str) -> list[str]:
    """Remove from `folder` the temporaries that a killed run's atomic writes left beside the
    outputs whose names fully match the regex `targets`; nothing else is touched. Call it only
    where no other run is writing. Returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = TEMPORARY_NAME.fullmatch(entry.name)
        while match and not re.fullmatch(targets, match["target"]):
            match = TEMPORARY_NAME.fullmatch(match["target"])
        if match:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


def check_output_folder(path: str | os.PathLike, option: str) -> None:
    """Refuse in one line an output folder that is a file, lies under a file or cannot be made
    or written, before any work; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, f"is a file; {option} needs a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(path, f"cannot be made: {existing} is a file ({option})")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else existing
        raise InputError(path, f"cannot be written: no permission to write in {where} ({option})")


def format_number(value: float, decimals: int = 6) -> str:
    """A number as short text: integers without a decimal point, others without trailing zeros."""
    text = f"{float(value):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image, reading only its header (PIL, else rasterio for odd TIFFs)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # only the header is read, so a huge scene is no decompression bomb here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.size
    except Exception:  # PIL refuses some multi-band / float GeoTIFFs and scenes over its pixel limit
        pass
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():  # only the size is wanted: a plain PNG's missing grid is no news
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.width, src.height
    except Exception as err:
        raise InputError(path, f"cannot read the image size: {one_line(err)}") from None


def find_image(folder: Path, name: str | None, stem: str) -> Path | None:
    """The image `name` in `folder`, else any image called `stem` with a usual extension."""
    if name and (folder / name).is_file():
        return folder / name
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + ext), folder / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def one_line(err: BaseException | str) -> str:
    """An exception's message squeezed onto one line (library errors can span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def check_label(label: str, class_names: Sequence[str] | None, source, where: str) -> None:
    if class_names is not None and label not in class_names:
        raise InputError(source, f"{where}: unknown class {label!r} (known: {', '.join(class_names)})")


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator:
    """PIL's Image.open for reading pixels, with an image over PIL's pixel limit (a
    decompression bomb: a small file whose pixels would fill the memory) refused in one line
    naming the file, at the limit where PIL only warns as well as where it raises. PIL checks
    while opening and again while loading some formats' frames, so the whole block is guarded."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                yield image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise InputError(path, f"refused as a possible decompression bomb: {one_line(err)}") from None


def read_csv_rows(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every row of a CSV file, blank rows included as [].

    Read strictly: the csv module would let a quote that is never closed swallow the rest of
    the file into one cell, silently; here that, and any quoted value running over several
    lines (no field of ours holds a line break, so that is a stray quote too), is refused in
    one line naming the line where the value starts.
    """
    import csv

    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, strict=True)
            start = 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:
                    problem = ("a quote opened here is never closed" if "unexpected end of data" in str(err)
                               else one_line(err))
                    raise InputError(path, f"line {start}: {problem}") from None
                if reader.line_num > start:
                    raise InputError(path, f"line {start}: a quoted value runs on to line {reader.line_num} "
                                     "(a stray quote?)")
                rows.append((start, row))
                start = reader.line_num + 1
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read: {one_line(err)}") from None
    return rows


def inside_folder(root: str | os.PathLike, folder: str | os.PathLike, name: str, source, where: str,
                  allow_outside: bool = False) -> Path:
    """`folder / name` for a path named inside an annotation file (COCO file_name, CSV
    image_path, VOC filename), refused in one line if it is absolute or its `..` lead outside
    the dataset folder `root`, unless `allow_outside`: an annotation file should not make a
    reader open (or a writer copy) files elsewhere on the machine. Checked on the names as
    written: a symbolic link the user put inside the folder is followed."""
    path = Path(folder) / name
    if not allow_outside:
        inside = Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))
        if Path(name).is_absolute() or not inside:
            raise InputError(source, f"{where}: image path {name!r} leads outside the dataset folder "
                             "(pass --allow-outside-paths, or allow_outside_paths=True, if that is meant)")
    return path


def self_crossing(quads: np.ndarray) -> np.ndarray:
    """(N,) bool: which (N, 4, 2) quadrilaterals cross themselves (a bow tie: corners not in
    order around the shape), so that no rectangle can honestly stand for them."""
    quads = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)

    def cross(o, a, b):
        return (a[:, 0] - o[:, 0]) * (b[:, 1] - o[:, 1]) - (a[:, 1] - o[:, 1]) * (b[:, 0] - o[:, 0])

    def segments_cross(a, b, c, d):  # proper crossings only: touching ends do not count
        return (cross(a, b, c) * cross(a, b, d) < 0) & (cross(c, d, a) * cross(c, d, b) < 0)

    p0, p1, p2, p3 = (quads[:, i] for i in range(4))
    return segments_cross(p0, p1, p2, p3) | segments_cross(p1, p2, p3, p0)

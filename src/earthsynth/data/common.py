"""Helpers the readers and writers share: atomic outputs, image sizes, labels.

Atomic outputs, one family: `atomic_write` (a file opened for writing), `atomic_path` (a file
name for a writer that wants a path) and `atomic_directory` (a whole folder). Each writes
beside its target and moves the result into place only when the block succeeds, and removes
what it wrote on any error, so a reader never sees a half-written output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

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


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder beside `directory`; on success it replaces `directory` (and what was
    there), on any error it is removed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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

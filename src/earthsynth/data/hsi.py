"""Hyperspectral cubes from ENVI, MATLAB .mat, .npy and multi-band GeoTIFF files.

Every reader returns a `Cube`: float32 data (bands, H, W) with values as stored (no
reflectance scale factor applied; it is kept in the metadata), wavelengths (and FWHM) in
micrometres when the file says them, and the file's own data type as metadata["dtype"] (so a
tool can write its result back in that type). The nodata value (an ENVI `data ignore value`,
a GeoTIFF's nodata) is metadata["nodata"], and metadata["nodata_mask"] (H, W) marks the pixels
whose every band holds it (or the GeoTIFF's mask). Every reader refuses NaN / inf values outside
those pixels (an InputError naming the band and the count) unless `allow_nan=True`, and checks
`expected_bands` when given. write_envi writes back what an ENVI or GeoTIFF input said of its
grid (map info, coordinate system string), values and bands.

ENVI spectral libraries (`file type = ENVI Spectral Library`: one spectrum per line, the
bands along the samples) are not cubes; `read_spectral_library` reads them.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from earthsynth.data.common import atomic_write, format_number, one_line
from earthsynth.data.geotiff import GRID_FIELDS, BandsMixin, Raster, nodata_pixels, read_geotiff
from earthsynth.errors import InputError

# ENVI "data type" codes -> numpy type (byte order added from the header)
ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8", 15: "u8"}
ENVI_DATA_EXTENSIONS = ("", ".img", ".dat", ".sli", ".raw", ".bsq", ".bil", ".bip")


@dataclass
class Cube(BandsMixin):
    """A hyperspectral cube: data (bands, H, W) float32, wavelengths and their FWHM (bands,) in micrometres."""

    data: np.ndarray
    wavelengths: np.ndarray | None = None
    band_names: list[str] | None = None
    path: str | None = None
    metadata: dict = field(default_factory=dict)
    fwhm: np.ndarray | None = None

    def __post_init__(self):
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim != 3:
            raise ValueError(f"cube data must be (bands, H, W), got shape {self.data.shape}")
        for name in ("wavelengths", "fwhm"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, np.asarray(values, dtype=np.float64).reshape(-1))
                if len(getattr(self, name)) != self.bands:
                    raise ValueError(f"{len(getattr(self, name))} {name} for {self.bands} bands")
        if self.band_names is not None and len(self.band_names) != self.bands:
            raise ValueError(f"{len(self.band_names)} band names for {self.bands} bands")


# ----------------------------------------------------------------------------- dispatch
def read_cube(path: str | os.PathLike, **kw) -> Cube:
    """Read a cube by file extension; `kw` go to the reader (allow_nan, expected_bands, key, layout...).

    .hdr .img .dat .raw .bsq .bil .bip (or any file with an ENVI header beside it) -> read_envi,
    .mat -> read_mat, .npy -> read_npy, .tif .tiff -> read_tiff_cube.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".sli":
        raise InputError(path, "is an ENVI spectral library, not a cube; use read_spectral_library")
    if ext == ".mat":
        return read_mat(path, **kw)
    if ext == ".npy":
        return read_npy(path, **kw)
    if ext in (".tif", ".tiff"):
        return read_tiff_cube(path, **kw)
    if ext in ENVI_DATA_EXTENSIONS or ext == ".hdr" or _find_envi_header(path) is not None:
        return read_envi(path, **kw)
    raise InputError(path, f"unknown cube format {ext!r} (ENVI, .mat, .npy or .tif expected)")


def check_cube(cube: Cube, allow_nan: bool = False, expected_bands: int | None = None) -> Cube:
    """Raise an InputError naming the file for NaN / inf values or a wrong band count."""
    if expected_bands is not None and cube.bands != expected_bands:
        raise InputError(cube.path, f"has {cube.bands} bands, expected {expected_bands}")
    if not allow_nan:
        bad = ~np.isfinite(cube.data)
        if cube.metadata.get("nodata_mask") is not None:
            bad[:, cube.metadata["nodata_mask"]] = False  # NaN nodata pixels are holes, not bad values
        bad = bad.reshape(cube.bands, -1).sum(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            others = int((bad > 0).sum()) - 1
            more = f" (and {others} other band{'s' if others > 1 else ''})" if others else ""
            raise InputError(cube.path, f"band {first} has {bad[first]} NaN/inf values of {cube.height * cube.width}{more}; pass allow_nan=True to keep them")
    return cube


# ----------------------------------------------------------------------------- ENVI
def parse_envi_header(hdr_path: str | os.PathLike) -> dict[str, str | list[str]]:
    """An ENVI .hdr -> {lower-case key: text, or list of texts for a `{a, b, c}` value}."""
    try:
        text = Path(hdr_path).read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise InputError(hdr_path, f"cannot read: {err.strerror}") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "ENVI":
        raise InputError(hdr_path, "not an ENVI header (the first line is not 'ENVI')")
    header: dict[str, str | list[str]] = {}
    i = 1
    while i < len(lines):
        line = lines[i]
        i += 1
        if "=" not in line:
            continue  # blank lines and ';' comments
        key, value = (part.strip() for part in line.split("=", 1))
        if value.startswith("{"):
            # a braced value may run over several lines
            while "}" not in value and i < len(lines):
                value += " " + lines[i].strip()
                i += 1
            if "}" not in value:
                raise InputError(hdr_path, f"value of '{key}' has no closing brace")
            inner = value[1:value.index("}")]
            header[" ".join(key.lower().split())] = [item.strip() for item in inner.split(",")] if inner.strip() else []
        else:
            header[" ".join(key.lower().split())] = value
    return header


def read_envi(path: str | os.PathLike, allow_nan: bool = False, expected_bands: int | None = None) -> Cube:
    """An ENVI image (give the .hdr or the data file) -> Cube.

    The data file is the header's name without `.hdr` (as `x.img.hdr` -> `x.img`), or with
    .img .dat .sli .raw .bsq .bil .bip instead. Interleave bsq / bil / bip, data types 1 2 3 4 5 12
    (and 13 14 15), either byte order, a header offset. Wavelengths in nm are converted to
    micrometres; without `wavelength units` values above 100 are taken as nm.
    """
    hdr_path, data_path = _envi_paths(Path(path))
    header = parse_envi_header(hdr_path)
    if "spectral library" in str(header.get("file type", "")).lower():
        raise InputError(hdr_path, "is an ENVI spectral library, not a cube; use read_spectral_library")
    data = _read_envi_data(hdr_path, data_path, header)
    bands = data.shape[0]
    names = header.get("band names")
    if names is not None and (not isinstance(names, list) or len(names) != bands):
        raise InputError(hdr_path, f"'band names' lists {len(names) if isinstance(names, list) else 1} names for {bands} bands")
    nodata = _envi_number(hdr_path, header, "data ignore value")
    wavelengths, fwhm = _envi_wavelengths(hdr_path, header, bands)
    cube = Cube(data, wavelengths, band_names=names, fwhm=fwhm,
                path=str(data_path), metadata={"envi": header, "header_path": str(hdr_path),
                                               "dtype": ENVI_DTYPES[_header_int(header, "data type", hdr_path)],
                                               "nodata": nodata, "nodata_mask": nodata_pixels(data, nodata)})
    return check_cube(cube, allow_nan, expected_bands)


def read_spectral_library(path: str | os.PathLike, allow_nan: bool = False) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """An ENVI spectral library (.hdr or .sli) -> (spectra (N, bands) float32, wavelengths in um or None, names).

    A library stores N spectra as `lines` and the bands as `samples` (with `bands = 1`).
    Names are `spectra names`, or spectrum_0, spectrum_1, ... when the header has none.
    """
    hdr_path, data_path = _envi_paths(Path(path))
    header = parse_envi_header(hdr_path)
    if "spectral library" not in str(header.get("file type", "")).lower():
        raise InputError(hdr_path, f"file type is {header.get('file type')!r}, not 'ENVI Spectral Library'")
    data = _read_envi_data(hdr_path, data_path, header)
    if data.shape[0] != 1:
        raise InputError(hdr_path, f"a spectral library has bands = 1, this header says {data.shape[0]}")
    spectra = data[0]  # (lines = N spectra, samples = bands)
    n, bands = spectra.shape
    names = header.get("spectra names")
    if names is None:
        names = [f"spectrum_{i}" for i in range(n)]
    elif not isinstance(names, list) or len(names) != n:
        raise InputError(hdr_path, f"'spectra names' lists {len(names) if isinstance(names, list) else 1} names for {n} spectra")
    if not allow_nan and not np.all(np.isfinite(spectra)):
        bad = np.flatnonzero(~np.all(np.isfinite(spectra), axis=1))
        raise InputError(data_path, f"{len(bad)} spectra hold NaN/inf values, the first is {names[bad[0]]!r} (row {bad[0]}); pass allow_nan=True to keep them")
    return spectra, _envi_wavelengths(hdr_path, header, bands)[0], list(names)


def write_envi(path: str | os.PathLike, cube: Cube, description: str = "written by earthsynth") -> Path:
    """Write a cube as ENVI float32 bsq, little-endian. Returns the header path.

    `path` is the .hdr (data goes to the same name with .img) or the data file (the header
    goes beside it with .hdr replacing the extension). Both files are replaced atomically.
    """
    path = Path(path)
    if path.suffix.lower() == ".hdr":
        hdr_path, data_path = path, path.with_suffix(".img")
    else:
        hdr_path, data_path = path.with_suffix(".hdr"), path
    if hdr_path == data_path:
        raise ValueError(f"{path}: the data file needs an extension other than .hdr")
    lines = [
        "ENVI",
        f"description = {{{description}}}",
        f"samples = {cube.width}",
        f"lines = {cube.height}",
        f"bands = {cube.bands}",
        "header offset = 0",
        "file type = ENVI Standard",
        "data type = 4",
        "interleave = bsq",
        "byte order = 0",
    ]
    if cube.wavelengths is not None:
        lines.append("wavelength units = Micrometers")
        lines.append("wavelength = {" + ", ".join(format_number(w, 9) for w in cube.wavelengths) + "}")
        if cube.fwhm is not None:
            lines.append("fwhm = {" + ", ".join(format_number(w, 9) for w in cube.fwhm) + "}")
    if cube.band_names is not None:
        for name in cube.band_names:
            if "," in name or "{" in name or "}" in name:
                raise InputError(hdr_path, f"band name {name!r} holds a comma or brace, which an ENVI header cannot")
        lines.append("band names = {" + ", ".join(cube.band_names) + "}")
    lines += _kept_header_lines(cube)
    # one `with` for both files: either both are replaced or neither
    with atomic_write(data_path, "wb") as f_data, atomic_write(hdr_path) as f_hdr:
        f_data.write(np.ascontiguousarray(cube.data, dtype="<f4").tobytes())
        f_hdr.write("\n".join(lines) + "\n")
    return hdr_path


# header keys about the grid or the meaning of the values and bands, which a cube written on the
# same grid in the same units (denoise's output) shares with its input
KEPT_ENVI_KEYS = ("map info", "projection info", "coordinate system string", "reflectance scale factor",
                  "data gain values", "data offset values", "sensor type", "acquisition time", "default bands", "bbl")


def _kept_header_lines(cube: Cube) -> list[str]:
    """The header lines a cube's metadata asks for: the KEPT_ENVI_KEYS of an ENVI input, the
    map info and coordinate system string of a GeoTIFF input's CRS and transform, and its
    nodata value as `data ignore value`."""
    meta = cube.metadata
    header = {key: value for key, value in meta.get("envi", {}).items() if key in KEPT_ENVI_KEYS}
    if "map info" not in header and meta.get("crs") is not None and meta.get("transform") is not None:
        header.update(_envi_georeference(meta["crs"], meta["transform"]))
    lines = [f"{key} = " + ("{" + ", ".join(value) + "}" if isinstance(value, list) else value)
             for key, value in header.items()]
    if meta.get("nodata") is not None:
        lines.append(f"data ignore value = {format_number(meta['nodata'], 9)}")
    return lines


def _envi_georeference(crs: str, transform) -> dict:
    """`map info` and `coordinate system string` for a CRS and an affine transform, as GDAL's
    ENVI driver writes them (it knows ENVI's projection names, UTM zones and rotation)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(Path(folder) / "grid.img", "w", driver="ENVI", width=1, height=1, count=1, dtype="uint8",
                           crs=crs, transform=rasterio.Affine(*transform)):
            pass
        header = parse_envi_header(Path(folder) / "grid.hdr")
    return {key: header[key] for key in ("map info", "coordinate system string") if key in header}


def _find_envi_header(data_path: Path) -> Path | None:
    for candidate in (Path(str(data_path) + ".hdr"), data_path.with_suffix(".hdr")):
        if candidate.is_file() and candidate != data_path:
            return candidate
    return None


def _envi_paths(path: Path) -> tuple[Path, Path]:
    """(header, data file) for a path to either one."""
    if path.suffix.lower() == ".hdr":
        if not path.is_file():
            raise InputError(path, "no such file")
        stem = path.with_suffix("")
        for ext in ENVI_DATA_EXTENSIONS:
            candidate = Path(str(stem) + ext)
            if candidate.is_file():
                return path, candidate
        raise InputError(path, f"no data file beside this header ({stem.name} with one of {', '.join(e or '(none)' for e in ENVI_DATA_EXTENSIONS)})")
    if not path.is_file():
        raise InputError(path, "no such file")
    hdr_path = _find_envi_header(path)
    if hdr_path is None:
        raise InputError(path, f"no ENVI header {path.name}.hdr or {path.with_suffix('.hdr').name} beside it")
    return hdr_path, path


def _header_int(header: dict, key: str, hdr_path, default: int | None = None) -> int:
    value = header.get(key)
    if value is None and default is not None:
        return default
    try:
        return int(str(value))
    except ValueError:
        raise InputError(hdr_path, f"'{key}' is {value!r}, expected an integer") from None


def _read_envi_data(hdr_path: Path, data_path: Path, header: dict) -> np.ndarray:
    """The raw data as (bands, lines, samples) float32, size checked against the header."""
    samples, lines, bands = (_header_int(header, k, hdr_path) for k in ("samples", "lines", "bands"))
    offset = _header_int(header, "header offset", hdr_path, default=0)
    code = _header_int(header, "data type", hdr_path)
    byte_order = _header_int(header, "byte order", hdr_path, default=0)
    interleave = str(header.get("interleave", "bsq")).lower()
    if min(samples, lines, bands) <= 0:
        raise InputError(hdr_path, f"samples, lines and bands must be positive, got {samples}, {lines}, {bands}")
    if code not in ENVI_DTYPES:
        raise InputError(hdr_path, f"data type {code} is not supported (supported: {sorted(ENVI_DTYPES)})")
    if interleave not in ("bsq", "bil", "bip"):
        raise InputError(hdr_path, f"interleave {interleave!r} is not bsq, bil or bip")
    if byte_order not in (0, 1):
        raise InputError(hdr_path, f"byte order {byte_order} is not 0 (little-endian) or 1 (big-endian)")
    dtype = np.dtype(("<" if byte_order == 0 else ">") + ENVI_DTYPES[code])
    count = samples * lines * bands
    expected, actual = offset + count * dtype.itemsize, data_path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "too large"
        raise InputError(data_path, f"{problem}: {actual} bytes, the header says {samples}x{lines}x{bands} {dtype.name} + {offset} byte offset = {expected}")
    flat = np.fromfile(data_path, dtype=dtype, count=count, offset=offset)
    if interleave == "bsq":
        data = flat.reshape(bands, lines, samples)
    elif interleave == "bil":
        data = flat.reshape(lines, bands, samples).transpose(1, 0, 2)
    else:
        data = flat.reshape(lines, samples, bands).transpose(2, 0, 1)
    return np.ascontiguousarray(data, dtype=np.float32)


def _envi_number(hdr_path: Path, header: dict, key: str) -> float | None:
    value = header.get(key)
    if value is None:
        return None
    try:
        return float(str(value))
    except ValueError:
        raise InputError(hdr_path, f"'{key}' is {value!r}, expected a number") from None


def _envi_list(hdr_path: Path, header: dict, key: str, bands: int) -> np.ndarray | None:
    values = header.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != bands:
        raise InputError(hdr_path, f"'{key}' lists {len(values) if isinstance(values, list) else 1} values for {bands} bands")
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        raise InputError(hdr_path, f"'{key}' holds a value that is not a number") from None


def _envi_wavelengths(hdr_path: Path, header: dict, bands: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(wavelengths, fwhm) in micrometres; None if the header has none or in other units (e.g. wavenumbers)."""
    wavelengths = _envi_list(hdr_path, header, "wavelength", bands)
    if wavelengths is None:
        return None, None
    factor = _micrometres(str(header.get("wavelength units", "")), wavelengths)
    if factor is None:
        return None, None
    fwhm = _envi_list(hdr_path, header, "fwhm", bands)
    return wavelengths * factor, None if fwhm is None else fwhm * factor


def _micrometres(units: str, wavelengths: np.ndarray) -> float | None:
    """The factor that turns wavelengths in `units` into micrometres; None for other units (wavenumbers...)."""
    units = units.strip().lower()
    if units in ("nanometers", "nanometres", "nanometer", "nanometre", "nm"):
        return 1e-3
    if units in ("micrometers", "micrometres", "micrometer", "micrometre", "microns", "micron", "um", "µm"):
        return 1.0
    if units in ("", "unknown"):
        return 1e-3 if wavelengths.max() > 100 else 1.0  # nm are in the hundreds
    return None


# ----------------------------------------------------------------------------- .mat / .npy / .tif
def read_mat(path: str | os.PathLike, key: str | None = None, layout: str = "HWB",
             allow_nan: bool = False, expected_bands: int | None = None) -> Cube:
    """A MATLAB file -> Cube: the array `key`, or the largest 3-D numeric array in the file.

    `layout` is the array's axis order: "HWB" (rows, columns, bands) is how the usual .mat
    hyperspectral sets (Indian Pines, Pavia, Salinas...) are stored; "BHW" for band-first.
    v7.3 files are HDF5 and need h5py; without it the error says so.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        arrays = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        arrays = _read_mat_v73(path)
    except Exception as err:
        raise InputError(path, f"cannot read as a MATLAB file: {one_line(err)}") from None
    key, array = _pick_array(path, arrays, key)
    return check_cube(Cube(_to_bhw(path, array, layout), path=str(path), metadata={"key": key, "layout": layout,
                                                                                   "dtype": array.dtype.str}),
                      allow_nan, expected_bands)


def read_npy(path: str | os.PathLike, layout: str | None = None, allow_nan: bool = False,
             expected_bands: int | None = None) -> Cube:
    """A .npy 3-D array -> Cube.

    `layout` "BHW" or "HWB". Left as None, the array is taken as (bands, H, W), the
    earthsynth order, unless its first two sizes are equal and the last differs (say
    145x145x200): then as (H, W, bands), since square tiles are the common case. Pass
    `layout` whenever that rule could guess wrong. Pickled arrays are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(path, f"cannot read as .npy: {one_line(err)}") from None
    if array.ndim != 3:
        raise InputError(path, f"expected a 3-D array, got shape {array.shape}")
    if layout is None:
        layout = "HWB" if array.shape[0] == array.shape[1] != array.shape[2] else "BHW"
    return check_cube(Cube(_to_bhw(path, array, layout), path=str(path), metadata={"layout": layout, "dtype": array.dtype.str}),
                      allow_nan, expected_bands)


def read_tiff_cube(path: str | os.PathLike, allow_nan: bool = False, expected_bands: int | None = None) -> Cube:
    """A multi-band (Geo)TIFF -> Cube; crs, transform (a, b, c, d, e, f), nodata, its mask and
    what else a GeoTIFF writer keeps (geotiff.GRID_FIELDS) in metadata.

    Band descriptions become band names when every band has one. Wavelengths (and FWHM) come
    from the band tags or descriptions (see tiff_wavelengths). Nodata pixels keep their stored value.
    """
    raster = read_geotiff(path)
    wavelengths, fwhm = tiff_wavelengths(raster)
    cube = Cube(raster.data, wavelengths, band_names=raster.band_names or None, path=str(path), fwhm=fwhm,
                metadata={**{name: getattr(raster, name) for name in GRID_FIELDS}, "dtype": raster.data.dtype.str})
    return check_cube(cube, allow_nan, expected_bands)


# "red (0.65 Micrometers)" (GDAL's ENVI driver), "B4 665 nm": a number and a unit of length
DESCRIBED_WAVELENGTH = re.compile(r"(\d+(?:\.\d*)?)\s*(nm|nanomet(?:er|re)s?|um|µm|microns?|micromet(?:er|re)s?)\b",
                                  re.IGNORECASE)


def tiff_wavelengths(raster: Raster) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(wavelengths, fwhm) in micrometres of a multi-band GeoTIFF: from the band tags
    `wavelength`, `wavelength_units` and `fwhm` (as GDAL's ENVI driver and its copies write
    them), else from band descriptions that name a wavelength with its unit. None unless every
    band has one; a tag that is not a number is ignored, as a GIS tool would."""
    tags = [{key.lower(): value for key, value in band.items()} for band in raster.band_tags]
    if len(tags) == raster.bands and all("wavelength" in band for band in tags):
        try:
            wavelengths = np.array([float(band["wavelength"]) for band in tags])
            fwhm = np.array([float(band["fwhm"]) for band in tags]) if all("fwhm" in band for band in tags) else None
        except ValueError:
            return None, None
        factor = _micrometres(tags[0].get("wavelength_units", ""), wavelengths)
        if factor is None:
            return None, None
        return wavelengths * factor, None if fwhm is None else fwhm * factor
    found = [DESCRIBED_WAVELENGTH.findall(name) for name in raster.band_names]
    if not raster.band_names or not all(found):
        return None, None
    return np.array([float(value) * _micrometres(unit, np.array([float(value)])) for value, unit in
                     (matches[-1] for matches in found)]), None


def _read_mat_v73(path: Path) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise InputError(path, "is a MATLAB v7.3 (HDF5) file: install h5py to read it, or re-save it with save(..., '-v7')") from None
    arrays = {}
    try:
        with h5py.File(path, "r") as f:
            for name, item in f.items():
                if isinstance(item, h5py.Dataset) and item.dtype.kind in "biuf":
                    # MATLAB writes column-major: h5py sees the axes reversed
                    arrays[name] = np.asarray(item[()]).transpose()
    except Exception as err:
        raise InputError(path, f"cannot read as a MATLAB v7.3 file: {one_line(err)}") from None
    return arrays


def _pick_array(path: Path, arrays: dict, key: str | None) -> tuple[str, np.ndarray]:
    """(name, array): the variable `key`, else the largest 3-D numeric array."""
    if key is not None:
        if key not in arrays:
            raise InputError(path, f"no variable {key!r}; it holds {sorted(arrays)}")
        array = np.asarray(arrays[key])
        if array.ndim != 3 or array.dtype.kind not in "biuf":
            raise InputError(path, f"variable {key!r} is a {array.dtype} array of shape {array.shape}, not a 3-D numeric cube")
        return key, array
    cubes = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray) and v.ndim == 3 and v.dtype.kind in "biuf"}
    if not cubes:
        shapes = {k: getattr(v, "shape", None) for k, v in arrays.items()}
        raise InputError(path, f"no 3-D numeric array among its variables {shapes}")
    best = max(cubes, key=lambda k: cubes[k].size)
    return best, cubes[best]


def _to_bhw(path: Path, array: np.ndarray, layout: str) -> np.ndarray:
    layout = layout.upper()
    if layout == "BHW":
        return array
    if layout == "HWB":
        return np.transpose(array, (2, 0, 1))
    raise ValueError(f"{path}: layout must be 'BHW' or 'HWB', got {layout!r}")

"""`earthsynth data summary`: what the bundled real sources hold, counted from the files."""

from __future__ import annotations

import csv
from collections import Counter

from earthsynth.data.geotiff import read_geotiff
from earthsynth.data.sources import all_sources, earthlib_library_path, stars_dir
from earthsynth.data.tiles import RealTiles


def _content(image) -> str:
    """Classes of a labelled image, the elevation range of a DEM, else '-'."""
    if image.boxes is not None:
        return ", ".join(f"{k} {v}" for k, v in image.boxes.class_counts().items())
    if image.kind == "dem":
        raster = read_geotiff(image.path)
        valid = raster.data[0].astype(float)
        if raster.nodata is not None:
            valid = valid[valid != raster.nodata]
        return f"elevation {valid.min():.0f}-{valid.max():.0f} m"
    return "-"


def summary_rows() -> list[dict]:
    rows = []
    for image in all_sources():
        header = image.header
        rows.append({
            "source": image.source, "image": image.image_id, "split": image.split,
            "size": f"{header.width}x{header.height}", "bands": f"{header.bands} {header.dtype}",
            "gsd_m": "?" if image.gsd is None else f"{image.gsd:.3g}",
            "crs": image.crs or "none", "boxes": len(image.boxes) if image.boxes is not None else "-",
            "content": _content(image),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(empty)"
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers), "  ".join("-" * widths[h] for h in headers)]
    lines += ["  ".join(str(r[h]).ljust(widths[h]) for h in headers) for r in rows]
    return "\n".join(lines)


def spectral_library_summary() -> str:
    from earthsynth.data.hsi import read_spectral_library

    path = earthlib_library_path()
    spectra, wavelengths, _names = read_spectral_library(path)
    with open(path.with_suffix(".csv"), newline="") as f:
        reader = csv.DictReader(f)
        class_column = next((c for c in reader.fieldnames if c.lower() in ("level_2", "level2", "class", "type")), None)
        classes = Counter(row[class_column] for row in reader) if class_column else Counter()
    top = ", ".join(f"{k} {v}" for k, v in classes.most_common(8))
    return (f"earthlib spectral library: {spectra.shape[0]} spectra x {spectra.shape[1]} bands, "
            f"{wavelengths.min():.2f}-{wavelengths.max():.2f} um\n  classes ({class_column}): {top}")


def render_summary(tile_size: int = 256, min_visible: float = 0.5) -> str:
    rows = summary_rows()
    lines = ["Bundled real sources (split by source image)", format_table(rows), ""]
    total = sum(r["boxes"] for r in rows if isinstance(r["boxes"], int))
    lines.append(f"labelled boxes in all: {total}")
    if stars_dir() is None:
        lines.append("landsat: not installed (Debian r-cran-stars; scripts/setup.sh fetches it where apt works)")
    tile_rows = []
    for split in ("train", "val", "test"):
        tiles = RealTiles(split=split, tile_size=tile_size, min_visible=min_visible)
        boxes = Counter()
        for tile in tiles.tiles:
            boxes.update(tile.boxes.labels)
        tile_rows.append({"split": split, "images": len(tiles.images), "tiles": len(tiles),
                          "boxes": sum(boxes.values()), "classes": ", ".join(f"{k} {v}" for k, v in sorted(boxes.items()))})
    lines += ["", f"deepforest tiles of {tile_size} px (boxes kept if >= {min_visible:.0%} visible; the last row and "
              "column of windows overlap their neighbours, so boxes there count twice)", format_table(tile_rows), ""]
    lines.append(spectral_library_summary())
    return "\n".join(lines)

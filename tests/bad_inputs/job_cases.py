"""`earthsynth denoise`, `upscale` and `generate text2earth|crsdiff`: broken files and bad options."""

from __future__ import annotations

import json
import shutil

import numpy as np

from bad_inputs.build import (
    Bad,
    case,
    cube,
    envi,
    geotiff,
    npy,
    png,
    png_bomb,
    resolve,
    truncate,
    write,
)

NAN, INF = float("nan"), float("inf")


def out_dir(tmp):
    """The existing folder the outputs are asked in (kept empty by a refused run)."""
    (tmp / "out").mkdir(exist_ok=True)
    return tmp / "out"


def pickled_model(tmp, family: str):
    """A copy of the bundled `family` pipeline with every weight file pickled (.bin) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    from earthsynth import bundled_model

    folder = shutil.copytree(bundled_model(family), tmp / f"{family}-pickled")
    for weights in folder.rglob("*.safetensors"):
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()
    return folder


def not_a_pipeline(tmp):
    return str(write(tmp / "some-model" / "notes.txt", "weights will go here\n").parent)


# ----------------------------------------------------------------------------- denoise
def file_job(command: str, default_out: str):
    """Cases of `earthsynth COMMAND SRC --out OUT OPTIONS...`: `src_maker(tmp)` makes SRC; OUT is
    `out` (a name) in an existing folder, or `out(tmp)`; the line must name `names` (default SRC)."""
    def job(src_maker, *options, names=None, words=(), out=default_out):
        def make(tmp):
            src = src_maker(tmp)
            target = out(tmp) if callable(out) else out_dir(tmp) / out
            return Bad([command, str(src), "--out", str(target), *resolve(options, tmp)], names or src.name, words)
        return make
    return job


denoise = file_job("denoise", "den.npy")
upscale = file_job("upscale", "up.png")


def npy_of(array, name="cube.npy"):
    return lambda tmp: npy(tmp / "in" / name, np.asarray(array))


def with_value(value, at=(1, 2, 3)):
    data = cube()
    data[at] = value
    return data


def envi_of(data=None, breaker=None, **header):
    def make(tmp):
        hdr = envi(tmp / "in" / "scene.hdr", data, **header)
        if breaker:
            breaker(hdr)
        return hdr
    return make


def raw(name, content):
    return lambda tmp: write(tmp / "in" / name, content)


def mat_of(**arrays):
    def make(tmp):
        import scipy.io

        path = tmp / "in" / "scene.mat"
        path.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(path, arrays)
        return path
    return make


def tif_of(data, nodata=None):
    return lambda tmp: geotiff(tmp / "in" / "scene.tif", data, nodata)


def a_folder_named(name):
    return lambda tmp: (out_dir(tmp) / name).mkdir() or out_dir(tmp) / name


GOOD_CUBE = npy_of(cube())
DENOISE_CASES = [
    case("denoise-input-missing", denoise(lambda tmp: tmp / "in" / "nothing.npy", words=("no such file",))),
    case("denoise-npy-empty", denoise(raw("cube.npy", b""), words=("cannot read as .npy",))),
    case("denoise-npy-truncated", denoise(lambda tmp: truncate(GOOD_CUBE(tmp)), words=("cannot read as .npy",))),
    case("denoise-npy-pickled-objects", denoise(lambda tmp: npy(tmp / "in" / "cube.npy", np.array([{"a": 1}] * 8).reshape(2, 2, 2)),
                                                words=("cannot read as .npy",))),
    case("denoise-npy-2d", denoise(npy_of(np.zeros((8, 8), np.float32)), words=("3-D array",))),
    case("denoise-npy-nan", denoise(npy_of(with_value(NAN)), words=("NaN",))),
    case("denoise-npy-inf", denoise(npy_of(with_value(INF)), words=(("NaN/inf", "infinite"),))),
    case("denoise-one-band", denoise(npy_of(cube(bands=1)), "--layout", "BHW", words=("1 band",))),
    case("denoise-too-small", denoise(npy_of(cube(bands=4, size=2)), "--layout", "BHW", words=("at least 4x4",))),
    case("denoise-wrong-extension", denoise(raw("cube.txt", "1 2 3\n"), words=("unknown cube format",))),
    case("denoise-envi-not-envi", denoise(envi_of(breaker=lambda hdr: write(hdr, "ENVY\nsamples = 8\n")),
                                          words=("not an ENVI header",))),
    case("denoise-envi-data-missing", denoise(envi_of(breaker=lambda hdr: hdr.with_suffix(".img").unlink()),
                                              words=("no data file",))),
    case("denoise-envi-data-truncated", denoise(envi_of(breaker=lambda hdr: truncate(hdr.with_suffix(".img"))),
                                                names="scene.img", words=("truncated",))),
    case("denoise-envi-data-type-99", denoise(envi_of(data_type=99), words=("data type 99",))),
    case("denoise-envi-interleave-unknown", denoise(envi_of(interleave="zigzag"), words=("interleave",))),
    case("denoise-envi-zero-bands", denoise(envi_of(bands=0), words=("must be positive",))),
    case("denoise-envi-samples-not-a-number", denoise(envi_of(samples="eight"), words=("expected an integer",))),
    case("denoise-envi-wavelength-count", denoise(envi_of(wavelength="{400, 410}"), words=("wavelength", "2 values"))),
    case("denoise-envi-unclosed-brace", denoise(envi_of(wavelength="{400, 410"), words=("closing brace",))),
    case("denoise-envi-nan", denoise(envi_of(with_value(NAN)), names="scene", words=("NaN",))),
    case("denoise-mat-not-a-mat", denoise(raw("scene.mat", b"MATLAB? no.\n" * 20), words=("cannot read",))),
    case("denoise-mat-no-cube", denoise(mat_of(flat=np.zeros((8, 8))), words=("no 3-D numeric array",))),
    case("denoise-mat-key-missing", denoise(mat_of(cube=np.transpose(cube(), (1, 2, 0))), "--key", "radiance",
                                            words=("no variable 'radiance'",))),
    case("denoise-key-on-npy", denoise(GOOD_CUBE, "--key", "cube", words=("--key applies to .mat",))),
    case("denoise-layout-on-tif", denoise(tif_of(cube()), "--layout", "BHW", words=("--layout applies to",))),
    case("denoise-tif-nan", denoise(tif_of(with_value(NAN)), words=("NaN",))),
    case("denoise-out-unknown-suffix", denoise(GOOD_CUBE, out="den.xyz", names="den.xyz", words=("unsupported output format",))),
    case("denoise-out-folder-missing", denoise(GOOD_CUBE, out=lambda tmp: tmp / "missing" / "den.npy", names="den.npy",
                                               words=("does not exist",))),
    case("denoise-out-is-the-input", denoise(GOOD_CUBE, out=lambda tmp: tmp / "in" / "cube.npy", words=("is the input",))),
    case("denoise-out-is-a-folder", denoise(GOOD_CUBE, out=a_folder_named("den.npy"), names="den.npy",
                                            words=(("folder", "directory"),))),
    case("denoise-rank-0", denoise(GOOD_CUBE, "--method", "robust-pca", "--rank", "0", words=("--rank", "at least 1"))),
    case("denoise-rank-above-band-count", denoise(GOOD_CUBE, "--method", "robust-pca", "--rank", "10",
                                                  words=("--rank", "band"))),
    case("denoise-tile-0", denoise(GOOD_CUBE, "--tile", "0", words=("--tile", "at least 8"))),
    case("denoise-steps-0", denoise(GOOD_CUBE, "--steps", "0", words=("steps",))),
    case("denoise-strength-0", denoise(GOOD_CUBE, "--strength", "0", words=("strength",))),
    case("denoise-strength-nan", denoise(GOOD_CUBE, "--strength", "nan", words=("strength",))),
    case("denoise-strength-above-1", denoise(GOOD_CUBE, "--strength", "1.5", words=("strength",))),
    case("denoise-robust-pca-two-bands", denoise(npy_of(cube(bands=2)), "--method", "robust-pca", "--layout", "BHW",
                                                 words=("at least 3",))),
    case("denoise-robust-pca-with-model", denoise(GOOD_CUBE, "--method", "robust-pca", "--model", not_a_pipeline,
                                                  words=("--model applies to --method model",))),
    case("denoise-model-not-a-pipeline", denoise(GOOD_CUBE, "--model", not_a_pipeline, names="some-model",
                                                 words=("not an hsi pipeline folder",))),
    case("denoise-model-pickled", denoise(GOOD_CUBE, "--model", lambda tmp: str(pickled_model(tmp, "hsi")), names="hsi-pickled",
                                          words=(("pickle", "safetensors"),))),
    case("denoise-dtype-float16", denoise(GOOD_CUBE, "--dtype", "float16", names="--dtype", words=("float32 only",))),
    case("denoise-device-unknown", denoise(GOOD_CUBE, "--device", "gpu0", names="--device gpu0", words=("not a torch device",))),
]


# ----------------------------------------------------------------------------- upscale
def png_in(name="low.png", size=32, **kw):
    return lambda tmp: png(tmp / "in" / name, size, size, **kw)


def broken_png(breaker):
    return lambda tmp: breaker(png(tmp / "in" / "low.png", 32, 32))


def float_tif(value):
    data = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    data[1, 5, 5] = value
    return tif_of(data)


GOOD_PNG = png_in()
UPSCALE_CASES = [
    case("upscale-input-missing", upscale(lambda tmp: tmp / "in" / "nothing.png", words=("file not found",))),
    case("upscale-input-is-a-folder", upscale(lambda tmp: (tmp / "in" / "scene.tif").mkdir(parents=True)
                                              or tmp / "in" / "scene.tif", out="up.tif", words=("not a raster",))),
    case("upscale-png-empty", upscale(raw("low.png", b""), words=("truncated or corrupt",))),
    case("upscale-png-truncated", upscale(broken_png(truncate), words=("truncated or corrupt",))),
    case("upscale-png-not-an-image", upscale(raw("low.png", b"not a PNG at all\n"), words=("truncated or corrupt",))),
    case("upscale-png-decompression-bomb", upscale(lambda tmp: png_bomb(tmp / "in" / "low.png"),
                                                   words=(("decompression", "bomb", "pixels", "too large"),))),
    case("upscale-tif-empty", upscale(raw("scene.tif", b""), out="up.tif", words=("not a raster",))),
    case("upscale-tif-garbage", upscale(raw("scene.tif", b"II*\x00" + b"\x07" * 64), out="up.tif", words=("not a raster",))),
    case("upscale-out-unknown-suffix", upscale(GOOD_PNG, out="up.bmp", names="up.bmp", words=("unsupported output format",))),
    case("upscale-geotiff-to-png", upscale(float_tif(0.5), out="up.png", names="up.png", words=("name the output .tif",))),
    case("upscale-out-folder-missing", upscale(GOOD_PNG, out=lambda tmp: tmp / "missing" / "up.png", names="up.png",
                                               words=("does not exist",))),
    case("upscale-out-is-a-folder", upscale(GOOD_PNG, out=a_folder_named("up.png"), names="up.png",
                                            words=(("folder", "directory"),))),
    case("upscale-scale-3", upscale(GOOD_PNG, "--scale", "3", words=("--scale must be 2 or 4",))),
    case("upscale-scale-2-on-a-x4-model", upscale(GOOD_PNG, "--scale", "2", names="--scale", words=("x4 only",))),
    case("upscale-steps-0", upscale(GOOD_PNG, "--steps", "0", words=("--steps", "at least 1"))),
    case("upscale-steps-negative", upscale(GOOD_PNG, "--steps", "-3", words=("--steps", "at least 1"))),
    case("upscale-tile-0", upscale(GOOD_PNG, "--tile", "0", words=("--tile",))),
    case("upscale-tile-negative", upscale(GOOD_PNG, "--tile", "-16", words=("--tile",))),
    case("upscale-tile-not-a-multiple", upscale(GOOD_PNG, "--tile", "13", words=("--tile", "multiple"))),
    case("upscale-image-too-small", upscale(png_in(size=2), words=("smaller than the model",))),
    case("upscale-tif-nan", upscale(float_tif(NAN), out="up.tif", words=("NaN",))),
    case("upscale-tif-inf", upscale(float_tif(INF), out="up.tif", words=("infinite",))),
    case("upscale-model-not-a-pipeline", upscale(GOOD_PNG, "--model", not_a_pipeline, names="some-model",
                                                 words=("not an ediffsr pipeline folder",))),
    case("upscale-model-pickled", upscale(GOOD_PNG, "--model", lambda tmp: str(pickled_model(tmp, "ediffsr")),
                                          names="ediffsr-pickled", words=(("pickle", "safetensors"),))),
]


# ----------------------------------------------------------------------------- generate
def generate(family, *options, names, words=(), out="gen.png"):
    """`earthsynth generate FAMILY --prompt ... --out OUT` plus options (str, or functions of tmp)."""
    def make(tmp):
        target = out(tmp) if callable(out) else out_dir(tmp) / out
        argv = ["generate", family, "--out", str(target), *resolve(options, tmp)]
        if "--prompt" not in argv and "--requests" not in argv:
            argv += ["--prompt", "dense forest"]
        return Bad(argv, names, words)
    return make


def requests_file(name, content):
    return lambda tmp: str(write(tmp / "in" / name, content))


def image_file(name, size=64, **kw):
    return lambda tmp: str(png(tmp / "in" / name, size, size, **kw))


def t2e(*options, **kw):
    return generate("text2earth", *options, **kw)


def crs(*options, **kw):
    return generate("crsdiff", *options, **kw)


def folder_out(tmp):
    return out_dir(tmp) / "batch"


def jsonl(*rows):
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


SOURCE = "generate text2earth"
TOO_LARGE = ("maximum", "too large", "too many", "at most", "must be in", "more than")
T2E_CASES = [
    case("generate-text2earth-width-0", t2e("--width", "0", names=SOURCE, words=("width",))),
    case("generate-text2earth-width-negative", t2e("--width", "-64", names=SOURCE, words=("width",))),
    case("generate-text2earth-width-not-a-multiple", t2e("--width", "33", names=SOURCE, words=("multiple",))),
    case("generate-text2earth-size-100000-px", t2e("--width", "100000", "--height", "100000", names=SOURCE,
                                                   words=(TOO_LARGE,))),
    case("generate-text2earth-num-images-1e9", t2e("--num-images", "1000000000", names=SOURCE,
                                                   words=(TOO_LARGE,))),
    case("generate-text2earth-steps-0", t2e("--steps", "0", names=SOURCE, words=("steps",))),
    case("generate-text2earth-steps-negative", t2e("--steps", "-5", names=SOURCE, words=("steps",))),
    case("generate-text2earth-guidance-nan", t2e("--guidance", "nan", names=SOURCE, words=("guidance", "finite"))),
    case("generate-text2earth-guidance-negative", t2e("--guidance", "-2", names=SOURCE, words=("guidance",))),
    case("generate-text2earth-gsd-inf", t2e("--gsd", "inf", names=SOURCE, words=("gsd", "finite"))),
    case("generate-text2earth-gsd-negative", t2e("--gsd", "-0.2", names=SOURCE, words=("gsd",))),
    case("generate-text2earth-num-images-0", t2e("--num-images", "0", names=SOURCE, words=("num_images",))),
    case("generate-text2earth-prompt-empty", t2e("--prompt", " ", names=SOURCE, words=("prompt is missing",))),
    case("generate-text2earth-out-unknown-suffix", t2e(out="gen.gif", names=SOURCE, words=("gen.gif", ".png, .jpg or .tif"))),
    case("generate-text2earth-out-folder-missing", t2e(out=lambda tmp: tmp / "missing" / "gen.png", names="gen.png",
                                                       words=("does not exist",))),
    case("generate-text2earth-out-is-a-folder", t2e(out=a_folder_named("gen.png"), names="gen.png",
                                                    words=(("folder", "directory"),))),
    case("generate-text2earth-tile-0", t2e("--tile", "0", names=SOURCE, words=("tile",))),
    case("generate-text2earth-overlap-negative", t2e("--tile", "64", "--overlap", "-8", names=SOURCE, words=("overlap",))),
    case("generate-text2earth-image-without-mask", t2e("--image", image_file("scene.png"), names=SOURCE,
                                                       words=("both an image and a mask",))),
    case("generate-text2earth-image-missing", t2e("--image", lambda tmp: str(tmp / "in" / "gone.png"), "--mask",
                                                  image_file("mask.png", bands=1), names="gone.png", words=("file not found",))),
    case("generate-text2earth-image-truncated", t2e("--image", lambda tmp: str(truncate(png(tmp / "in" / "scene.png"))),
                                                    "--mask", image_file("mask.png", bands=1), names="scene.png",
                                                    words=("truncated or corrupt",))),
    case("generate-text2earth-mask-size-differs", t2e("--image", image_file("scene.png"), "--mask",
                                                      image_file("mask.png", size=32, bands=1), names="mask.png",
                                                      words=("32x32",))),
    case("generate-text2earth-image-not-a-multiple", t2e("--image", image_file("scene.png", size=36), "--mask",
                                                         image_file("mask.png", size=36, bands=1), names="scene.png",
                                                         words=("multiples of",))),
    case("generate-text2earth-model-not-a-pipeline", t2e("--model", not_a_pipeline, names="some-model",
                                                         words=("not an text2earth pipeline folder",))),
    # --requests files
    case("generate-requests-missing", t2e("--requests", lambda tmp: str(tmp / "in" / "none.csv"), out=folder_out,
                                          names="none.csv", words=("file not found",))),
    case("generate-requests-wrong-extension", t2e("--requests", requests_file("jobs.txt", "prompt\nforest\n"), out=folder_out,
                                                  names="jobs.txt", words=(".csv or .jsonl",))),
    case("generate-requests-csv-empty", t2e("--requests", requests_file("jobs.csv", ""), out=folder_out,
                                            names="jobs.csv", words=("no requests",))),
    case("generate-requests-csv-unknown-field", t2e("--requests", requests_file("jobs.csv", "prompt,colour\nforest,green\n"),
                                                    out=folder_out, names="jobs.csv", words=("line 2", "unknown field(s) colour"))),
    case("generate-requests-csv-extra-values", t2e("--requests", requests_file("jobs.csv", "prompt\nforest,green\n"),
                                                   out=folder_out, names="jobs.csv", words=("more values",))),
    case("generate-requests-csv-unterminated-quote", t2e("--requests", requests_file("jobs.csv", 'prompt,seed\n"forest,1\nlake,2\n'),
                                                         out=folder_out, names="jobs.csv", words=(("quote", "unterminated"),))),
    case("generate-requests-csv-bad-number", t2e("--requests", requests_file("jobs.csv", "prompt,width\nforest,wide\n"),
                                                 out=folder_out, names="jobs.csv", words=("width 'wide' is not a number",))),
    case("generate-requests-csv-bad-row-late", t2e("--requests", requests_file("jobs.csv", "prompt,steps\nforest,4\nlake,0\n"),
                                                   out=folder_out, names="jobs.csv", words=("line 3", "steps"))),
    case("generate-requests-jsonl-malformed", t2e("--requests", requests_file("jobs.jsonl", jsonl({"prompt": "a"}, "{prompt: b")),
                                                  out=folder_out, names="jobs.jsonl", words=("line 2", "not valid JSON"))),
    case("generate-requests-jsonl-row-is-a-list", t2e("--requests", requests_file("jobs.jsonl", jsonl(["forest"])),
                                                      out=folder_out, names="jobs.jsonl", words=("expected a JSON object",))),
    case("generate-requests-jsonl-nested-deep", t2e("--requests", requests_file("jobs.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"),
                                                    out=folder_out, names="jobs.jsonl", words=("nested too deeply",))),
    case("generate-requests-jsonl-wrong-type", t2e("--requests", requests_file("jobs.jsonl", jsonl({"prompt": "a", "seed": [1]})),
                                                   out=folder_out, names="jobs.jsonl", words=("seed", "not a number"))),
    case("generate-requests-duplicate-out", t2e("--requests", requests_file("jobs.jsonl", jsonl({"prompt": "a", "out": "x.png"},
                                                                                                {"prompt": "b", "out": "x.png"})),
                                                out=folder_out, names="jobs.jsonl", words=("also line 1",))),
    case("generate-requests-out-escapes-folder", t2e("--requests", requests_file("jobs.jsonl", jsonl({"prompt": "a", "out": "../x.png"})),
                                                     out=folder_out, names="jobs.jsonl", words=("inside the output folder",))),
    case("generate-requests-out-is-a-file", t2e("--requests", requests_file("jobs.jsonl", jsonl({"prompt": "a"})),
                                                out=lambda tmp: write(out_dir(tmp) / "batch.png", b"png"), names="batch.png",
                                                words=("is a folder",))),
]

CRS = "generate crsdiff"
CRS_CASES = [
    case("generate-crsdiff-maps-unknown", crs("--maps", "edges", "--reference", image_file("ref.png"), names=CRS,
                                              words=("unknown map(s) edges",))),
    case("generate-crsdiff-maps-without-reference", crs("--maps", "canny", names=CRS, words=("give a reference",))),
    case("generate-crsdiff-reference-missing", crs("--reference", lambda tmp: str(tmp / "in" / "gone.tif"), names="gone.tif",
                                                   words=("file not found",))),
    case("generate-crsdiff-reference-truncated", crs("--reference", lambda tmp: str(truncate(png(tmp / "in" / "ref.png"))),
                                                     names="ref.png", words=("truncated or corrupt",))),
    case("generate-crsdiff-reference-too-small", crs("--reference", image_file("ref.png", size=4), names="ref.png",
                                                     words=("smaller than the model",))),
    case("generate-crsdiff-canny-wrong-size", crs("--canny", image_file("edges.png", size=32, bands=1), "--width", "64",
                                                  "--height", "64", names="edges.png", words=("32x32",))),
    case("generate-crsdiff-canny-out-of-range", crs("--canny", lambda tmp: str(geotiff(tmp / "in" / "edges.tif", np.full(
        (1, 64, 64), 5.0, np.float32))), names="edges.tif", words=("0-255", "0-1"))),
    case("generate-crsdiff-canny-nan", crs("--canny", lambda tmp: str(geotiff(tmp / "in" / "edges.tif", np.full(
        (1, 64, 64), NAN, np.float32))), names="edges.tif", words=("0-1",))),
    case("generate-crsdiff-month-13", crs("--meta", "month=13", names=CRS, words=("month",))),
    case("generate-crsdiff-lat-100", crs("--meta", "lat=100", names=CRS, words=("lat",))),
    case("generate-crsdiff-lat-nan", crs("--meta", "lat=nan", names=CRS, words=("lat", "finite"))),
    case("generate-crsdiff-cloud-cover-150", crs("--meta", "cloud_cover=150", names=CRS, words=("cloud_cover",))),
    case("generate-crsdiff-meta-unknown-key", crs("--meta", "altitude=3", names="--meta altitude=3", words=("KEY=VALUE",))),
    case("generate-crsdiff-date-impossible", crs("--meta", "date=2021-02-30", names=CRS, words=("YYYY-MM-DD",))),
    case("generate-crsdiff-scale-not-a-number", crs("--scale", "canny=strong", names=CRS, words=("scale canny",))),
    case("generate-crsdiff-scale-without-map", crs("--scale", "dem=0.5", names=CRS, words=("no 'dem' map",))),
    case("generate-crsdiff-road-without-reference", crs("--road", requests_file("roads.geojson", "{}"), names="roads.geojson",
                                                        words=("georeferenced reference",))),
    case("generate-crsdiff-road-malformed", crs("--reference", lambda tmp: str(geotiff(tmp / "in" / "ref.tif", np.zeros(
        (3, 64, 64), np.uint8))), "--road", requests_file("roads.geojson", "{not json"), names="roads.geojson",
                                                words=("cannot read the GeoJSON",))),
    case("generate-crsdiff-landcover-no-codes", crs("--landcover", lambda tmp: str(geotiff(tmp / "in" / "lc.tif", np.full(
        (1, 64, 64), 9, np.uint8))), names="lc.tif", words=("no class codes",))),
    case("generate-crsdiff-dem-missing", crs("--dem", lambda tmp: str(tmp / "in" / "dem.tif"), names="dem.tif",
                                             words=("file not found",))),
    case("generate-crsdiff-steps-0", crs("--steps", "0", names=CRS, words=("steps",))),
    case("generate-crsdiff-size-100000-px", crs("--width", "100000", "--height", "100000", names=CRS,
                                                words=(TOO_LARGE,))),
]

CASES = [*DENOISE_CASES, *UPSCALE_CASES, *T2E_CASES, *CRS_CASES]

VALID = [
    ("denoise-npy", lambda tmp: denoise(GOOD_CUBE)(tmp).argv),
    ("denoise-robust-pca-envi", lambda tmp: denoise(envi_of(), "--method", "robust-pca")(tmp).argv),
    ("upscale-png", lambda tmp: upscale(GOOD_PNG)(tmp).argv),
    ("generate-text2earth", lambda tmp: t2e(names="")(tmp).argv),
    ("generate-crsdiff-reference-maps", lambda tmp: crs("--reference", image_file("ref.png"), "--maps", "canny,sketch",
                                                        names="")(tmp).argv),
]

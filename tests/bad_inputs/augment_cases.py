"""`earthsynth augment`: broken datasets in each input format, and bad options and configs."""

from __future__ import annotations

import json

from bad_inputs.build import (
    FORMATS,
    Bad,
    a_file,
    case,
    dataset,
    png,
    png_bomb,
    replace,
    truncate,
    write,
)

NAN, INF = float("nan"), float("inf")
BOX_FORMATS = {"voc", "coco", "csv", "yolo"}  # formats whose boxes can be written back to front (xmax < xmin)
# a box of zero width: VOC's indices are 1-based and inclusive (xmin = xmax is one pixel wide)
ZERO_WIDE = {fmt: ("Tree", 9, 8, 8, 40) if fmt == "voc" else ("Tree", 8, 8, 8, 40) for fmt in FORMATS}
NAMED_IMAGE = {"voc", "coco", "dota", "csv"}  # formats where an annotation names an image that may be missing


def base(tmp, fmt, **kw):
    return dataset(tmp / f"{fmt}-set", fmt, **kw)


def label(ds, stem="a"):
    """The annotation file that holds image `stem`'s boxes, as the error must name it."""
    return ds.labels[stem].name


# ----------------------------------------------------------------------------- every format
def boxes_case(fmt, box, words):
    def make(tmp):
        ds = base(tmp, fmt, boxes={"a": [box]})
        return Bad(ds.argv(tmp / "out"), label(ds), words)
    return make


def image_case(fmt, breaker, words):
    """Image a.png broken by `breaker(path)`; the error names the image."""
    def make(tmp):
        ds = base(tmp, fmt)
        breaker(ds.images["a"])
        return Bad(ds.argv(tmp / "out"), "a.png", words)
    return make


def bomb_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        png_bomb(ds.images["a"])
        if fmt == "voc":  # the annotation states the size the header claims
            replace(ds.labels["a"], "<width>64</width><height>64</height>", "<width>50000</width><height>50000</height>")
        if fmt == "coco":
            coco(lambda data, ds, tmp: data["images"][0].update(width=50_000, height=50_000))(ds, tmp)
        return Bad(ds.argv(tmp / "out"), "a.png", (("decompression", "bomb", "pixels", "too large"),))
    return make


def wrong_extension_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        ds.images["a"].rename(ds.images["a"].with_suffix(".gif"))
        return Bad(ds.argv(tmp / "out"), label(ds), (("not found", "no image"),))
    return make


def missing_image_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        if fmt in NAMED_IMAGE:
            ds.images["a"].unlink()
            return Bad(ds.argv(tmp / "out"), label(ds), (("not found", "no image"),))
        for image in ds.images.values():  # YOLO lists images, not labels: none at all
            image.unlink()
        return Bad(ds.argv(tmp / "out"), ds.root.name, ("no annotated images",))
    return make


def truncated_annotation_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        truncate(ds.labels["a"], 0.6 if fmt in ("dota", "yolo-obb") else 0.5)
        words = {"voc": ("malformed XML",), "coco": ("malformed JSON",), "csv": ("expected 6 values",)}
        return Bad(ds.argv(tmp / "out"), label(ds), words.get(fmt, ("expected",)))
    return make


def empty_annotation_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        target = ds.root / "data.yaml" if fmt in ("yolo", "yolo-obb") else ds.labels["a"]
        write(target, "")
        words = {"voc": ("malformed XML",), "coco": ("malformed JSON",), "csv": ("empty file",),
                 "yolo": (NO_NAMES,), "yolo-obb": (NO_NAMES,)}
        return Bad(ds.argv(tmp / "out"), target.name, words[fmt])
    return make


NON_NUMBER = {  # (old, new) in a's annotation: a coordinate becomes text
    "voc": ("<xmin>8</xmin>", "<xmin>abc</xmin>", ("not a finite number",)),
    "dota": ("8 8 40 8", "8 8 abc 8", ("must be numbers",)),
    "yolo": ("0 0.375", "0 abc", ("expected an integer class and numbers",)),
    "yolo-obb": ("0 0.125", "0 abc", ("expected an integer class and numbers",)),
    "csv": ("a.png,8,", "a.png,abc,", ("must be numbers",)),
}


def non_number_case(fmt):
    def make(tmp):
        ds = base(tmp, fmt)
        if fmt == "coco":
            coco(lambda data, ds, tmp: data["annotations"][0]["bbox"].__setitem__(0, "abc"))(ds, tmp)
            words = ("must be a list of 4 numbers",)
        else:
            old, new, words = NON_NUMBER[fmt]
            replace(ds.labels["a"], old, new)
        return Bad(ds.argv(tmp / "out"), label(ds), words)
    return make


def per_format_cases():
    cases = []
    for fmt in FORMATS:
        cases += [
            case(f"augment-{fmt}-box-outside-image", boxes_case(fmt, ("Tree", 100, 100, 120, 120), ("outside",))),
            case(f"augment-{fmt}-zero-size-box", boxes_case(fmt, ZERO_WIDE[fmt], ("zero or negative size",))),
            case(f"augment-{fmt}-nan-coordinate", boxes_case(fmt, ("Tree", 8, 8, NAN, 40), ("finite",))),
            case(f"augment-{fmt}-inf-coordinate", boxes_case(fmt, ("Tree", 8, 8, 40, INF), ("finite",))),
            case(f"augment-{fmt}-coordinate-not-a-number", non_number_case(fmt)),
            case(f"augment-{fmt}-image-missing", missing_image_case(fmt)),
            case(f"augment-{fmt}-image-truncated", image_case(fmt, truncate, ("truncated",))),
            case(f"augment-{fmt}-image-empty", image_case(fmt, lambda p: write(p, b""), ("cannot read",))),
            case(f"augment-{fmt}-image-not-an-image",
                 image_case(fmt, lambda p: write(p, b"GIF89a? no, plain text\n" * 8), ("cannot read",))),
            case(f"augment-{fmt}-decompression-bomb", bomb_case(fmt)),
            case(f"augment-{fmt}-annotation-truncated", truncated_annotation_case(fmt)),
        ]
        if fmt in BOX_FORMATS:
            cases.append(case(f"augment-{fmt}-negative-size-box",
                              boxes_case(fmt, ("Tree", 40, 40, 8, 8), ("zero or negative size",))))
        if fmt in NAMED_IMAGE:
            cases.append(case(f"augment-{fmt}-image-wrong-extension", wrong_extension_case(fmt)))
        if fmt != "dota":  # an empty DOTA label file is an image without objects
            cases.append(case(f"augment-{fmt}-annotation-empty", empty_annotation_case(fmt)))
        if fmt in ("coco", "yolo", "yolo-obb"):  # the formats that list their classes
            words = ("not among the categories",) if fmt == "coco" else ("class index 99",)
            cases.append(case(f"augment-{fmt}-unknown-class", boxes_case(fmt, ("Car", 8, 8, 40, 40), words)))
    return cases


# ----------------------------------------------------------------------------- one format's own faults
def edit(fmt, change, names, words, **kw):
    """The base dataset of `fmt`, then `change(ds, tmp)`; names: a str, or a function of ds."""
    def make(tmp):
        ds = base(tmp, fmt, **kw)
        change(ds, tmp)
        return Bad(ds.argv(tmp / "out"), names if isinstance(names, str) else names(ds), words)
    return make


def text(stem_or_file, old, new, count=1):
    """A change: `old` -> `new` in the annotation of image `stem` ('data' = the --data file)."""
    return lambda ds, tmp: replace(ds.data if stem_or_file == "data" else ds.labels[stem_or_file], old, new, count)


def coco(mutate):
    """A change to the parsed COCO file."""
    def change(ds, tmp):
        data = json.loads(ds.data.read_text())
        mutate(data, ds, tmp)  # in place
        write(ds.data, json.dumps(data))
    return change


def outside_image(where):
    """A COCO file_name (relative to the images/ folder) or CSV image_path (relative to the CSV's
    folder) leading to an existing image outside the dataset."""
    def path(ds, tmp):
        png(tmp / "elsewhere" / "secret.png")
        if where == "absolute":
            return str(tmp / "elsewhere" / "secret.png")
        return "../../elsewhere/secret.png" if ds.fmt == "coco" else "../elsewhere/secret.png"
    return path


def set_file_name(where):
    def mutate(data, ds, tmp):
        data["images"][0]["file_name"] = outside_image(where)(ds, tmp)
    return coco(mutate)


def set_image_path(where):
    return lambda ds, tmp: replace(ds.data, "a.png,", outside_image(where)(ds, tmp) + ",")


def nested(ds, tmp):
    write(ds.data, '{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "categories": []}')


def second_file(name):
    """A second annotation file beside the first, and --data the folder that holds both."""
    def change(ds, tmp):
        write(ds.root / name, ds.data.read_text())
        ds.data = ds.root
    return change


def bow_tie(fmt):
    """Corners of a self-crossing polygon (8,8) (40,40) (40,8) (8,40) instead of a rectangle."""
    if fmt == "dota":
        return text("a", "8 8 40 8 40 40 8 40", "8 8 40 40 40 8 8 40")
    return text("a", "0 0.125 0.125 0.625 0.125 0.625 0.625 0.125 0.625", "0 0.125 0.125 0.625 0.625 0.625 0.125 0.125 0.625")


# entities of entities: 10^7 copies of "lol" from a few hundred bytes (expat refuses the amplification)
BILLION_LAUGHS = ('<!DOCTYPE annotation [<!ENTITY l0 "lol">'
                  + "".join(f'<!ENTITY l{i} "' + f"&l{i - 1};" * 10 + '">' for i in range(1, 8)) + "]>\n")
NO_NAMES = ("no 'names'", "not a mapping")
FORMAT_CASES = [
    # VOC
    case("augment-voc-root-not-annotation", edit("voc", text("a", "annotation>", "notes>", -1), "a.xml", ("root element",))),
    case("augment-voc-size-missing", edit("voc", text("a", "<size><width>64</width><height>64</height><depth>3</depth></size>", ""),
                                          "a.xml", ("missing <size><width>",))),
    case("augment-voc-size-disagrees-with-image", edit("voc", text("a", "<width>64</width>", "<width>128</width>"),
                                                       "a.xml", ("128x64", "64x64"))),
    case("augment-voc-size-negative", edit("voc", text("a", "<width>64</width>", "<width>-64</width>"), "a.xml",
                                           ("not positive",))),
    case("augment-voc-difficult-2", edit("voc", text("a", "<difficult>0</difficult>", "<difficult>2</difficult>"),
                                         "a.xml", ("difficult",))),
    case("augment-voc-object-without-name", edit("voc", text("a", "<name>Tree</name>", "<name> </name>"), "a.xml",
                                                 ("no <name>",))),
    case("augment-voc-object-without-box", edit("voc", text("a", "bndbox>", "box>", -1), "a.xml",
                                                ("neither <bndbox> nor <robndbox>",))),
    case("augment-voc-entity-expansion", edit("voc", text("a", "<annotation>", BILLION_LAUGHS + "<annotation><note>&l7;</note>"),
                                              "a.xml", ("malformed XML",))),
    case("augment-voc-undefined-entity", edit("voc", text("a", "</filename>", "</filename><note>&x;</note>"), "a.xml",
                                              ("malformed XML",))),
    case("augment-voc-not-utf8", edit("voc", lambda ds, tmp: write(ds.labels["a"], b"<annotation>\xff\xfe\x00</annotation>"),
                                      "a.xml", ("malformed XML",))),
    # COCO
    case("augment-coco-top-level-list", edit("coco", lambda ds, tmp: write(ds.data, "[]"), "annotations.json",
                                             ("no 'images' list",))),
    case("augment-coco-images-not-a-list", edit("coco", coco(lambda d, ds, tmp: d.update(images={})),
                                                "annotations.json", ("no 'images' list",))),
    case("augment-coco-categories-missing", edit("coco", coco(lambda d, ds, tmp: d.pop("categories")),
                                                 "annotations.json", ("no 'categories' list",))),
    case("augment-coco-width-is-text", edit("coco", coco(lambda d, ds, tmp: d["images"][0].update(width="64")),
                                            "annotations.json", ("bad 'width'",))),
    case("augment-coco-bbox-three-numbers", edit("coco", coco(lambda d, ds, tmp: d["annotations"][0].update(bbox=[8, 8, 32])),
                                                 "annotations.json", ("list of 4 numbers",))),
    case("augment-coco-bbox-is-text", edit("coco", coco(lambda d, ds, tmp: d["annotations"][0].update(bbox="8 8 32 32")),
                                           "annotations.json", ("list of 4 numbers",))),
    case("augment-coco-annotation-is-a-number", edit("coco", coco(lambda d, ds, tmp: d["annotations"].append(7)),
                                                     "annotations.json", ("not an object",))),
    case("augment-coco-image-id-unknown", edit("coco", coco(lambda d, ds, tmp: d["annotations"][0].update(image_id=42)),
                                               "annotations.json", ("not among the images",))),
    case("augment-coco-image-id-twice", edit("coco", coco(lambda d, ds, tmp: d["images"][1].update(id=1)),
                                             "annotations.json", ("appears twice",))),
    case("augment-coco-category-without-name", edit("coco", coco(lambda d, ds, tmp: d["categories"][0].pop("name")),
                                                    "annotations.json", ("needs an integer 'id' and a string 'name'",))),
    case("augment-coco-size-disagrees-with-image", edit("coco", coco(lambda d, ds, tmp: d["images"][0].update(width=128)),
                                                        "annotations.json", ("128x64",))),
    case("augment-coco-nested-beyond-reason", edit("coco", nested, "annotations.json", (("nested", "deep"),))),
    case("augment-coco-two-json-files", edit("coco", second_file("other.json"), "coco-set", ("exactly one",))),
    case("augment-coco-not-utf8", edit("coco", lambda ds, tmp: write(ds.data, b"\xff\xfe{}"), "annotations.json",
                                       ("cannot read",))),
    case("augment-coco-file-name-outside-dataset", edit("coco", set_file_name("relative"), "annotations.json",
                                                        ("outside",))),
    case("augment-coco-file-name-absolute", edit("coco", set_file_name("absolute"), "annotations.json",
                                                 ("outside",))),
    # DOTA
    case("augment-dota-seven-values", edit("dota", text("a", "8 8 40 8 40 40 8 40", "8 8 40 8 40 40"), "a.txt",
                                           ("expected 10 values",))),
    case("augment-dota-difficulty-2", edit("dota", text("a", "Tree 0", "Tree 2"), "a.txt", ("difficulty",))),
    case("augment-dota-gsd-not-a-number", edit("dota", text("a", "gsd:0.1", "gsd:fine"), "a.txt", ("gsd",))),
    case("augment-dota-gsd-negative", edit("dota", text("a", "gsd:0.1", "gsd:-0.1"), "a.txt", ("positive",))),
    case("augment-dota-gsd-nan", edit("dota", text("a", "gsd:0.1", "gsd:nan"), "a.txt", ("positive",))),
    case("augment-dota-no-labelTxt-folder", edit("dota", lambda ds, tmp: (ds.root / "labelTxt").rename(ds.root / "labels"),
                                                 "dota-set", ("no labelTxt",))),
    case("augment-dota-self-crossing-polygon", edit("dota", bow_tie("dota"), "a.txt", (("self-crossing", "crosses", "self-intersecting"),))),
    # YOLO, YOLO-OBB
    case("augment-yolo-class-negative", edit("yolo", text("a", "0 0.375", "-1 0.375"), "a.txt", ("class index -1",))),
    case("augment-yolo-class-not-integer", edit("yolo", text("a", "0 0.375", "0.5 0.375"), "a.txt", ("integer class",))),
    case("augment-yolo-four-values", edit("yolo", text("a", "0 0.375 0.375", "0 0.375"), "a.txt", ("expected 5 values",))),
    case("augment-yolo-obb-five-values", edit("yolo-obb", lambda ds, tmp: write(ds.labels["a"], "0 0.375 0.375 0.5 0.5\n"),
                                              "a.txt", ("expected 9 values",))),
    case("augment-yolo-obb-self-crossing-polygon", edit("yolo-obb", bow_tie("yolo-obb"), "a.txt",
                                                        (("self-crossing", "crosses", "self-intersecting"),))),
    case("augment-yolo-data-yaml-missing", edit("yolo", lambda ds, tmp: (ds.root / "data.yaml").unlink(), "yolo-set",
                                                ("no data.yaml",))),
    case("augment-yolo-data-yaml-malformed", edit("yolo", lambda ds, tmp: write(ds.root / "data.yaml", "names: [Tree\n"),
                                                  "data.yaml", ("malformed YAML",))),
    case("augment-yolo-data-yaml-is-a-list", edit("yolo", lambda ds, tmp: write(ds.root / "data.yaml", "- Tree\n"),
                                                  "data.yaml", (NO_NAMES,))),
    case("augment-yolo-names-indices-gap", edit("yolo", lambda ds, tmp: write(ds.root / "data.yaml", "names: {0: Tree, 2: Dead}\n"),
                                                "data.yaml", ("indices",))),
    case("augment-yolo-no-images-folder", edit("yolo", lambda ds, tmp: (ds.root / "images").rename(ds.root / "pictures"),
                                               "yolo-set", ("no images/ folder",))),
    # CSV
    case("augment-csv-unterminated-quote", edit("csv", text("data", "a.png,8,8,40,40,Tree", 'a.png,8,8,40,40,"Tree'),
                                                "boxes.csv", (("quote", "unterminated"),))),
    case("augment-csv-label-column-missing", edit("csv", text("data", "ymax,label", "ymax,name"), "boxes.csv",
                                                  ("missing column(s) label",))),
    case("augment-csv-seven-values", edit("csv", text("data", "40,40,Tree", "40,40,Tree,extra"), "boxes.csv",
                                          ("expected 6 values",))),
    case("augment-csv-header-only", edit("csv", lambda ds, tmp: write(ds.data, "image_path,xmin,ymin,xmax,ymax,label\n"),
                                         "boxes.csv", ("no annotated images",))),
    case("augment-csv-two-files", edit("csv", second_file("more.csv"), "csv-set", ("exactly one",))),
    case("augment-csv-not-utf8", edit("csv", lambda ds, tmp: write(ds.data, b"image_path,xmin\n\xff\xfe,1\n"), "boxes.csv",
                                      ("cannot read",))),
    case("augment-csv-image-path-outside-dataset", edit("csv", set_image_path("relative"), "boxes.csv", ("outside",))),
    case("augment-csv-image-path-absolute", edit("csv", set_image_path("absolute"), "boxes.csv", ("outside",))),
]


# ----------------------------------------------------------------------------- options and configs
def option(argv_extra, names, words, fmt="voc", config=None, out=None):
    """The voc base dataset with extra options; `config` (text) is written and passed as --config;
    `out(tmp)` prepares and returns the --out to use."""
    def make(tmp):
        ds = base(tmp, fmt)
        extra = list(argv_extra)
        if config is not None:
            extra += ["--config", str(write(tmp / "augment.yaml", config))]
        target = out(tmp) if out else tmp / "out"
        return Bad(ds.argv(target, *extra), names, words)
    return make


def under_a_file(tmp):
    return a_file(tmp) / "out"


def foreign_folder(tmp):
    write(tmp / "mine" / "thesis.tex", "\\documentclass{article}\n")
    return tmp / "mine"


def no_data(argv, names, words):
    return lambda tmp: Bad(argv(tmp), names, words)


OPTION_CASES = [
    case("augment-num-images-0", option(["--num-images", "0"], ("--num-images", "num_images"), ("at least 1",))),
    case("augment-num-images-negative", option(["--num-images", "-5"], ("--num-images", "num_images"), ("at least 1",))),
    case("augment-out-format-unknown", option(["--out-format", "cocoa"], "--out-format", ("cocoa", "choose from"))),
    case("augment-out-format-empty", option(["--out-format", ","], ("--out-format", "out_formats"),
                                            (("nothing given", "must not be empty"),))),
    case("augment-format-unknown", lambda tmp: Bad(["augment", "--data", str(base(tmp, "voc").data), "--format", "pascal",
                                                    "--out", str(tmp / "out")], "--format pascal", ("choose one of",))),
    case("augment-data-missing", no_data(lambda tmp: ["augment", "--data", str(tmp / "nowhere"), "--format", "voc",
                                                      "--out", str(tmp / "out")], "nowhere", ("no such file",))),
    case("augment-data-without-format", no_data(lambda tmp: ["augment", "--data", str(tmp), "--out", str(tmp / "out")],
                                                "augment", ("needs --format",))),
    case("augment-demo-and-data", no_data(lambda tmp: ["augment", "--demo", "--data", str(tmp), "--format", "voc",
                                                       "--out", str(tmp / "out")], "augment", ("either",))),
    case("augment-out-is-a-file", option([], "taken.txt", (("not a folder", "is a file"),), out=a_file)),
    case("augment-out-under-a-file", option([], "taken.txt", (("not a folder", "is a file"),), out=under_a_file)),
    case("augment-out-foreign-folder", option([], "mine", ("not empty",), out=foreign_folder)),
    case("augment-per-class-not-a-count", option(["--per-class", "Tree=many"], "--per-class Tree=many", ("NAME=N",))),
    case("augment-per-class-unknown-class", option(["--per-class", "Car=5"], "--per-class Car", ("unknown class",))),
    case("augment-config-missing", lambda tmp: Bad(base(tmp, "voc").argv(tmp / "out", "--config", str(tmp / "none.yaml")),
                                                   "none.yaml", (("cannot read", "not found"),))),
    case("augment-config-malformed", option([], "augment.yaml", (("cannot read", "not valid YAML"),), config="steps: [1\n")),
    case("augment-config-is-a-list", option([], "augment.yaml", ("mapping",), config="- steps\n- 10\n")),
    case("augment-config-is-a-number", option([], "augment.yaml", ("mapping",), config="3\n")),
    case("augment-config-unknown-key", option([], "augment.yaml", ("unknown key 'stpes'", "did you mean 'steps'"),
                                              config="stpes: 10\n")),
    case("augment-config-wrong-type", option([], "augment.yaml", ("steps", "expected int"), config="steps: ten\n")),
    case("augment-filter-given-a-number", option(["filter=3"], "filter", ("mapping",))),
    case("augment-filter-unknown-key", option(["filter.min_recal=0.5"], "filter", ("unknown key 'min_recal'",))),
    case("augment-override-not-a-section", option(["steps.x=1"], ("steps.x=1", "steps"), (("not a section", "expected int"),))),
    case("augment-seed-not-integer", option(["seed=1.5"], "seed", ("expected int",))),
    case("augment-steps-0", option(["steps=0"], "steps", ("at least 1",))),
    case("augment-batch-size-0", option(["batch_size=0"], "batch_size", ("at least 1",))),
    case("augment-resample-0", option(["resample=0"], "resample", ("at least 1",))),
    case("augment-resample-negative", option(["resample=-2"], "resample", ("at least 1",))),
    case("augment-model-not-a-pipeline", lambda tmp: Bad(base(tmp, "voc").argv(tmp / "out", "--model", str(write(
        tmp / "some-model" / "notes.txt", "").parent)), "some-model", ("not an aerogen pipeline folder",))),
    case("augment-device-unknown", option(["--device", "gpu0"], "--device gpu0", ("not a torch device",))),
]

CASES = [*per_format_cases(), *FORMAT_CASES, *OPTION_CASES]


def valid(fmt):
    return lambda tmp: base(tmp, fmt).argv(tmp / "out")


VALID = [(f"augment-{fmt}", valid(fmt)) for fmt in FORMATS]

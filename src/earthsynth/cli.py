"""The `earthsynth` command line."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from earthsynth import __version__
from earthsynth.errors import InputError
from earthsynth.weights import pickle_allowed

# Subcommands in help order.
COMMANDS = {
    "generate": "generate images from text, metadata and control maps (text2earth, crsdiff)",
    "augment": "turn a labelled detection dataset into a larger synthetic one",
    "evaluate": "train a detector with and without synthetic data",
    "denoise": "denoise a hyperspectral cube (hsi)",
    "upscale": "super-resolve an image or GeoTIFF x2/x4 (ediffsr)",
    "train": "train a model family from a YAML run config",
    "app": "serve the Gradio demo",
    "bench": "run the speed and quality benchmarks",
    "data": "inspect the bundled real data",
}


def cmd_data(args) -> int:
    from earthsynth.config import LIMITS

    LIMITS["tile_size"].check(args.tile_size, "--tile-size")
    LIMITS["min_visible"].check(args.min_visible, "--min-visible")
    if args.action == "summary":
        from earthsynth.data.summary import render_summary

        print(render_summary(tile_size=args.tile_size, min_visible=args.min_visible))
        return 0
    from earthsynth.data.export import EXPORT_FORMATS, export_real_tiles

    if not args.out:
        raise InputError("data export", "needs --out DIR")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for name, chosen, allowed in (("format", formats, EXPORT_FORMATS), ("split", splits, ("train", "val", "test"))):
        wrong = [c for c in chosen if c not in allowed]
        if wrong or not chosen:
            raise InputError(f"--{name}", f"{', '.join(wrong) or 'nothing'} given; choose from {', '.join(allowed)}")
    written = export_real_tiles(args.out, formats, splits, args.tile_size, args.min_visible)
    for fmt, counts in written.items():
        print(f"{fmt}: {', '.join(f'{split} {n} images' for split, n in counts.items())} -> {os.path.join(args.out, fmt)}")
    return 0


def cmd_train(args) -> int:
    from earthsynth.config import load_config
    from earthsynth.training.loop import train

    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    try:
        train(config, command=shell_command(args.argv))
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:  # once, not once per launched process
            print(interrupted_note(config, args.argv), file=sys.stderr)
        return 130
    return 0


def shell_command(argv: list[str]) -> str:
    return " ".join(["earthsynth", *(shlex.quote(a) for a in argv)])


def interrupted_note(config, argv: list[str]) -> str:
    """Which checkpoint an interrupted `earthsynth train` leaves and the command that resumes it."""
    from earthsynth.training.checkpoint import list_checkpoints

    found = list_checkpoints(Path(config.output_dir) / "checkpoints")
    if not found:
        if config.train.resume not in ("", "latest", "auto"):
            return f"earthsynth: interrupted; {config.train.resume} is still the checkpoint to resume: {shell_command(argv)}"
        return (f"earthsynth: interrupted before the first checkpoint (every {config.train.checkpoint_every} steps); "
                f"start again with: {shell_command(argv)}")
    kept, skip_next = [], False  # the command as given, its own --resume replaced
    for arg in argv:
        if skip_next or arg.startswith(("--resume=", "train.resume=")):
            skip_next = False
            continue
        skip_next = arg == "--resume"
        if not skip_next:
            kept.append(arg)
    return f"earthsynth: interrupted; {found[-1]} survives; resume with: {shell_command([*kept, '--resume', 'latest'])}"


def benchmarks_folder() -> Path:
    """benchmarks/ of the source checkout this earthsynth runs from (an editable install)."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    if not folder.is_dir():
        raise InputError("bench", "the benchmarks ship with the source checkout (benchmarks/ beside src/), "
                                  "not with an installed package; run earthsynth from a checkout")
    return folder


def cmd_bench(args) -> int:
    import ast
    import subprocess

    folder = benchmarks_folder()
    scripts = {path.stem: path for path in sorted(folder.glob("*.py"))}
    if not args.name:
        for name, path in scripts.items():
            summary = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0]
            print(f"{name:<20} {' '.join(summary.split())}")
        print("\nearthsynth bench NAME --help shows a benchmark's options")
        return 0
    if args.name not in scripts:
        raise InputError(f"bench {args.name}", f"no such benchmark; known: {', '.join(scripts)}")
    # from the checkout's root, as the benchmarks' own usage lines run them (their default paths are relative)
    return subprocess.run([sys.executable, str(scripts[args.name]), *args.args], cwd=folder.parent).returncode


def cmd_augment(args) -> int:
    from earthsynth.config import apply_override, from_dict, read_yaml_mapping
    from earthsynth.jobs.augment import AugmentConfig, run_augment

    if args.demo == bool(args.data):
        raise InputError("augment", "give either --data PATH --format FMT or --demo")
    if args.data and not args.format:
        raise InputError("augment", "--data needs --format (voc, coco, dota, yolo, yolo-obb or csv)")
    tree = read_yaml_mapping(args.config, "augment config") if args.config else {}
    for override in args.overrides:
        apply_override(tree, override)
    if args.demo:  # the bundled tiles, models and every output format
        tree.setdefault("num_images", 32)
        tree.setdefault("out_formats", ["coco", "dota", "yolo", "yolo-obb", "voc"])
    flags = {"num_images": args.num_images, "model": args.model, "seed": args.seed, "mode": args.mode}
    for key, value in flags.items():
        if value is not None:
            tree[key] = value
    if args.out_format:
        tree["out_formats"] = [f.strip() for f in args.out_format.split(",") if f.strip()]
    for item in args.per_class or []:
        name, _, count = item.partition("=")
        if not name or not count.isdigit():
            raise InputError(f"--per-class {item}", "expected NAME=N, e.g. --per-class Dead=200")
        tree.setdefault("per_class", {})[name] = int(count)
    config = from_dict(AugmentConfig, tree, args.config or "augment")
    if args.splits is not None and not args.data:
        raise InputError("--splits", "names splits of a --data dataset; --demo reads the bundled training tiles")
    splits = None if args.splits is None else [s.strip() for s in args.splits.split(",")]
    summary = run_augment(args.out, config, data=args.data, fmt=args.format, device=args.device, dtype=args.dtype,
                          allow_outside_paths=args.allow_outside_paths, splits=splits, log=print_job_line)
    if summary:
        print(f"{summary['accepted']} of {summary['candidates']} candidates accepted "
              f"({summary['timing']['total_s']} s) -> {args.out}: {', '.join(config.out_formats)}, manifest.jsonl, report.html")
        if summary["accepted"] < config.num_images:
            print(f"earthsynth: warning: only {summary['accepted']} of {config.num_images} wanted images passed the filter; "
                  "raise max_candidates or relax the filter thresholds", file=sys.stderr)
    return 0


def print_job_line(line: str) -> None:
    """A job's log line: to stdout, or a warning ("warning: ...") to stderr as the CLI's own."""
    if line.startswith("warning: "):
        print(f"earthsynth: {line}", file=sys.stderr)
    else:
        print(line)


def cmd_evaluate(args) -> int:
    from earthsynth.augment.evaluate import EvaluateConfig, format_table, run_evaluate

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {args.seeds}", "expected comma-separated integers, e.g. 0,1,2") from None
    config = EvaluateConfig(synthetic=args.synthetic, real_fraction=args.real_fraction, seeds=seeds,
                            detector_config=args.detector_config or "", split=args.split, stop_split=args.stop_on,
                            min_objects=args.min_objects, max_synthetic=args.max_synthetic,
                            synthetic_share=args.synthetic_share)
    for name, value in (("max_steps", args.steps), ("eval_every", args.eval_every), ("patience", args.patience)):
        if value is not None:
            setattr(config, name, value)
    if args.conditions is not None:
        config.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    summary = run_evaluate(args.out, config)
    print(format_table(summary))
    print(f"written to {args.out}: evaluate.json, evaluate.png, evaluate.html")
    return 0


def cmd_upscale(args) -> int:
    from earthsynth.jobs.upscale import upscale_file

    out = upscale_file(args.input, args.out, model_dir=args.model, steps=args.steps, scale=args.scale,
                       tile=args.tile, seed=args.seed, device=args.device, dtype=args.dtype, show_progress=True)
    print(f"x{args.scale} -> {out}")
    return 0


def cmd_denoise(args) -> int:
    from earthsynth.jobs.denoise import denoise_file

    out = denoise_file(args.input, args.out, model_dir=args.model, steps=args.steps, strength=args.strength,
                       tile=args.tile, seed=args.seed, key=args.key, layout=args.layout, method=args.method,
                       rank=args.rank, device=args.device, dtype=args.dtype, show_progress=True)
    print(f"denoised -> {out}")
    return 0


def cmd_generate(args) -> int:
    from earthsynth.jobs.generate import fields_from_options, generate_files

    fields = fields_from_options(args.family, vars(args))
    for path in generate_files(args.family, fields, args.out, requests_file=args.requests, model_dir=args.model,
                               device=args.device, dtype=args.dtype, show_progress=True):
        print(f"{args.family} -> {path}")
    return 0


def cmd_app(args) -> int:
    try:
        from earthsynth.app import launch_app
    except ImportError as err:
        raise InputError("app", f"needs the app extra ({err.name} is missing): pip install -e '.[app]'") from None

    # `kill` or a service manager's stop ends the app like Ctrl+C: jobs stopped, outputs removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"earthsynth app: serving on http://{args.host}:{args.port}/ (Ctrl+C stops)")
    launch_app(args.host, args.port, model_dir=args.model_dir)
    return 0


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="where the models run: cpu, cuda, cuda:1, mps (default: accelerate's device, so "
                                    "each process of `accelerate launch` uses its own GPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="the models' number type (default float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earthsynth", description="Synthesise remote-sensing data with conditional diffusion models.")
    parser.add_argument("--version", action="version", version=f"earthsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {name: sub.add_parser(name, help=help_text, description=help_text) for name, help_text in COMMANDS.items()}

    p = parsers["bench"]
    p.add_argument("name", nargs="?", help="a benchmark, benchmarks/NAME.py of the source checkout; "
                                           "without one, the benchmarks are listed")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (see earthsynth bench NAME --help)")
    p.set_defaults(func=cmd_bench)

    p = parsers["train"]
    p.add_argument("config", help="YAML run config, e.g. configs/smoke.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    p.add_argument("--resume", help="'latest' (refused when there is no checkpoint), 'auto' (the latest checkpoint "
                                    "if there is one, else start) or a checkpoint folder")
    p.add_argument("--output-dir", help="overrides output_dir")
    p.set_defaults(func=cmd_train)

    families = parsers["generate"].add_subparsers(dest="family", required=True, metavar="FAMILY")
    for family, help_text in (("text2earth", "text + ground sample distance -> image; tiled scenes, inpainting"),
                              ("crsdiff", "text + metadata + control maps -> image")):
        p = families.add_parser(family, help=help_text, description=help_text)
        p.add_argument("--prompt", help="what the image shows (required unless every request in --requests has one)")
        p.add_argument("--out", required=True,
                       help="output .png / .jpg / .tif (GeoTIFF); with --requests, the output folder")
        p.add_argument("--requests", help="CSV (header of field names) or JSONL file, one request per row; "
                                          "the options here are every row's defaults")
        p.add_argument("--model", help=f"{family} pipeline folder (default: the bundled one)")
        p.add_argument("--gsd", type=float, help="ground sample distance, metres per pixel")
        p.add_argument("--width", type=int, help="pixels, a multiple of the model's stride, at most 65536 (default: the "
                                                 "model's tile, or the --reference / --image size); a request that would "
                                                 "need more memory than the device has is refused, with the estimate")
        p.add_argument("--height", type=int, help="pixels, as --width")
        p.add_argument("--steps", type=int, help="denoising steps (default 20)")
        p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 4.0)")
        p.add_argument("--negative", help="negative prompt")
        p.add_argument("--seed", type=int, help="image k is drawn from seed + k (default 0)")
        p.add_argument("--num-images", type=int, help="images per request, named OUT_0000, OUT_0001... (default 1, at most 10000)")
        add_device_options(p)
        p.set_defaults(func=cmd_generate)
    p = families.choices["text2earth"]
    p.add_argument("--gsd-guidance", type=float, help="guide the GSD separately from the text with this scale")
    p.add_argument("--tile", type=int, help="denoise a larger scene in overlapping tiles of this size")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (default 16)")
    p.add_argument("--image", help="inpainting: PNG / JPEG or GeoTIFF whose unmasked pixels are kept")
    p.add_argument("--mask", help="inpainting: mask of the --image's size, nonzero = regenerate")
    p = families.choices["crsdiff"]
    p.add_argument("--reference", help="image or GeoTIFF: its metadata, its size (cut from the top-left to the "
                                       "model's stride) and the source of --maps")
    p.add_argument("--maps", help="maps computed from --reference: comma-separated canny, sketch, content, landcover")
    p.add_argument("--canny", help="edge map image (grey, 0-255 or 0-1) of the output's size")
    p.add_argument("--sketch", help="sketch map image (grey, 0-255 or 0-1) of the output's size")
    p.add_argument("--content", help="RGB image whose colours and textures are wanted (layout scrambled)")
    p.add_argument("--dem", help="elevation raster (reprojected onto a georeferenced --reference, else resized)")
    p.add_argument("--landcover", help="class raster, codes 0 water, 1 vegetation, 2 bright open ground, "
                                       "3 dark bare ground (others: no data)")
    p.add_argument("--road", help="GeoJSON lines, placed by a georeferenced --reference")
    p.add_argument("--scale", action="append", metavar="NAME=VALUE", help="a control map's strength (default 1)")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE",
                   help="metadata: gsd, year, month, day, date (YYYY-MM-DD), cloud_cover (%%), lat, lon; "
                        "overrides the --reference's")
    p.add_argument("--condition-guidance", type=float,
                   help="guide metadata and maps separately from the text with this scale")

    p = parsers["augment"]
    p.add_argument("--demo", action="store_true", help="the bundled real tiles and default models, 32 images")
    p.add_argument("--data", help="the real labelled dataset (folder, or a COCO json / deepforest csv)")
    p.add_argument("--format", help="its format: voc, coco, dota, yolo, yolo-obb, csv")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="let image paths in its annotation files lead outside its folder (absolute, or ..)")
    p.add_argument("--splits", help="comma-separated splits of --data to read (default: train only; a test split "
                                    "is read only when named, with a warning)")
    p.add_argument("--out", required=True, help="output folder; rerunning with the same folder resumes")
    p.add_argument("--num-images", type=int, help="accepted images to write (default 64, --demo 32)")
    p.add_argument("--per-class", action="append", metavar="NAME=N",
                   help="objects of a class wanted over all candidates (rebalance rare classes); repeatable")
    p.add_argument("--model", help="aerogen pipeline folder (default: the bundled one)")
    p.add_argument("--mode", help="generate: whole images for sampled layouts (default); inpaint: new objects "
                                  "painted into real tiles, their background and boxes kept")
    p.add_argument("--out-format", help="comma-separated coco, dota, yolo, yolo-obb, voc (default coco)")
    p.add_argument("--seed", type=int)
    p.add_argument("--config", help="YAML with augment settings and filter thresholds (see configs/augment.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. filter.min_recall=0.6 steps=10")
    add_device_options(p)
    p.set_defaults(func=cmd_augment)

    p = parsers["evaluate"]
    p.add_argument("--synthetic", required=True, help="an `earthsynth augment` output folder")
    p.add_argument("--out", required=True, help="folder for the trained detectors, evaluate.json, .png and .html")
    p.add_argument("--real-fraction", type=float, default=0.25, help="share of the real training tiles (default 0.25)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    p.add_argument("--steps", type=int, help="training budget of each detector in steps (default 3000); "
                                             "training stops earlier when validation mAP50 stops improving")
    p.add_argument("--eval-every", type=int, help="steps between validation scores (default 100)")
    p.add_argument("--patience", type=int, help="stop after this many validation scores without a better one (default 6)")
    p.add_argument("--detector-config", help="detector training recipe YAML (default: the bundled detector's)")
    p.add_argument("--split", choices=["indomain-test", "test", "indomain-val", "val"], default="indomain-test",
                   help="score on the YELL in-domain test area (default), OSBS_029 (test: cross-site), or a "
                        "validation split to choose settings")
    p.add_argument("--stop-on", choices=["indomain-val", "val"], default="indomain-val",
                   help="validation split of early stopping: the YELL in-domain block (default) or SOAP_061")
    p.add_argument("--conditions", help="comma-separated, real included (default all: real_full, real, copy_paste, "
                                        "filtered, unfiltered, copy_paste_filtered)")
    p.add_argument("--synthetic-share", type=float, default=0.5,
                   help="share of the training draws that are added images, synthetic or copy-paste (default 0.5)")
    p.add_argument("--min-objects", type=int, default=0, help="leave out synthetic images with fewer objects")
    p.add_argument("--max-synthetic", type=int, default=0, help="use at most this many synthetic images (0: all)")
    p.set_defaults(func=cmd_evaluate)

    p = parsers["upscale"]
    p.add_argument("input", help="PNG / JPEG image or GeoTIFF (any band count, all bands kept)")
    p.add_argument("--scale", type=int, default=4, help="2 or 4; must be the model's (default 4)")
    p.add_argument("--out", required=True, help="output file: .png / .jpg for images, .tif for GeoTIFFs")
    p.add_argument("--model", help="ediffsr pipeline folder (default: the bundled one)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the bundled model's best on validation)")
    p.add_argument("--tile", type=int, default=128, help="tile size in low-resolution pixels, bounds memory (default 128)")
    p.add_argument("--seed", type=int, default=0)
    add_device_options(p)
    p.set_defaults(func=cmd_upscale)

    p = parsers["denoise"]
    p.add_argument("input", help="hyperspectral cube: ENVI (.hdr or data file), .mat, .npy or multi-band GeoTIFF")
    p.add_argument("--out", required=True, help="output file: .hdr/.img (ENVI), .mat, .npy or .tif")
    p.add_argument("--method", choices=["model", "robust-pca"], default="model",
                   help="the hsi model (default) or the classical robust low-rank fit its refiner starts from (no model)")
    p.add_argument("--rank", type=int,
                   help="robust-pca: subspace rank, below the band count (default 4, or bands - 1 if fewer)")
    p.add_argument("--model", help="hsi pipeline folder (default: the bundled one)")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    p.add_argument("--strength", type=float, default=0.5,
                   help="how far towards pure noise the noisy cube's latent is taken before denoising, (0, 1] (default 0.5)")
    p.add_argument("--tile", type=int, default=64, help="tile size in pixels (all bands at once), bounds memory (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key", help=".mat: the variable holding the cube (default: the largest 3-D array)")
    p.add_argument("--layout", choices=["BHW", "HWB"], help=".mat/.npy axis order (default: .mat HWB, .npy guessed)")
    add_device_options(p)
    p.set_defaults(func=cmd_denoise)

    p = parsers["app"]
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    from earthsynth.app import MODEL_FAMILIES  # a constant: gradio is not imported for --help

    p.add_argument("--model-dir", help=f"folder whose {', '.join(f'{name}/' for name in MODEL_FAMILIES)} pipeline "
                                       "folders (any of them) replace the bundled ones")
    p.set_defaults(func=cmd_app)

    p = parsers["data"]
    p.add_argument("action", choices=["summary", "export"],
                   help="summary: what the bundled sources hold; export: their labelled tiles as a detection dataset")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--min-visible", type=float, default=0.5, help="keep a box cut by a tile edge if this fraction stays")
    p.add_argument("--out", help="export: output folder (one sub-folder per format)")
    p.add_argument("--format", default="coco", help="export: comma-separated coco, voc, dota, yolo, yolo-obb")
    p.add_argument("--splits", default="train,val,test", help="export: comma-separated train, val, test")
    p.set_defaults(func=cmd_data)

    # the commands that load models read safetensors; pickled weights only when asked (earthsynth.weights)
    for p in [*families.choices.values(), *(parsers[name] for name in ("augment", "denoise", "upscale", "train", "app"))]:
        p.add_argument("--allow-pickle", action="store_true",
                       help="also load pickled weights (.bin, .pt, .ckpt), which can run code: only files you trust")
    return parser


def main(argv: list[str] | None = None) -> int:
    # every model loads from a local directory: an accidental hub download must fail loudly
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.argv = argv  # the command as typed, for command.txt and the resume hint
    if isinstance(getattr(args, "overrides", None), list):
        # key=value settings may come between options, where argparse leaves them unparsed
        settings = [item for item in unknown if "=" in item and not item.startswith("-")]
        args.overrides += settings
        unknown = [item for item in unknown if item not in settings]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with pickle_allowed(getattr(args, "allow_pickle", False)):
            return args.func(args)
    except InputError as err:
        print(f"earthsynth: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("earthsynth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

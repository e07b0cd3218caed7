"""Serve `earthsynth app` and save one screenshot per tab (for the README), each tab run once
with its defaults where its model is there.

    .venv/bin/python scripts/app_screenshots.py                  # -> docs/app/*.png
    .venv/bin/python scripts/app_screenshots.py --model-dir DIR --out shots/

Needs the app extra and Debian's chromium (/usr/bin/chromium), driven by the playwright
package (its own browser download is not used). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDTH = 1200  # browser width; the saved images are shrunk to SAVED_WIDTH
SAVED_WIDTH = 960
COLOURS = 128  # palette PNGs: a screenshot of a form needs few colours and stays small
JOB_TIMEOUT_MS = 300_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_small(full: Path, out: Path) -> None:
    image = Image.open(full).convert("RGB")
    height = round(image.height * SAVED_WIDTH / image.width)
    image = image.resize((SAVED_WIDTH, height), Image.LANCZOS)
    image.quantize(COLOURS, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out} ({out.stat().st_size // 1024} KB)")


# tab -> (file input that gets the sample image or None, the button that runs it, what its output shows)
TAB_RUNS = {
    "Layout": (None, "#layout-generate", "#layout-output img"),
    "Hyperspectral": (None, "#hsi-denoise", "#hsi-after img"),
    "Super-resolution": ("#sr-file input[type=file]", "#sr-run", "#sr-after img"),
    "Augment": (None, "#augment-run", "#augment-accepted img"),
    "Text to image": (None, "#t2i-generate", "#t2i-output img"),
    "Control": ("#control-reference input[type=file]", "#control-generate", "#control-output img"),
}


def run_tab(page, name: str, sample_image: Path) -> None:
    """Run the tab's job once with its defaults, when the tab has a model (its button is there)."""
    upload, button, output = TAB_RUNS[name]
    if page.locator(button).count():
        if upload:
            page.set_input_files(upload, str(sample_image))
        if name == "Augment":  # four candidates, not the default count: a screenshot, not a dataset
            slider = page.locator("#augment-count input[type=number]")
            slider.fill("4")
            slider.press("Enter")
        page.click(button)
        page.wait_for_selector(output, timeout=JOB_TIMEOUT_MS)
    page.wait_for_timeout(500)  # let the last outputs render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "app"), help="folder for the PNGs (default docs/app)")
    parser.add_argument("--model-dir", help="as `earthsynth app --model-dir`")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from earthsynth.app import launch_app
    from earthsynth.data.geotiff import read_geotiff, to_uint8_rgb
    from earthsynth.data.sources import deepforest_images

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    demo, ctx = launch_app("127.0.0.1", port, model_dir=args.model_dir, block=False)
    try:
        # a 64 px crop of the held-out test image, for the super-resolution and control tabs
        sample_image = ctx.work_root / "osbs_crop.png"
        test_image = next(image for image in deepforest_images() if image.image_id == "OSBS_029")
        pixels = to_uint8_rgb(read_geotiff(test_image.path).data[:, 100:164, 100:164], stretch=False)
        Image.fromarray(pixels).save(sample_image)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#layout-generate", timeout=60_000)
            for name in TAB_RUNS:
                page.get_by_role("tab", name=name).click()
                page.wait_for_timeout(300)
                run_tab(page, name, sample_image)
                full = ctx.work_root / "screenshot.png"
                page.screenshot(path=full, full_page=True)
                save_small(full, out / f"{name.lower().replace(' ', '-')}.png")
            browser.close()
    finally:
        demo.close()
        ctx.remove_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

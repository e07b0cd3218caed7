"""`earthsynth app` in a real headless Chromium: the app is started by the command line, the
page is filled and clicked like a person would, and the results appear (screenshots saved)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (/usr/bin/chromium; scripts/setup.sh installs it with apt-get)",
                allow_module_level=True)
pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from test_app import free_port, tiny_models  # noqa: E402

# as root on a machine with a closed network: no sandbox, and nothing that calls home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`earthsynth app --port P --model-dir DIR` in a child process, until the module ends:
    (its address, the folder it keeps files in)."""
    models = tiny_models(tmp_path_factory.mktemp("models"))
    port = free_port()
    log = open(tmp_path_factory.mktemp("log") / "app.log", "wb")
    gradio_folder = tmp_path_factory.mktemp("gradio")  # where gradio, and so the app, keeps files
    process = subprocess.Popen([sys.executable, "-m", "earthsynth.cli", "app", "--port", str(port),
                                "--model-dir", str(models)], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
                                    "GRADIO_TEMP_DIR": str(gradio_folder)})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"earthsynth app did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, gradio_folder
    # a service manager's stop (SIGTERM): the app removes its folder on the way out, gradio's
    # cache with it. Not SIGINT: a shell running the tests in the background starts them with
    # SIGINT ignored.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    # (gradio makes an empty vibe_edit_history/ in its cache folder when it starts a server)
    left = [p for p in gradio_folder.rglob("*") if not p.is_dir()]
    assert not list(gradio_folder.glob("earthsynth-app-*")) and not left, f"the app left files behind: {left}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_layout_tab_in_the_browser(served, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served[0])
    page.wait_for_selector("#layout-generate", timeout=30_000)
    assert "2 boxes on the 64 x 64 px canvas" in page.locator("body").inner_text()
    # a layout drawn from the dataset's statistics replaces the table and the preview
    page.click("#layout-random")
    draw = page.locator("input[aria-label='layout draw']")
    deadline = time.monotonic() + 30
    while draw.input_value() != "1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert draw.input_value() == "1"
    set_slider(page, "layout-steps", 2)
    page.click("#layout-generate")
    image = page.wait_for_selector("#layout-output img", timeout=60_000)
    assert page.evaluate("img => img.naturalWidth", image) == 256
    page.screenshot(path=tmp_path / "layout.png", full_page=True)
    assert (tmp_path / "layout.png").stat().st_size > 10_000
    page.close()


def test_hyperspectral_tab_in_the_browser(served, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served[0])
    page.get_by_role("tab", name="Hyperspectral").click()
    page.wait_for_selector("#hsi-denoise", timeout=30_000)
    set_slider(page, "hsi-steps", 1)
    page.click("#hsi-denoise")
    page.wait_for_selector("#hsi-after img", timeout=60_000)
    assert "PSNR" in page.locator("#hsi-status").inner_text()
    assert list(served[1].glob("earthsynth-app-*/sessions/*/hsi-*/out/*.npy")), "the run's outputs are in its session"
    # the command line's app writes for its user alone: gradio's cache, the uploads, the outputs
    (root,) = served[1].glob("earthsynth-app-*")
    modes = {path.relative_to(root): path.stat().st_mode & 0o777 for path in [root, *root.rglob("*")]}
    assert set(modes.values()) == {0o600, 0o700}, modes
    assert all(mode == 0o700 for path, mode in modes.items() if (root / path).is_dir()), modes
    # a click on the input view picks that pixel for the spectrum (the 64 px cube is shown x4)
    before = page.locator("#hsi-before img")
    box = before.bounding_box()
    before.click(position={"x": box["width"] * 0.25 + 1, "y": box["height"] * 0.75 + 1})
    pixel_x = page.locator("input[aria-label='pixel x']")
    pixel_y = page.locator("input[aria-label='pixel y']")
    deadline = time.monotonic() + 10
    while pixel_x.input_value() != "16" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (pixel_x.input_value(), pixel_y.input_value()) == ("16", "48")
    page.screenshot(path=tmp_path / "hyperspectral.png", full_page=True)
    page.close()


def test_closed_pages_leave_no_outputs(served):
    """Each page's outputs live in a folder of its session, removed when the page is closed."""
    (sessions,) = served[1].glob("earthsynth-app-*/sessions")
    deadline = time.monotonic() + 20
    while list(sessions.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not list(sessions.iterdir()), f"sessions left behind: {[p.name for p in sessions.iterdir()]}"

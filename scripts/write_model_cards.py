"""Write the README.md model card of every bundled model (src/earthsynth/assets/<name>/) from its
train_config.yaml, command.txt and metrics.csv, with the benchmark results that measured it,
by the same code that writes a card into every training export (earthsynth.model_card).

Run from the repository root after a bundle or a benchmark result changes:
    .venv/bin/python scripts/write_model_cards.py
"""

from __future__ import annotations

from pathlib import Path

import earthsynth
from earthsynth.model_card import write_model_card

RESULTS = Path("benchmarks/results")
# bundled model -> {what the benchmark measured: its results file}; the README's Benchmarks
# sections say how each was run
BENCHMARKS = {
    "text2earth": {"resolution benchmark (benchmarks/text2earth_quality.py)": RESULTS / "text2earth_quality.txt"},
    "crsdiff": {"control fidelity benchmark (benchmarks/crsdiff_fidelity.py)": RESULTS / "crsdiff_fidelity.txt"},
    "aerogen": {"does it help a detector? `earthsynth evaluate` on the held-out test image: compact detectors "
                "trained on the real tiles alone vs with filtered / unfiltered synthetic images, mean ± std "
                "over seeds": RESULTS / "evaluate_test_default.json"},
    "hsi": {"denoising benchmark (benchmarks/hsi_denoise.py)": RESULTS / "hsi_denoise.txt"},
    "ediffsr": {"super-resolution benchmark (benchmarks/ediffsr_quality.py)": RESULTS / "ediffsr_quality.txt"},
}


def main() -> None:
    if not RESULTS.is_dir():
        raise SystemExit("run this from the repository root (benchmarks/results/ not found)")
    for name in earthsynth.BUNDLED_MODELS:
        card = write_model_card(earthsynth.bundled_model(name), BENCHMARKS.get(name),
                                load_from=f'earthsynth.bundled_model("{name}")')
        print(f"wrote {card.relative_to(Path.cwd()) if card.is_relative_to(Path.cwd()) else card}")


if __name__ == "__main__":
    main()

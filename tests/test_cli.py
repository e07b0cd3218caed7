"""The `earthsynth` command line and the README's two commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from earthsynth.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ["generate", "augment", "evaluate", "denoise", "upscale", "train", "app", "bench", "data"]:
        assert re.search(rf"^\s+{name}\s", out, re.M), name
    assert list(COMMANDS)[:9] == ["generate", "augment", "evaluate", "denoise", "upscale", "train", "app", "bench", "data"]


def test_data_summary_shows_true_counts(capsys):
    assert main(["data", "summary"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"OSBS_029\s+test\s+400x400\s+3 uint8\s+0.1\s+EPSG:32617\s+61\s+Tree 61", out)
    assert re.search(r"SOAP_061\s+val .* 37\s+Alive 9, Dead 28", out)
    assert "574" in out and "279" in out and "labelled boxes in all: 951" in out
    assert "7261 spectra x 180 bands" in out


def test_bad_config_is_one_line_naming_the_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"earthsynth: error: {tmp_path / 'missing.yaml'}: config file not found"
    config = tmp_path / "typo.yaml"
    config.write_text("family: smoke\ndata:\n  tile_sise: 32\n")
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "typo.yaml" in err and "did you mean 'tile_size'" in err


def test_version_and_bench(tmp_path, capsys):
    from earthsynth import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"earthsynth {__version__}"

    # without a name: every benchmarks/*.py with the first line of its docstring
    assert main(["bench"]) == 0
    listed = capsys.readouterr().out
    for script in (ROOT / "benchmarks").glob("*.py"):
        assert re.search(rf"^{script.stem}\s+\S", listed, re.M), script.stem
    assert re.search(r"^train_loop\s+Overhead of earthsynth's one training loop", listed, re.M)

    # with a name: that script runs with the options that follow, from the checkout's root
    done = subprocess.run([sys.executable, "-m", "earthsynth.cli", "bench", "train_loop", "--help"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "usage: train_loop.py" in done.stdout and "--precision" in done.stdout
    assert main(["bench", "train_lop"]) == 1
    assert capsys.readouterr().err.startswith("earthsynth: error: bench train_lop: no such benchmark; known: ")


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert ci_command in blocks, "the README's test command must be exactly what .ci/run runs"
    assert any(b.startswith("bash scripts/setup.sh && .venv/bin/earthsynth ") for b in blocks)


def test_data_export_from_the_command_line(tmp_path, capsys):
    assert main(["data", "export", "--out", str(tmp_path / "ds"), "--format", "yolo", "--splits", "val"]) == 0
    assert "yolo: val 4 images" in capsys.readouterr().out
    assert len(list((tmp_path / "ds" / "yolo" / "labels" / "val").glob("*.txt"))) == 4
    assert main(["data", "export", "--out", str(tmp_path / "ds"), "--format", "yolo", "--splits", "val"]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["data", "export", "--out", str(tmp_path / "other"), "--format", "cocoa"]) == 1
    assert capsys.readouterr().err.strip() == "earthsynth: error: --format: cocoa given; choose from coco, voc, dota, yolo, yolo-obb"


@pytest.mark.parametrize("option, value, problem", [("--tile-size", "0", "must be at least 1, got 0"),
                                                    ("--min-visible", "nan", "must be in [0, 1], got nan"),
                                                    ("--min-visible", "2", "must be in [0, 1], got 2.0")])
def test_data_options_out_of_range_are_one_line(tmp_path, capsys, option, value, problem):
    for action in (["summary"], ["export", "--out", str(tmp_path / "ds")]):
        assert main(["data", *action, option, value]) == 1
        assert capsys.readouterr().err.strip() == f"earthsynth: error: {option}: {problem}"
    assert not (tmp_path / "ds").exists()

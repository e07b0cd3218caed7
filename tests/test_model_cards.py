"""Model cards: every bundled folder has one, written by the code that writes an export's, and a
training export gets one with a parseable YAML header; exports load with diffusers' generic
DiffusionPipeline.from_pretrained."""

import importlib.util
from pathlib import Path

import pytest
import torch

import earthsynth
from earthsynth.model_card import LICENSE, model_card, read_card_header

REPO = Path(__file__).resolve().parents[1]


def card_script():
    spec = importlib.util.spec_from_file_location("write_model_cards", REPO / "scripts" / "write_model_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", earthsynth.BUNDLED_MODELS)
def test_every_bundled_folder_has_the_card_the_code_writes(name, monkeypatch):
    folder = earthsynth.bundled_model(name)
    header = read_card_header(folder / "README.md")
    assert header["license"] == LICENSE
    assert header["library_name"] == ("diffusers" if (folder / "model_index.json").is_file() else "earthsynth")
    assert name in header["tags"] and "remote-sensing" in header["tags"]
    text = (folder / "README.md").read_text()
    for section in ("## Training data and split", "## Command", "## Metrics", "## Intended use", "## Limits"):
        assert section in text
    assert (folder / "command.txt").read_text().strip().splitlines()[0] in text
    # up to date: the script would write the same card now (run it after changing a bundle)
    monkeypatch.chdir(REPO)
    script = card_script()
    expected = model_card(folder, script.BENCHMARKS.get(name), load_from=f'earthsynth.bundled_model("{name}")')
    assert text == expected, "stale card: run scripts/write_model_cards.py"


def test_a_card_names_a_hub_base_model_and_the_training_log(tmp_path):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "Text2EarthPipeline"}')
    (folder / "train_config.yaml").write_text(
        "family: text2earth\nmodel:\n  init_unet: someone/sd-unet\n  text_encoder: ''\ndata:\n  sources: [deepforest]\n  split: train\n")
    (tmp_path / "metrics.csv").write_text("step,loss,lr,grad_norm,seconds\n1,0.5,1e-4,1.0,2.0\n10,0.25,1e-4,1.0,20.0\n")
    text = model_card(folder, metrics_csv=tmp_path / "metrics.csv", load_from=Path("runs/x/final"))
    (folder / "README.md").write_text(text)
    header = read_card_header(folder / "README.md")
    assert header["base_model"] == "someone/sd-unet" and header["library_name"] == "diffusers"
    assert "last step 10" in text and "last 0.2500" in text
    assert 'DiffusionPipeline.from_pretrained("runs/x/final")' in text
    assert "Not recorded" in text  # no command.txt


def test_a_training_export_has_a_card_and_loads_with_diffusion_pipeline(tmp_path):
    from diffusers import DiffusionPipeline

    from earthsynth.config import load_config
    from earthsynth.generation.ediffsr.pipeline import EDiffSRPipeline
    from earthsynth.training.loop import train

    tiny = {"width": 8, "encoder_blocks": [1, 1], "decoder_blocks": [1, 1], "middle_blocks": 1, "prior_width": 4,
            "prior_blocks": 1, "diffusion_steps": 20, "preview_steps": 2}
    config = load_config(tree={
        "family": "ediffsr", "output_dir": str(tmp_path / "run"), "model": tiny,
        "data": {"tile_size": 32, "gsd_factors": [4]},
        "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100, "preview_every": 100}})
    final = train(config, command="earthsynth train tiny.yaml", show_progress=False)["final_dir"]

    header = read_card_header(final / "README.md")
    assert header["license"] == LICENSE and header["library_name"] == "diffusers" and "ediffsr" in header["tags"]
    text = (final / "README.md").read_text()
    assert "earthsynth train tiny.yaml" in text and "last step 2" in text
    assert f'from_pretrained("{final.as_posix()}")' in text  # the final place, not the temporary one

    pipe = DiffusionPipeline.from_pretrained(final)
    assert type(pipe) is EDiffSRPipeline
    same = EDiffSRPipeline.from_pretrained(final)
    low = torch.rand(3, 8, 8)
    first = pipe(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    second = same(low, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))

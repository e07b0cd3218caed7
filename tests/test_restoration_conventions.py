"""The hsi and ediffsr pipelines follow diffusers' conventions: return_dict, a generator per
image, latents=, callback_on_step_end that can change the sample, a progress bar that counts
the steps, output_type "latent" (hsi), clear ValueErrors; and importing them loads no
training code."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from earthsynth.generation.ediffsr import EANet, EDiffSRPipeline, MeanRevertingScheduler
from earthsynth.generation.hsi.pipeline import normalisation
from test_hsi import tiny_pipeline as tiny_hsi_pipeline

TINY_EANET = dict(width=8, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1), prior_width=8,
                  prior_blocks=1)


def tiny_ediffsr_pipeline() -> EDiffSRPipeline:
    torch.manual_seed(0)
    pipe = EDiffSRPipeline(eanet=EANet(bands=3, scale=2, **TINY_EANET),
                           scheduler=MeanRevertingScheduler(num_train_timesteps=20))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CountingBar:
    """Stands in for the pipeline's tqdm bar: remembers its total and the updates."""

    def __init__(self, total):
        self.total, self.n = total, 0

    def update(self, n=1):
        self.n += n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_progress(pipe, monkeypatch) -> list[CountingBar]:
    bars = []

    def progress_bar(iterable=None, total=None):
        bars.append(CountingBar(total))
        return bars[-1]

    monkeypatch.setattr(pipe, "progress_bar", progress_bar)
    return bars


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("module", ["earthsynth.generation.hsi.pipeline", "earthsynth.generation.ediffsr.pipeline",
                                    "earthsynth.generation.hsi", "earthsynth.generation.ediffsr",
                                    "earthsynth.generation.smoke"])
def test_importing_a_pipeline_loads_no_training_code(module):
    training = ("earthsynth.training", "earthsynth.data.tiles", "earthsynth.data.hsi_scenes",
                "earthsynth.data.hsi_noise", "earthsynth.conditioning")
    code = (f"import sys, {module}\n"
            f"print(sorted(m for m in sys.modules if m.startswith({training!r}) or "
            f"(m.startswith('earthsynth.generation.') and m.endswith('.train'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_registry_finds_the_families_in_train_modules():
    from earthsynth.registry import FAMILIES, get_family

    for name in ("hsi", "hsi_autoencoder", "ediffsr", "smoke"):
        assert ".train:" in FAMILIES[name] and get_family(name).name == name


# ----------------------------------------------------------------------------- ediffsr
def test_ediffsr_return_dict_false_gives_the_tuple():
    pipe, low = tiny_ediffsr_pipeline(), torch.rand(1, 3, 8, 8)
    output = pipe(low, generator=seeded(0))
    (images,) = pipe(low, generator=seeded(0), return_dict=False)
    assert torch.equal(images, output.images)


def test_ediffsr_a_generator_per_image_gives_each_image_what_it_gets_alone():
    pipe, low = tiny_ediffsr_pipeline(), torch.rand(2, 3, 12, 8)
    both = pipe(low, num_inference_steps=3, tile=8, overlap=2, generator=[seeded(1), seeded(2)]).images
    for i, seed in enumerate((1, 2)):
        alone = pipe(low[i], num_inference_steps=3, tile=8, overlap=2, generator=seeded(seed)).images
        assert torch.allclose(both[i], alone[0], atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_ediffsr_latents_are_the_start_noise():
    pipe, low = tiny_ediffsr_pipeline(), torch.rand(1, 3, 8, 8)
    # one step draws no noise after the start: the given start noise is all that is random
    drawn = pipe(low, num_inference_steps=1, generator=seeded(3)).images
    noise = torch.randn((1, 3, 16, 16), generator=seeded(3))
    given = pipe(low, num_inference_steps=1, latents=noise).images
    assert torch.allclose(given, drawn, atol=1e-6)
    other = pipe(low, num_inference_steps=1, latents=torch.randn(1, 3, 16, 16, generator=seeded(4))).images
    assert not torch.allclose(other, drawn)
    # tiled, each tile takes its part of the noise: the same noise gives the same image
    a = pipe(torch.rand(1, 3, 12, 12), tile=8, overlap=2, latents=torch.zeros(1, 3, 24, 24), generator=seeded(0))
    assert a.images.shape == (1, 3, 24, 24)


def test_ediffsr_callback_sees_every_step_and_can_change_the_sample(monkeypatch):
    pipe, low = tiny_ediffsr_pipeline(), torch.rand(1, 3, 12, 8)
    bars = count_progress(pipe, monkeypatch)
    seen = []

    def record(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {}

    plain = pipe(low, num_inference_steps=3, tile=8, overlap=2, generator=seeded(0), callback_on_step_end=record,
                 callback_on_step_end_tensor_inputs=["latents"]).images
    # two tiles of three steps each; the bar counts the same six
    assert [step for step, _, _ in seen] == [0, 1, 2, 0, 1, 2]
    assert bars[-1].total == 6 and bars[-1].n == 6
    untouched = pipe(low, num_inference_steps=3, tile=8, overlap=2, generator=seeded(0)).images
    assert torch.equal(plain, untouched)

    def brighten(pipe, step, timestep, tensors):
        return {"latents": tensors["latents"] + 0.5}

    changed = pipe(low, num_inference_steps=3, tile=8, overlap=2, generator=seeded(0), callback_on_step_end=brighten,
                   callback_on_step_end_tensor_inputs=["latents"]).images
    assert changed.mean() > plain.mean() + 0.05


@pytest.mark.parametrize("arguments, message", [
    ({"generator": [seeded(0)]}, "1 generators for 2 images"),
    ({"latents": torch.zeros(2, 3, 8, 8)}, "latents must have shape"),
    ({"output_type": "pil"}, "output_type must be pt or np"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["noise"]}, "not offered"),
])
def test_ediffsr_bad_arguments_are_value_errors(arguments, message):
    with pytest.raises(ValueError, match=message):
        tiny_ediffsr_pipeline()(torch.rand(2, 3, 8, 8), **arguments)


# ----------------------------------------------------------------------------- hsi
@pytest.fixture(scope="module")
def hsi_pipe():
    return tiny_hsi_pipeline()


def test_hsi_return_dict_false_gives_the_tuple(hsi_pipe):
    cube = torch.rand(6, 16, 16)
    output = hsi_pipe(cube, num_inference_steps=2, generator=seeded(0), output_type="pt")
    (denoised,) = hsi_pipe(cube, num_inference_steps=2, generator=seeded(0), output_type="pt", return_dict=False)
    assert torch.equal(denoised, output.cube) and denoised.shape == (6, 16, 16)


def test_hsi_a_batch_with_a_generator_per_cube_gives_each_cube_what_it_gets_alone(hsi_pipe):
    cubes = np.random.default_rng(0).random((2, 6, 16, 16)).astype(np.float32)
    both = hsi_pipe(cubes, num_inference_steps=2, strength=0.8, generator=[seeded(1), seeded(2)]).cube
    assert both.shape == (2, 6, 16, 16) and both.dtype == np.float32
    for i, seed in enumerate((1, 2)):
        alone = hsi_pipe(cubes[i], num_inference_steps=2, strength=0.8, generator=seeded(seed)).cube
        assert np.allclose(both[i], alone, atol=1e-5)


def test_hsi_callback_can_change_the_latents_and_the_bar_counts_tiles_times_steps(hsi_pipe, monkeypatch):
    cube = torch.rand(6, 24, 16)
    bars = count_progress(hsi_pipe, monkeypatch)
    steps = []

    def record(pipe, step, timestep, tensors):
        steps.append(step)
        assert set(tensors) == {"latents", "condition"}

    arguments = dict(num_inference_steps=2, tile=16, overlap=4, generator=seeded(0), output_type="pt")
    plain = hsi_pipe(cube, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents", "condition"],
                     **arguments).cube
    assert steps == [0, 1, 0, 1]  # two tiles of two steps
    assert bars[-1].total == 4 and bars[-1].n == 4
    assert torch.equal(plain, hsi_pipe(cube, **arguments).cube)

    def zero_last(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 1 else {}

    changed = hsi_pipe(cube, callback_on_step_end=zero_last, callback_on_step_end_tensor_inputs=["latents"],
                       refine=False, **arguments).cube
    assert not torch.allclose(changed, hsi_pipe(cube, refine=False, **arguments).cube, atol=1e-4)


def test_hsi_output_type_latent_gives_the_denoised_latent(hsi_pipe):
    cube = torch.rand(6, 16, 16)
    latent = hsi_pipe(cube, num_inference_steps=2, generator=seeded(0), output_type="latent").cube
    assert latent.ndim == 5 and latent.shape[:2] == (1, hsi_pipe.autoencoder.config.latent_channels)
    no_refiner = hsi_pipe(cube, num_inference_steps=2, generator=seeded(0), output_type="pt", refine=False).cube
    # the pipeline's own output (without the refiner) is this latent decoded, back on the cube's scale
    offset, scale = normalisation(cube[None])
    with torch.no_grad():
        decoded = hsi_pipe.autoencoder.decode(latent, (6, 16, 16)) * scale + offset
    assert torch.allclose(decoded[0], no_refiner, atol=1e-5)
    with pytest.raises(ValueError, match="one tile"):
        hsi_pipe(torch.rand(6, 80, 16), output_type="latent")


@pytest.mark.parametrize("arguments, message", [
    ({"generator": [seeded(0), seeded(1)]}, "2 generators for 1 cubes"),
    ({"output_type": "pil"}, "output_type must be one of np, pt, latent"),
    ({"num_inference_steps": 1.5}, "num_inference_steps"),
    ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": ["noise"]}, "not offered"),
])
def test_hsi_bad_arguments_are_value_errors(hsi_pipe, arguments, message):
    with pytest.raises(ValueError, match=message):
        hsi_pipe(torch.rand(6, 16, 16), **arguments)

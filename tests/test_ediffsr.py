"""ediffsr groundwork: the EANet noise predictor with its CPEM prior, and the mean-reverting
SDE scheduler (exact posteriors: an oracle noise prediction recovers the image at any number
of steps, and a step lands on the right marginal)."""

import pytest
import torch

from earthsynth.generation.ediffsr import EANet, MeanRevertingScheduler, NAFBlock

TINY = {"width": 8, "encoder_blocks": (1, 1), "decoder_blocks": (1, 1), "middle_blocks": 1, "prior_width": 4,
        "prior_blocks": 1}


@pytest.mark.parametrize("bands, scale", [(3, 4), (6, 2), (1, 4)])
def test_eanet_predicts_noise_of_the_output_size_for_any_band_count(bands, scale):
    model = EANet(bands=bands, scale=scale, **TINY)
    low = torch.rand(2, bands, 8, 8) * 2 - 1
    sample = torch.randn(2, bands, 8 * scale, 8 * scale)
    out = model(sample, torch.tensor([3, 50]), low)
    assert out.shape == sample.shape and torch.isfinite(out).all()
    condition = model.condition(low)  # computed once per image in sampling
    assert torch.allclose(model(sample, torch.tensor([3, 50]), condition=condition), out)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, bands, 30, 30), torch.tensor([1]), condition=torch.randn(1, 2 * bands + 4, 30, 30))


def test_a_fresh_naf_block_is_the_identity_and_time_modulates_it():
    block = NAFBlock(8, time_dim=16)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x, torch.randn(2, 16)), x)
    with torch.no_grad():
        block.beta.fill_(1.0)
    assert not torch.allclose(block(x, torch.zeros(2, 16)), block(x, torch.ones(2, 16)))


def test_eanet_save_and_load_round_trip(tmp_path):
    model = EANet(bands=4, scale=2, **TINY)
    model.save_pretrained(tmp_path / "eanet")
    loaded = EANet.from_pretrained(tmp_path / "eanet")
    low, sample = torch.rand(1, 4, 8, 8), torch.randn(1, 4, 16, 16)
    assert torch.equal(model(sample, torch.tensor([7]), low), loaded(sample, torch.tensor([7]), low))


def oracle(scheduler, x0, mean):
    """What a perfect model would predict, given the true image: the residual or the noise."""
    def predict(sample, t):
        if scheduler.config.prediction_type == "sample":
            return x0 - mean
        alphabar = scheduler._alphabar(t, sample)
        return (sample - mean - alphabar.sqrt() * (x0 - mean)) / (
            scheduler.config.stationary_std * (1 - alphabar).sqrt())
    return predict


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("steps", [1, 5, 20, 100])
def test_exact_posterior_steps_recover_the_image_with_an_oracle(steps, prediction_type):
    torch.manual_seed(0)
    scheduler = MeanRevertingScheduler(num_train_timesteps=100, stationary_std=0.3, prediction_type=prediction_type)
    x0 = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    mean = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)  # a blurry guess of it
    predict = oracle(scheduler, x0, mean)
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == steps and scheduler.timesteps[0] == 99
    assert scheduler.timesteps[-1] == (0 if steps > 1 else 99)
    sample = scheduler.start(mean, torch.Generator().manual_seed(1))
    for t in scheduler.timesteps:
        sample = scheduler.step(predict(sample, t), t, sample, mean, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.allclose(sample, x0, atol=1e-4)


def test_marginals_revert_to_the_mean_and_a_step_lands_on_the_next_marginal():
    scheduler = MeanRevertingScheduler(num_train_timesteps=100, stationary_std=0.5, clip_sample=False,
                                       prediction_type="epsilon")
    x0 = torch.full((20000, 1, 1, 1), 0.8)
    mean = torch.full_like(x0, -0.2)
    generator = torch.Generator().manual_seed(0)
    last = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), torch.tensor([99]), mean)
    assert abs(last.mean() - (-0.2)) < 0.02 and abs(last.std() - 0.5) < 0.02  # reverted: mu + lambda * eps

    scheduler.set_timesteps(10)
    t, s = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), torch.tensor([t]), mean)
    x_s = scheduler.step(oracle(scheduler, x0, mean)(x_t, t), t, x_t, mean, generator=generator).prev_sample
    alphabar_s = float(scheduler.alphabar[s])
    expected_mean = -0.2 + alphabar_s ** 0.5 * 1.0
    expected_std = 0.5 * (1 - alphabar_s) ** 0.5
    assert abs(float(x_s.mean()) - expected_mean) < 0.01
    assert abs(float(x_s.std()) - expected_std) < 0.01


def test_bad_step_counts_and_prediction_types_are_refused():
    with pytest.raises(ValueError, match="epsilon or sample"):
        MeanRevertingScheduler(prediction_type="v_prediction")
    scheduler = MeanRevertingScheduler(num_train_timesteps=50)
    for steps in (0, 51):
        with pytest.raises(ValueError, match="1..50"):
            scheduler.set_timesteps(steps)


def tiny_pipeline(bands=3, scale=4, regressor=False):
    from earthsynth.generation.ediffsr import EDiffSRPipeline

    torch.manual_seed(0)
    pipe = EDiffSRPipeline(eanet=EANet(bands=bands, scale=scale, **TINY),
                           scheduler=MeanRevertingScheduler(num_train_timesteps=20), regressor=regressor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tiles_are_blended_back_into_the_whole_image(monkeypatch):
    pipe = tiny_pipeline()
    # a purely local upscaler: tiling must then give exactly the whole-image result
    monkeypatch.setattr(pipe, "upscale_tile", lambda low, *args: low.repeat_interleave(4, -1)
                        .repeat_interleave(4, -2))
    low = torch.rand(3, 37, 53)
    tiled = pipe(low, tile=16, overlap=4).images
    whole = low.repeat_interleave(4, -1).repeat_interleave(4, -2)[None]
    assert tiled.shape == (1, 3, 148, 212)
    assert torch.allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize("bands, scale, regressor", [(3, 4, False), (5, 2, False), (3, 4, True)])
def test_pipeline_outputs_the_upscaled_size_reproducibly(bands, scale, regressor):
    pipe = tiny_pipeline(bands, scale, regressor)
    low = torch.rand(2, bands, 12, 20)
    a = pipe(low, num_inference_steps=3, generator=torch.Generator().manual_seed(1), tile=8, overlap=2).images
    b = pipe(low, num_inference_steps=3, generator=torch.Generator().manual_seed(1), tile=8, overlap=2).images
    assert a.shape == (2, bands, 12 * scale, 20 * scale) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    array = pipe(low[0].numpy(), num_inference_steps=2, output_type="np").images
    assert array.shape == (1, 12 * scale, 20 * scale, bands)


def test_pipeline_rejects_bad_inputs():
    pipe = tiny_pipeline()
    for image, kwargs, words in [
        (torch.rand(4, 16, 16), {}, "takes 3 bands"),
        (torch.rand(3, 3, 16), {}, "smaller than"),
        (torch.full((3, 16, 16), float("nan")), {}, "NaN"),
        (torch.rand(3, 16, 16), {"scale": 2}, "upscales x4, not x2"),
        (torch.rand(3, 16, 16), {"tile": 6}, "multiple of 4"),
        (torch.rand(3, 16, 16), {"num_inference_steps": 0}, ">= 1"),
    ]:
        with pytest.raises(ValueError, match=words):
            pipe(image, **kwargs)


def test_training_through_the_shared_loop_exports_a_loadable_pipeline(tmp_path):
    from earthsynth.config import load_config
    from earthsynth.errors import InputError
    from earthsynth.generation.ediffsr import EDiffSRPipeline
    from earthsynth.generation.ediffsr.train import FAMILY, degrade
    from earthsynth.training.loop import train

    high = torch.rand(2, 3, 32, 32)
    assert degrade(high, 4, "bicubic").shape == (2, 3, 8, 8)
    assert degrade(high, 2, "blur_noise_jpeg", torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    # mixed: each image bicubic or blur + noise + JPEG, both kinds in a large enough batch
    many = torch.rand(16, 3, 32, 32)
    bicubic = degrade(many, 4, "bicubic")
    mixed = degrade(many, 4, "mixed", torch.Generator().manual_seed(0))
    same = [torch.equal(m, b) for m, b in zip(mixed, bicubic)]
    assert mixed.shape == bicubic.shape and any(same) and not all(same)
    config = load_config(tree={
        "family": "ediffsr", "output_dir": str(tmp_path / "run"),
        "model": {**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}, "diffusion_steps": 20,
                  "preview_steps": 2, "degradation": "blur_noise_jpeg"},
        "data": {"tile_size": 32, "gsd_factors": [4]},
        "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100, "preview_every": 2}})
    result = train(config, show_progress=False)
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result["losses"])
    pipe = EDiffSRPipeline.from_pretrained(result["final_dir"])
    assert isinstance(pipe.scheduler, MeanRevertingScheduler) and pipe.eanet.config.scale == 4
    assert pipe(torch.rand(3, 8, 8), num_inference_steps=2).images.shape == (1, 3, 32, 32)
    # fine-tuning starts from the export's EANet; a model of another scale is refused
    config.model.init_from = result["final_dir"]
    config.model.degradation = "mixed"
    config.model.width = 64  # the loaded EANet's width (8) wins, and the config records it
    eanet = FAMILY.build(config)["eanet"]
    assert config.model.width == 8
    assert all(torch.equal(a, b) for a, b in zip(eanet.state_dict().values(), pipe.eanet.state_dict().values()))
    config.model.scale = 2
    with pytest.raises(InputError, match="x4, the config asks for 3 bands at x2"):
        FAMILY.build(config)


def test_the_plain_ddim_option_recovers_the_image_with_an_oracle():
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline()
    pipe.scheduler = DDIMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                   clip_sample=False)
    truth = torch.rand(1, 3, 32, 32)
    low = torch.nn.functional.interpolate(truth, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)

    def perfect(sample, timesteps, low_resolution=None, condition=None):
        return truth * 2 - 1 - condition[:, :3]  # the true residual to the bicubic upsampling

    pipe.eanet.forward = perfect
    out = pipe(low, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(out, truth, atol=1e-5)


def test_a_ddpm_schedule_trains_and_exports_with_ddim_sampling(tmp_path):
    from diffusers import DDIMScheduler

    from earthsynth.config import load_config
    from earthsynth.generation.ediffsr import EDiffSRPipeline
    from earthsynth.training.loop import train

    config = load_config(tree={
        "family": "ediffsr", "output_dir": str(tmp_path / "run"),
        "model": {**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}, "diffusion_steps": 20,
                  "schedule": "ddpm"},
        "data": {"tile_size": 32, "gsd_factors": [4]},
        "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100}})
    pipe = EDiffSRPipeline.from_pretrained(train(config, show_progress=False)["final_dir"])
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe(torch.rand(3, 8, 8), num_inference_steps=2).images.shape == (1, 3, 32, 32)

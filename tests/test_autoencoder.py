"""The autoencoder family: the VAE of the latent RGB families."""

import json

import pytest
import torch

from earthsynth.config import load_config
from earthsynth.data.sources import deepforest_images, in_domain_test_rows
from earthsynth.data.tiles import RealTiles
from earthsynth.errors import InputError
from earthsynth.generation.autoencoder import (
    PatchDiscriminator,
    build_autoencoder,
    load_autoencoder,
)
from earthsynth.generation.autoencoder.train import (
    adversarial_loss,
    latent_statistics,
    scaling_tiles,
)
from earthsynth.image_metrics import ssim, ssim_index
from earthsynth.training.loop import train

TINY = {
    "family": "autoencoder",
    "output_dir": "unused",
    "model": {"block_out_channels": [8, 16], "layers_per_block": 1, "scaling_tiles": 4},
    "data": {"sources": ["deepforest"], "tile_size": 32, "gsd_factors": [8], "exclude_test_area": True},
    "train": {"max_steps": 2, "batch_size": 2, "learning_rate": 1.0e-3, "checkpoint_every": 2, "log_every": 1},
}


def test_trains_and_exports_a_vae_with_its_latent_scale(tmp_path):
    config = load_config(tree=TINY, overrides=[f"output_dir={tmp_path / 'run'}"])
    train(config)
    folder = tmp_path / "run" / "final"
    vae = load_autoencoder(folder)
    stored = json.loads((folder / "config.json").read_text())
    assert vae.config.block_out_channels == [8, 16]  # f = 2 for the tiny one
    shift, scale = latent_statistics(vae, scaling_tiles(config))
    assert stored["scaling_factor"] == pytest.approx(scale, rel=1e-5)
    assert stored["shift_factor"] == pytest.approx(shift, rel=1e-5, abs=1e-6)
    # the stored scale and shift bring the training tiles' latents to zero mean, unit variance
    images = torch.stack([s["image"] for s in scaling_tiles(config)]) * 2 - 1
    with torch.no_grad():
        latents = (vae.encode(images).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
    assert float(latents.mean()) == pytest.approx(0, abs=1e-4)
    assert float(latents.std()) == pytest.approx(1, rel=1e-3)


def test_discriminator_run_trains_both_players(tmp_path):
    config = load_config(tree=TINY, overrides=[f"output_dir={tmp_path / 'run'}", "model.discriminator_weight=0.1",
                                               "model.discriminator_width=8"])
    train(config)
    assert (tmp_path / "run" / "final" / "diffusion_pytorch_model.safetensors").exists()


def test_adversarial_terms_move_only_their_own_player():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(width=8)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstruction = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    frozen = {name: p.detach() for name, p in discriminator.named_parameters()}
    # the VAE's term alone: the reconstruction gets a gradient, the discriminator none
    from torch.func import functional_call
    (-functional_call(discriminator, frozen, (reconstruction,)).mean()).backward()
    assert reconstruction.grad.abs().sum() > 0
    assert all(p.grad is None for p in discriminator.parameters())
    # the sum: the discriminator's gradient is that of its hinge terms alone
    reconstruction.grad = None
    adversarial_loss(discriminator, reconstruction, images).backward()
    combined = [p.grad.clone() for p in discriminator.parameters()]
    discriminator.zero_grad()
    (torch.relu(1 - discriminator(images)).mean() + torch.relu(1 + discriminator(reconstruction.detach())).mean()).backward()
    for got, want in zip(combined, (p.grad for p in discriminator.parameters())):
        torch.testing.assert_close(got, want)


def test_downsampling_factor_follows_the_blocks():
    vae = build_autoencoder([8, 16, 16], layers_per_block=1)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert latents.shape == (1, 4, 16, 16)


def test_load_refuses_pickles_and_other_models(tmp_path):
    vae = build_autoencoder([8, 16], layers_per_block=1)
    vae.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(InputError, match="safetensors"):
        load_autoencoder(tmp_path / "pickled")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="not an AutoencoderKL"):
        load_autoencoder(tmp_path / "other")
    with pytest.raises(InputError, match="no VAE here"):
        load_autoencoder(tmp_path)
    # a Stable Diffusion folder's vae/ is found
    vae.save_pretrained(tmp_path / "sd" / "vae")
    assert load_autoencoder(tmp_path / "sd").config.block_out_channels == [8, 16]


def test_excluding_the_test_area_keeps_training_tiles_above_its_buffer():
    yell = [image for image in deepforest_images() if image.image_id.startswith("2019_YELL")]
    assert len(yell) == 2
    for image in yell:
        buffer_start, test_start = in_domain_test_rows(image)
        assert test_start == image.header.height - round(image.header.height / 4)
        assert test_start - buffer_start == 256
    assert in_domain_test_rows(next(i for i in deepforest_images() if i.image_id == "SOAP_061")) is None
    kept = RealTiles("train", tile_size=64, gsd_factors=[1, 2], exclude_test_area=True)
    everything = RealTiles("train", tile_size=64, gsd_factors=[1, 2])
    limits = {image.image_id: in_domain_test_rows(image)[0] for image in yell}
    assert all(tile.window[3] <= limits[tile.source.image_id] for tile in kept.tiles)
    assert any(tile.window[3] > limits[tile.source.image_id] for tile in everything.tiles)
    assert len(kept) < len(everything)


def test_ssim_index_is_the_reported_ssim():
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    assert float(ssim_index(a.double(), b.double()).mean()) == pytest.approx(ssim(a, b))


@pytest.mark.parametrize("family", ["text2earth", "crsdiff", "aerogen", "ediffsr", "smoke", "classifier", "detector"])
def test_every_family_that_reads_the_bundled_tiles_honours_exclude_test_area(family, monkeypatch):
    """`data.exclude_test_area` is a shared data setting: a family that built its RealTiles
    without it would train on the in-domain test area while its config says it did not."""
    from earthsynth.registry import get_family

    seen = []
    original = RealTiles.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("exclude_test_area", False))
        original(self, *args, **kwargs)

    monkeypatch.setattr(RealTiles, "__init__", spy)
    tree = {"family": family, "output_dir": "unused",
            "data": {"tile_size": 64, "gsd_factors": [2], "exclude_test_area": True}}
    if family == "crsdiff":
        tree["model"] = {"balance_gsd": False}
    get_family(family).dataset(load_config(tree=tree))
    assert seen and all(seen)

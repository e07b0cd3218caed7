"""Latent mode of text2earth and crsdiff: a VAE component, Stable Diffusion as the starting
point (exact at step 0), the latent cache, tiled decoding and latent inpainting."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from earthsynth.config import load_config
from earthsynth.errors import InputError
from earthsynth.generation.autoencoder import build_autoencoder
from earthsynth.generation.latents import LatentCache, decode, encode, image_key
from earthsynth.generation.metadata_unet import MetadataUNet
from earthsynth.generation.stable_diffusion import choose_trained_parts
from earthsynth.generation.text2earth import Text2EarthPipeline
from earthsynth.image_metrics import seam_score
from earthsynth.registry import get_family
from earthsynth.training.loop import enable_gradient_checkpointing, train
from tests_support import write_tiny_stable_diffusion


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return write_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd")


def test_stable_diffusion_unet_is_exact_at_step_zero(sd_folder):
    sd = UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    ours = MetadataUNet.from_stable_diffusion(sd_folder, ("gsd",)).eval()
    torch.manual_seed(1)
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    gsd = torch.tensor([[0.1], [float("nan")]])
    with torch.no_grad():
        want = sd(sample, 10, encoder_hidden_states=text).sample
        got = ours(sample, 10, text, torch.ones(2, 7, dtype=torch.bool), gsd)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and the metadata embedding does learn: its last layers get gradients at once
    ours.train()
    ours(sample, 10, text, torch.ones(2, 7, dtype=torch.bool), gsd).square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.scalar_embedding.parameters())


def test_stable_diffusion_folder_checks(tmp_path, sd_folder):
    with pytest.raises(InputError, match="model.train_parts: must be one of all, added, attention"):
        choose_trained_parts(MetadataUNet.from_stable_diffusion(sd_folder, ("gsd",)), "bogus")
    with pytest.raises(InputError, match="no unet/config.json"):
        MetadataUNet.from_stable_diffusion(tmp_path, ("gsd",))
    pickled = tmp_path / "pickled"
    UNet2DConditionModel.from_pretrained(sd_folder / "unet").save_pretrained(pickled / "unet", safe_serialization=False)
    with pytest.raises(InputError, match="safetensors"):
        MetadataUNet.from_stable_diffusion(pickled, ("gsd",))


def sd_run(tmp_path, sd_folder, *overrides):
    return load_config("configs/text2earth.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.pretrained={sd_folder}", "model.max_text_tokens=16",
        "model.preview_steps=2", "data.tile_size=32", "data.gsd_factors=[8]", "data.sources=[deepforest]",
        "model.balance_gsd=false", "train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2",
        "train.log_every=1", *overrides])


def test_text2earth_trains_from_stable_diffusion_in_latent_space(tmp_path, sd_folder):
    config = sd_run(tmp_path, sd_folder, "model.train_parts=attention")
    components = get_family("text2earth").build(config)
    trained = {name for name, p in components["unet"].named_parameters() if p.requires_grad}
    assert trained and all(name.startswith("scalar_embedding.") or "attn" in name or ".attentions." in name
                           for name in trained)
    assert not any(p.requires_grad for p in components["vae"].parameters())
    train(config)
    pipe = Text2EarthPipeline.from_pretrained(tmp_path / "run" / "final")
    assert pipe.vae is not None and pipe.vae_scale_factor == 2
    generator = torch.Generator().manual_seed(0)
    out = pipe("a forest", gsd=0.8, height=32, width=32, num_inference_steps=2, output_type="np",
               generator=generator).images
    assert out.shape == (1, 32, 32, 3)
    latents = pipe("a forest", gsd=0.8, height=32, width=32, num_inference_steps=2, output_type="latent").images
    assert latents.shape == (1, 4, 16, 16)


def test_crsdiff_trains_in_latent_space_with_maps_at_image_resolution(tmp_path, sd_folder):
    config = load_config("configs/crsdiff.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.vae={sd_folder}", "model.block_out_channels=[16,32]",
        "model.attention_levels=1", "model.attention_head_dim=8", "model.adapter_hidden=8",
        "model.preview_steps=2", "data.tile_size=32", "data.gsd_factors=[8]", "model.balance_gsd=false",
        "train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2", "train.log_every=1"])
    components = get_family("crsdiff").build(config)
    assert components["unet"].config.in_channels == 4 and components["unet"].config.sample_size == 16
    train(config)
    assert (tmp_path / "run" / "final" / "vae" / "config.json").exists()


def test_latent_cache_is_reused_and_recomputed_when_the_vae_or_data_change(tmp_path):
    torch.manual_seed(0)
    vae = build_autoencoder([8, 16], layers_per_block=1).eval()
    images = [torch.rand(3, 32, 32) for _ in range(3)]
    cache = LatentCache(vae, tmp_path)
    assert cache.fill(images) == 3
    again = LatentCache(vae, tmp_path)  # a resumed run: read back, nothing encoded
    assert again.fill(images) == 0
    torch.testing.assert_close(again.entries[image_key(images[0])], cache.entries[image_key(images[0])])
    changed = images[0].clone()
    changed[:, 0, 0] = 1 - changed[:, 0, 0]  # another source pixel: encoded anew
    assert again.fill([changed]) == 1
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.1)  # decoder-only change: latents equal, still another VAE
    assert LatentCache(vae, tmp_path).fill(images) == 3
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # cached means are the encoder's, scaled
    torch.testing.assert_close(cache.entries[image_key(images[1])][0],
                               encode(vae, images[1][None] * 2 - 1)[0])


def test_tiled_decode_has_no_seams(tmp_path):
    torch.manual_seed(0)
    vae = build_autoencoder([8, 16, 16], layers_per_block=1).eval()
    scene = torch.rand(1, 3, 128, 128) * 2 - 1
    latents = encode(vae, scene)  # 32 x 32
    whole = decode(vae, latents)
    tiled = decode(vae, latents, tile=16, overlap=4)
    assert tiled.shape == whole.shape == (1, 3, 128, 128)
    image = tiled[0].permute(1, 2, 0).numpy()
    seams = [64, 80]  # where tiles of 16 latent pixels (64 image pixels) with 4 of overlap meet
    assert seam_score(image, seams, seams) < 1.3 * seam_score(whole[0].permute(1, 2, 0).numpy(), seams, seams)
    # (not equal to the whole: the decoder's GroupNorm takes its statistics per tile)


def test_latent_inpainting_keeps_the_known_pixels(tmp_path, sd_folder):
    config = sd_run(tmp_path, sd_folder)
    components = get_family("text2earth").build(config)
    from earthsynth.generation.text2earth.train import make_pipeline

    pipe = make_pipeline(components)
    known = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    out = pipe.inpaint("a forest", image=known, mask_image=mask, gsd=0.8, num_inference_steps=2,
                       output_type="np").images[0]
    outside = mask == 0
    np.testing.assert_allclose(out[outside], known[outside], atol=1e-6)


def test_image_larger_than_trained_is_a_tiled_scene_by_default(tmp_path, sd_folder):
    config = sd_run(tmp_path, sd_folder)
    components = get_family("text2earth").build(config)
    from earthsynth.generation.text2earth.train import make_pipeline

    pipe = make_pipeline(components)
    assert pipe.trained_size == 32
    kwargs = {"gsd": 0.8, "height": 64, "width": 64, "num_inference_steps": 2, "output_type": "np"}
    default = pipe("a forest", generator=torch.Generator().manual_seed(0), **kwargs).images
    tiled = pipe("a forest", generator=torch.Generator().manual_seed(0), tile=32, **kwargs).images
    np.testing.assert_array_equal(default, tiled)


def test_aerogen_trains_in_latent_space_with_the_layout_on_the_latent_grid(tmp_path, sd_folder):
    config = load_config("configs/aerogen.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.vae={sd_folder}", "model.block_out_channels=[16,32]",
        "model.attention_levels=1", "model.attention_head_dim=8", "model.preview_steps=2", "data.tile_size=32",
        "data.overlap=8", "data.gsd_factors=[8]", "train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2",
        "train.log_every=1"])
    train(config)
    from earthsynth.generation.aerogen import AeroGenPipeline

    pipe = AeroGenPipeline.from_pretrained(tmp_path / "run" / "final")
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 16
    out = pipe("trees", boxes=[[4, 4, 20, 20]], labels=["Tree"], height=32, width=32, num_inference_steps=2,
               output_type="np").images
    assert out.shape == (1, 32, 32, 3)
    latents = pipe("trees", boxes=[[4, 4, 20, 20]], labels=["Tree"], height=32, width=32,
                   num_inference_steps=2, output_type="latent").images
    assert latents.shape == (1, 4, 16, 16)


def test_train_parts_without_a_pretrained_folder_is_refused(tmp_path):
    config = load_config("configs/text2earth.yaml", [f"output_dir={tmp_path / 'run'}", "model.train_parts=added"])
    with pytest.raises(InputError, match="model.train_parts: 'added' needs model.pretrained"):
        get_family("text2earth").build(config)


def test_gradient_checkpointing_gives_the_same_training(tmp_path, sd_folder):
    """The switch trades memory for compute only: the same losses step for step."""
    losses = []
    for switch in ("false", "true"):
        config = sd_run(tmp_path / switch, sd_folder, f"train.gradient_checkpointing={switch}", "train.max_steps=3")
        losses.append([loss for _, loss in train(config, show_progress=False)["losses"]])
    assert len(losses[0]) == 3
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    components = get_family("text2earth").build(config)  # and the switch did reach the UNet
    enable_gradient_checkpointing(torch.nn.ModuleDict({"unet": components["unet"]}), "text2earth")
    assert components["unet"].unet.is_gradient_checkpointing


def test_gradient_checkpointing_is_refused_where_no_module_has_it(tmp_path):
    config = load_config("configs/classifier.yaml", [f"output_dir={tmp_path / 'run'}",
                                                     "train.gradient_checkpointing=true", "train.max_steps=1"])
    with pytest.raises(InputError, match="train.gradient_checkpointing: the classifier family has no module"):
        train(config, show_progress=False)


def test_vae_bundled_names_the_shipped_autoencoder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import earthsynth.jobs.load
    from earthsynth.generation.latents import load_family_vae

    def missing(name):
        raise ValueError(f"the bundled model {name!r} is missing from this installation")

    monkeypatch.setattr(earthsynth.jobs.load, "bundled_model", missing)
    with pytest.raises(InputError, match="assets/autoencoder: .*train it with `earthsynth train configs/autoencoder"):
        load_family_vae(SimpleNamespace(vae="bundled"))
    build_autoencoder([8, 16], layers_per_block=1).save_pretrained(tmp_path / "autoencoder")
    monkeypatch.setattr(earthsynth.jobs.load, "bundled_model", lambda name: tmp_path / name)
    vae = load_family_vae(SimpleNamespace(vae="bundled"))
    assert vae.config.block_out_channels == [8, 16] and not any(p.requires_grad for p in vae.parameters())


def test_aerogen_from_stable_diffusion_is_exact_at_step_zero_and_trains(tmp_path, sd_folder):
    from earthsynth.generation.aerogen.model import AeroGenUNet

    sd = UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    ours = AeroGenUNet.from_stable_diffusion(sd_folder, layout_dim=32).eval()
    torch.manual_seed(2)
    sample, text = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    corners = torch.tensor([[0.1, 0.1], [0.6, 0.1], [0.6, 0.5], [0.1, 0.5]]).expand(2, 3, 4, 2).clone()
    valid = torch.tensor([[True, True, False], [True, False, False]])
    layout_tokens = torch.randn(2, 4, 32)
    with torch.no_grad():
        want = sd(sample, 10, encoder_hidden_states=text).sample
        got = ours(sample, 10, text, torch.ones(2, 7, dtype=torch.bool), layout_tokens, corners, valid)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the layout values and the canvas channels learn at once (their gradients are not zero)
    ours.train()
    ours(sample, 10, text, torch.ones(2, 7, dtype=torch.bool), layout_tokens, corners, valid).square().mean().backward()
    grads = {name: p.grad for name, p in ours.named_parameters() if "to_v_layout" in name}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert ours.unet.conv_in.weight.grad[:, 4:].abs().sum() > 0

    config = load_config("configs/aerogen.yaml", [
        f"output_dir={tmp_path / 'run'}", f"model.pretrained={sd_folder}", "model.train_parts=added",
        "model.max_text_tokens=16", "model.preview_steps=2", "data.tile_size=32", "data.overlap=8",
        "data.gsd_factors=[8]", "train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2",
        "train.log_every=1"])
    components = get_family("aerogen").build(config)
    trained = {name for name, p in components["unet"].named_parameters() if p.requires_grad}
    assert trained and all("_layout." in name or name.startswith("unet.conv_in.") for name in trained)
    assert components["text"].dim == 32  # SD's CLIP, not the bundled MiniLM
    train(config)
    from earthsynth.generation.aerogen import AeroGenPipeline

    pipe = AeroGenPipeline.from_pretrained(tmp_path / "run" / "final")
    out = pipe("trees", boxes=[[4, 4, 20, 20]], labels=["Tree"], height=32, width=32, num_inference_steps=2,
               output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_clip_conditioning_is_stable_diffusions(sd_folder):
    """From an SD folder the text reaches the UNet as StableDiffusionPipeline gives it: all 77
    positions, padding states computed without a mask and attended to."""
    from diffusers import StableDiffusionPipeline

    from earthsynth.conditioning import TextConditioner

    sd = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    want, _ = sd.encode_prompt(["a forest", "two trees on grass"], "cpu", 1, False)
    text = TextConditioner.from_pretrained(str(sd_folder)).encode(["a forest", "two trees on grass"], max_length=77)
    assert text.mask.all() and text.tokens.shape == want.shape == (2, 77, 32)
    torch.testing.assert_close(text.tokens, want, atol=1e-5, rtol=0)

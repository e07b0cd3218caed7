"""AeroGenPipeline.inpaint: the kept pixels exactly as given, no visible seam at the mask's
border (bundled model, pixel mode), latent mode with a tiny VAE, diffusers' batching and the
one-line checks of the image and mask. Tiny random models built in code besides."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from earthsynth.boxes import Boxes
from earthsynth.conditioning import LayoutEncoder, TextConditioner
from earthsynth.config import load_config
from earthsynth.generation.aerogen import AeroGenPipeline
from earthsynth.generation.aerogen.train import build_unet
from earthsynth.generation.autoencoder import build_autoencoder
from earthsynth.image_metrics import seam_score
from earthsynth.training.objective import make_noise_scheduler

TINY = {
    "family": "aerogen",
    "model": {"block_out_channels": [8, 16], "attention_levels": 1, "attention_head_dim": 4, "max_objects": 4},
    "data": {"tile_size": 16},
}
PROMPT = "aerial orthophoto of trees"
BOXES, LABELS = [[2, 2, 9, 12], [8, 6, 14, 13]], ["Tree", "Tree"]


@pytest.fixture(scope="module")
def text():
    return TextConditioner.from_pretrained(None)  # the bundled MiniLM


def tiny_pipeline(text, vae=None) -> AeroGenPipeline:
    """A random aerogen pipeline as the family builds it (train.build without its dataset)."""
    torch.manual_seed(0)
    config = load_config(tree=TINY)
    f = 1 if vae is None else 2
    unet = build_unet(config.model, text.dim, 16 // f, 3 if vae is None else vae.config.latent_channels)
    layouts = LayoutEncoder(max_objects=4, class_embed_dim=text.dim, out_dim=text.dim,
                            num_frequencies=config.model.layout_frequencies)
    scheduler = DPMSolverMultistepScheduler.from_config(make_noise_scheduler(config.objective).config)
    pipe = AeroGenPipeline(unet=unet, layout_encoder=layouts, scheduler=scheduler, vae=vae)
    pipe.set_text_conditioner(text)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(text):
    return tiny_pipeline(text)


def known_and_mask(size=16, seed=0):
    known = np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    mask[5:14, 7:15] = 255  # off the latent grid on purpose
    return known, mask


def inpaint(pipe, image, mask, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 2, "output_type": "np", **kwargs}
    return pipe.inpaint(PROMPT, BOXES, LABELS, image=image, mask_image=mask,
                        generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_bundled_model_keeps_the_real_pixels_and_leaves_no_seam():
    """Real tiles with a 16 px band masked and a new tree in it: outside the band the pixels
    are the tile's to the bit; the step across the band's borders is no larger than a real
    tile's (a hard paste of generated pixels scored 1.66 against 0.98 when this was written)."""
    from earthsynth.data.tiles import RealTiles
    from earthsynth.jobs.load import load_pipeline

    bundled = load_pipeline("aerogen", None, "cpu")
    tiles = [t for t in RealTiles("indomain-train", tile_size=64, gsd_factors=(2,)).tiles if 1 <= len(t.boxes) < 10][:3]
    x0, x1 = 24, 40
    mask = np.zeros((64, 64), np.uint8)
    mask[:, x0:x1] = 1
    boxes = [t.boxes.concat(Boxes.from_xyxy(np.array([[x0 + 3, 20, x1 - 3, 34]]), ["Tree"])) for t in tiles]
    out = bundled.inpaint(["NEON airborne RGB orthophoto, 0.2 m/px, trees"] * len(tiles), boxes, None,
                          image=[t.pixels for t in tiles], mask_image=mask, num_inference_steps=4,
                          generator=[torch.Generator().manual_seed(k) for k in range(len(tiles))],
                          output_type="np").images
    pixels = (out * 255).round().astype(np.uint8)
    kept = mask == 0
    for image, tile in zip(pixels, tiles):
        np.testing.assert_array_equal(image[kept], tile.pixels[kept])
        assert np.abs(image[~kept].astype(int) - tile.pixels[~kept]).mean() > 5  # the band was drawn again
    inpainted = np.mean([seam_score(image, [x0, x1], []) for image in pixels])
    untouched = np.mean([seam_score(tile.pixels, [x0, x1], []) for tile in tiles])
    assert inpainted < 1.25 * untouched, (inpainted, untouched)


def test_latent_mode_keeps_the_pixels_off_the_latent_grid(text):
    torch.manual_seed(1)
    latent = tiny_pipeline(text, build_autoencoder([8, 16], layers_per_block=1).eval())  # f = 2
    assert latent.vae_scale_factor == 2 and latent.inpaint_band == 3
    known, mask = known_and_mask()
    out = inpaint(latent, known, mask)[0]
    kept = mask == 0
    np.testing.assert_allclose(out[kept], known[kept], atol=1e-6)
    assert np.abs(out[~kept] - known[~kept]).mean() > 0.05
    latents = inpaint(latent, known, mask, output_type="latent")
    assert latents.shape == (1, 4, 8, 8)
    # on the grid, a latent pixel is kept only where all four of its pixels are
    _, grid_keep = latent.inpainting_grid(torch.zeros(1, 3, 16, 16), 1 - torch.from_numpy(mask > 0).float()[None, None])
    assert grid_keep[0, 0, 2, 2] == 1 and grid_keep[0, 0, 2, 3] == 0  # pixel row 5 of 4-5, column 7 of 6-7 masked
    assert grid_keep[0, 0, 6, 7] == 0 and grid_keep[0, 0, 7, 7] == 1  # pixel column 14 of 14-15 masked; rows 14-15 kept


def test_a_full_mask_is_plain_generation_and_an_empty_one_the_image(pipe):
    known, _ = known_and_mask()
    plain = pipe(PROMPT, BOXES, LABELS, height=16, width=16, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(inpaint(pipe, known, np.ones((16, 16))), plain)
    np.testing.assert_allclose(inpaint(pipe, known, np.zeros((16, 16)))[0], known, atol=1e-6)


def test_one_image_and_mask_per_prompt_as_diffusers_batches_them(pipe):
    (known_a, mask_a), (known_b, mask_b) = known_and_mask(seed=1), known_and_mask(seed=2)
    mask_b = mask_b.T.copy()
    batched = pipe.inpaint([PROMPT, "a forest"], [BOXES, BOXES[:1]], [LABELS, LABELS[:1]],
                           image=torch.from_numpy(np.stack([known_a, known_b])).permute(0, 3, 1, 2),
                           mask_image=[mask_a, mask_b], num_inference_steps=2, output_type="np",
                           generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    one = pipe.inpaint(PROMPT, BOXES, LABELS, image=known_a, mask_image=mask_a, num_inference_steps=2,
                       output_type="np", generator=[torch.Generator().manual_seed(5)]).images
    other = pipe.inpaint("a forest", BOXES[:1], LABELS[:1], image=known_b, mask_image=mask_b, num_inference_steps=2,
                         output_type="np", generator=[torch.Generator().manual_seed(6)]).images
    np.testing.assert_allclose(batched, np.concatenate([one, other]), atol=1e-5)
    twice = pipe.inpaint(PROMPT, BOXES, LABELS, image=known_a, mask_image=mask_a, num_images_per_prompt=2,
                         num_inference_steps=2, output_type="np",
                         generator=[torch.Generator().manual_seed(s) for s in (7, 8)]).images
    kept = mask_a == 0
    assert twice.shape == (2, 16, 16, 3) and np.allclose(twice[1][kept], known_a[kept], atol=1e-6)
    assert not np.allclose(twice[0], twice[1])


@pytest.mark.parametrize("change, words", [
    ({"mask": np.zeros((8, 8))}, "mask_image is 8x8, image is 16x16"),
    ({"mask": np.full((16, 16), np.nan)}, "finite"),
    ({"mask": -np.ones((16, 16))}, ">= 0"),
    ({"mask": None}, "needs both image and mask_image"),
    ({"image": [np.zeros((16, 16, 3))] * 3}, "3 images for 1 prompts"),
    ({"image": [np.zeros((16, 16, 3)), np.zeros((32, 32, 3))]}, "differ in size"),
    ({"image": np.full((16, 16, 3), 2.0)}, "in [0, 1]"),
    ({"image": np.zeros((15, 15, 3)), "mask": np.ones((15, 15))}, "multiples of 2, got 15x15"),
    ({"height": 32}, "height 32 differs from the image's 16"),
])
def test_bad_images_and_masks_are_one_line_value_errors(pipe, change, words):
    known, mask = known_and_mask()
    kwargs = {key: value for key, value in change.items() if key in ("height", "width")}
    with pytest.raises(ValueError) as err:
        inpaint(pipe, change.get("image", known), change.get("mask", mask), **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)

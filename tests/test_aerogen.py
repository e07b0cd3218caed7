"""aerogen: the layout-to-image model, its pipeline, training through the shared loop and
the save / load round trip. Tiny models built in code; the text encoder is the bundled
MiniLM (loaded once per module)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from earthsynth.boxes import Boxes
from earthsynth.config import load_config
from earthsynth.generation.aerogen import AeroGenPipeline
from earthsynth.generation.aerogen.model import (
    LayoutAttnProcessor,
    LayoutInputs,
    layout_canvas,
    pool_masks,
)
from earthsynth.generation.aerogen.pipeline import boxes_from_user
from earthsynth.generation.aerogen.train import build, make_pipeline
from earthsynth.training.loop import train

TINY = {
    "family": "aerogen",
    "model": {"block_out_channels": [8, 16], "attention_levels": 1, "attention_head_dim": 8, "max_objects": 8,
              "preview_steps": 2},
    "data": {"tile_size": 16, "gsd_factors": [8]},
    "train": {"max_steps": 2, "batch_size": 2, "checkpoint_every": 100, "log_every": 1, "seed": 0},
}


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    components = build(load_config(tree=TINY))
    pipeline = make_pipeline(components)
    # random weights give near-zero layout attention; make it count so layout effects are visible
    for module in components["unet"].modules():
        if isinstance(module, LayoutAttnProcessor):
            module.scale = 5.0
    return pipeline


def generate(pipe, boxes, labels=None, seed=0, **kwargs):
    kwargs = {"height": 16, "width": 16, "num_inference_steps": 2, "output_type": "pt", **kwargs}
    return pipe("aerial orthophoto of trees", boxes, labels, generator=torch.Generator().manual_seed(seed),
                **kwargs).images


def test_boxes_from_user_accepts_xyxy_rotated_and_corners():
    plain = boxes_from_user([[2, 2, 10, 6]], ["Tree"], "layout 0")
    assert not plain.rotated and np.allclose(plain.xyxy(), [[2, 2, 10, 6]])
    rotated = boxes_from_user([[8, 8, 6, 4, 30.0]], ["Tree"], "layout 0")
    assert rotated.rotated and np.allclose(rotated.rboxes, [[8, 8, 6, 4, 30.0]])
    corners = boxes_from_user([rotated.corners()[0]], ["Tree"], "layout 0")
    assert corners.rotated and np.allclose(corners.corners(), rotated.corners(), atol=1e-6)


@pytest.mark.parametrize("boxes, labels, words", [
    ([[2, 2, 10, 6]], None, "labels are missing"),
    ([[2, 2, 10, 6]], ["Tree", "Tree"], "1 boxes but 2 labels"),
    ([[10, 2, 2, 6]], ["Tree"], "x0 < x1"),
    ([[1, 2, 3]], ["Tree"], "shape"),
    ([[2, 2, float("nan"), 6, 0]], ["Tree"], "non-finite"),
])
def test_malformed_boxes_are_rejected(boxes, labels, words):
    with pytest.raises(ValueError, match=words):
        boxes_from_user(boxes, labels, "layout 0")


def test_check_inputs_rejects_bad_layouts_and_sizes(pipe):
    with pytest.raises(ValueError, match="outside the 16x16 image"):
        generate(pipe, [[10, 10, 30, 12]], ["Tree"])
    with pytest.raises(ValueError, match="more than this model's 8"):
        generate(pipe, [[0, 0, 2, 2]] * 9, ["Tree"] * 9)
    with pytest.raises(ValueError, match="zero or negative"):
        generate(pipe, [[8, 8, 0, 4, 0.0]], ["Tree"])
    with pytest.raises(ValueError, match="empty class name"):
        generate(pipe, [[2, 2, 6, 6]], [" "])
    with pytest.raises(ValueError, match="multiples of 2"):
        generate(pipe, [], [], height=15)
    with pytest.raises(ValueError, match="one box list"):
        pipe(["a", "b"], [[[2, 2, 6, 6]]], [["Tree"]], height=16, width=16)


def test_output_types_and_batch_independence(pipe):
    layout = Boxes.from_xyxy(np.array([[2.0, 2, 9, 9], [8, 6, 15, 14]]), ["Tree", "Tree"])
    single = generate(pipe, layout, seed=3)
    assert single.shape == (1, 3, 16, 16) and 0 <= single.min() and single.max() <= 1
    batch = pipe(["aerial orthophoto of trees"] * 2, [Boxes(), layout], None, height=16, width=16,
                 num_inference_steps=2, output_type="pt",
                 generator=[torch.Generator().manual_seed(7), torch.Generator().manual_seed(3)]).images
    # with one generator per image, an image does not depend on what else is in the batch
    assert torch.allclose(batch[1], single[0], atol=1e-4)
    pil = pipe("trees", layout, height=16, width=32, num_inference_steps=1).images
    assert pil[0].size == (32, 16)
    array = generate(pipe, layout, output_type="np")
    assert array.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="output_type"):
        generate(pipe, layout, output_type="jpeg")


def test_the_layout_changes_the_image_and_layout_guidance_runs(pipe):
    empty = generate(pipe, Boxes())
    boxed = generate(pipe, [[2, 2, 14, 14]], ["Tree"])
    assert (boxed - empty).abs().max() > 1e-3
    separate = generate(pipe, [[2, 2, 14, 14]], ["Tree"], layout_guidance_scale=3.0)
    assert separate.shape == boxed.shape and torch.isfinite(separate).all()


def test_the_scheduler_is_swappable(pipe):
    original = pipe.scheduler
    try:
        pipe.scheduler = DDIMScheduler.from_config(original.config)
        images = generate(pipe, [[2, 2, 8, 8]], ["Tree"], num_inference_steps=3)
        assert torch.isfinite(images).all()
    finally:
        pipe.scheduler = original


def test_pool_masks_keeps_small_objects_and_rejects_mismatched_sizes():
    masks = torch.zeros(1, 1, 16, 16)
    masks[0, 0, 5, 6] = 1  # one pixel
    pooled = pool_masks(masks, 16)  # a 4x4 attention layer
    assert pooled.shape == (1, 1, 16)
    assert pooled.sum() == 1 and pooled[0, 0, 1 * 4 + 1] == 1
    with pytest.raises(ValueError, match="cannot match"):
        pool_masks(masks, 15)


def test_layout_attention_only_reaches_pixels_inside_the_object(pipe):
    # a cross-attention layer of the tiny UNet: change one object's token and only the
    # positions its mask covers may change
    attention = next(m for name, m in pipe.unet.unet.named_modules() if name.endswith("attn2"))
    torch.manual_seed(0)
    dim = attention.to_q.in_features
    hidden = torch.randn(1, 16, dim)
    text = torch.randn(1, 3, attention.to_k.in_features)
    masks = torch.zeros(1, 2, 16, 16)
    masks[:, 0] = 1  # background
    masks[:, 1, :8, :8] = 1  # the object covers the top-left quarter
    tokens = torch.randn(1, 2, attention.processor.to_k_layout.in_features)
    other = tokens.clone()
    other[:, 1] = torch.randn_like(other[:, 1]) * 10
    with torch.no_grad():
        a = attention(hidden, text, layout=LayoutInputs(tokens, masks))
        b = attention(hidden, text, layout=LayoutInputs(other, masks))
    changed = (a - b).abs().amax(-1).reshape(4, 4) > 1e-6
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(changed, expected)


def test_layout_canvas_marks_occupancy_and_outlines():
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, 2:6, 2:6] = 1
    canvas = layout_canvas(masks)
    assert canvas.shape == (1, 2, 8, 8)
    assert canvas[0, 0, 3, 3] == 1 and canvas[0, 0, 0, 0] == -1
    assert canvas[0, 1, 2, 2] == 1 and canvas[0, 1, 3, 3] == -1  # edge vs inside


def test_train_export_and_from_pretrained_round_trip(tmp_path):
    config = load_config(tree={**TINY, "output_dir": str(tmp_path / "run")})
    result = train(config, show_progress=False)
    assert all(np.isfinite(loss) for _, loss in result["losses"])
    final = result["final_dir"]
    assert (final / "model_index.json").exists()
    loaded = AeroGenPipeline.from_pretrained(final)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    again = AeroGenPipeline.from_pretrained(final)
    again.set_progress_bar_config(disable=True)
    a = generate(loaded, [[2, 2, 9, 12]], ["Tree"], seed=5)
    b = generate(again, [[2, 2, 9, 12]], ["Tree"], seed=5)
    assert torch.equal(a, b)

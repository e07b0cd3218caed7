"""aerogen's pipeline as a diffusers user meets it: the call conventions of
StableDiffusionPipeline, the condition encoding shared with training, the attention switches
(which must keep the layout attention) and a pipeline import free of training code. Tiny
random models built in code; the text encoder is the bundled MiniLM."""

import subprocess
import sys

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from earthsynth.config import load_config
from earthsynth.generation.aerogen.model import LayoutAttnProcessor, SelfAttnProcessor
from earthsynth.generation.aerogen.pipeline import AeroGenPipelineOutput, boxes_from_user
from earthsynth.generation.aerogen.train import build, conditions, make_pipeline

TINY = {
    "family": "aerogen",
    "model": {"block_out_channels": [8, 16], "attention_levels": 1, "attention_head_dim": 4, "max_objects": 4},
    "data": {"tile_size": 16},
}
PROMPT = "aerial orthophoto of trees"
BOXES, LABELS = [[2, 2, 9, 12]], ["Tree"]
MOVED = [[7, 4, 14, 14]]


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    components = build(load_config(tree=TINY))
    # random weights give near-zero layout attention; make it count so layout effects are visible
    for module in components["unet"].modules():
        if isinstance(module, LayoutAttnProcessor):
            module.scale = 5.0
    return components


@pytest.fixture()
def pipe(components):
    pipeline = make_pipeline(components)  # a fresh pipeline per test, same weights
    yield pipeline
    pipeline.unet.set_default_attn_processor()  # undo a switch a test made (SDPA, as built)


def generate(pipe, prompt=PROMPT, boxes=BOXES, labels=LABELS, seed=0, **kwargs):
    kwargs = {"height": 16, "width": 16, "num_inference_steps": 2, "output_type": "pt", **kwargs}
    return pipe(prompt, boxes, labels, generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_importing_the_pipeline_loads_no_training_code():
    code = ("import sys, earthsynth.generation.aerogen.pipeline, earthsynth.generation.aerogen; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    training = [name for name in loaded if name.startswith("earthsynth.training") or name.endswith(".train")
                or name == "earthsynth.data.tiles"]
    assert training == []


def test_training_and_the_pipeline_encode_the_same_conditions(pipe, components):
    # one batch, three drop patterns (nothing dropped, layout dropped, both dropped) = the
    # pipeline's three guidance passes (all, text only, none), in the same order
    layouts = pipe.normalise_inputs([PROMPT, "a forest"], [BOXES, MOVED], [LABELS, ["Tree"]])[1]
    text, mask, negative, negative_mask = pipe.encode_prompt([PROMPT, "a forest"], "cpu", 1, True)
    stacked = pipe.guidance_inputs(["all", "text", "none"], text, negative, mask, negative_mask, layouts, 16, 16)
    drops = {"text": torch.tensor([False, False, False, False, True, True]),
             "layout": torch.tensor([False, False, True, True, True, True])}
    trained = conditions(components, layouts * 3, [PROMPT, "a forest"] * 3, drops, 16, 16)
    names = ["text_tokens", "text_mask", "layout_tokens", "corners", "valid"]
    for name, tensor in zip(names, stacked):
        assert torch.equal(trained[name], tensor), name
    assert trained["valid"][:2].any() and not trained["valid"][2:].any()


def test_num_images_per_prompt_equals_the_prompt_given_twice(pipe):
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    twice = pipe(PROMPT, BOXES, LABELS, height=16, width=16, num_inference_steps=2, output_type="pt",
                 num_images_per_prompt=2, generator=generators)
    generators = [torch.Generator().manual_seed(s) for s in (3, 4)]
    repeated = pipe([PROMPT, PROMPT], [BOXES, BOXES], [LABELS, LABELS], height=16, width=16, num_inference_steps=2,
                    output_type="pt", generator=generators)
    assert twice.images.shape == (2, 3, 16, 16) and len(twice.layouts) == 2
    assert torch.allclose(twice.images, repeated.images, atol=1e-6)
    assert not torch.allclose(twice.images[0], twice.images[1])  # two generators, two images


def test_a_callback_can_change_the_latents(pipe):
    seen = []

    def flatten_at_the_end(pipeline, step, timestep, tensors):
        seen.append(step)
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else tensors

    out = generate(pipe, num_inference_steps=3, output_type="latent", callback_on_step_end=flatten_at_the_end,
                   callback_on_step_end_tensor_inputs=["latents"])
    assert seen == [0, 1, 2] and torch.equal(out, torch.zeros_like(out))
    with pytest.raises(ValueError, match="not offered"):
        generate(pipe, callback_on_step_end=flatten_at_the_end, callback_on_step_end_tensor_inputs=["noise"])


def test_return_dict_false_gives_the_tuple_and_latent_output_is_the_raw_sample(pipe):
    output = pipe(PROMPT, BOXES, LABELS, height=16, width=16, num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0), return_dict=False)
    assert isinstance(output, tuple) and len(output) == 2
    images, layouts = output
    assert torch.equal(images, generate(pipe)) and len(layouts[0]) == 1
    assert isinstance(pipe(PROMPT, BOXES, LABELS, height=16, width=16, num_inference_steps=1), AeroGenPipelineOutput)
    latent = generate(pipe, output_type="latent")
    assert latent.min() < 0  # the [-1, 1] sample itself, not yet mapped to [0, 1]
    assert torch.allclose((latent.clamp(-1, 1) + 1) / 2, generate(pipe), atol=1e-6)


def test_prompt_embeds_from_encode_prompt_reproduce_the_prompt(pipe):
    expected = generate(pipe, negative_prompt="blurry")
    embeds, mask, negative, negative_mask = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="blurry")
    again = pipe(None, BOXES, LABELS, height=16, width=16, num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0), prompt_embeds=embeds, negative_prompt_embeds=negative,
                 prompt_attention_mask=mask, negative_prompt_attention_mask=negative_mask).images
    assert torch.equal(again, expected)
    with pytest.raises(ValueError, match="attention mask"):
        pipe(None, BOXES, LABELS, height=16, width=16, prompt_embeds=embeds)


def test_negative_prompt_changes_the_output_and_latents_can_be_given(pipe):
    plain = generate(pipe)
    assert (generate(pipe, negative_prompt="a city street") - plain).abs().max() > 1e-4
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(generate(pipe, seed=99, latents=noise), plain)  # the seed-0 noise, given as latents
    with pytest.raises(ValueError, match="latents must have shape"):
        generate(pipe, latents=torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("kwargs, words", [
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"layout_guidance_scale": float("nan")}, "layout_guidance_scale"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"output_type": "jpeg"}, "output_type"),
    ({"negative_prompt": ["a", "b"]}, "negative prompts"),
])
def test_check_inputs_names_the_bad_argument(pipe, kwargs, words):
    with pytest.raises(ValueError, match=words):
        generate(pipe, **kwargs)


def test_cross_attention_kwargs_reach_the_layout_attention(pipe):
    plain = generate(pipe)
    assert torch.equal(generate(pipe, cross_attention_kwargs={"layout_scale": 1.0}), plain)
    assert (generate(pipe, cross_attention_kwargs={"layout_scale": 0.0}) - plain).abs().max() > 1e-4


SWITCHES = {
    "attention slicing": lambda pipe: pipe.enable_attention_slicing(),
    "attention slicing, max": lambda pipe: pipe.enable_attention_slicing("max"),
    "attention slicing, off again": lambda pipe: (pipe.enable_attention_slicing(1), pipe.disable_attention_slicing()),
    "set_default_attn_processor": lambda pipe: pipe.unet.set_default_attn_processor(),
    "set_attn_processor(AttnProcessor)": lambda pipe: pipe.unet.set_attn_processor(AttnProcessor()),
    "set_attn_processor(AttnProcessor2_0)": lambda pipe: pipe.unet.set_attn_processor(AttnProcessor2_0()),
    "inner unet set_attn_processor": lambda pipe: pipe.unet.unet.set_attn_processor(AttnProcessor()),
    "xformers off": lambda pipe: pipe.disable_xformers_memory_efficient_attention(),
}


def unet_output(pipe, boxes=BOXES):
    """One UNet call on fixed inputs, with the layout of `boxes`."""
    text, mask, _, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
    inputs = pipe.guidance_inputs(["all"], text, None, mask, None, [boxes_from_user(boxes, LABELS, "test")], 16, 16)
    layout = pipe.unet.prepare_layout(*inputs[2:], 16, 16)
    sample = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return pipe.unet(sample, torch.tensor(500), inputs[0], inputs[1], layout=layout)


def relative_difference(a, b):
    # the random tiny model's samples reach ~100 after guidance, so compare relative to their size
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("switch", SWITCHES)
def test_attention_switches_keep_the_output_and_the_layout(pipe, switch):
    model_before, model_moved_before = unet_output(pipe), unet_output(pipe, MOVED)
    before, moved_before = generate(pipe, output_type="latent"), generate(pipe, boxes=MOVED, output_type="latent")
    keys = pipe.unet.state_dict().keys()
    SWITCHES[switch](pipe)
    processors = pipe.unet.attn_processors.values()
    assert any(isinstance(p, LayoutAttnProcessor) for p in processors)
    assert all(isinstance(p, (LayoutAttnProcessor, SelfAttnProcessor)) for p in processors)
    assert pipe.unet.state_dict().keys() == keys  # the layout projections are still there
    model_after, model_moved = unet_output(pipe), unet_output(pipe, MOVED)
    assert torch.allclose(model_after, model_before, atol=1e-5)
    assert torch.allclose(model_moved, model_moved_before, atol=1e-5)
    assert (model_moved - model_after).abs().max() > 1e-3  # the layout still counts
    after, moved = generate(pipe, output_type="latent"), generate(pipe, boxes=MOVED, output_type="latent")
    assert relative_difference(after, before) < 1e-5 and relative_difference(moved, moved_before) < 1e-5
    assert relative_difference(moved, after) > 1e-3


def test_slicing_really_slices(pipe, monkeypatch):
    generate(pipe, num_inference_steps=1)  # the prompts are encoded (and cached) before counting
    pipe.enable_attention_slicing("max")
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(args[0].shape) or original(*args, **kwargs))
    generate(pipe, num_inference_steps=1)
    assert calls and all(len(shape) == 3 and shape[0] == 1 for shape in calls)  # one (batch x head) row at a time


def test_xformers_without_cuda_is_refused_and_changes_nothing(pipe):
    if torch.cuda.is_available():
        pytest.skip("on CUDA the switch runs (checked by the device script)")
    before = generate(pipe)
    with pytest.raises(ValueError, match="xformers"):
        pipe.enable_xformers_memory_efficient_attention()
    assert torch.equal(generate(pipe), before)


def test_a_processor_that_would_drop_the_layout_is_refused(pipe):
    class Custom:  # e.g. someone's own processor, which knows nothing of the layout
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            return hidden_states

    with pytest.raises(ValueError, match="would replace the layout attention"):
        pipe.unet.set_attn_processor(Custom())

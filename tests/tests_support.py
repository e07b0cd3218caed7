"""Shared test helpers: a tiny run config for the training tests, the one-line error check."""

from pathlib import Path

import pytest

TINY_RUN = {
    "family": "smoke",
    "model": {"block_out_channels": [16, 32], "attention_head_dim": 8, "preview_steps": 2},
    "data": {"tile_size": 16, "gsd_factors": [8]},
    "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1.0e-3, "checkpoint_every": 3,
              "ema_decay": 0.9, "log_every": 1},
    "objective": {"snr_gamma": 5.0},
}


def assert_input_error(err: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    """The error is one line that names the file and says what is wrong (`words`)."""
    message = str(err.value)
    assert "\n" not in message
    assert Path(path).name in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def write_tiny_stable_diffusion(folder: Path, vae_blocks=(8, 16)) -> Path:
    """A Stable Diffusion 1.x folder in diffusers' layout (vae/, unet/, text_encoder/,
    tokenizer/, scheduler/, model_index.json) with tiny random components in the shapes of
    diffusers' own pipeline tests, and a real (if small) byte-level BPE CLIP tokenizer:
    every letter pair is a merge, so it splits words into ordinary tokens as CLIP's does."""
    import json
    import string

    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    folder = Path(folder)
    UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=list(vae_blocks), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * len(vae_blocks), up_block_types=["UpDecoderBlock2D"] * len(vae_blocks),
    ).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                 num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1200,
                                 max_position_embeddings=77)).save_pretrained(folder / "text_encoder")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = []
    for a in string.ascii_lowercase:
        for b in string.ascii_lowercase:
            merges.append(f"{a} {b}")
            vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir(parents=True)
    (tokenizer / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (tokenizer / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"]}))
    return folder

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

"""Shared test settings: a tiny run config for the training tests."""

TINY_RUN = {
    "family": "smoke",
    "model": {"block_out_channels": [16, 32], "attention_head_dim": 8, "preview_steps": 2},
    "data": {"tile_size": 16, "gsd_factors": [8]},
    "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1.0e-3, "checkpoint_every": 3,
              "ema_decay": 0.9, "snr_gamma": 5.0, "log_every": 1},
}

"""The one accelerate training loop, EMA and checkpoints."""

"""Exponential moving average of the trainable weights."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """Shadow copy of a module's trainable parameters, kept in float32.

    The decay warms up as min(decay, (1 + n) / (10 + n)) so early, poor weights fade fast.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "__num_updates__": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.num_updates = int(state.pop("__num_updates__"))
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}...")
        for name, current in self.shadow.items():
            # checkpoints load on the CPU; the shadow lives beside the weights it follows
            self.shadow[name] = state[name].float().to(current.device).clone()

    @contextmanager
    def applied(self, module: nn.Module):
        """Temporarily put the averaged weights into `module` (for previews and export)."""
        backup = {name: p.detach().clone() for name, p in module.named_parameters() if name in self.shadow}
        with torch.no_grad():
            for name, param in module.named_parameters():
                if name in self.shadow:
                    param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, param in module.named_parameters():
                    if name in backup:
                        param.copy_(backup[name])

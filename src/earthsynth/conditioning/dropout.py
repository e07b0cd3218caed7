"""Condition dropout for classifier-free guidance.

Per sample: with probability `drop_all` every condition is dropped (the model learns the
fully unconditional case), else with probability `keep_all` none is, else each condition
is dropped on its own with its own probability (the model learns every partial
combination, so one condition can be guided at a time at sampling).

So P(condition c dropped) = drop_all + (1 - drop_all - keep_all) * p_c.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def _check_probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"dropout probability {name!r} must be in [0, 1], got {value}")
    return value


class ConditionDropout:
    def __init__(
        self, probabilities: Mapping[str, float], drop_all: float = 0.0, keep_all: float = 0.0
    ):
        self.probabilities = {
            name: _check_probability(name, p) for name, p in probabilities.items()
        }
        self.drop_all = _check_probability("drop_all", drop_all)
        self.keep_all = _check_probability("keep_all", keep_all)
        if self.drop_all + self.keep_all > 1.0 + 1e-9:
            raise ValueError(
                f"drop_all + keep_all must be <= 1, got {self.drop_all} + {self.keep_all}"
            )

    @classmethod
    def from_config(cls, config: Mapping) -> ConditionDropout:
        """From a dict such as {"text": 0.1, "gsd": 0.1, "drop_all": 0.05, "keep_all": 0.1}.

        The per-condition probabilities may also sit under a "probabilities" key.
        """
        config = dict(config)
        drop_all = config.pop("drop_all", 0.0)
        keep_all = config.pop("keep_all", 0.0)
        probabilities = dict(config.pop("probabilities", {}))
        for name, value in config.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"dropout entry {name!r} must be a probability, got {value!r}")
            probabilities[name] = value
        return cls(probabilities, drop_all=drop_all, keep_all=keep_all)

    def expected_rates(self) -> dict[str, float]:
        """The probability each condition is dropped for one sample."""
        free = 1.0 - self.drop_all - self.keep_all
        return {name: self.drop_all + free * p for name, p in self.probabilities.items()}

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """name -> (B,) bool tensor, True = drop that condition for that sample.

        Draws happen on the generator's device (CPU by default) and the results are moved
        to `device`, so a seed gives the same masks wherever the model runs.
        """
        gen_device = generator.device if generator is not None else "cpu"
        mode = torch.rand(batch_size, generator=generator, device=gen_device)
        everything = mode < self.drop_all
        nothing = (mode >= self.drop_all) & (mode < self.drop_all + self.keep_all)
        masks = {}
        for name, p in self.probabilities.items():
            own = torch.rand(batch_size, generator=generator, device=gen_device) < p
            masks[name] = (everything | (own & ~nothing)).to(device or gen_device)
        return masks

    def __repr__(self) -> str:
        return f"ConditionDropout({self.probabilities}, drop_all={self.drop_all}, keep_all={self.keep_all})"

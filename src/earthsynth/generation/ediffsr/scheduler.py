"""A mean-reverting SDE scheduler (after IR-SDE, which EDiffSR samples with).

The forward process pulls the image x towards a mean mu (here: the bicubic upsampling of the
low-resolution image) while adding noise:

    dx = theta_t (mu - x) dt + sigma_t dW,   with sigma_t^2 / theta_t = 2 lambda^2,

so its stationary state is mu + lambda * N(0, I). Its marginals are Gaussian and closed-form:
with thetabar_t the integral of theta up to t,

    x_t = mu + exp(-thetabar_t) (x_0 - mu) + lambda sqrt(1 - exp(-2 thetabar_t)) eps.

Choosing exp(-2 thetabar_t) = alphabar_t of a cosine schedule makes x_t - mu follow a DDPM of
noise scale lambda, which gives exact posteriors q(x_s | x_t, x_0) for any s < t: sampling can
skip steps (few-step sampling) without retraining. The model predicts either eps
(prediction_type "epsilon") or the residual x_0 - mu ("sample"). With few steps "sample" is
the one to use: recovering x_0 from an eps prediction divides by sqrt(alphabar_t), which is
near zero at the first step, so any error in eps is blown up there.

Sampling starts at mu + lambda * eps, not at pure noise: with a small lambda the process only
has to add the high frequencies the upsampling lacks, which is why few steps suffice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from earthsynth.generation.common import initial_noise


@dataclass
class MeanRevertingOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def cosine_alphabar(steps: int, offset: float = 0.008) -> torch.Tensor:
    """(steps,) alphabar_t for t = 1..steps (Nichol and Dhariwal's cosine), float64."""
    t = torch.arange(1, steps + 1, dtype=torch.float64) / steps
    f = torch.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    return (f / f0).clamp(min=1e-6, max=1.0)


class MeanRevertingScheduler(SchedulerMixin, ConfigMixin):
    """Mean-reverting SDE with exact posterior steps; `mean` is given to add_noise / step."""

    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(self, num_train_timesteps: int = 100, stationary_std: float = 0.2, clip_sample: bool = True,
                 prediction_type: str = "sample"):
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be epsilon or sample, got {prediction_type!r}")
        self.alphabar = cosine_alphabar(num_train_timesteps)
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self.num_inference_steps = num_train_timesteps
        self.init_noise_sigma = stationary_std

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        steps = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= steps:
            raise ValueError(f"num_inference_steps must be in 1..{steps}, got {num_inference_steps}")
        timesteps = torch.linspace(steps - 1, 0, num_inference_steps).round().long().unique_consecutive()
        self.timesteps = timesteps.to(device)
        self.num_inference_steps = len(timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def _alphabar(self, timesteps, like: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(timesteps, device=self.alphabar.device).long().reshape(-1)
        values = self.alphabar[index].to(like.device, torch.float32)
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  mean: torch.Tensor) -> torch.Tensor:
        """x_t from x_0 (training)."""
        alphabar = self._alphabar(timesteps, original)
        return mean + alphabar.sqrt() * (original - mean) + self.config.stationary_std * (1 - alphabar).sqrt() * noise

    def start(self, mean: torch.Tensor, generator=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The first sample: mu + lambda * eps (the process at its last training step); eps is
        `noise` when given, else drawn from `generator` (or a list of them, one per image)."""
        if noise is None:
            noise = initial_noise(mean.shape, generator, mean.device, mean.dtype)
        last = self._alphabar(self.config.num_train_timesteps - 1, mean)
        return mean + self.config.stationary_std * (1 - last).sqrt() * noise

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, mean: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One reverse step from `timestep` to the next one of set_timesteps (or to x_0)."""
        lam = self.config.stationary_std
        t = int(timestep)
        position = (self.timesteps == t).nonzero()
        following = int(self.timesteps[position[0, 0] + 1]) if len(position) and position[0, 0] + 1 < len(self.timesteps) else -1
        alphabar_t = self._alphabar(t, sample)
        residual = sample - mean
        if self.config.prediction_type == "sample":
            original = model_output  # the predicted residual x_0 - mu
        else:
            original = (residual - lam * (1 - alphabar_t).sqrt() * model_output) / alphabar_t.sqrt()
        if self.config.clip_sample:  # keep mean + x_0 within the image range
            original = (mean + original).clamp(-1, 1) - mean
        if following < 0:
            prev = mean + original
        else:
            alphabar_s = self._alphabar(following, sample)
            ratio = alphabar_t / alphabar_s  # a^2 of the transition s -> t
            var_s = lam**2 * (1 - alphabar_s)
            var_st = lam**2 * (1 - ratio)
            var_t = lam**2 * (1 - alphabar_t)
            posterior_mean = (ratio.sqrt() * var_s * residual + var_st * alphabar_s.sqrt() * original) / var_t
            posterior_std = (var_s * var_st / var_t).sqrt()
            noise = initial_noise(sample.shape, generator, sample.device, sample.dtype)
            prev = mean + posterior_mean + posterior_std * noise
        if not return_dict:
            return (prev, mean + original)
        return MeanRevertingOutput(prev_sample=prev, pred_original_sample=mean + original)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

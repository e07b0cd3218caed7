"""The diffusion training objective the latent-diffusion families share (`Family.objective`):
noise, target, weighting, configured by a run config's `objective` section."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler

from earthsynth.config import ObjectiveConfig
from earthsynth.errors import InputError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def make_noise_scheduler(objective: ObjectiveConfig) -> DDPMScheduler:
    if objective.prediction_type not in ("epsilon", "v_prediction"):
        raise InputError("objective.prediction_type", f"must be epsilon or v_prediction, got {objective.prediction_type!r}")
    if objective.beta_schedule not in BETA_SCHEDULES:
        raise InputError("objective.beta_schedule", f"must be one of {', '.join(BETA_SCHEDULES)}, "
                                                    f"got {objective.beta_schedule!r}")
    if objective.num_train_timesteps < 2:
        raise InputError("objective.num_train_timesteps", f"must be at least 2, got {objective.num_train_timesteps}")
    return DDPMScheduler(num_train_timesteps=objective.num_train_timesteps, beta_schedule=objective.beta_schedule,
                         prediction_type=objective.prediction_type, clip_sample=False)


class DiffusionObjective:
    """loss = weight(t) * || model(x_t, t) - target ||^2, averaged over the batch.

    target is the noise (epsilon) or the velocity v = sqrt(a) * eps - sqrt(1 - a) * x0;
    weight is 1, or min-SNR-gamma (Hang et al., 2023): min(SNR, gamma) / SNR for epsilon
    and min(SNR, gamma) / (SNR + 1) for v-prediction.
    """

    def __init__(self, scheduler: DDPMScheduler, snr_gamma: float = 0.0):
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        self.snr_gamma = snr_gamma
        alphas_cumprod = scheduler.alphas_cumprod.float()
        self.snr = alphas_cumprod / (1.0 - alphas_cumprod)

    def __call__(self, x0: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        batch = x0.shape[0]
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        prediction = predict(noisy, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(x0, noise, timesteps)
        per_sample = ((prediction.float() - target.float()) ** 2).flatten(1).mean(dim=1)
        if self.snr_gamma > 0:
            snr = self.snr.to(x0.device)[timesteps]
            clipped = torch.clamp(snr, max=self.snr_gamma)
            weight = clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1.0)
            per_sample = per_sample * weight
        return per_sample.mean()

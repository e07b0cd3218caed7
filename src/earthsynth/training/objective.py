"""The diffusion training objective every family shares: noise, target, weighting."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler


def make_noise_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str) -> DDPMScheduler:
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=False)


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

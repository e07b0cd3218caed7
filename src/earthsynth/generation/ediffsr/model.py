"""EANet, the efficient noise predictor of EDiffSR, and CPEM, its conditional prior.

Written from the EDiffSR paper (Xiao et al., 2023); the authors' code carries no licence and
is not used.

EANet is a light U-shape of NAF-style blocks: LayerNorm, 1x1 expansion, 3x3 depthwise
convolution, a *simple gate* (the channels split in two halves that are multiplied, instead of
an activation function) and *simplified channel attention* (global average pooling and one
1x1 convolution, no squeeze MLP), then a second gated 1x1 feed-forward branch; both branches
are residual with learned per-channel scales starting at zero, so a fresh block is the
identity. The diffusion time enters every block as a per-channel scale and shift of its
normalised input.

CPEM (conditional prior enhancement module) turns the low-resolution image into a richer
condition than its bicubic upsampling alone: a few NAF blocks at low resolution extract
features, pixel shuffle brings them to the output size, and they are concatenated with the
bicubic upsampling. EANet sees [x_t, bicubic(LR), CPEM features].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from earthsynth.generation.common import timestep_embedding


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=1)
    return first * second


class NAFBlock(nn.Module):
    """Gated depthwise block + gated feed-forward, both residual, optionally time-modulated."""

    def __init__(self, channels: int, time_dim: int = 0, expansion: int = 2):
        super().__init__()
        hidden = channels * expansion
        self.norm1 = LayerNorm2d(channels)
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.channel_attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(hidden // 2, hidden // 2, 1))
        self.project = nn.Conv2d(hidden // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.ffn_in = nn.Conv2d(channels, hidden, 1)
        self.ffn_out = nn.Conv2d(hidden // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.time = nn.Linear(time_dim, 2 * channels) if time_dim else None

    def forward(self, x: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        if self.time is not None and time is not None:
            scale, shift = self.time(time)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = simple_gate(self.depthwise(self.expand(h)))
        h = h * self.channel_attention(h)
        x = x + self.beta * self.project(h)
        h = simple_gate(self.ffn_in(self.norm2(x)))
        return x + self.gamma * self.ffn_out(h)


class CPEM(nn.Module):
    """Conditional prior enhancement: LR image -> features at the output resolution."""

    def __init__(self, bands: int, width: int, blocks: int, scale: int):
        super().__init__()
        self.scale = scale
        self.intro = nn.Conv2d(bands, width, 3, padding=1)
        self.blocks = nn.ModuleList(NAFBlock(width) for _ in range(blocks))
        self.upsample = nn.Sequential(nn.Conv2d(width, width * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, low_resolution: torch.Tensor) -> torch.Tensor:
        h = self.intro(low_resolution)
        for block in self.blocks:
            h = block(h)
        return self.upsample(h)


class EANet(ModelMixin, ConfigMixin):
    """Noise predictor: forward(x_t (B, C, H, W), timesteps (B,), low_resolution (B, C, H/s, W/s))
    -> predicted noise (B, C, H, W). H and W must be multiples of 2 ** (levels)."""

    @register_to_config
    def __init__(self, bands: int = 3, scale: int = 4, width: int = 32, encoder_blocks: tuple[int, ...] = (1, 1, 2),
                 middle_blocks: int = 2, decoder_blocks: tuple[int, ...] = (1, 1, 1), prior_width: int = 16,
                 prior_blocks: int = 2):
        super().__init__()
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError("encoder_blocks and decoder_blocks need the same number of levels")
        time_dim = width * 4
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.prior = CPEM(bands, prior_width, prior_blocks, scale)
        self.intro = nn.Conv2d(bands * 2 + prior_width, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for count in encoder_blocks:
            self.encoders.append(nn.ModuleList(NAFBlock(channels, time_dim) for _ in range(count)))
            self.downs.append(nn.Conv2d(channels, channels * 2, 2, stride=2))
            channels *= 2
        self.middle = nn.ModuleList(NAFBlock(channels, time_dim) for _ in range(middle_blocks))
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for count in decoder_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(channels, channels * 2, 1), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.ModuleList(NAFBlock(channels, time_dim) for _ in range(count)))
        self.outro = nn.Conv2d(width, bands, 3, padding=1)

    @property
    def multiple(self) -> int:
        return 2 ** len(self.config.encoder_blocks)

    def condition(self, low_resolution: torch.Tensor) -> torch.Tensor:
        """[bicubic(LR), CPEM(LR)] at the output size; the same in every denoising step."""
        upsampled = F.interpolate(low_resolution, scale_factor=self.config.scale, mode="bicubic", align_corners=False)
        return torch.cat([upsampled, self.prior(low_resolution)], dim=1)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, low_resolution: torch.Tensor | None = None,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is None:
            condition = self.condition(low_resolution)
        if sample.shape[-2] % self.multiple or sample.shape[-1] % self.multiple:
            raise ValueError(f"height and width must be multiples of {self.multiple}, got {tuple(sample.shape[-2:])}")
        # the network runs in its weights' dtype (bf16 / fp16 when loaded so); the sample keeps the
        # caller's dtype, so a float32 scheduler state stays float32
        input_dtype, dtype = sample.dtype, self.intro.weight.dtype
        timesteps = torch.as_tensor(timesteps, device=sample.device).reshape(-1).expand(sample.shape[0])
        time = self.time_mlp(timestep_embedding(timesteps, self.config.width).to(dtype))
        h = self.intro(torch.cat([sample.to(dtype), condition.to(dtype)], dim=1))
        skips = []
        for blocks, down in zip(self.encoders, self.downs):
            for block in blocks:
                h = block(h, time)
            skips.append(h)
            h = down(h)
        for block in self.middle:
            h = block(h, time)
        for up, blocks, skip in zip(self.ups, self.decoders, reversed(skips)):
            h = up(h) + skip
            for block in blocks:
                h = block(h, time)
        return self.outro(h).to(input_dtype)

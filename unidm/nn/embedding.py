"""Noise-level embeddings: the network sees ``c_noise`` (a scalar per example) through one of these."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "FourierEmbedding", "EMBEDDINGS"]


class SinusoidalEmbedding(nn.Module):
    """Transformer positional encoding of a scalar (Vaswani et al. 2017, Sec. 3.5; used for t in DDPM).

    ``c_noise`` [B] -> [B, dim]; frequencies ``scale * max_period^(-i / half)``.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
        super().__init__()
        half = dim // 2
        freqs = scale * torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        args = c_noise.reshape(-1, 1).float() * self.freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FourierEmbedding(nn.Module):
    """Random Fourier features (Tancik et al. 2020; Song et al. 2021, NCSN++'s Gaussian Fourier projection).

    ``c_noise`` [B] -> [B, dim]; the frequencies are a fixed buffer drawn from ``N(0, scale^2)`` with a fixed seed,
    so they are part of the architecture, not of the random state.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c_noise: Tensor) -> Tensor:
        args = 2 * math.pi * c_noise.reshape(-1, 1).float() * self.freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


EMBEDDINGS: dict[str, type[nn.Module]] = {"sinusoidal": SinusoidalEmbedding, "fourier": FourierEmbedding}

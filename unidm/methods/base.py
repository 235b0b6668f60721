"""The face every trainable family shows the trainer and the CLI."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GenerativeModel"]


class GenerativeModel(nn.Module):
    """A trainable generative model.

    Subclasses implement:
        ``loss(batch, generator) -> [B]``: per-example training loss for a batch dict (``"x"``, optional ``"y"``);
            all randomness from ``generator`` so a step is a pure function of (weights, batch, seed).
        ``generate(n, *, seeds=None, generator=None, **options) -> [n, ...]``: samples in data space.
    """

    family: str = "base"

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, n: int, *, seeds: Sequence[int] | None = None, generator: torch.Generator | None = None,
                 **options) -> Tensor:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

"""Exponential moving average of weights with warm-up (Polyak averaging; the warm-up
``decay_k = min(decay, (1 + k) / (10 + k))`` is TensorFlow's ``num_updates`` rule, used by DDPM and score_sde)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow copies of a module's floating-point parameters and buffers (non-float buffers are copied as is).

    The training loop keeps it on rank 0 only: every rank holds the same weights after each step, so one shadow
    is enough, and it is what rank 0 checkpoints. ``decay_at(step)`` depends on the step alone, so a resumed run
    continues the average bitwise.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach(), 1 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)

"""The training loop's settings, :class:`TrainConfig` (the ``train`` section of a run config).

It lives beside the loop so that the loop imports nothing from the layers above it; :mod:`unidm.config` imports it
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """The training loop's settings (see :func:`unidm.train.train`)."""

    steps: int = 4000
    batch_size: int = 512  # global: split over processes x grad_accum
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 200
    decay: str = "cosine"  # "cosine", "linear" or "none"
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    log_every: int = 50
    ckpt_every: int = 1000
    keep_last: int = 3  # 0 keeps all
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0: leave torch's default
    precision: str = "fp32"  # "fp32", "bf16" (autocast) or "fp16" (autocast + scaler, CUDA only)
    grad_accum: int = 1  # noise is fixed per shard (world_size x grad_accum)
    compile: bool = False
    progress: bool = True

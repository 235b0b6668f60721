"""Presets for masked (absorbing) diffusion on tokens and blur diffusion on images.

Sized to train in minutes on a CPU (``digits-masked`` uses the cheap ``token-mlp``; ``model.arch=transformer``
works too); raise ``model.width``/``model.depth`` and ``train.steps`` for better models.
"""

from __future__ import annotations

_MASKED_SAMPLE = {"sampler": "ancestral", "steps": 64, "grid": "uniform-t", "n": 1000}

PRESETS: dict[str, dict] = {
    "digits-masked": {
        "family": "masked",
        "data": {"name": "binary-digits"},
        "model": {"arch": "token-mlp", "hidden": 384, "depth": 3},
        "method": {"schedule": "linear"},
        "train": {"steps": 2000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                  "weight_decay": 0.01, "ckpt_every": 1000},
        "sample": dict(_MASKED_SAMPLE),
    },
    "text-masked": {
        "family": "masked",
        "data": {"name": "text", "seq_len": 64, "stride": 16},
        "model": {"arch": "transformer", "width": 128, "depth": 3, "heads": 4},
        "method": {"schedule": "log-linear"},
        "train": {"steps": 3000, "batch_size": 32, "lr": 1e-3, "warmup": 200, "ema_decay": 0.999,
                  "weight_decay": 0.01, "ckpt_every": 1000},
        "sample": dict(_MASKED_SAMPLE),
    },
    "digits-blur": {
        "family": "blur",
        "data": {"name": "digits"},
        "model": {"arch": "unet", "channels": 32, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
                  "mid_attn": False, "groups": 8},
        "method": {"sigma_blur_min": 0.3, "sigma_blur_max": 8.0, "sigma": 0.02, "delta": 0.025},
        "train": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                  "ckpt_every": 1000},
        "sample": {"sampler": "ancestral", "steps": 32, "grid": "uniform-t", "n": 1000},
    },
}

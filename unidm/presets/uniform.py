"""Presets for uniform-replacement (multinomial) discrete diffusion, sized as their masked counterparts.

``binary-digits-uniform`` has ``digits-masked``'s network and training budget, ``text-uniform`` has
``text-masked``'s, so that bits per token and samples compare the two corruptions at the same network and time
(``benchmarks/discrete.py``). Both use ``T = 1000`` steps of the linear schedule ``alpha_t = 1 - t`` (its last
marginal is exactly the uniform prior) and D3PM's auxiliary cross-entropy weight 0.01.
"""

from __future__ import annotations

_UNIFORM_METHOD = {"schedule": "linear", "num_steps": 1000, "aux_weight": 0.01}
_UNIFORM_SAMPLE = {"sampler": "ancestral", "steps": 256, "grid": "uniform-t", "n": 1000}

PRESETS: dict[str, dict] = {
    "binary-digits-uniform": {
        "family": "uniform",
        "data": {"name": "binary-digits"},
        "model": {"arch": "token-mlp", "hidden": 384, "depth": 3},
        "method": dict(_UNIFORM_METHOD),
        "train": {"steps": 2000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "ema_decay": 0.999,
                  "weight_decay": 0.01, "ckpt_every": 1000},
        "sample": dict(_UNIFORM_SAMPLE),
    },
    "text-uniform": {
        "family": "uniform",
        "data": {"name": "text", "seq_len": 64, "stride": 16},
        "model": {"arch": "transformer", "width": 128, "depth": 3, "heads": 4},
        "method": dict(_UNIFORM_METHOD),
        "train": {"steps": 3000, "batch_size": 32, "lr": 1e-3, "warmup": 200, "ema_decay": 0.999,
                  "weight_decay": 0.01, "ckpt_every": 1000},
        "sample": dict(_UNIFORM_SAMPLE),
    },
}

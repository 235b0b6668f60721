"""Normalizing-flow presets: NICE, RealNVP, Glow, MAF and NSF on 2-D toys, and NICE, RealNVP, Glow on 17-level digits.

Sized to train in about a minute or two on one CPU core. The 2-D flows train on the continuous toys (loss: nats per
dimension); the digits flows on uniformly dequantized 17-level digits (loss: the dequantization bound in nats per
dimension, ``/ ln 2`` = bits/dim, the number ``unidm likelihood`` reports). The ``maf`` and ``nsf`` presets need
zuko (``pip install "unidm[flows]"``). Measured held-out NLLs are in docs/density.md ("Normalizing flows").
"""

from __future__ import annotations

_TOY_TRAIN = {"steps": 3000, "batch_size": 256, "lr": 2e-3, "warmup": 100, "ema_decay": 0.995, "ckpt_every": 1000,
              "log_every": 100}
_DIGITS_TRAIN = {"steps": 2000, "batch_size": 128, "lr": 1e-3, "warmup": 100, "ema_decay": 0.995,
                 "ckpt_every": 500, "log_every": 100}
#: training steps where the shared 2000 do not fit: RealNVP's and Glow's convolutional couplings cost about 100 and
#: 70 ms a step on one core, so 1500 steps keep them near two minutes
_DIGITS_STEPS = {"realnvp": 1500, "glow": 1500}

#: (family, model options) per toy preset
_TOY_MODELS = {
    "nice": {"couplings": 6, "hidden": 64, "depth": 2},
    "realnvp": {"couplings": 8, "hidden": 64, "depth": 2},
    "glow": {"steps": 6, "hidden": 64, "depth": 2},
    "maf": {"transforms": 6, "hidden": 64, "depth": 2},
    "nsf": {"transforms": 4, "hidden": 64, "depth": 2, "bins": 8},
}
_DIGITS_MODELS = {
    "nice": {"couplings": 6, "hidden": 256, "depth": 2},
    "realnvp": {"levels": 2, "hidden": 32, "num_blocks": 1},
    "glow": {"levels": 2, "steps": 4, "hidden": 32, "num_blocks": 1},
}


def _preset(family: str, dataset: str, model: dict, train: dict, n: int) -> dict:
    return {"family": family, "data": {"name": dataset}, "model": dict(model), "method": {}, "train": dict(train),
            "sample": {"n": n}}


PRESETS: dict[str, dict] = {
    **{f"moons-{f}": _preset(f, "moons", m, _TOY_TRAIN, 5000) for f, m in _TOY_MODELS.items()},
    "checkerboard-nsf": _preset("nsf", "checkerboard", _TOY_MODELS["nsf"], _TOY_TRAIN, 5000),
    "checkerboard-realnvp": _preset("realnvp", "checkerboard", _TOY_MODELS["realnvp"], _TOY_TRAIN, 5000),
    **{f"digits-{f}": _preset(f, "digits", m, {**_DIGITS_TRAIN, "steps": _DIGITS_STEPS.get(f, 2000)}, 1438)
       for f, m in _DIGITS_MODELS.items()},
}

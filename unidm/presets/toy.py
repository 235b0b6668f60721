"""Presets for the 2-D toys and analytic mixtures: every dataset with each of vp, ve, edm and flow."""

from __future__ import annotations

from ..data import MIXTURES, TOY_GENERATORS

#: the method section per process family: process, parameterization, training noise levels, weighting
GAUSSIAN_METHODS: dict[str, dict] = {
    "vp": {"process": "vp", "parameterization": "eps", "noise_levels": "uniform-t", "weighting": "eps"},
    "ve": {"process": "ve", "parameterization": "eps", "noise_levels": "uniform-t", "weighting": "eps"},
    "edm": {"process": "edm", "parameterization": "edm", "noise_levels": "lognormal", "weighting": "edm",
            "noise_options": {"p_mean": -1.0, "p_std": 1.4}},
    "flow": {"process": "flow", "parameterization": "velocity", "noise_levels": "logit-normal",
             "weighting": "velocity"},
}

_TRAIN = {"steps": 4000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000}
_MODEL = {"arch": "mlp", "hidden": 256, "depth": 3, "embedding": "fourier"}


def _preset(dataset: str, method: str) -> dict:
    return {
        "family": "gaussian",
        "data": {"name": dataset},
        "model": dict(_MODEL),
        "method": {k: (dict(v) if isinstance(v, dict) else v) for k, v in GAUSSIAN_METHODS[method].items()},
        "train": dict(_TRAIN),
        "sample": {"sampler": "heun", "steps": 32, "grid": "karras", "n": 5000},
    }


PRESETS: dict[str, dict] = {
    f"{d}-{m}": _preset(d, m) for d in [*TOY_GENERATORS, *MIXTURES] for m in GAUSSIAN_METHODS
}

"""Guidance presets: class-conditional models trained with label dropout (classifier-free guidance, Ho & Salimans
2022) and noise-conditional classifiers (classifier guidance, Dhariwal & Nichol 2021).

    unidm train gmm-ring-cond --out runs/ring-cond
    unidm train gmm-ring-classifier --out runs/ring-clf
    unidm sample runs/ring-cond --class 2 --guidance cfg --scale 2
    unidm sample runs/ring-cond --class 2 --guidance classifier --scale 2 --classifier runs/ring-clf

A classifier works in sigma-space, so it guides any Gaussian model of the same data, whatever its process.
"""

from __future__ import annotations

from .toy import GAUSSIAN_METHODS

_SAMPLE_VEC = {"sampler": "heun", "steps": 32, "grid": "karras", "n": 5000}
_SAMPLE_IMG = {"sampler": "heun", "steps": 32, "grid": "karras", "n": 1000}

#: a classifier sees the same noise levels as the EDM models, widened towards high sigma where guidance acts
_CLASSIFIER_METHOD = {"noise_levels": "lognormal", "noise_options": {"p_mean": -0.8, "p_std": 1.6},
                      "clean_fraction": 0.05}


def _conditional(dataset: str, method: str, model: dict, train: dict, sample: dict) -> dict:
    m = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GAUSSIAN_METHODS[method].items()}
    return {"family": "gaussian", "data": {"name": dataset}, "model": dict(model),
            "method": {**m, "conditional": True, "label_dropout": 0.15}, "train": dict(train),
            "sample": dict(sample)}


def _classifier(dataset: str, model: dict, train: dict, sample: dict) -> dict:
    return {"family": "classifier", "data": {"name": dataset}, "model": dict(model),
            "method": {k: (dict(v) if isinstance(v, dict) else v) for k, v in _CLASSIFIER_METHOD.items()},
            "train": dict(train), "sample": dict(sample)}


_VEC_TRAIN = {"steps": 4000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000}
_VEC_MODEL = {"arch": "mlp", "hidden": 256, "depth": 3, "embedding": "fourier"}
_VEC_CLF_TRAIN = {**_VEC_TRAIN, "steps": 2000}
_VEC_CLF_MODEL = {"arch": "mlp", "hidden": 128, "depth": 3}

_IMG_TRAIN = {"steps": 6000, "batch_size": 128, "lr": 1e-3, "warmup": 200, "ema_decay": 0.999, "ckpt_every": 1000}
_IMG_MODEL = {"arch": "unet", "channels": 32, "channel_mult": [1, 2], "num_blocks": 2, "attn_resolutions": [],
              "mid_attn": True, "groups": 8}
_IMG_CLF_TRAIN = {**_IMG_TRAIN, "steps": 3000}
_IMG_CLF_MODEL = {"arch": "conv", "channels": [32, 64, 64]}

PRESETS: dict[str, dict] = {
    **{f"{d}-cond": _conditional(d, "edm", _VEC_MODEL, _VEC_TRAIN, _SAMPLE_VEC) for d in ("gmm-ring", "gmm-grid")},
    "gmm-ring-cond-flow": _conditional("gmm-ring", "flow", _VEC_MODEL, _VEC_TRAIN, _SAMPLE_VEC),
    **{f"{d}-classifier": _classifier(d, _VEC_CLF_MODEL, _VEC_CLF_TRAIN, _SAMPLE_VEC) for d in ("gmm-ring", "gmm-grid")},
    "digits-cond-edm": _conditional("digits", "edm", _IMG_MODEL, _IMG_TRAIN, _SAMPLE_IMG),
    "digits-classifier": _classifier("digits", _IMG_CLF_MODEL, _IMG_CLF_TRAIN, _SAMPLE_IMG),
}

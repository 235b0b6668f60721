"""Presets for the 2-D toys and analytic mixtures: every dataset with each of vp, ve, edm and flow.

Sampling defaults (measured on ``gmm-ring``, whose cross-entropy under the true density sees a blur of a third of a
component's width; docs/toys.md): Heun with 64 steps (127 NFE), and for EDM ``sigma_max = 20``. The
probability-flow ODE of a mixture of narrow components (std 0.15) bends sharply where the components separate
(sigma ~ 0.1-1), and with the *exact* denoiser Heun's discretization error alone costs +0.031 nats at 32 steps from
sigma 80, +0.013 at 64 steps from 80, +0.009 at 64 from 20. EDM's sigma_max = 80 was chosen for images with
thousands of dimensions; 2-D data of extent ~5 needs far less, and the steps it frees go where the ODE bends.
"""

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


#: per-process overrides for 2-D data (see the module docstring)
_TOY_PROCESS = {"edm": {"process_options": {"sigma_max": 20.0}}}


#: training steps where the shared 4000 do not fit (both measured in docs/toys.md):
#: - ``moons-edm`` is the default preset (``unidm train`` with no arguments), sized for about a minute on 2 CPU
#:   cores: 2500 steps train in ~60 s at 42 steps/s and reached sliced W2 1.00x its floor at 10k samples (4000
#:   steps: 1.09x);
#: - the 16-D mixture is under-trained at 4000 steps: cross-entropy gap +0.83 nats at 4000 steps, +0.53 at 8000,
#:   +0.35 at 20000 (EDM, Heun 64; the exact denoiser gives +0.057), so its presets train 20000 steps (~12 min at
#:   one thread).
_STEPS = {"moons-edm": 2500, **{f"gmm-16d-{m}": 20000 for m in GAUSSIAN_METHODS}}


def _preset(dataset: str, method: str) -> dict:
    return {
        "family": "gaussian",
        "data": {"name": dataset},
        "model": dict(_MODEL),
        "method": {k: (dict(v) if isinstance(v, dict) else v)
                   for k, v in {**GAUSSIAN_METHODS[method], **_TOY_PROCESS.get(method, {})}.items()},
        "train": {**_TRAIN, "steps": _STEPS.get(f"{dataset}-{method}", _TRAIN["steps"])},
        "sample": {"sampler": "heun", "steps": 64, "grid": "karras", "n": 5000},
    }


PRESETS: dict[str, dict] = {
    f"{d}-{m}": _preset(d, m) for d in [*TOY_GENERATORS, *MIXTURES] for m in GAUSSIAN_METHODS
}

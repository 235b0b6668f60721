"""PFGM++ presets (Xu et al. 2023): the EDM presets of ``moons``, ``checkerboard``, ``gmm-ring`` and ``digits`` with
the ``pfgmpp`` process at ``D`` in {1, 128, 2048} augmented dimensions, named ``<data>-pfgmpp-d<D>``.

Everything but the process is the EDM preset's (model, training, EDM preconditioning and log-normal noise levels,
the toys' ``sigma_max = 20``), as the paper trains PFGM++ with EDM's recipe and ``r = sigma sqrt(D)``; so a preset and
its ``-edm`` twin differ only in the perturbation kernel, and ``D = inf`` (``method.process_options.aug_dim=inf``) is
the EDM run exactly. Sampling is Heun's probability-flow ODE (the stochastic samplers are refused for finite ``D``):
64 steps on the toys as for EDM, 18 steps (35 NFE, the paper's CIFAR-10 setting) on digits. ``D = 1`` is PFGM's
field in the perturbation view (not its original field objective); docs/pfgm.md has the theory.
"""

from __future__ import annotations

import copy

from .images import PRESETS as _IMAGES
from .toy import PRESETS as _TOY

#: augmented dimensions with a preset each: PFGM (1), and the paper's two recommended values for CIFAR-10
AUG_DIMS = (1, 128, 2048)
#: the EDM preset each dataset copies
_BASES = {"moons": _TOY["moons-edm"], "checkerboard": _TOY["checkerboard-edm"], "gmm-ring": _TOY["gmm-ring-edm"],
          "digits": _IMAGES["digits-edm"]}
#: sampling where it differs from the EDM preset's
_SAMPLE = {"digits": {"sampler": "heun", "steps": 18}}


def _preset(dataset: str, aug_dim: int) -> dict:
    d = copy.deepcopy(_BASES[dataset])
    d["method"]["process"] = "pfgmpp"
    d["method"]["process_options"] = {**d["method"].get("process_options", {}), "aug_dim": aug_dim}
    d["sample"].update(_SAMPLE.get(dataset, {}))
    return d


PRESETS: dict[str, dict] = {f"{name}-pfgmpp-d{D}": _preset(name, D) for name in _BASES for D in AUG_DIMS}


# ---- original PFGM (Xu et al. 2022): the field objective, family "pfgm" -------------------------------------------
def _field_M(z_max: float, sigma: float = 0.01, tau: float = 0.03) -> float:
    """``M`` with ``sigma (1 + tau)^M = z_max``: the perturbation's largest heights reach the prior's plane (the
    paper's CIFAR-10 values, M = 291 for z_max = 40 to 50, follow the same rule to within a few steps)."""
    import math

    return round(math.log(z_max / sigma) / math.log1p(tau), 1)


def _field_preset(dataset: str, z_max: float, ref_size: int, gamma: float, upper_norm: float) -> dict:
    """``<data>-pfgm``: the EDM preset's network and training budget with PFGM's field objective (family ``pfgm``):
    ``z`` in ``[0.002, z_max]`` with ``z_max`` the EDM preset's ``sigma_max`` (so the unclipped hemisphere prior is
    the ``-pfgmpp-d1`` preset's prior), the reference batch ``ref_size`` = 4 x the batch (the batch plus training
    points), the paper's ``sigma = 0.01``, ``tau = 0.03``; unconditional (the family takes no labels).

    ``gamma`` and ``upper_norm`` are scaled to the data: the paper's ``gamma = 5`` is a fraction of CIFAR-10's
    distances (``N = 3072``); on gmm-ring (1500 steps, Heun 16 steps in log z) ``gamma = 5`` gave a cross-entropy gap
    of +0.56 nats, ``gamma = 0.1`` -0.12. The prior's radius is clipped at ``5 z_max`` on the toys (about 20% of the
    draws for ``N = 2``; without a clip the far tail, ``P(|x| > k z_max) ~ 1/k``, threw samples thousands out) and at
    the paper's ratio ``upper_norm ~ 1.4 sqrt(N) z_max`` on digits (untuned)."""
    base = _BASES[dataset]
    return {
        "family": "pfgm",
        "data": copy.deepcopy(base["data"]),
        "model": copy.deepcopy(base["model"]),
        "method": {"M": _field_M(z_max), "sigma": 0.01, "tau": 0.03, "gamma": gamma, "ref_size": ref_size,
                   "z_min": 0.002, "z_max": z_max, "upper_norm": upper_norm},
        "train": copy.deepcopy(base["train"]),
        "sample": {"sampler": "heun", "steps": 32, "grid": "log-z", "n": base["sample"].get("n", 5000)},
    }


#: ``<data>-pfgm`` presets: z_max = the EDM preset's sigma_max (20 on the toys, 80 on digits)
FIELD_PRESETS: dict[str, dict] = {
    **{f"{name}-pfgm": _field_preset(name, 20.0, 4 * _BASES[name]["train"]["batch_size"], 0.1, 100.0)
       for name in ("moons", "checkerboard", "gmm-ring")},
    "digits-pfgm": _field_preset("digits", 80.0, 4 * _BASES["digits"]["train"]["batch_size"], 1.0, 900.0),
}
PRESETS.update(FIELD_PRESETS)

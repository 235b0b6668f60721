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

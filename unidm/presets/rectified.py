"""Rectified-flow presets: flows trained with a coupling of noise and data, and the distilled student.

``<data>-flow-ot`` / ``<data>-flow-sb`` are the ``<data>-flow`` presets (straight path, velocity parameterization)
trained with minibatch optimal transport (Tong et al. 2023, Pooladian et al. 2023) or the Schrödinger-bridge
coupling instead of independent pairs; a class-conditional preset couples within each class (``ot-class``).
Reflow and distillation start from any trained flow run (docs/rectified_flow.md)::

    unidm train moons-flow --out runs/moons-1rf
    unidm reflow runs/moons-1rf --out runs/moons-2rf --pairs 20000 train.steps=2000
    unidm reflow runs/moons-2rf --out runs/moons-3rf --pairs 20000 train.steps=2000
    unidm distill runs/moons-2rf --out runs/moons-2rf-d1 --steps 1 --pairs 20000 train.steps=2000
    unidm sample runs/moons-2rf-d1 --steps 1

On the ``gmm-ring`` mixture a one-step student within 0.1 nats of the true entropy needs the preset's own parent
and longer reflows (``--pairs 30000 train.steps=3000``; docs/rectified_flow.md, "the mixture's one-step gap"):
the reflow recipe is flags of ``unidm reflow`` / ``unidm distill``, not a preset.

``moons-flow-distill`` is the student's family as a preset (``method.teacher=RUN`` a trained ``moons-flow`` run;
without stored pairs it distils on pairs the teacher draws on the fly). ``TEACHERS`` names the teacher's preset.
"""

from __future__ import annotations

import copy

from .images import PRESETS as _IMAGES
from .toy import PRESETS as _TOY

__all__ = ["PRESETS", "TEACHERS"]


def _coupled(base: dict, coupling: str) -> dict:
    d = copy.deepcopy(base)
    d["method"]["coupling"] = coupling
    return d


PRESETS: dict[str, dict] = {
    "moons-flow-ot": _coupled(_TOY["moons-flow"], "ot"),
    "moons-flow-sb": _coupled(_TOY["moons-flow"], "sb"),
    "checkerboard-flow-ot": _coupled(_TOY["checkerboard-flow"], "ot"),
    "gmm-ring-flow-ot": _coupled(_TOY["gmm-ring-flow"], "ot"),
    "digits-flow-ot": _coupled(_IMAGES["digits-flow"], "ot-class"),
}

_STUDENT = copy.deepcopy(_TOY["moons-flow"])
_STUDENT.update(family="distill", train={**_STUDENT["train"], "steps": 1000},
                sample={"sampler": "euler", "steps": 1, "grid": "uniform-t", "n": 5000})
_STUDENT["method"].update(steps=1, teacher_sampler="heun", teacher_steps=16)
PRESETS["moons-flow-distill"] = _STUDENT

#: student preset -> the preset of the teacher it expects (``method.teacher`` is that run's folder)
TEACHERS: dict[str, str] = {"moons-flow-distill": "moons-flow"}

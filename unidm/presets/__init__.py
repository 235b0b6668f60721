"""Named run configs: ``unidm presets`` lists them; ``unidm train NAME`` runs one."""

from __future__ import annotations

import copy

from ..config import RunConfig
from .autoregressive import PRESETS as _AUTOREGRESSIVE
from .deletion import PRESETS as _DELETION
from .discrete import PRESETS as _DISCRETE
from .flows import PRESETS as _FLOWS
from .guidance import PRESETS as _GUIDANCE
from .images import PRESETS as _IMAGES
from .pfgm import PRESETS as _PFGM
from .rectified import PRESETS as _RECTIFIED
from .rectified import TEACHERS as _STUDENT_TEACHERS
from .toy import PRESETS as _TOY
from .uniform import PRESETS as _UNIFORM
from .variance import PRESETS as _VARIANCE
from .variance import TEACHERS as _TEACHERS

__all__ = ["PRESETS", "DEFAULT_PRESET", "FROZEN_PRESETS", "get_preset"]

PRESETS: dict[str, dict] = {**_TOY, **_IMAGES, **_DISCRETE, **_GUIDANCE, **_PFGM, **_VARIANCE, **_UNIFORM,
                            **_DELETION, **_AUTOREGRESSIVE, **_RECTIFIED, **_FLOWS}

#: preset -> {method key of a frozen run: the preset that trains that run} (a family's ``frozen_keys``)
FROZEN_PRESETS: dict[str, dict[str, str]] = {name: {"teacher": teacher} for name, teacher in
                                              {**_TEACHERS, **_STUDENT_TEACHERS}.items()}

#: what `unidm train` runs with no preset named
DEFAULT_PRESET = "moons-edm"


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(sorted(PRESETS))} (`unidm presets` describes "
                         "them), or the path of a config.json")
    d = copy.deepcopy(PRESETS[name])
    d["name"] = name
    return RunConfig.from_dict(d)

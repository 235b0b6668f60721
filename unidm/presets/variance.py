"""Extended-Analytic-DPM presets (Bao et al. 2022b): NPR-DPM and SN-DPM heads on a frozen Gaussian run.

Each trains only the head (family ``variance-head``, ``docs/variance.md``) on the teacher named on the command line,
which is loaded frozen from its run folder:

    unidm train digits-vp --out runs/digits-vp
    unidm train digits-vp-npr --out runs/digits-vp-npr method.teacher=runs/digits-vp
    unidm sample runs/digits-vp-npr --sampler ddpm --steps 10

The head's network is the teacher preset's (same size: the paper shares the mean network's body and trains a new
output head; here it is a separate network), trained with the teacher's data and batch size. ``TEACHERS`` names the
preset each head preset expects as its teacher.
"""

from __future__ import annotations

from .images import DIGITS_UNET
from .toy import _MODEL as TOY_MLP

_TOY_TRAIN = {"steps": 2000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000}
_DIGITS_TRAIN = {"steps": 1500, "batch_size": 128, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999,
                 "ckpt_every": 500, "log_every": 50}


def _preset(data: str, model: dict, train: dict, kind: str, n: int) -> dict:
    return {
        "family": "variance-head",
        "data": {"name": data},
        "model": {k: (list(v) if isinstance(v, list) else v) for k, v in model.items()},
        "method": {"kind": kind},
        "train": dict(train),
        "sample": {"sampler": "ddpm", "steps": 50, "grid": "ddpm-linspace", "n": n},
    }


PRESETS: dict[str, dict] = {}
#: head preset -> the preset of the teacher it expects (``method.teacher`` is that run's folder)
TEACHERS: dict[str, str] = {}
for _kind in ("npr", "sn"):
    PRESETS[f"digits-vp-{_kind}"] = _preset("digits", DIGITS_UNET, _DIGITS_TRAIN, _kind, 1438)
    TEACHERS[f"digits-vp-{_kind}"] = "digits-vp"
    PRESETS[f"gmm-ring-vp-{_kind}"] = _preset("gmm-ring", TOY_MLP, _TOY_TRAIN, _kind, 5000)
    TEACHERS[f"gmm-ring-vp-{_kind}"] = "gmm-ring-vp"

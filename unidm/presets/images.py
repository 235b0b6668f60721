"""Image presets: sklearn digits (8x8, 17 grey levels) with the vp, edm and flow processes.

One small UNet for all three (no attention: at 8x8 a 3x3 convolution already sees a third of the image, and
attention costs more than it buys); the processes differ only in the method section. ``digits-edm`` is the
recommended one: EDM preconditioning with log-normal training noise (Karras et al. 2022, Table 1).

``train.num_threads=1``: the convolutions of so small a network are too short to split across threads, and on a
shared CPU two threads waiting for each other ran 3-4x slower than one (measured on the 2-core development box).
"""

from __future__ import annotations

from .toy import GAUSSIAN_METHODS

DIGITS_UNET = {"arch": "unet", "channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
               "mid_attn": False, "groups": 4, "embedding": "fourier"}

_TRAIN = {"steps": 2000, "batch_size": 64, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000,
          "log_every": 50, "num_threads": 1}

_METHODS = {
    "vp": {**GAUSSIAN_METHODS["vp"]},
    "edm": {**GAUSSIAN_METHODS["edm"], "noise_options": {"p_mean": -1.2, "p_std": 1.2}},
    "flow": {**GAUSSIAN_METHODS["flow"]},
}


def _preset(method: str) -> dict:
    return {
        "family": "gaussian",
        "data": {"name": "digits"},
        "model": {k: (list(v) if isinstance(v, list) else v) for k, v in DIGITS_UNET.items()},
        "method": {k: (dict(v) if isinstance(v, dict) else v) for k, v in _METHODS[method].items()},
        "train": dict(_TRAIN),
        "sample": {"sampler": "dpmpp_2m", "steps": 20, "grid": "karras", "n": 359},
    }


PRESETS: dict[str, dict] = {f"digits-{m}": _preset(m) for m in _METHODS}

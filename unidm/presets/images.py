"""Image presets: sklearn digits (8x8, 17 grey levels) with the vp, edm and flow processes.

``digits-vp`` and ``digits-flow`` use one small UNet (no attention: at 8x8 a 3x3 convolution already sees a third
of the image, and attention costs more than it buys). ``digits-edm``, the recommended one (EDM preconditioning with
log-normal training noise, Karras et al. 2022, Table 1), uses a residual MLP on the flattened 64 pixels
(``model.arch=image-mlp``): on a CPU it trains at ~4000 images/s against ~700 for the UNet, and reached a lower
Fréchet distance per second of training (measured in ``docs/images.md``). Set ``model`` to ``DIGITS_UNET`` to get
the UNet back.

``train.num_threads=1``: the convolutions of so small a network are too short to split across threads, and on a
shared CPU two threads waiting for each other ran 3-4x slower than one (measured on the 2-core development box).
"""

from __future__ import annotations

from .toy import GAUSSIAN_METHODS

DIGITS_UNET = {"arch": "unet", "channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
               "mid_attn": False, "groups": 4, "embedding": "fourier"}

DIGITS_MLP = {"arch": "image-mlp", "hidden": 512, "depth": 3, "embedding": "fourier"}

_TRAIN = {"steps": 2000, "batch_size": 64, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000,
          "log_every": 50, "num_threads": 1}

_METHODS = {
    "vp": {**GAUSSIAN_METHODS["vp"]},
    "edm": {**GAUSSIAN_METHODS["edm"], "noise_options": {"p_mean": -1.2, "p_std": 1.2}},
    "flow": {**GAUSSIAN_METHODS["flow"]},
}


#: digits-edm: the MLP at batch 256 (a step of so small a network is overhead-bound at batch 64: 256 gives ~1.3x
#: the images/s) and a higher learning rate
_TRAIN_MLP = {**_TRAIN, "steps": 3000, "batch_size": 256, "lr": 3e-3}


def _preset(method: str) -> dict:
    mlp = method == "edm"
    return {
        "family": "gaussian",
        "data": {"name": "digits"},
        "model": {k: (list(v) if isinstance(v, list) else v) for k, v in (DIGITS_MLP if mlp else DIGITS_UNET).items()},
        "method": {k: (dict(v) if isinstance(v, dict) else v) for k, v in _METHODS[method].items()},
        "train": dict(_TRAIN_MLP if mlp else _TRAIN),
        "sample": {"sampler": "dpmpp_2m", "steps": 20, "grid": "karras", "n": 359},
    }


PRESETS: dict[str, dict] = {f"digits-{m}": _preset(m) for m in _METHODS}

"""Image presets: sklearn digits (8x8, 17 grey levels) with the vp, edm and flow processes.

All three train one small UNet (16 channels at 8x8, 32 at 4x4, one residual block per level, no attention: at 8x8
a 3x3 convolution already sees a third of the image; dropout 0.1 in the residual blocks, as EDM uses 0.13 on
CIFAR-10, against overfitting 1438 training images) at batch 128, class-conditional with label dropout 0.1
(Ho & Salimans 2022), so one run gives the conditional model (``unidm sample --class K``), classifier-free guidance
(``--guidance cfg``) and the unconditional model (``--null-label``). ``unidm sample`` and ``unidm eval`` give each
seed a label with the training split's class frequencies, stratified (``Dataset.draw_labels``), so the samples follow
the data distribution
``p(x) = sum_y p(y) p(x | y)``. ``method.conditional=false`` trains an unconditional model instead.
``digits-edm`` (EDM preconditioning and log-normal noise levels, Karras et al. 2022, Table 1) is the recommended
one; ``docs/images.md`` has its figures and the experiments that chose this recipe (an MLP on the 64 pixels
trains 4x faster per image but reaches a worse Fréchet distance per second of training; the unconditional model
is far worse than the conditional one at the same cost).
"""

from __future__ import annotations

from .toy import GAUSSIAN_METHODS

DIGITS_UNET = {"arch": "unet", "channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
               "mid_attn": False, "groups": 4, "dropout": 0.1, "embedding": "fourier"}

_TRAIN = {"steps": 3000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "ema_decay": 0.999, "ckpt_every": 1000,
          "log_every": 50}

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
        "method": {**{k: (dict(v) if isinstance(v, dict) else v) for k, v in _METHODS[method].items()},
                   "conditional": True, "label_dropout": 0.1},
        "train": dict(_TRAIN),
        "sample": {"sampler": "dpmpp_2m", "steps": 20, "grid": "karras", "n": 1438},
    }


PRESETS: dict[str, dict] = {f"digits-{m}": _preset(m) for m in _METHODS}

"""Presets for the exact-likelihood autoregressive families (FVSBN, NADE, MADE, PixelCNN) and the VAE, on binary
digits (64 binary pixels) and 17-level digits (8x8, levels 0..16).

Sized to train in a minute or two on a CPU; ``unidm likelihood RUN`` then reports held-out nats and bits/dim of the
discrete data (exact for the autoregressive models, IWAE's bound with 100 samples for the VAE). docs/density.md has
the models and the figures.
"""

from __future__ import annotations

_SAMPLE = {"sampler": "ancestral", "steps": 1, "grid": "uniform-t", "n": 1000}


def _train(steps: int, lr: float, batch_size: int = 128, weight_decay: float = 0.0) -> dict:
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup": 100, "ema_decay": 0.995,
            "weight_decay": weight_decay, "ckpt_every": 1000}


def _preset(family: str, data: str, model: dict, method: dict, train: dict) -> dict:
    return {"family": family, "data": {"name": data}, "model": model, "method": method, "train": train,
            "sample": dict(_SAMPLE)}


PRESETS: dict[str, dict] = {
    "binary-digits-fvsbn": _preset("fvsbn", "binary-digits", {}, {}, _train(1500, 1e-2, weight_decay=1e-3)),
    "binary-digits-nade": _preset("nade", "binary-digits", {"hidden": 200}, {}, _train(2000, 3e-3, weight_decay=1e-3)),
    "binary-digits-made": _preset("made", "binary-digits", {"hidden": 500, "depth": 1},
                                  {"num_masks": 16, "ensemble": 8}, _train(3000, 2e-3, weight_decay=1e-3)),
    # PixelCNN: 5x5 stacks (4 layers see the whole 8x8 image) stopped early; on binary digits 3x3 for 1500 steps
    # gave 17.9 nats, 5x5 for 1500 steps 21.4 (overfit), 5x5 for 500 steps with weight decay 16.9
    "binary-digits-pixelcnn": _preset("pixelcnn", "binary-digits", {"channels": 32, "layers": 4, "kernel": 5,
                                                                     "head": 64}, {},
                                      _train(500, 2e-3, batch_size=64, weight_decay=1e-2)),
    "binary-digits-vae": _preset("vae", "binary-digits", {"hidden": 256, "depth": 2, "latent": 16}, {},
                                 _train(3000, 2e-3)),
    "digits-made": _preset("made", "digits", {"hidden": 500, "depth": 1}, {"num_masks": 16, "ensemble": 8},
                           _train(3000, 2e-3, weight_decay=1e-3)),
    "digits-pixelcnn": _preset("pixelcnn", "digits", {"channels": 32, "layers": 4, "kernel": 5, "head": 64}, {},
                               _train(1000, 2e-3, batch_size=64, weight_decay=1e-2)),
    # 800 steps: the categorical decoder over 17 levels overfits the 1438 training images (held-out IWAE 2.05 bits/dim
    # at 800 steps, 2.15 at 1500, 3.45 at 3000)
    "digits-vae": _preset("vae", "digits", {"hidden": 256, "depth": 2, "latent": 16}, {}, _train(800, 2e-3)),
}

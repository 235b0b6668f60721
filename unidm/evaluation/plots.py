"""Pictures of samples: the plotter is chosen by the dataset's kind."""

from __future__ import annotations

import os
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["plot_samples", "plot_vectors", "PLOTTERS"]


def plot_vectors(samples: Tensor, data, path: str, title: str = "") -> str:
    """Scatter of generated points (first two coordinates) beside held-out data, on the same axes."""
    s = samples.detach().float().cpu().reshape(samples.shape[0], -1)[:, :2]
    ref = data.test.float().reshape(data.test.shape[0], -1)[: len(s), :2]
    lim = float(torch.quantile(ref.abs().flatten(), 0.995)) * 1.3
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, name in ((axes[0], ref, "held-out data"), (axes[1], s, "samples")):
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue" if ax is axes[0] else "tab:orange")
        ax.set_title(f"{name} (n={len(pts)})")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: dataset kind -> ``plotter(samples, data, path, title) -> path``
PLOTTERS: dict[str, Callable[..., str]] = {"vector": plot_vectors}


def _register_plotters() -> None:
    from .image_metrics import IMAGE_PLOTTERS
    from .sequence_metrics import SEQUENCE_PLOTTERS
    from .token_metrics import TOKEN_PLOTTERS

    PLOTTERS.update(IMAGE_PLOTTERS)
    PLOTTERS.update(TOKEN_PLOTTERS)
    PLOTTERS.update(SEQUENCE_PLOTTERS)


_register_plotters()


def plot_samples(samples: Tensor, data, path: str, title: str = "") -> str:
    if data.kind not in PLOTTERS:
        raise ValueError(f"no plotter for data of kind {data.kind!r}; valid: {sorted(PLOTTERS)}")
    return PLOTTERS[data.kind](samples, data, path, title)

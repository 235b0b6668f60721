"""Pictures of image models: a grid of samples beside held-out images (``samples.png``) and a denoising-trajectory
strip (the sampler's state ``x`` and the denoiser's estimate ``D(x, sigma)`` at chosen noise levels)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = ["tile", "plot_image_grid", "plot_trajectory", "IMAGE_PLOTTERS", "DEFAULT_TRAJECTORY_SIGMAS"]

#: noise levels (sigma-space) shown by :func:`plot_trajectory` unless told otherwise
DEFAULT_TRAJECTORY_SIGMAS = (80.0, 10.0, 3.0, 1.0, 0.5, 0.2, 0.05, 0.01)


def tile(images: Tensor, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """``[N, C, H, W]`` in ``[-1, 1]`` -> one ``[rows*(H+pad), cols*(W+pad)(, C)]`` array in ``[0, 1]`` (pad is
    white), row-major."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    n, c, h, w = x.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    out = np.ones((c, rows * (h + pad) - pad, cols * (w + pad) - pad), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        out[:, r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = x[i]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def _show(ax, arr: np.ndarray, title: str = "") -> None:
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_image_grid(samples: Tensor, data, path: str, title: str = "", n: int = 64) -> str:
    """``samples.png``: up to ``n`` samples in a square grid, beside as many held-out images."""
    s = samples[:n]
    ref = data.test[: len(s)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    _show(axes[0], tile(ref), f"held-out data (n={len(ref)})")
    _show(axes[1], tile(s), f"samples (n={len(s)})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def plot_trajectory(model, data, path: str, sigmas: Sequence[float] = DEFAULT_TRAJECTORY_SIGMAS, n: int = 6,
                    seed: int = 0, sampler: str = "heun", steps: int = 32, grid: str = "karras",
                    class_labels: Tensor | None = None) -> str:
    """A denoising-trajectory strip: ``n`` samples drawn with ``sampler`` on ``grid``; for each requested sigma
    (the nearest grid level in log sigma) one column shows the state ``x`` (as ``x / sqrt(1 + sigma^2)``, the
    variance-preserving image, so every column has the same range) and the denoiser's estimate ``D(x, sigma)``
    (Karras et al. 2022, Fig. 1 style). Rows alternate x and D(x) per sample.

    Args:
        model: a :class:`~unidm.methods.GaussianDiffusion` (anything with ``denoiser``, ``process`` and
            ``data_shape``).
        data: its dataset (only the shape is used).
        sigmas: sigma-space levels to show (clamped to the grid).
        class_labels: ``[n]`` labels for a class-conditional model (None: its null label, or an unconditional one).
    """
    from ..samplers import make_grid, sample

    g = make_grid(grid, steps, model.process)
    x = model.process.prior_sample((n, *model.data_shape), float(g[0]), seeds=range(seed, seed + n),
                                   device=model.device)
    states: list[tuple[float, Tensor, Tensor]] = []
    prev = [x]

    def record(info: dict) -> None:
        states.append((float(info["sigma"]), prev[0].detach().cpu(), info["denoised"].detach().cpu()))
        prev[0] = info["x"]

    was_training = model.training
    model.eval()
    try:
        cond = {} if class_labels is None else {"class_labels": torch.as_tensor(class_labels, device=model.device).long()}
        sample(model.denoiser, x, g, method=sampler, callback=record, **cond)
    finally:
        model.train(was_training)
    levels = torch.tensor([s for s, _, _ in states]).log()
    picks: list[int] = []
    for s in sigmas:
        i = int((levels - math.log(max(float(s), 1e-8))).abs().argmin())
        if i not in picks:
            picks.append(i)
    picks.sort()
    cols = len(picks)
    fig, axes = plt.subplots(2 * n, cols, figsize=(1.1 * cols + 0.6, 1.1 * 2 * n + 0.4), squeeze=False)
    for c, i in enumerate(picks):
        sigma, xs, ds = states[i]
        for r in range(n):
            _show(axes[2 * r, c], tile(xs[r:r + 1] / math.sqrt(1 + sigma**2)))
            _show(axes[2 * r + 1, c], tile(ds[r:r + 1]))
        axes[0, c].set_title(f"σ={sigma:.3g}", fontsize=8)
    for r in range(n):
        axes[2 * r, 0].set_ylabel("x", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("D(x)", fontsize=8)
    fig.suptitle(f"denoising trajectory ({sampler}, {steps} steps)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


IMAGE_PLOTTERS = {"image": plot_image_grid}

"""Metrics and pictures for token data (``kind="tokens"``).

- Every token dataset: total variation between the samples' and held-out unigram frequencies.
- Binarized images (``meta["image_shape"]``): Fréchet distance between Gaussian fits of the samples and the held-out
  images in pixel space (the Fréchet distance of Heusel et al. 2017, eq. 6, without a feature network), and the
  two-sample distances of :mod:`unidm.evaluation.metrics`.
- Text (``meta["itos"]``): NLL in bits per character of the samples under a character n-gram model fitted on the
  held-out text (interpolated Witten-Bell smoothing, Witten & Bell 1991; Chen & Goodman 1999, Sec. 2.5).

Every value comes with a *floor*, the same quantity for an independent real set of the same size (training
windows), so ``ratio = value / floor`` near 1 means "as good as real data" for that statistic.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["CharNGram", "frechet_distance", "unigram_tv", "evaluate_tokens", "plot_tokens",
           "TOKEN_EVALUATORS", "TOKEN_PLOTTERS"]


class CharNGram:
    """Interpolated Witten-Bell n-gram model over ``vocab_size`` symbols.

    ``P(w | h) = (c(h, w) + N1+(h) P(w | h')) / (c(h) + N1+(h))`` with ``h'`` the context shortened by one and,
    at the bottom, the uniform distribution over the vocabulary; never zero. Contexts do not cross sequence starts.

    Example:
        >>> lm = CharNGram(order=2, vocab_size=2).fit(torch.tensor([[0, 1, 0, 1, 0, 1]]))
        >>> lm.prob(1, (0,)) > 0.7
        True
    """

    def __init__(self, order: int = 4, vocab_size: int = 256):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.order, self.vocab_size = order, vocab_size
        self.counts: Counter = Counter()  # (context..., w) -> count
        self.ctx: Counter = Counter()  # context -> total count
        self.types: Counter = Counter()  # context -> number of distinct followers

    def fit(self, seqs) -> "CharNGram":
        for row in torch.as_tensor(seqs).tolist():
            for i, w in enumerate(row):
                for k in range(min(self.order - 1, i) + 1):
                    h = tuple(row[i - k:i])
                    if self.counts[(*h, w)] == 0:
                        self.types[h] += 1
                    self.counts[(*h, w)] += 1
                    self.ctx[h] += 1
        return self

    def prob(self, w: int, h: tuple[int, ...]) -> float:
        p = 1.0 / self.vocab_size
        for k in range(len(h) + 1):
            hk = h[len(h) - k:] if k else ()
            c = self.ctx.get(hk, 0)
            if c == 0:
                continue
            n1 = self.types[hk]
            p = (self.counts.get((*hk, w), 0) + n1 * p) / (c + n1)
        return p

    def bits_per_token(self, seqs) -> float:
        """Mean ``-log2 P`` over every token of ``seqs [N, L]``."""
        total, n = 0.0, 0
        for row in torch.as_tensor(seqs).tolist():
            for i, w in enumerate(row):
                total -= math.log2(self.prob(w, tuple(row[max(0, i - self.order + 1):i])))
                n += 1
        return total / max(n, 1)


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """``|mu_x - mu_y|^2 + tr(C_x + C_y - 2 (C_x C_y)^(1/2))`` between Gaussian fits of ``x, y [N, ...]``."""
    a = x.reshape(len(x), -1).double().numpy()
    b = y.reshape(len(y), -1).double().numpy()
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (C_x C_y)^(1/2) = tr (C_x^(1/2) C_y C_x^(1/2))^(1/2), symmetric and PSD: stable for singular covariances
    w, v = np.linalg.eigh(ca)
    half = (v * np.sqrt(w.clip(0))) @ v.T
    tr_root = np.sqrt(np.linalg.eigvalsh(half @ cb @ half).clip(0)).sum()
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * tr_root)


def unigram_tv(x: Tensor, y: Tensor, vocab_size: int) -> float:
    """Total variation between the symbol frequencies of ``x`` and ``y``."""
    fx = torch.bincount(x.flatten().long(), minlength=vocab_size)[:vocab_size].double()
    fy = torch.bincount(y.flatten().long(), minlength=vocab_size)[:vocab_size].double()
    return float(0.5 * (fx / fx.sum() - fy / fy.sum()).abs().sum())


def _entry(value: float, floor: float) -> dict:
    return {"value": value, "floor": floor, "ratio": value / floor if floor > 0 else float("inf")}


def _reference(data, n: int, seed: int = 12345) -> Tensor:
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    return data.train[idx]


def evaluate_tokens(samples: Tensor, data, ngram_order: int = 4) -> dict:
    """Sample quality of token sequences ``[N, L]`` against held-out data, each with its floor."""
    samples = samples.long().cpu()
    n = min(len(samples), len(data.test))
    samples, test = samples[:n], data.test[:n]
    ref = _reference(data, n)
    out: dict = {"n": n, "metrics": {}}
    bad = int(((samples < 0) | (samples >= data.vocab_size)).sum())
    if bad:
        out["invalid_tokens"] = bad
    samples = samples.clamp(0, data.vocab_size - 1)
    out["metrics"]["unigram_tv"] = _entry(unigram_tv(samples, test, data.vocab_size),
                                         unigram_tv(ref, test, data.vocab_size))
    if data.meta.get("image_shape") is not None:
        from .metrics import compare

        out["metrics"]["frechet_pixels"] = _entry(frechet_distance(samples, data.test), frechet_distance(ref, data.test))
        out["metrics"].update(compare(samples.float(), test.float(), ref.float()))
    if data.meta.get("itos"):
        lm = CharNGram(ngram_order, data.vocab_size).fit(data.test)
        out["metrics"][f"ngram{ngram_order}_bits"] = _entry(lm.bits_per_token(samples), lm.bits_per_token(ref))
    return out


def _show_text(s: str) -> str:
    return s.replace("\n", "¶").replace("\t", "→")


def plot_tokens(samples: Tensor, data, path: str, title: str = "") -> str:
    """Binarized images as a grid beside held-out ones; text as rendered lines (and the raw text in
    ``path`` with ``.txt``); other tokens as a heat map of ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = samples.long().cpu()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    shape = data.meta.get("image_shape")
    itos = data.meta.get("itos")
    if shape is not None:
        k = min(64, len(samples))
        cols = 8
        rows = math.ceil(k / cols)

        def tile(x: Tensor) -> np.ndarray:
            x = x[:k].reshape(-1, *shape).float()
            pad = torch.zeros(rows * cols, shape[0] + 1, shape[1] + 1)
            pad[: len(x), : shape[0], : shape[1]] = x
            pad[len(x):] = 0.5
            return pad.reshape(rows, cols, shape[0] + 1, shape[1] + 1).permute(0, 2, 1, 3).reshape(
                rows * (shape[0] + 1), cols * (shape[1] + 1)).numpy()

        fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
        for ax, x, name in ((axes[0], data.test, "held-out data"), (axes[1], samples, "samples")):
            ax.imshow(tile(x), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}")
            ax.axis("off")
    elif itos:
        from ..data.discrete import decode

        lines = decode(samples[:24], itos)
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        width = max(len(s) for s in lines)
        fig = plt.figure(figsize=(0.11 * width + 0.6, 0.24 * len(lines) + 0.8))
        for i, s in enumerate(lines):
            fig.text(0.02, 1 - (i + 1.5) / (len(lines) + 2), _show_text(s), family="monospace", fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.imshow(samples[:64].numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_xlabel("position")
        ax.set_ylabel("sample")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: dataset kind -> ``evaluate(samples, data) -> dict``
TOKEN_EVALUATORS: dict[str, Callable[[Tensor, object], dict]] = {"tokens": evaluate_tokens}
#: dataset kind -> ``plot(samples, data, path, title) -> path``
TOKEN_PLOTTERS: dict[str, Callable[..., str]] = {"tokens": plot_tokens}

"""Metrics and pictures for variable-length text sequences (``kind="sequences"``, :mod:`unidm.data.sequences`).

Every statistic compares the samples with held-out text and comes with a *floor*, the same statistic for an
independent real set of the same size (training examples), so ``ratio = value / floor`` near 1 reads "as good as
real data":

- ``bigram_tv``, ``trigram_tv``: total variation between the character n-gram frequencies of the samples and of the
  held-out text, each sequence framed by a start and an end mark (so the n-grams see where words begin and end);
- ``length_tv``: total variation between the length distributions;
- ``oov_words``: the fraction of the samples' words (whitespace-separated) that never occur in the training text;
  its floor is the held-out text's own fraction (real text has new words too).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable, Iterable

import torch
from torch import Tensor

from ..data.sequences import decode_sequences

__all__ = ["ngram_counts", "total_variation", "oov_fraction", "sequence_statistics", "evaluate_sequences",
           "plot_sequences", "SEQUENCE_EVALUATORS", "SEQUENCE_PLOTTERS"]

_START, _END = "\x02", "\x03"


def ngram_counts(texts: Iterable[str], n: int) -> Counter:
    """Character ``n``-gram counts of ``texts``, each framed by a start and an end mark.

    Example:
        >>> sorted(ngram_counts(["ab"], 2).items())
        [('\\x02a', 1), ('ab', 1), ('b\\x03', 1)]
    """
    out: Counter = Counter()
    for s in texts:
        framed = _START + s + _END
        out.update(framed[i:i + n] for i in range(len(framed) - n + 1))
    return out


def total_variation(p: Counter, q: Counter) -> float:
    """``1/2 sum |p(k)/|p| - q(k)/|q||`` between two count tables (1 when one of them is empty).

    Example:
        >>> total_variation(Counter(a=1, b=1), Counter(a=2))
        0.5
    """
    sp, sq = sum(p.values()), sum(q.values())
    if sp == 0 or sq == 0:
        return 1.0
    return 0.5 * sum(abs(p.get(k, 0) / sp - q.get(k, 0) / sq) for k in set(p) | set(q))


def oov_fraction(texts: Iterable[str], vocabulary: set[str]) -> float:
    """The fraction of the whitespace-separated words of ``texts`` not in ``vocabulary`` (0 when there are none).

    Example:
        >>> oov_fraction(["the cat", "dog"], {"the", "dog"})
        0.3333333333333333
    """
    words = [w for s in texts for w in s.split()]
    return sum(w not in vocabulary for w in words) / len(words) if words else 0.0


def sequence_statistics(texts: list[str], test: list[str], vocabulary: set[str]) -> dict[str, float]:
    """The four statistics of the module docstring of ``texts`` against ``test``."""
    return {
        "bigram_tv": total_variation(ngram_counts(texts, 2), ngram_counts(test, 2)),
        "trigram_tv": total_variation(ngram_counts(texts, 3), ngram_counts(test, 3)),
        "length_tv": total_variation(Counter(map(len, texts)), Counter(map(len, test))),
        "oov_words": oov_fraction(texts, vocabulary),
    }


def _itos(data) -> str:
    """The data's symbols; a run whose data file is gone has none to decode with (one line naming the file)."""
    if not data.meta.get("itos"):
        missing = data.meta.get("missing", "it holds no vocabulary")
        raise FileNotFoundError(f"decoding the samples needs the run's data, and {missing}; put the file back at "
                                "that path")
    return data.meta["itos"]


def _entry(value: float, floor: float) -> dict:
    return {"value": value, "floor": floor, "ratio": value / floor if floor > 0 else float("inf")}


def evaluate_sequences(samples: Tensor, data) -> dict:
    """Sample quality of padded sequences ``[N, L]`` against the held-out split, each statistic with its floor."""
    itos = _itos(data)
    n = min(len(samples), len(data.test))
    texts = decode_sequences(samples[:n].long().cpu(), itos)
    test = decode_sequences(data.test[:n], itos)
    train = decode_sequences(data.train, itos)
    vocabulary = {w for s in train for w in s.split()}
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))[:n].tolist()
    floors = sequence_statistics([train[i] for i in idx], test, vocabulary)
    floors["oov_words"] = oov_fraction(test, vocabulary)
    values = sequence_statistics(texts, test, vocabulary)
    return {"n": n, "metrics": {k: _entry(values[k], floors[k]) for k in values},
            "mean_length": sum(map(len, texts)) / max(n, 1), "held_out_mean_length": sum(map(len, test)) / max(n, 1)}


def plot_sequences(samples: Tensor, data, path: str, title: str = "") -> str:
    """The first samples as rendered text lines beside held-out ones (and all samples' text in ``path`` with
    ``.txt``, one a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    itos = _itos(data)
    texts = decode_sequences(samples.long().cpu(), itos)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
        f.write("\n".join(texts) + "\n")
    rows = 24
    columns = [("held-out", decode_sequences(data.test[:rows], itos)), ("samples", texts[:rows])]
    width = max([len(s) for _, c in columns for s in c] + [12])
    fig = plt.figure(figsize=(2 * (0.11 * width + 0.6), 0.24 * rows + 1.0))
    for col, (name, lines) in enumerate(columns):
        x = 0.02 + 0.5 * col
        fig.text(x, 1 - 1.0 / (rows + 2), name, family="monospace", fontsize=9, weight="bold")
        for i, s in enumerate(lines):
            fig.text(x, 1 - (i + 2.0) / (rows + 2), s.replace("\t", "→") or "∅", family="monospace", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: dataset kind -> ``evaluate(samples, data) -> dict``
SEQUENCE_EVALUATORS: dict[str, Callable[[Tensor, object], dict]] = {"sequences": evaluate_sequences}
#: dataset kind -> ``plot(samples, data, path, title) -> path``
SEQUENCE_PLOTTERS: dict[str, Callable[..., str]] = {"sequences": plot_sequences}

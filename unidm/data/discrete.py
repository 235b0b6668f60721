"""Discrete datasets: token sequences as ``[N, L]`` long tensors (``kind="tokens"``).

- ``binary-digits``: sklearn's 8x8 digits, each pixel thresholded to {0, 1}: 64 binary tokens per image
  (``meta["image_shape"] = (8, 8)`` so plots can draw them).
- ``text``: a character-level corpus built at run time from the pydoc topics that ship with Python
  (``pydoc_data.topics``, about 465k characters): fixed-length windows, the held-out split is the corpus's last
  part (split by position, so no held-out window overlaps a training one).
- ``text-file``: the same for the user's own UTF-8 text file.

The vocabulary is the data's symbols only (``vocab_size``); a masked diffusion model adds its MASK id itself.
``meta["itos"]`` maps ids to characters for text.
"""

from __future__ import annotations

import numpy as np
import torch

from .arrays import read_text
from .base import Dataset, seed_for

__all__ = ["binary_digits_dataset", "text_dataset", "text_file_dataset", "text_windows", "pydoc_corpus",
           "decode", "DISCRETE_DATASETS"]


def binary_digits_dataset(threshold: int = 8, test_fraction: float = 0.15, seed: int = 0) -> Dataset:
    """sklearn digits (1797 images of 8x8, intensities 0..16) binarized at ``intensity >= threshold``.

    A random (seeded) ``test_fraction`` of the images is held out; labels are kept.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images >= threshold).astype(np.int64).reshape(len(d.images), 64))
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed_for(seed, "binary-digits")))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset("binary-digits", x[tr], x[te], kind="tokens", train_labels=y[tr], test_labels=y[te],
                   num_classes=10, vocab_size=2,
                   meta={"image_shape": (8, 8), "threshold": threshold, "itos": None})


def pydoc_corpus() -> str:
    """The text of Python's own pydoc topics (``pydoc_data.topics``), topics joined in sorted order."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def text_windows(text: str, seq_len: int, stride: int, test_fraction: float, name: str,
                 min_count: int = 1) -> Dataset:
    """Windows of ``seq_len`` characters of ``text``.

    The first ``1 - test_fraction`` of the characters give training windows every ``stride`` characters; the rest
    gives non-overlapping held-out windows. Characters seen fewer than ``min_count`` times in the whole text are
    replaced by ``"?"`` (dropped if ``"?"`` is itself rare).
    """
    if seq_len < 2 or stride < 1:
        raise ValueError(f"need seq_len >= 2 and stride >= 1, got seq_len={seq_len}, stride={stride}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    if min_count > 1:
        rare = {c for c, k in counts.items() if k < min_count}
        repl = "?" if "?" in counts and "?" not in rare else ""
        text = "".join(repl if c in rare else c for c in text)
    itos = "".join(sorted(set(text)))
    stoi = {c: i for i, c in enumerate(itos)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * (1 - test_fraction))
    if cut < seq_len or len(ids) - cut < seq_len:
        raise ValueError(f"text of {len(ids)} characters is too short for seq_len={seq_len} "
                         f"and test_fraction={test_fraction}")
    train = ids[:cut].unfold(0, seq_len, stride).contiguous()
    test = ids[cut:].unfold(0, seq_len, seq_len).contiguous()
    return Dataset(name, train, test, kind="tokens", vocab_size=len(itos),
                   meta={"itos": itos, "seq_len": seq_len, "stride": stride, "test_fraction": test_fraction,
                         "train_chars": cut, "test_chars": len(ids) - cut})


def text_dataset(seq_len: int = 64, stride: int = 16, test_fraction: float = 0.1, min_count: int = 1) -> Dataset:
    """Character-level windows of :func:`pydoc_corpus` (103 symbols)."""
    return text_windows(pydoc_corpus(), seq_len, stride, test_fraction, "text", min_count)


def text_file_dataset(path: str, seq_len: int = 64, stride: int = 16, test_fraction: float = 0.1,
                      min_count: int = 1) -> Dataset:
    """Character-level windows of the user's UTF-8 text file at ``path`` (a missing, empty or non-UTF-8 file is
    refused with a message naming it, and the byte offset of the first bad byte)."""
    text = read_text(path, "text file")
    ds = text_windows(text, seq_len, stride, test_fraction, path, min_count)
    ds.meta["path"] = path
    return ds


def decode(tokens, itos: str) -> list[str]:
    """``[N, L]`` ids -> N strings (ids outside the vocabulary, e.g. a MASK, shown as ``"_"``)."""
    rows = torch.as_tensor(tokens).tolist()
    return ["".join(itos[i] if 0 <= i < len(itos) else "_" for i in row) for row in rows]


DISCRETE_DATASETS = {
    "binary-digits": binary_digits_dataset,
    "text": text_dataset,
    "text-file": text_file_dataset,
}

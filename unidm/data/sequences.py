"""Variable-length token sequences: the words or the lines of a text, padded to a maximum length.

Every example is a sequence of ``0 <= length <= max_len`` symbols stored as one row of a ``[N, max_len]`` long
tensor, the symbols first and the pad id (``pad_id = vocab_size``, one past the data's symbols) after them; the
lengths ride beside the rows as the extra training tensor ``"length"`` (:attr:`Dataset.extras`), and any row's
length is also ``(row != pad_id).sum()``. The data ``kind`` is ``"sequences"``.

- ``text-sequences``: the words (whitespace-separated) or the non-blank lines of the pydoc corpus that ships with
  Python (:func:`unidm.data.discrete.pydoc_corpus`, 65k words, 8.7k lines);
- ``text-file-sequences``: the same for the user's own UTF-8 text file (``data.path=FILE``).

The held-out split is the text's last ``test_fraction`` (split by position, as for the character windows of
:mod:`unidm.data.discrete`). ``meta`` holds ``itos`` (id -> character), ``pad_id``, ``max_len``, ``unit`` and the
**length prior** ``length_prior`` (``[max_len + 1]``, the training split's empirical length distribution,
:func:`length_prior`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils import check_choice
from .arrays import read_text
from .base import Dataset

__all__ = ["UNITS", "TOO_LONG", "split_units", "pad_sequences", "length_prior", "sequences_from_text",
           "text_sequences_dataset", "text_file_sequences_dataset", "decode_sequences", "SEQUENCE_DATASETS"]

#: how a text is cut into examples
UNITS = ("words", "lines")
#: what happens to an example longer than ``max_len``: refused (with its line number), cut, or left out
TOO_LONG = ("error", "truncate", "drop")


def split_units(text: str, unit: str) -> list[tuple[int, str]]:
    """``(line number from 1, piece)`` for every whitespace-separated word or every non-blank line of ``text``
    (a line keeps its inner spaces, loses its trailing ones).

    Example:
        >>> split_units("a bc\\n\\n  d ", "words")
        [(1, 'a'), (1, 'bc'), (3, 'd')]
        >>> split_units("a bc\\n\\n  d ", "lines")
        [(1, 'a bc'), (3, '  d')]
    """
    check_choice(unit, UNITS, "data.unit")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if unit == "words":
            out += [(number, w) for w in line.split()]
        elif line.strip():
            out.append((number, line.rstrip()))
    return out


def pad_sequences(seqs: list[list[int]], max_len: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """``(x [N, max_len] long, length [N] long)``: each list of ids followed by ``pad_id`` up to ``max_len``.

    Example:
        >>> x, n = pad_sequences([[1, 2], [], [0]], 3, pad_id=9)
        >>> x.tolist(), n.tolist()
        ([[1, 2, 9], [9, 9, 9], [0, 9, 9]], [2, 0, 1])
    """
    x = torch.full((len(seqs), max_len), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return x, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def length_prior(length: Tensor, max_len: int) -> Tensor:
    """The empirical length distribution ``[max_len + 1]`` (float64, sums to 1) of the lengths ``[N]``.

    Example:
        >>> length_prior(torch.tensor([1, 1, 3]), 3).tolist()
        [0.0, 0.6666666666666666, 0.0, 0.3333333333333333]
    """
    counts = torch.bincount(length.long(), minlength=max_len + 1).double()
    return counts / counts.sum()


def _check_options(max_len: int, test_fraction: float, too_long: str) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"data.max_len must be a whole number >= 1, got {max_len!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    check_choice(too_long, TOO_LONG, "data.too_long")


def sequences_from_text(text: str, name: str, unit: str = "words", max_len: int = 16, test_fraction: float = 0.1,
                        too_long: str = "error", max_test: int = 0) -> Dataset:
    """The words or lines of ``text`` as a ``kind="sequences"`` dataset (see the module docstring).

    Args:
        unit: ``"words"`` or ``"lines"``.
        max_len: the longest sequence; a longer one is refused naming its line (``too_long="error"``), cut to
            ``max_len`` (``"truncate"``) or left out (``"drop"``).
        test_fraction: the share of the examples, from the end of the text, held out.
        max_test: keep at most this many held-out examples (the first ones); 0 keeps them all.

    Example:
        >>> ds = sequences_from_text("ab ba\\nabc b a", "demo", max_len=3, test_fraction=0.4)
        >>> ds.meta["itos"], ds.train.tolist(), ds.extras["length"].tolist(), ds.test.tolist()
        ('abc', [[0, 1, 3], [1, 0, 3], [0, 1, 2]], [2, 2, 3], [[1, 3, 3], [0, 3, 3]])
    """
    _check_options(max_len, test_fraction, too_long)
    pieces = split_units(text, unit)
    if not pieces:
        raise ValueError(f"{name} holds no {unit} (it is empty or blank)")
    kept = []
    for number, piece in pieces:
        if len(piece) > max_len:
            if too_long == "error":
                shown = piece if len(piece) <= 40 else piece[:37] + "..."
                raise ValueError(f"{name}, line {number}: a {unit[:-1]} of {len(piece)} characters ({shown!r}) is "
                                 f"longer than data.max_len={max_len}; raise data.max_len, or set "
                                 "data.too_long=truncate or data.too_long=drop")
            if too_long == "drop":
                continue
            piece = piece[:max_len]
        kept.append(piece)
    n_test = int(round(len(kept) * test_fraction))
    if n_test < 1 or len(kept) - n_test < 1:
        raise ValueError(f"{name} has {len(kept)} {unit} of at most {max_len} characters: too few to hold out "
                         f"data.test_fraction={test_fraction} of them")
    itos = "".join(sorted(set("".join(kept))))
    stoi = {c: i for i, c in enumerate(itos)}
    pad_id = len(itos)
    x, length = pad_sequences([[stoi[c] for c in p] for p in kept], max_len, pad_id)
    cut = len(kept) - n_test
    test = x[cut:] if max_test <= 0 else x[cut:cut + max_test]
    return Dataset(name, x[:cut], test, kind="sequences", vocab_size=len(itos), extras={"length": length[:cut]},
                   meta={"itos": itos, "pad_id": pad_id, "max_len": max_len, "unit": unit,
                         "length_prior": length_prior(length[:cut], max_len), "test_fraction": test_fraction})


def text_sequences_dataset(unit: str = "words", max_len: int = 16, test_fraction: float = 0.1,
                           too_long: str = "error", max_test: int = 0) -> Dataset:
    """The words or lines of the pydoc corpus (:func:`unidm.data.discrete.pydoc_corpus`)."""
    from .discrete import pydoc_corpus

    return sequences_from_text(pydoc_corpus(), "text-sequences", unit, max_len, test_fraction, too_long, max_test)


def text_file_sequences_dataset(path: str, unit: str = "lines", max_len: int = 64, test_fraction: float = 0.1,
                                too_long: str = "error", max_test: int = 0) -> Dataset:
    """The lines (or words) of the user's UTF-8 text file at ``path``; a missing, empty, blank or non-UTF-8 file
    and a line longer than ``max_len`` are refused with one line naming the file (and the line)."""
    text = read_text(path, "text file")
    ds = sequences_from_text(text, f"text file {path}", unit, max_len, test_fraction, too_long, max_test)
    ds.name = path
    ds.meta["path"] = path
    return ds


def decode_sequences(x: Tensor, itos: str) -> list[str]:
    """``[N, L]`` padded ids -> N strings; an id past the vocabulary (the pad, an end token) ends the string.

    Example:
        >>> decode_sequences(torch.tensor([[0, 1, 2], [2, 3, 0]]), "ab")
        ['ab', '']
    """
    out = []
    for row in torch.as_tensor(x).tolist():
        chars = []
        for i in row:
            if not 0 <= i < len(itos):
                break
            chars.append(itos[i])
        out.append("".join(chars))
    return out


SEQUENCE_DATASETS = {
    "text-sequences": text_sequences_dataset,
    "text-file-sequences": text_file_sequences_dataset,
}

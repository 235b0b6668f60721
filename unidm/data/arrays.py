"""The user's own arrays: ``.npy``, ``.npz`` (first array, or ``key=``) or ``.csv`` (numeric, optional header)."""

from __future__ import annotations

import os
import warnings

import numpy as np

__all__ = ["load_array", "check_data_file", "read_text"]


def check_data_file(path: str, what: str = "data file") -> None:
    """Refuse a path that is missing (``FileNotFoundError``), a folder or an empty file (``ValueError``), naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder, not a file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")


def read_text(path: str, what: str = "data file") -> str:
    """The UTF-8 text of ``path`` (a byte-order mark is dropped); bytes that are not UTF-8 are refused with a
    ``ValueError`` naming the file and the byte offset."""
    check_data_file(path, what)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        raise ValueError(f"{what} {path} is not UTF-8 text: byte 0x{raw[offset]:02x} at byte offset {offset} "
                         f"({e.reason}); save it as UTF-8") from e


def _parse_csv(lines: list[str]) -> np.ndarray:
    """Numbers separated by commas, one row a line; a first line that is not numbers is a header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on input without rows; the caller refuses an empty array
        try:
            return np.loadtxt(lines, delimiter=",", dtype=np.float64, ndmin=2)
        except ValueError:
            return np.loadtxt(lines, delimiter=",", dtype=np.float64, skiprows=1, ndmin=2)


def load_array(path: str, key: str | None = None) -> np.ndarray:
    """Load a float array ``[N, ...]`` (``[N]`` becomes ``[N, 1]``) from ``path``; a missing (``FileNotFoundError``),
    empty, unreadable or non-numeric file, a 0-d array, an array without rows, or a text file that is not UTF-8 is
    refused with a message naming it. Pickled object arrays are never loaded (``allow_pickle=False``)."""
    check_data_file(path)
    ext = os.path.splitext(path)[1].lower()
    lines = read_text(path).splitlines() if ext == ".csv" else []
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if not names:
                    raise ValueError("the archive holds no arrays")
                if key is not None and key not in names:
                    raise ValueError(f"no array {key!r}; arrays in it: {names}")
                arr = z[key or names[0]]
        elif ext == ".csv":
            arr = _parse_csv(lines)
        else:
            raise ValueError(f"unsupported extension {ext!r}; use .npy, .npz or .csv")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read data file {path}: {e}") from e
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"data file {path} does not hold numbers (dtype {arr.dtype})")
    if arr.ndim == 0:
        raise ValueError(f"data file {path} holds a single number (a 0-d array, shape ()); expected rows [N, D]")
    if arr.size == 0:
        raise ValueError(f"data file {path} holds an empty array (shape {arr.shape}); expected rows [N, D]")
    if arr.ndim == 1:
        arr = arr[:, None]
    if not np.isfinite(arr).all():
        raise ValueError(f"data file {path} contains NaN or inf")
    return arr.astype(np.float32)

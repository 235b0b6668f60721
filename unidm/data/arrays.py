"""The user's own arrays: ``.npy``, ``.npz`` (first array, or ``key=``) or ``.csv`` (numeric, optional header)."""

from __future__ import annotations

import os

import numpy as np

__all__ = ["load_array"]


def load_array(path: str, key: str | None = None) -> np.ndarray:
    """Load a float array ``[N, ...]`` from ``path``; a missing, unreadable or non-numeric file is refused with a
    message naming it. Pickled object arrays are never loaded (``allow_pickle=False``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
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
            try:
                arr = np.loadtxt(path, delimiter=",", dtype=np.float64)
            except ValueError:
                arr = np.loadtxt(path, delimiter=",", dtype=np.float64, skiprows=1)
        else:
            raise ValueError(f"unsupported extension {ext!r}; use .npy, .npz or .csv")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read data file {path}: {e}") from e
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"data file {path} does not hold numbers (dtype {arr.dtype})")
    if arr.ndim == 1:
        arr = arr[:, None]
    if not np.isfinite(arr).all():
        raise ValueError(f"data file {path} contains NaN or inf")
    return arr.astype(np.float32)

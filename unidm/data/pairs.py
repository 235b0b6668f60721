"""A stored coupling ``(z, x1[, y])`` as a training set: what reflow and distillation train on.

Liu et al. 2022 ("Flow Straight and Fast", Sec. 2.2 and Algorithm 1) train the ``k+1``-rectified flow on pairs
``(z, x1 = ODE_k(z))`` drawn through the ``k``-rectified flow's ODE. A folder of such pairs holds a manifest
``pairs.json`` (the parent run, the digest of its weights, the number of pairs, the seed, the solver) and chunk files
``chunk-NNNNN.safetensors`` (``z``, ``x1``, and ``y`` for a class-conditional parent), each written whole or not at
all (:mod:`unidm.pairs` writes them). :func:`pairs_dataset` (``data.name=pairs``) reads a finished folder as a
:class:`PairsDataset`: the parent's data (held-out split, resampler, oracle, plots) whose *training tensors* are the
coupling: batch ``"x"`` is ``x1``, ``"noise"`` the paired prior noise ``z``, ``"y"`` the label it was drawn with.

>>> import tempfile, torch
>>> folder = tempfile.mkdtemp()
>>> write_manifest(folder, {"n": 2, "chunk_size": 2, "digest": "abc"})
>>> from safetensors.torch import save_file
>>> save_file({"z": torch.zeros(2, 2), "x1": torch.ones(2, 2)}, os.path.join(folder, chunk_name(0)),
...           metadata={"digest": "abc", "index": "0", "count": "2"})
>>> read_pairs(folder, digest="abc")["x1"].shape
torch.Size([2, 2])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import Dataset

__all__ = ["MANIFEST", "PAIRS_FORMAT", "PairsDataset", "chunk_name", "num_chunks", "read_manifest",
           "write_manifest", "chunk_done", "read_pairs", "pairs_dataset"]

MANIFEST = "pairs.json"
PAIRS_FORMAT = "unidm-pairs-1"


def chunk_name(index: int) -> str:
    """The file of chunk ``index`` (seeds ``seed + index * chunk_size`` onward)."""
    return f"chunk-{index:05d}.safetensors"


def num_chunks(manifest: dict) -> int:
    return -(-int(manifest["n"]) // int(manifest["chunk_size"]))


def read_manifest(folder: str) -> dict:
    """The manifest of a pairs folder; a folder without one is refused with ``FileNotFoundError`` naming it."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} holds no reflow pairs (no {MANIFEST}); generate them with "
                                "`unidm reflow PARENT --out RUN --pairs-only`")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None


def write_manifest(folder: str, manifest: dict) -> None:
    """Write ``pairs.json`` atomically (a temporary name, then rename)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": PAIRS_FORMAT, **manifest}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _chunk_meta(path: str) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # a damaged or foreign file: not a finished chunk
        return None


def chunk_done(folder: str, manifest: dict, index: int) -> bool:
    """Whether chunk ``index`` is a whole safetensors file of this manifest's parent (digest) and size."""
    path = os.path.join(folder, chunk_name(index))
    if not os.path.isfile(path):
        return False
    meta = _chunk_meta(path)
    want = min(int(manifest["chunk_size"]), int(manifest["n"]) - index * int(manifest["chunk_size"]))
    return meta is not None and meta.get("digest") == manifest.get("digest") and meta.get("count") == str(want)


def read_pairs(folder: str, digest: str | None = None) -> dict[str, Tensor]:
    """Every pair of a finished folder, concatenated: ``{"z", "x1"[, "y"]}``.

    Raises:
        ValueError: the pairs were drawn from another run (its digest is not ``digest``), a chunk file belongs to
            another run, or the folder is unfinished (naming how many chunks are missing).
    """
    from safetensors.torch import load_file

    manifest = read_manifest(folder)
    if digest is not None and manifest.get("digest") != digest:
        raise ValueError(f"the pairs in {folder} were drawn from another run (weights digest "
                         f"{str(manifest.get('digest'))[:16]}, expected {digest[:16]}); they cannot train this one")
    k = num_chunks(manifest)
    missing = [i for i in range(k) if not chunk_done(folder, manifest, i)]
    if missing:
        raise ValueError(f"the pairs in {folder} are unfinished: {len(missing)} of {k} chunks missing (first: "
                         f"{chunk_name(missing[0])}); rerun the same `unidm reflow` / `unidm distill` to finish them")
    parts = [load_file(os.path.join(folder, chunk_name(i))) for i in range(k)]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


@dataclass
class PairsDataset(Dataset):
    """The parent's dataset with a stored coupling as its training tensors (``"x"`` = ``x1``, ``"noise"`` = ``z``,
    ``"y"``). ``train`` stays the real training split, so evaluation, plots and the Fréchet reference see real data;
    ``len(train_tensors()["x"])`` is the number of pairs."""

    pairs: dict = field(default_factory=dict)

    def train_tensors(self) -> dict[str, Tensor]:
        out = {"x": self.pairs["x1"], "noise": self.pairs["z"]}
        if "y" in self.pairs:
            out["y"] = self.pairs["y"]
        return out


def pairs_dataset(path: str, base: dict, digest: str | None = None, parent: str | None = None) -> PairsDataset:
    """``data.name=pairs``: the pairs folder ``path`` over the parent's data config ``base`` (a mapping with its
    ``name``); ``digest`` (the parent's weights digest) refuses pairs drawn from another run; ``parent`` (the parent
    run's folder) is a record only."""
    from . import build_dataset

    if not isinstance(base, dict) or "name" not in base:
        raise ValueError(f"data.base must be the parent's data section, a mapping with a name, got {base!r}")
    opts = dict(base)
    real = build_dataset(opts.pop("name"), **opts)
    pairs = read_pairs(path, digest)
    if tuple(pairs["x1"].shape[1:]) != real.shape:
        raise ValueError(f"the pairs in {path} have shape {tuple(pairs['x1'].shape[1:])}, the data {real.shape}")
    if real.num_classes == 0:
        pairs.pop("y", None)
    pairs["x1"] = pairs["x1"].to(real.train.dtype)
    pairs["z"] = pairs["z"].to(real.train.dtype)
    meta = {**real.meta, "pairs": path, "parent": parent}
    return PairsDataset(real.name, real.train, real.test, kind=real.kind, train_labels=real.train_labels,
                        test_labels=real.test_labels, num_classes=real.num_classes, vocab_size=real.vocab_size,
                        meta=meta, pairs=pairs)

"""Datasets by name. Each builder returns a :class:`Dataset` with train and held-out splits.

``DATASETS[name](**options)``; :func:`build_dataset` validates option names against the builder's signature.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from ..utils import check_kwargs
from .arrays import load_array
from .base import BatchOrder, Dataset, seed_for
from .discrete import DISCRETE_DATASETS
from .images import IMAGE_DATASETS
from .mixtures import MIXTURES, make_mixture
from .pairs import pairs_dataset
from .sequences import SEQUENCE_DATASETS
from .toy import TOY_GENERATORS, make_toy

__all__ = ["Dataset", "BatchOrder", "DATASETS", "build_dataset", "check_data_options", "toy_dataset",
           "mixture_dataset", "array_dataset", "load_array", "make_toy", "make_mixture", "seed_for"]


def _check_sizes(n_train, n_test) -> None:
    for key, value in (("data.n_train", n_train), ("data.n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")


def toy_dataset(name: str, n_train: int = 50_000, n_test: int = 10_000, noise: float = 0.05, seed: int = 0) -> Dataset:
    """A 2-D toy with independent train and held-out draws (different generator seeds)."""
    _check_sizes(n_train, n_test)
    train = torch.from_numpy(make_toy(name, n_train, seed_for(seed, name, "train") % 2**31, noise))
    test = torch.from_numpy(make_toy(name, n_test, seed_for(seed, name, "test") % 2**31, noise))
    def resample(n: int, draw_seed: int) -> torch.Tensor:
        return torch.from_numpy(make_toy(name, n, seed_for(seed, name, "draw", draw_seed) % 2**31, noise))

    return Dataset(name, train, test, kind="vector", meta={"noise": noise, "seed": seed, "resample": resample})


def mixture_dataset(name: str, n_train: int = 50_000, n_test: int = 10_000, seed: int = 0) -> Dataset:
    """Samples of an analytic Gaussian mixture; ``meta["oracle"]`` holds its exact density and denoiser."""
    _check_sizes(n_train, n_test)
    oracle = make_mixture(name)
    train, ytr = oracle.sample(n_train, generator=torch.Generator().manual_seed(seed_for(seed, name, "train")),
                               return_labels=True)
    test, yte = oracle.sample(n_test, generator=torch.Generator().manual_seed(seed_for(seed, name, "test")),
                              return_labels=True)
    return Dataset(name, train.float(), test.float(), kind="vector", train_labels=ytr, test_labels=yte,
                   num_classes=oracle.num_components,
                   meta={"oracle": oracle, "seed": seed,
                         "resample": lambda n, s: oracle.sample(n, generator=torch.Generator().manual_seed(
                             seed_for(seed, name, "draw", s))).float()})


def array_dataset(path: str, key: str | None = None, test_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """The user's own ``.npy/.npz/.csv`` array of vectors ``[N, D]`` (``[N]`` is ``[N, 1]``), split at random into
    train and held-out. An array of images ``[N, H, W, ...]`` is refused, never flattened: ``data.name=image-array``
    loads it as images."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    raw = load_array(path, key)
    if raw.ndim > 2:
        raise ValueError(f"data file {path} holds an array of shape {raw.shape}; data.name=array takes vectors "
                         "[N, D]: for images [N, H, W], [N, H, W, C] or [N, C, H, W] use data.name=image-array, "
                         "otherwise reshape it to [N, D] yourself")
    arr = torch.from_numpy(raw)
    n_test = max(1, int(round(len(arr) * test_fraction)))
    if len(arr) - n_test < 2:
        raise ValueError(f"data file {path} has too few rows ({len(arr)}) to split")
    perm = torch.randperm(len(arr), generator=torch.Generator().manual_seed(seed))
    return Dataset(path, arr[perm[n_test:]], arr[perm[:n_test]], kind="vector", meta={"path": path})


DATASETS: dict[str, Callable[..., Dataset]] = {
    **{name: functools.partial(toy_dataset, name) for name in TOY_GENERATORS},
    **{name: functools.partial(mixture_dataset, name) for name in MIXTURES},
    "array": array_dataset,
    "pairs": pairs_dataset,
    **IMAGE_DATASETS,
    **DISCRETE_DATASETS,
    **SEQUENCE_DATASETS,
}


def check_data_options(name: str, options: dict) -> None:
    """Refuse an unknown dataset ``name``, an option its builder does not take, or a missing required option
    (``data.path`` for the user's files), with a ``ValueError`` naming the key."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    check_kwargs(DATASETS[name], options, f"data options for {name!r}")
    params = inspect.signature(DATASETS[name]).parameters.values()
    missing = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in options]
    if missing:
        example = "data.path=FILE" if missing == ["path"] else " ".join(f"data.{m}=..." for m in missing)
        raise ValueError(f"dataset {name!r} needs {', '.join(f'data.{m}' for m in missing)}; set it, e.g. {example}")


def build_dataset(name: str, **options) -> Dataset:
    """``DATASETS[name](**options)`` with a clear error for an unknown name, an unknown option or a missing one."""
    check_data_options(name, options)
    return DATASETS[name](**options)

"""Image datasets: scikit-learn's digits (embedded, no download), a folder of PNG/JPEG files, a ``.npy/.npz`` array.

Every builder returns a :class:`~unidm.data.Dataset` of kind ``"image"`` with ``[N, C, H, W]`` float32 images in
``[-1, 1]`` and a held-out split drawn with a fixed seed; ``meta["levels"]`` is the number of grey levels per
channel of the source (17 for digits, 256 for 8-bit files), which the sample-quality checks quantize to.

``flip=True`` adds the horizontal mirror image of every *training* image at load time (the training split doubles;
the held-out split is left as it is, so metrics compare against real, unflipped images). Mirroring is a sound
augmentation for natural images, not for digits or text.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .arrays import check_data_file
from .base import Dataset

__all__ = ["digits_dataset", "image_folder_dataset", "image_array_dataset", "IMAGE_DATASETS", "IMAGE_EXTENSIONS",
           "load_image", "resize_center_crop"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _split(n: int, test_fraction: float, seed: int, labels: Tensor | None, what: str) -> tuple[Tensor, Tensor]:
    """Train and held-out indices: a seeded permutation, stratified by label when there are labels."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    groups = [torch.arange(n)] if labels is None else [torch.nonzero(labels == c).flatten()
                                                        for c in labels.unique()]
    train, test = [], []
    for idx in groups:
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = max(1, int(round(len(idx) * test_fraction))) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    train_idx, test_idx = torch.cat(train).sort().values, torch.cat(test).sort().values
    if len(train_idx) < 2 or len(test_idx) < 1:
        raise ValueError(f"{what} has too few images ({n}) to split into train and held-out")
    return train_idx, test_idx


def _finish(name: str, images: Tensor, labels: Tensor | None, num_classes: int, test_fraction: float, seed: int,
            flip: bool, meta: dict) -> Dataset:
    train_idx, test_idx = _split(len(images), test_fraction, seed, labels, name)
    train, test = images[train_idx].contiguous(), images[test_idx].contiguous()
    ytr = labels[train_idx] if labels is not None else None
    yte = labels[test_idx] if labels is not None else None
    if flip:
        train = torch.cat([train, train.flip(-1)])
        ytr = torch.cat([ytr, ytr]) if ytr is not None else None
    return Dataset(name, train, test, kind="image", train_labels=ytr, test_labels=yte, num_classes=num_classes,
                   meta={"seed": seed, "flip": flip, "test_fraction": test_fraction, **meta})


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def digits_dataset(test_fraction: float = 0.2, seed: int = 0, flip: bool = False) -> Dataset:
    """scikit-learn's handwritten digits (Alpaydin & Kaynak 1998, UCI "optdigits"): 1797 images of 8x8 pixels with
    17 grey levels (0..16) and labels 0..9, shipped inside scikit-learn (no download). Pixels ``v`` map to
    ``v / 8 - 1`` in ``[-1, 1]``; the held-out split is stratified by digit.

    >>> data = digits_dataset()
    >>> data.train.shape[1:], data.meta["levels"], len(data.train) + len(data.test)
    (torch.Size([1, 8, 8]), 17, 1797)
    """
    pixels, target = _load_digits()
    images = torch.from_numpy(pixels.astype(np.float32) / 8.0 - 1.0)[:, None]
    labels = torch.from_numpy(target.astype(np.int64))
    return _finish("digits", images, labels, 10, test_fraction, seed, flip,
                   {"levels": 17, "source": "sklearn.datasets.load_digits"})


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """Resize ``[N, C, H, W]`` so the shorter side is ``size`` (antialiased bilinear), then crop the centre
    ``size x size``."""
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            images = F.interpolate(images, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        images = images[..., top:top + size, left:left + size]
    return images


def load_image(path: str, size: int, mode: str) -> np.ndarray:
    """One image file as ``uint8 [C, size, size]``: converted to ``mode`` (``"L"`` or ``"RGB"``), shorter side
    resized to ``size`` (Lanczos), centre-cropped. An unreadable file raises ``ValueError`` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            im = im.convert(mode)
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for bad files
        raise ValueError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _check_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    return "L" if channels == 1 else "RGB"


def image_folder_dataset(path: str, image_size: int = 32, channels: int = 3, labels: bool = False,
                         test_fraction: float = 0.1, seed: int = 0, flip: bool = False) -> Dataset:
    """Every ``.png/.jpg/.jpeg`` file under ``path`` (recursively, sorted), as ``channels`` (1: grayscale, 3: RGB)
    images of ``image_size x image_size`` (shorter side resized, centre-cropped), scaled ``v / 127.5 - 1``.

    With ``labels=True`` each image's label is its first-level subfolder (classes sorted by name). A file that
    cannot be decoded raises ``ValueError`` naming it; files with other extensions are ignored.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder not found: {path}")
    mode = _check_mode(channels)
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if len(files) < 3:
        raise ValueError(f"image folder {path} holds {len(files)} PNG/JPEG files; need at least 3")
    images = torch.from_numpy(np.stack([load_image(f, image_size, mode) for f in files]).astype(np.float32))
    images = images / 127.5 - 1.0
    y, classes = None, []
    if labels:
        rel = [os.path.relpath(f, path).split(os.sep) for f in files]
        loose = [os.path.join(path, *r) for r in rel if len(r) < 2]
        if loose:
            raise ValueError(f"labels=true needs every image in a class subfolder; not in one: {loose[0]}")
        classes = sorted({r[0] for r in rel})
        y = torch.tensor([classes.index(r[0]) for r in rel])
    return _finish(os.path.basename(os.path.normpath(path)) or path, images, y, len(classes), test_fraction, seed,
                   flip, {"levels": 256, "path": path, "files": len(files), "classes": classes})


def _to_nchw(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[1] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            return arr
        if arr.shape[-1] in (1, 3, 4):
            return arr.transpose(0, 3, 1, 2)
        return arr
    raise ValueError(f"array in {path} has shape {arr.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]")


def image_array_dataset(path: str, key: str | None = None, labels_key: str | None = None,
                        image_size: int | None = None, test_fraction: float = 0.1, seed: int = 0,
                        flip: bool = False) -> Dataset:
    """Images from a ``.npy`` or ``.npz`` file: ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` with 1, 3
    (or 4, alpha dropped) channels. ``uint8`` arrays are scaled ``v / 127.5 - 1``; float arrays in ``[0, 1]`` are
    mapped to ``[-1, 1]``, float arrays already in ``[-1, 1]`` are kept. ``key`` picks the array in an ``.npz``
    (default the first), ``labels_key`` an optional array of integer labels. ``image_size`` resizes (shorter side,
    antialiased) and centre-crops. Nothing is unpickled.
    """
    check_data_file(path, "image array file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz"):
        raise ValueError(f"image array file {path}: unsupported extension {ext!r}; use .npy or .npz")
    y = None
    try:
        if ext == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                for k in (key, labels_key):
                    if k is not None and k not in names:
                        raise ValueError(f"no array {k!r}; arrays in it: {names}")
                if not names:
                    raise ValueError("the archive holds no arrays")
                arr = z[key or names[0]]
                y = z[labels_key] if labels_key else None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"cannot read image array file {path}: {e}") from e
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"image array file {path} does not hold numbers (dtype {arr.dtype})")
    if arr.size == 0:
        raise ValueError(f"image array file {path} holds an empty array (shape {arr.shape})")
    arr = _to_nchw(arr, path)
    if arr.shape[1] == 4:
        arr = arr[:, :3]
    if arr.shape[1] not in (1, 3):
        raise ValueError(f"image array file {path}: {arr.shape[1]} channels; expected 1 or 3")
    levels = 256 if arr.dtype == np.uint8 else 0
    x = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    if not torch.isfinite(x).all():
        raise ValueError(f"image array file {path} contains NaN or inf")
    if levels:
        x = x / 127.5 - 1.0
    elif x.min() >= 0 and x.max() <= 1:
        x = x * 2 - 1
    elif x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6:
        raise ValueError(f"image array file {path}: float values span [{float(x.min())}, {float(x.max())}]; "
                         "expected [0, 1] or [-1, 1] (or use uint8)")
    if image_size is not None:
        x = resize_center_crop(x, image_size).clamp(-1, 1)
    labels, num_classes = None, 0
    if y is not None:
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"image array file {path}: labels {labels_key!r} must be {len(x)} integers")
        labels = torch.from_numpy(y.astype(np.int64))
        num_classes = int(labels.max()) + 1
    return _finish(os.path.splitext(os.path.basename(path))[0], x, labels, num_classes, test_fraction, seed, flip,
                   {"levels": levels or 256, "path": path})


IMAGE_DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits_dataset,
    "image-folder": image_folder_dataset,
    "image-array": image_array_dataset,
}

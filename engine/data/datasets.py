"""Evaluation datasets as tensors: images x float32 in [0, 1] shaped (N, C, H, W), labels y int64.

Randomized smoothing adds noise on the [0, 1] scale, so every loader returns that scale and
models carry their own normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from engine.data.cifar import cifar10_arrays
from engine.data.idx import read_idx

FASHION_MNIST_ROOT = Path(os.environ.get("KAVACH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DIGITS_TEST_FRACTION = 0.2


class ImageDataset(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.numel() else 0


def validate_images(x: np.ndarray, y: np.ndarray, source: str) -> ImageDataset:
    """Check and convert arrays: x (N, C, H, W), (N, H, W) or (N, H, W, C) for C in {1, 3}; uint8 or [0, 1]."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> first
    if x.ndim != 4:
        raise ValueError(f"{source}: x must be (N, C, H, W), (N, H, W) or (N, H, W, C); got shape {x.shape}")
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{source}: x contains NaN or infinite values")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"{source}: x must lie in [0, 1] (found [{x.min():.3g}, {x.max():.3g}]); "
                             "store uint8 pixels or divide by 255")
    else:
        raise ValueError(f"{source}: x must be uint8 or floating point, got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{source}: y must be one label per image: shape {y.shape} for {len(x)} images")
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)))
    if not integral:
        raise ValueError(f"{source}: y must hold integer class labels, got {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0")
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def load_digits(split: str = "test") -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, 16 grey levels scaled by 1/16), split 80/20 by a fixed permutation."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    n_test = round(DIGITS_TEST_FRACTION * len(x))
    picks = {"test": order[:n_test], "train": order[n_test:], "all": np.arange(len(x))}
    if split not in picks:
        raise ValueError(f"digits split must be one of {sorted(picks)}, got {split!r}")
    return ImageDataset(torch.from_numpy(x[picks[split]]), torch.from_numpy(y[picks[split]]))


def load_npz(path: str | Path) -> ImageDataset:
    """An .npz with arrays ``x`` (images) and ``y`` (labels), validated by ``validate_images``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    with np.load(path, allow_pickle=False) as archive:
        missing = {"x", "y"} - set(archive.files)
        if missing:
            raise ValueError(f"{path} must hold arrays 'x' and 'y'; missing {sorted(missing)} "
                             f"(found {sorted(archive.files)})")
        return validate_images(archive["x"], archive["y"], str(path))


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {root}")


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files in ``root`` (default /usr/share/datasets/fashion-mnist)."""
    root = Path(root) if root is not None else FASHION_MNIST_ROOT
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST is not installed: {root} does not exist (it cannot be downloaded "
                                "here); set KAVACH_FASHION_MNIST or pass an .npz with x and y")
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise ValueError(f"fashion_mnist split must be 'test' or 'train', got {split!r}")
    x = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    return validate_images(x, y, str(root))


def load_cifar10(split: str = "test", root: str | Path | None = None) -> ImageDataset:
    """CIFAR-10 from a cifar-10-batches-py folder (default: $KAVACH_CIFAR10), read without unpickling code."""
    x, y = cifar10_arrays(split, root)
    return validate_images(x, y, "cifar10")


DATASETS = {"digits": load_digits, "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10}


def load_dataset(name_or_path: str | Path, *, split: str = "test") -> ImageDataset:
    """A named dataset (``digits``, ``fashion_mnist``) or an ``.npz`` file, as (x, y) tensors."""
    key = str(name_or_path).replace("-", "_").lower()
    if key in DATASETS:
        return DATASETS[key](split=split)
    if str(name_or_path).endswith(".npz"):
        return load_npz(name_or_path)
    raise ValueError(f"unknown dataset {name_or_path!r}: use {', '.join(DATASETS)} or a path to an .npz")

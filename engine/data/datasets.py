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
from engine.data.npz import ArrayHeader, NpzLimits, SafeNpz

FASHION_MNIST_ROOT = Path(os.environ.get("KAVACH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DIGITS_TEST_FRACTION = 0.2


class UnitScaleImages:
    """Images kept as stored (uint8 pixels, or float32 in [0, 1]; (N, C, H, W), e.g. memory-mapped) and
    converted to float32 [0, 1] tensors only when indexed.

    A stand-in for ``ImageDataset.x`` where a whole float32 copy would cost 4 bytes per value: ``len``,
    ``shape``, ``dtype``, ``ndim``, ``numel()`` and indexing (an int, slice, list, array or tensor of indices)
    give what the float32 tensor would, value for value (uint8 divided by 255 in float32, as ``load_npz``
    does); ``to``, ``float`` and ``tensor()`` convert everything.
    """

    dtype = torch.float32

    def __init__(self, pixels: np.ndarray) -> None:
        if pixels.ndim != 4 or pixels.dtype not in (np.uint8, np.float32):
            raise ValueError(f"expected (N, C, H, W) uint8 or float32 pixels, got {pixels.shape} {pixels.dtype}")
        self.pixels = pixels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __repr__(self) -> str:
        return f"UnitScaleImages(shape={tuple(self.pixels.shape)}, stored as {self.pixels.dtype})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.pixels.shape)

    @property
    def ndim(self) -> int:
        return 4

    def dim(self) -> int:
        return 4

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.pixels.size)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        elif isinstance(index, tuple):
            index = tuple(i.cpu().numpy() if isinstance(i, torch.Tensor) else i for i in index)
        values = np.array(self.pixels[index], dtype=np.float32)  # a fresh, writable copy
        if self.pixels.dtype == np.uint8:
            values /= 255.0
        return torch.from_numpy(values)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def tensor(self) -> torch.Tensor:
        return self[:]

    def float(self) -> torch.Tensor:
        return self[:]

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self[:].to(*args, **kwargs)


class ImageDataset(NamedTuple):
    x: torch.Tensor  # float32 (N, C, H, W) in [0, 1]; a UnitScaleImages from load_stored
    y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if self.y.numel() else 0


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 4-D x of ``shape`` is (N, H, W, C): its last axis is 1 or 3 and its second is not."""
    return len(shape) == 4 and shape[-1] in (1, 3) and shape[1] not in (1, 3)


def nchw_shape(shape: tuple[int, ...], source: str) -> tuple[int, int, int, int]:
    """The (N, C, H, W) shape of an x of ``shape`` in any accepted layout (without reading it)."""
    if len(shape) == 3:
        return (shape[0], 1, shape[1], shape[2])
    if channels_last(shape):
        return (shape[0], shape[3], shape[1], shape[2])
    if len(shape) == 4:
        return tuple(shape)
    raise ValueError(f"{source}: x must be (N, C, H, W), (N, H, W) or (N, H, W, C); got shape {tuple(shape)}")


def channels_first(x: np.ndarray, source: str) -> np.ndarray:
    """x (N, C, H, W), (N, H, W) or (N, H, W, C) for C in {1, 3}, as an (N, C, H, W) view (no copy)."""
    nchw_shape(x.shape, source)
    if x.ndim == 3:
        return x[:, None]
    return x.transpose(0, 3, 1, 2) if channels_last(x.shape) else x


def as_layout(dest: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A view of an (N, C, H, W) ``dest`` in the layout ``shape`` names (the inverse of channels_first)."""
    if len(shape) == 3:
        return dest[:, 0]
    return dest.transpose(0, 2, 3, 1) if channels_last(shape) else dest


def check_unit_range(x: np.ndarray, source: str) -> tuple[float, float]:
    """(min, max) of float pixels; NaN or infinite values are refused here, values outside [0, 1] by the caller."""
    if not x.size:
        return 1.0, 0.0
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: x contains NaN or infinite values")
    return float(x.min()), float(x.max())


def refuse_outside_unit(low: float, high: float, source: str) -> None:
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{source}: x must lie in [0, 1] (found [{low:.3g}, {high:.3g}]); "
                         "store uint8 pixels or divide by 255")


def check_labels(y: np.ndarray, count: int, source: str) -> np.ndarray:
    """Labels as int64: one per image, integers (integral floats accepted), >= 0."""
    if y.ndim != 1 or len(y) != count:
        raise ValueError(f"{source}: y must be one label per image: shape {y.shape} for {count} images")
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y)))
    if not integral:
        raise ValueError(f"{source}: y must hold integer class labels, got {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0")
    return y.astype(np.int64)


def validate_images(x: np.ndarray, y: np.ndarray, source: str) -> ImageDataset:
    """Check and convert arrays: x (N, C, H, W), (N, H, W) or (N, H, W, C) for C in {1, 3}; uint8 or [0, 1].

    x becomes one float32 (N, C, H, W) array on the [0, 1] scale, written once (no intermediate copies).
    """
    x, y = np.asarray(x), np.asarray(y)
    view = channels_first(x, source)
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{source}: x must be uint8 or floating point, got {x.dtype}")
    out = np.empty(view.shape, dtype=np.float32)
    np.copyto(out, view, casting="unsafe")
    if x.dtype == np.uint8:
        out /= 255.0
    else:
        refuse_outside_unit(*check_unit_range(out, source), source)
    labels = check_labels(y, len(out), source)
    return ImageDataset(torch.from_numpy(out), torch.from_numpy(labels))


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


def npz_headers(npz: SafeNpz, source: str) -> tuple[ArrayHeader, ArrayHeader]:
    """The headers of an .npz dataset's x and y, checked against its limits before any data is read."""
    missing = {"x", "y"} - set(npz.headers)
    if missing:
        raise ValueError(f"{source} must hold arrays 'x' and 'y'; missing {sorted(missing)} "
                         f"(found {sorted(npz.headers)})")
    x, y = npz.headers["x"], npz.headers["y"]
    n, c, h, w = nchw_shape(x.shape, source)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise ValueError(f"{source}: x must be uint8 or floating point, got {x.dtype}")
    if npz.limits.images is not None:
        npz.limits.images.check("x", n, "images")
    if npz.limits.input_elements is not None:
        npz.limits.input_elements.check(f"one input of shape {[c, h, w]}", c * h * w)
    if len(y.shape) != 1 or y.shape[0] != n:
        raise ValueError(f"{source}: y must be one label per image: shape {y.shape} for {n} images")
    return x, y


def read_npz(path: str | Path, limits: NpzLimits | None = None, *, store: bool = False
             ) -> tuple[np.ndarray, np.ndarray]:
    """An .npz dataset's (x, y) read under ``limits``: x (N, C, H, W), y int64, both validated.

    Nothing is decompressed before the archive's and the arrays' headers pass ``limits`` (``engine.data.npz``);
    x is then read in chunks straight into its output, so the file's own array is never held beside it.

    ``store=False``: x float32 on the [0, 1] scale (uint8 pixels divided by 255), what loaders return.
    ``store=True``: x as it should be stored: uint8 when the pixels are uint8, and also when every float value
    is exactly k / 255 in float32 (so loading the uint8 gives back the very same float32 values); otherwise
    float32 with the file's values (rounded to float32, as loading always did). Values are never changed
    beyond that float32 rounding. Float x is then read twice (check, then fill) to hold only the output.
    """
    source = str(path)
    with SafeNpz(path, limits) as npz:
        xh, _ = npz_headers(npz, source)
        labels = check_labels(npz.read("y"), xh.shape[0], source)
        shape = nchw_shape(xh.shape, source)
        if xh.dtype == np.uint8:
            out = np.empty(shape, np.uint8 if store else np.float32)
            npz.read_into("x", as_layout(out, xh.shape))
            if not store:
                out /= 255.0
            return out, labels
        quantise = store
        if store:  # first pass: range, finiteness, and whether uint8 holds every value exactly
            low, high = 1.0, 0.0
            for _, chunk in npz.iter_chunks("x"):
                values = chunk.astype(np.float32)
                lo, hi = check_unit_range(values, source)
                low, high = min(low, lo), max(high, hi)
                if quantise and lo >= 0.0 and hi <= 1.0:
                    quantise = bool(np.array_equal(np.rint(values * np.float32(255)) / np.float32(255), values))
            refuse_outside_unit(low, high, source)
        out = np.empty(shape, np.uint8 if quantise else np.float32)
        if quantise:
            npz.read_into("x", as_layout(out, xh.shape),
                          lambda chunk: np.rint(chunk.astype(np.float32) * np.float32(255)).astype(np.uint8))
            return out, labels
        bounds = [1.0, 0.0]

        def checked(chunk: np.ndarray) -> np.ndarray:
            values = chunk.astype(np.float32)
            lo, hi = check_unit_range(values, source)
            bounds[0], bounds[1] = min(bounds[0], lo), max(bounds[1], hi)
            return values

        npz.read_into("x", as_layout(out, xh.shape), checked)
        refuse_outside_unit(*bounds, source)
        return out, labels


def load_npz(path: str | Path, limits: NpzLimits | None = None) -> ImageDataset:
    """An .npz with arrays ``x`` (images) and ``y`` (labels) as float32 [0, 1] tensors, read under ``limits``
    (default: none on sizes, but objects, non-numbers and inconsistent members are still refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    x, y = read_npz(path, limits)
    return ImageDataset(torch.from_numpy(x), torch.from_numpy(y))


def load_stored(path: str | Path, limits: NpzLimits | None = None) -> ImageDataset:
    """A dataset as this project stores uploads: x (N, C, H, W) uint8 or float32, uncompressed, y int64.

    x is memory-mapped and converted per index (``UnitScaleImages``), so a loaded dataset costs its labels and
    the pages actually read; its values were validated when it was stored. Any other .npz (compressed, another
    layout or dtype) is read whole by ``read_npz``. Both check the headers against ``limits`` first.
    """
    path = Path(path)
    with SafeNpz(path, limits) as npz:
        xh, _ = npz_headers(npz, str(path))
        if xh.dtype in (np.dtype(np.uint8), np.dtype(np.float32)) and nchw_shape(xh.shape, str(path)) == xh.shape:
            pixels = npz.memmap("x")
            if pixels is not None:
                labels = check_labels(npz.read("y"), xh.shape[0], str(path))
                return ImageDataset(UnitScaleImages(pixels), torch.from_numpy(labels))
    return load_npz(path, limits)


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

"""CIFAR-10 from the "python version" folder (cifar-10-batches-py), read without running pickled code.

Its batches are pickles; a restricted unpickler accepts only the globals that rebuild numpy arrays,
so a tampered file is refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

CIFAR10_ROOT = os.environ.get("KAVACH_CIFAR10")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol 2 writes bytes from Python 3: a pure string encoding
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only arrays and lists")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: (uint8 images (N, 3, 32, 32), int64 labels)."""
    with open(path, "rb") as handle:
        batch = _ArraysOnly(handle, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 batch (needs keys data and labels)")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data must be (N, 3072) uint8, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"], dtype=np.int64)


def cifar10_arrays(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 (Krizhevsky 2009) test batch or the five training batches from ``root``."""
    root = Path(root or CIFAR10_ROOT or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError("CIFAR-10 is not configured: point KAVACH_CIFAR10 (or CIFAR10_DIR for the service) "
                                "at a cifar-10-batches-py folder; it cannot be downloaded here")
    names = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}.get(split)
    if names is None:
        raise ValueError(f"cifar10 split must be 'test' or 'train', got {split!r}")
    parts = [read_batch(root / name) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

"""CIFAR-10's python batches: read as arrays, and a tampered batch refused without running it."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from engine.data import load_dataset
from engine.data.datasets import load_cifar10


def write_batch(path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(path, "wb") as handle:  # the layout of the published files: protocol 2, bytes keys
        pickle.dump({b"batch_label": b"testing", b"labels": labels, b"data": data}, handle, protocol=2)
    return data, labels


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    expected = write_batch(root / "test_batch", 12, 0)
    for i in range(1, 6):
        write_batch(root / f"data_batch_{i}", 4, i)
    return root, expected


def test_cifar10_batches_load_on_the_unit_scale(cifar_dir):
    root, (data, labels) = cifar_dir
    test = load_cifar10("test", root=root)
    assert test.x.shape == (12, 3, 32, 32) and test.y.tolist() == labels
    assert np.allclose(test.x.numpy().reshape(12, -1), data / 255.0)
    assert load_cifar10("train", root=root).x.shape == (20, 3, 32, 32)


def test_cifar10_by_name_follows_the_environment(cifar_dir, monkeypatch):
    root, _ = cifar_dir
    monkeypatch.setattr("engine.data.cifar.CIFAR10_ROOT", str(root))
    assert load_dataset("cifar10").x.shape[0] == 12


def test_a_tampered_batch_is_refused_and_nothing_runs(cifar_dir, tmp_path):
    root, _ = cifar_dir
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(root / "test_batch", "wb") as handle:
        pickle.dump({b"labels": [0], b"data": Payload()}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):
        load_cifar10("test", root=root)
    assert not marker.exists()


def test_cifar10_not_configured_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="KAVACH_CIFAR10"):
        load_cifar10("test", root=tmp_path / "missing")

"""Built-in datasets the service lists: CIFAR-10 appears once CIFAR10_DIR points at its folder."""

from __future__ import annotations

from backend import datasets
from backend.core.config import get_settings
from tests.engine.data.test_cifar import write_batch


def test_cifar10_is_listed_and_loaded_when_configured(tmp_path, monkeypatch):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    write_batch(root / "test_batch", 5, 0)
    monkeypatch.setenv("CIFAR10_DIR", str(root))
    get_settings.cache_clear()
    datasets.load_builtin.cache_clear()
    try:
        assert "cifar10" in datasets.builtin_names()
        listed = {d.id: d for d in datasets.builtin_datasets()}
        assert listed["cifar10"].size == 5 and listed["cifar10"].input_shape == [3, 32, 32]
    finally:
        get_settings.cache_clear()
        datasets.load_builtin.cache_clear()
    monkeypatch.delenv("CIFAR10_DIR")
    assert "cifar10" not in datasets.builtin_names()

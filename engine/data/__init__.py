"""Datasets for certification, as tensors on the [0, 1] scale."""

from engine.data.datasets import ImageDataset, load_dataset, load_digits, load_fashion_mnist, load_npz

__all__ = ["ImageDataset", "load_dataset", "load_digits", "load_fashion_mnist", "load_npz"]
